//! Mounting and unmounting.
//!
//! Invariants:
//! - [`Mounted::unmount`] always leaves the mount point clean: a plain unmount first; when files
//!   are still open (`EBUSY`), a lazy detach, so no "Transport endpoint is not connected" mount is
//!   ever left behind; if the connection is still held open after the grace period, it is
//!   aborted so the worker threads end.
//! - Dropping a [`Mounted`] unmounts it the same way (a test that fails still unmounts).
//! - With `fusermount3` available the mount uses `auto_unmount`, so even `kill -9` of the
//!   process leaves no dead mount behind: the helper unmounts when our descriptor closes, and
//!   the binary's mount guard ([`super::guard`]) when the helper does not.

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fuser::{BackgroundSession, MountOption, Notifier, Session, SessionACL};
use nix::mount::{MntFlags, umount2};

use super::FuseFs;

/// How to mount.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// Mount point.
    pub path: PathBuf,
    /// Read-only mount.
    pub read_only: bool,
    /// `allow_other`.
    pub allow_other: bool,
    /// Worker threads.
    pub threads: usize,
    /// Source name shown in `/proc/mounts` (`failoverfs:<volume>+<volume>+…`, the table).
    pub fsname: String,
    /// `suid` instead of `nosuid`.
    pub suid: bool,
    /// `dev` instead of `nodev`.
    pub dev: bool,
}

/// How an unmount went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmounted {
    /// Unmounted normally.
    Clean,
    /// Files were open: detached lazily.
    Detached,
    /// Already unmounted by someone else.
    Gone,
}

/// A live mount; see the module docs.
pub struct Mounted {
    path: PathBuf,
    session: Option<BackgroundSession>,
    notifier: Notifier,
    connection: Option<u64>,
    auto_unmount: bool,
}

impl Mounted {
    /// Mount `fs` at `opts.path` and start serving it.
    pub fn mount(fs: FuseFs, opts: &MountOptions) -> io::Result<Mounted> {
        let mut cfg = fuser::Config::default();
        let mut options = vec![
            MountOption::FSName(opts.fsname.clone()),
            MountOption::Subtype("failoverfs".into()),
            MountOption::DefaultPermissions,
            if opts.suid {
                MountOption::Suid
            } else {
                MountOption::NoSuid
            },
            if opts.dev {
                MountOption::Dev
            } else {
                MountOption::NoDev
            },
            if opts.read_only {
                MountOption::RO
            } else {
                MountOption::RW
            },
        ];
        let root = nix::unistd::geteuid().is_root();
        cfg.acl = if opts.allow_other {
            SessionACL::All
        } else if root {
            SessionACL::RootAndOwner
        } else {
            SessionACL::Owner
        };
        let auto_unmount = cfg.acl != SessionACL::Owner && fusermount_available();
        if auto_unmount {
            options.push(MountOption::AutoUnmount);
        } else {
            tracing::warn!(
                "fusermount3 not found (Debian package fuse3) or allow_other off as non-root: \
                 mounting without auto_unmount, so a crash would leave a dead mount"
            );
        }
        cfg.mount_options = options;
        cfg.n_threads = Some(opts.threads.max(1));
        cfg.clone_fd = true;

        let session = Session::new(fs, &opts.path, &cfg)?;
        let notifier = session.notifier();
        let connection = fuse_mount_at(&opts.path);
        if auto_unmount && let Some(conn) = connection {
            super::guard::spawn(&opts.path, conn);
        }
        let session = session.spawn()?;
        Ok(Mounted {
            path: opts.path.clone(),
            session: Some(session),
            notifier,
            connection,
            auto_unmount,
        })
    }

    /// The kernel cache-invalidation handle. Never use it from a FUSE worker thread.
    pub fn notifier(&self) -> Notifier {
        self.notifier.clone()
    }

    /// Whether the mount uses `auto_unmount`.
    pub fn auto_unmount(&self) -> bool {
        self.auto_unmount
    }

    /// Unmount (lazily if busy) and stop the workers, waiting at most `grace` for open files to
    /// let go of the connection before aborting it, and `grace` (at most 2 s) more for the
    /// workers after the abort. A worker stuck in a volume call never ends: the process exits
    /// without it (see [`super::deadline`]).
    pub fn unmount(mut self, grace: Duration) -> io::Result<Unmounted> {
        self.unmount_inner(grace)
    }

    fn unmount_inner(&mut self, grace: Duration) -> io::Result<Unmounted> {
        let Some(session) = self.session.take() else {
            return Ok(Unmounted::Gone);
        };
        let outcome = if session.guard.is_finished() {
            Unmounted::Gone
        } else {
            match umount2(&self.path, MntFlags::empty()) {
                Ok(()) => Unmounted::Clean,
                Err(nix::errno::Errno::EBUSY) => {
                    tracing::info!(path = %self.path.display(), "mount busy: detaching lazily");
                    detach(&self.path)?;
                    Unmounted::Detached
                }
                Err(nix::errno::Errno::EINVAL) => Unmounted::Gone,
                Err(nix::errno::Errno::EPERM) => {
                    // Not root: the setuid helper unmounts for us.
                    fusermount_unmount(&self.path)?;
                    Unmounted::Detached
                }
                Err(e) => return Err(e.into()),
            }
        };
        if !wait_finished(&session, grace) {
            tracing::warn!(
                path = %self.path.display(),
                "files still open after the unmount: aborting the FUSE connection"
            );
            self.abort_connection();
            wait_finished(&session, grace.min(Duration::from_secs(2)));
        }
        if session.guard.is_finished() {
            // Drops the auto_unmount helper's socket and joins the session thread.
            if let Err(e) = session.umount_and_join() {
                tracing::debug!(error = %e, "session ended with an error");
            }
        } else {
            tracing::error!(path = %self.path.display(), "FUSE session did not stop");
        }
        Ok(outcome)
    }

