//! Errors as data.
//!
//! Every failure that can reach the FUSE boundary is an [`Error`]: a [`Kind`] that says what
//! happened, the errno the kernel will see, whether the operation may be retried on another route,
//! and how loudly it deserves to be logged. Nothing downstream matches on message text.
//!
//! The split that matters for failover is between [`Kind::Posix`] (the volume answered, and the
//! answer is an ordinary filesystem error such as `ENOENT`) and [`Kind::Backend`] (the volume
//! failed to answer properly: `EIO`, `ENOTCONN`, a timeout). Only the second kind says anything
//! about the health of the volume, and only it is worth retrying on a new route.

use std::fmt;
use std::io;

/// What went wrong, in the terms the rest of failoverfs reasons about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// An ordinary answer from the volume (`ENOENT`, `EEXIST`, `EACCES`, ...). Expected in normal
    /// use; says nothing about the volume's health.
    Posix,
    /// The volume failed to serve the request (`EIO`, `ENOTCONN`, `ESTALE` from below, a hung
    /// filesystem). May be a sign that the volume is going away.
    Backend,
    /// No route could serve the operation: the active volume is draining and no new route arrived
    /// in time, queueing is off, or the mount is fenced or stopping.
    Unavailable,
    /// A file handle opened on an earlier volume whose file does not exist on the current one.
    Stale,
    /// A request failed failoverfs's own checks (bad handle, bad name). A kernel or caller bug.
    Invalid,
}

/// How loudly a failure is logged at the FUSE boundary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Normal life of a filesystem: not logged above `trace`.
    Quiet,
    /// Worth a line when debugging.
    Debug,
    /// An operator should see it.
    Warn,
}

/// A failure with its errno, kind and log level. Small and `Copy`: building one never allocates.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Error {
    errno: i32,
    kind: Kind,
}

/// Result alias used across the core.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error of the given kind that reaches the kernel as `errno`.
    pub const fn new(kind: Kind, errno: i32) -> Self {
        Self { errno, kind }
    }

    /// An ordinary filesystem answer.
    pub const fn posix(errno: i32) -> Self {
        Self::new(Kind::Posix, errno)
    }

    /// Classify an errno returned by a backend system call.
    pub fn from_errno(errno: i32) -> Self {
        let kind = match errno {
            libc::EIO
            | libc::ENOTCONN
            | libc::ESTALE
            | libc::ETIMEDOUT
            | libc::EHOSTDOWN
            | libc::EHOSTUNREACH
            | libc::ENETDOWN
            | libc::ENETUNREACH
            | libc::ECONNABORTED
            | libc::ECONNRESET
            | libc::ECONNREFUSED
            | libc::ENODEV
            | libc::ENOMEDIUM
            | libc::EREMOTEIO
            | libc::EUCLEAN
            | libc::ESHUTDOWN => Kind::Backend,
            _ => Kind::Posix,
        };
        Self::new(kind, errno)
    }

    /// The operation found no route to run on.
    pub const fn unavailable(errno: i32) -> Self {
        Self::new(Kind::Unavailable, errno)
    }

    /// A handle whose file is gone from the current volume.
    pub const fn stale(errno: i32) -> Self {
        Self::new(Kind::Stale, errno)
    }

    /// A request that failed failoverfs's own validation.
    pub const fn invalid(errno: i32) -> Self {
        Self::new(Kind::Invalid, errno)
    }

    /// The errno the kernel sees.
    pub const fn errno(self) -> i32 {
        self.errno
    }

    /// What kind of failure this is.
    pub const fn kind(self) -> Kind {
        self.kind
    }

    /// Whether an idempotent operation that failed this way may be retried on a new route.
    /// Ordinary answers are final; only failures of the volume itself (or of the route) are not.
    pub const fn retryable(self) -> bool {
        matches!(self.kind, Kind::Backend | Kind::Unavailable)
    }

    /// How loudly the FUSE adapter logs this failure.
    pub const fn level(self) -> Level {
        match self.kind {
            Kind::Posix => Level::Quiet,
            Kind::Invalid | Kind::Stale => Level::Debug,
            Kind::Backend | Kind::Unavailable => Level::Warn,
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        match e.raw_os_error() {
            Some(errno) => Self::from_errno(errno),
            // Errors without an errno come from our own code paths (a short read of a directory
            // stream, an invalid name): treat them as a failure of the volume, not an answer.
            None => Self::new(Kind::Backend, libc::EIO),
        }
    }
}

impl From<nix::errno::Errno> for Error {
    fn from(e: nix::errno::Errno) -> Self {
        Self::from_errno(e as i32)
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> Self {
        io::Error::from_raw_os_error(e.errno)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}({})", self.kind, errno_name(self.errno))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            Kind::Posix => "",
            Kind::Backend => "backend failure: ",
            Kind::Unavailable => "no route: ",
            Kind::Stale => "stale handle: ",
            Kind::Invalid => "invalid request: ",
        };
        write!(
            f,
            "{kind}{} ({})",
            io::Error::from_raw_os_error(self.errno),
            errno_name(self.errno)
        )
    }
}

impl std::error::Error for Error {}

/// The symbolic name of an errno, for logs (`ENOENT`), or `errno N` for the ones we do not name.
pub fn errno_name(errno: i32) -> &'static str {
    match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENODEV => "ENODEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::EMLINK => "EMLINK",
        libc::ERANGE => "ERANGE",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ELOOP => "ELOOP",
        libc::ENODATA => "ENODATA",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ENOTCONN => "ENOTCONN",
        libc::ESHUTDOWN => "ESHUTDOWN",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ESTALE => "ESTALE",
        libc::EHOSTDOWN => "EHOSTDOWN",
        libc::ENXIO => "ENXIO",
        libc::E2BIG => "E2BIG",
        libc::EOVERFLOW => "EOVERFLOW",
        libc::ETXTBSY => "ETXTBSY",
        _ => "errno",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_answers_are_quiet_and_final() {
        for errno in [libc::ENOENT, libc::EEXIST, libc::ENOTEMPTY, libc::EACCES] {
            let e = Error::from_errno(errno);
            assert_eq!(e.kind(), Kind::Posix);
            assert!(!e.retryable());
            assert_eq!(e.level(), Level::Quiet);
            assert_eq!(e.errno(), errno);
        }
    }

    #[test]
    fn volume_failures_are_loud_and_retryable() {
        for errno in [libc::EIO, libc::ENOTCONN, libc::ESTALE, libc::ETIMEDOUT] {
            let e = Error::from_errno(errno);
            assert_eq!(e.kind(), Kind::Backend);
            assert!(e.retryable());
            assert_eq!(e.level(), Level::Warn);
        }
    }

    #[test]
    fn io_errors_without_errno_become_eio() {
        let e = Error::from(io::Error::other("short read"));
        assert_eq!(e.errno(), libc::EIO);
        assert_eq!(e.kind(), Kind::Backend);
    }

    #[test]
    fn display_names_the_errno() {
        let shown = Error::posix(libc::ENOENT).to_string();
        assert!(shown.contains("ENOENT"), "{shown}");
    }
}