    fn abort_connection(&self) {
        let Some(conn) = self.connection else { return };
        let dir = Path::new("/sys/fs/fuse/connections");
        let abort = dir.join(conn.to_string()).join("abort");
        if !abort.exists() {
            // fusectl may not be mounted yet (containers): mounting it is harmless.
            let _ = nix::mount::mount(
                Some("fusectl"),
                dir,
                Some("fusectl"),
                nix::mount::MsFlags::empty(),
                None::<&str>,
            );
        }
        if let Err(e) = std::fs::write(&abort, b"1") {
            tracing::debug!(error = %e, path = %abort.display(), "cannot abort FUSE connection");
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.session.is_some()
            && let Err(e) = self.unmount_inner(Duration::from_millis(500))
        {
            tracing::warn!(error = %e, path = %self.path.display(), "unmount failed");
        }
    }
}

fn wait_finished(session: &BackgroundSession, grace: Duration) -> bool {
    let deadline = Instant::now() + grace;
    while !session.guard.is_finished() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

fn fusermount_available() -> bool {
    if let Some(p) = std::env::var_os("FUSERMOUNT_PATH") {
        return Path::new(&p).is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join("fusermount3").is_file()))
}

pub(super) fn fusermount_unmount(path: &Path) -> io::Result<()> {
    let status = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg("-z")
        .arg("--")
        .arg(path)
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!("fusermount3 -u failed: {status}")))
    }
}

/// Whether a FUSE filesystem is mounted at `path` right now (see [`fuse_mount_at`]).
pub fn is_mounted(path: &Path) -> bool {
    fuse_mount_at(path).is_some()
}

/// Detach a dead failoverfs mount at `path`: one whose daemon is gone ("Transport endpoint is
/// not connected"), left by a failoverfs killed where neither `auto_unmount` nor the mount guard
/// could act (PID 1 of a container takes its helpers with it). Returns whether it detached one.
///
/// Only a failoverfs mount is considered, and only when the kernel answers its `statfs`
/// with `ENOTCONN` within a second: a mount that answers is alive, and one that does not answer
/// (a hung daemon) is left alone. That `statfs` runs on a thread of its own, which a hung mount
/// keeps (the caller then refuses to mount and exits).
pub fn detach_dead_mount(path: &Path) -> io::Result<bool> {
    if !matches!(mount_at(path), Some((_, true))) {
        return Ok(false);
    }
    let probe = path.to_path_buf();
    let answer = crate::backend::bounded("dead-mount-probe", Duration::from_secs(1), move || {
        nix::sys::statfs::statfs(&probe).map(|_| ())
    });
    if answer != Some(Err(nix::errno::Errno::ENOTCONN)) {
        return Ok(false);
    }
    detach(path).map(|()| true)
}

/// Detach the mount at `path` lazily (it goes once nothing uses it), never following a symlink
/// put there; not root, through the setuid helper.
fn detach(path: &Path) -> io::Result<()> {
    match umount2(path, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EPERM) => fusermount_unmount(path),
        Err(e) => Err(e.into()),
    }
}

/// The connection number (the minor device number) of the FUSE mount on top at `path`, per
/// `/proc/self/mountinfo`; `None` when no FUSE filesystem is mounted there. The mount itself is
/// never touched: a stat of it would be a request to whoever serves it, a hung server or
/// ourselves (a SIGKILL landing while our own worker holds such a request leaves the thread
/// waiting forever). Only the parent directories are resolved, as mountinfo lists them.
pub fn fuse_mount_at(path: &Path) -> Option<u64> {
    mount_at(path).map(|(connection, _)| connection)
}

/// [`fuse_mount_at`], and whether that mount is a failoverfs one (type `fuse.failoverfs`, or
/// `fuse` with a `failoverfs:` source when mounted without `fusermount3`).
fn mount_at(path: &Path) -> Option<(u64, bool)> {
    let info = std::fs::read("/proc/self/mountinfo").ok()?;
    let real = crate::config::resolve_parent(path);
    let want = real.as_os_str().as_bytes();
    info.split(|&b| b == b'\n')
        .filter_map(|line| {
            // `ID PARENT MAJOR:MINOR ROOT MOUNT_POINT OPTIONS... - FSTYPE SOURCE SUPER_OPTIONS`
            let sep = line.windows(3).position(|w| w == b" - ")?;
            let mut tail = line[sep + 3..].split(|&b| b == b' ');
            let fstype = tail.next()?;
            let source = tail.next().unwrap_or_default();
            let is_fuse = fstype == b"fuse" || fstype == b"fuseblk" || fstype.starts_with(b"fuse.");
            let mut fields = line[..sep].split(|&b| b == b' ');
            let dev = fields.nth(2)?;
            let mount_point = unescape_mountinfo(fields.nth(1)?);
            if !is_fuse || mount_point != want {
                return None;
            }
            let minor = std::str::from_utf8(dev).ok()?.split_once(':')?.1;
            let ours = fstype == b"fuse.failoverfs" || source.starts_with(b"failoverfs:");
            Some((minor.parse::<u64>().ok()?, ours))
        })
        .next_back()
}

fn unescape_mountinfo(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\' && i + 3 < field.len() {
            let oct = &field[i + 1..i + 4];
            if let Ok(s) = std::str::from_utf8(oct)
                && let Ok(v) = u8::from_str_radix(s, 8)
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(field[i]);
        i += 1;
    }
    out
}
