//! The files the daemon makes for itself (the state file, the admin socket) and the directories
//! that hold them.
//!
//! The daemon runs as root next to other users, so a name it writes through must be one no other
//! user can steer. Invariants:
//! - A directory the daemon keeps its files in is trusted only when it and every directory above
//!   it is owned by root (or the daemon's own user) and writable by nobody else, except for a
//!   directory with the sticky bit owned by root (`/tmp`), where others cannot remove or rename
//!   what is not theirs. Anything else is refused with one line naming the directory, its owner
//!   and its mode: never "fixed" by a chmod of something another user may have made.
//! - A directory the daemon creates is made 0755 (or the mode asked for), owned by its user.
//! - A file the daemon writes is written under a fresh random name made with
//!   `O_CREAT | O_EXCL | O_NOFOLLOW` (mode 0600) in that directory, then renamed over the final
//!   name: a symlink or file planted under any name is never opened, let alone written.
//! - A file the daemon reads back (the state file) is read only when it is a regular file owned
//!   by root or the daemon's user and writable by nobody else, opened without following a
//!   symlink.

use std::fs::File;
use std::io::Read as _;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Why a path of the daemon's own cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Unsafe {
    /// A directory another user could change.
    #[error(
        "{dir} is writable by other users (owner uid {uid}, mode {mode:04o}): failoverfs keeps \
         no file of its own there; use a directory only root can write (0755 or 0700, owned by \
         root), or a sticky one owned by root"
    )]
    Writable {
        /// The directory.
        dir: PathBuf,
        /// Its owner.
        uid: u32,
        /// Its permission bits.
        mode: u32,
    },
    /// A directory or file owned by another user.
    #[error(
        "{path} is owned by uid {uid}, not by root or failoverfs's own user: failoverfs does not \
         trust it"
    )]
    Owner {
        /// The path.
        path: PathBuf,
        /// Its owner.
        uid: u32,
    },
    /// Anything else: not a directory, not a regular file, cannot be read.
    #[error("{path}: {error}")]
    Io {
        /// The path.
        path: PathBuf,
        /// What failed.
        error: std::io::Error,
    },
}

impl Unsafe {
    fn io(path: &Path, error: std::io::Error) -> Unsafe {
        Unsafe::Io {
            path: path.to_path_buf(),
            error,
        }
    }
}

/// Whether `uid` is a user whose files the daemon trusts: root or the daemon's own.
fn trusted(uid: u32) -> bool {
    uid == 0 || uid == nix::unistd::geteuid().as_raw()
}

/// Check that `dir` (an existing directory) and every directory above it can be trusted (see the
/// module docs). Symlinks on the way are resolved first; their own directories are checked as
/// part of the resolved path's ancestors only, which is what the kernel follows.
pub fn check_dir(dir: &Path) -> Result<(), Unsafe> {
    let resolved = std::fs::canonicalize(dir).map_err(|e| Unsafe::io(dir, e))?;
    let mut at = Some(resolved.as_path());
    while let Some(d) = at {
        let md = std::fs::metadata(d).map_err(|e| Unsafe::io(d, e))?;
        if !md.is_dir() {
            return Err(Unsafe::io(
                d,
                std::io::Error::from_raw_os_error(libc::ENOTDIR),
            ));
        }
        let mode = md.mode() & 0o7777;
        if !trusted(md.uid()) {
            return Err(Unsafe::Owner {
                path: d.to_path_buf(),
                uid: md.uid(),
            });
        }
        let sticky_root = mode & libc::S_ISVTX != 0 && md.uid() == 0;
        if mode & 0o022 != 0 && !sticky_root {
            return Err(Unsafe::Writable {
                dir: d.to_path_buf(),
                uid: md.uid(),
                mode,
            });
        }
        at = d.parent();
    }
    Ok(())
}

/// Make `dir` (and what is missing above it) with `mode`, then check it as [`check_dir`] does.
/// Existing directories keep their mode: they are checked, never changed.
pub fn ensure_dir(dir: &Path, mode: u32) -> Result<(), Unsafe> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(|e| Unsafe::io(dir, e))?;
    check_dir(dir)
}

/// The directories failoverfs makes by default (`/run/failoverfs`, `/var/lib/failoverfs`).
pub const DEFAULT_DIRS: [&str; 2] = ["/run/failoverfs", "/var/lib/failoverfs"];

/// Earlier versions made their default directories with a umask of 0 (mode 0777). When `dir` is
/// one of [`DEFAULT_DIRS`], owned by root, and writable by others without the sticky bit, set it
/// to 0755 with a warning: what another user may have left inside is never trusted anyway (a
/// socket is replaced only when nothing answers on it, the state file is read only when root's
/// and written only through a fresh name). Any other directory is left as it is.
pub fn tighten_default(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if !DEFAULT_DIRS.iter().any(|d| Path::new(d) == dir) {
        return;
    }
    let Ok(md) = std::fs::symlink_metadata(dir) else {
        return;
    };
    let mode = md.mode() & 0o7777;
    if md.is_dir() && md.uid() == 0 && mode & 0o022 != 0 && mode & libc::S_ISVTX == 0 {
        match std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)) {
            Ok(()) => tracing::warn!(
                dir = %dir.display(),
                was = format!("{mode:04o}"),
                "tightened a default directory an earlier version left writable by everyone to 0755"
            ),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot tighten a default directory")
            }
        }
    }
}

/// The directory `path` is named in (`.` for a bare name).
pub fn parent_of(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Replace the file at `path` with `body`, atomically: a fresh temporary file (0600, exclusive,
/// never through a symlink) in the same directory, synced, renamed over `path`, and the
/// directory synced. The directory is made if missing and must pass [`check_dir`].
pub fn write_atomically(path: &Path, body: &[u8]) -> Result<(), Unsafe> {
    let dir = parent_of(path);
    ensure_dir(dir, 0o755)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".failoverfs-")
        .suffix(".tmp")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .tempfile_in(dir)
        .map_err(|e| Unsafe::io(dir, e))?;
    {
        use std::io::Write as _;
        let f = tmp.as_file_mut();
        f.write_all(body)
            .and_then(|()| f.sync_all())
            .map_err(|e| Unsafe::io(path, e))?;
    }
    tmp.persist(path).map_err(|e| Unsafe::io(path, e.error))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Unsafe::io(dir, e))
}

/// Read the file at `path` if it is one the daemon can trust (see the module docs): `Ok(None)`
/// when there is none.
pub fn read_trusted(path: &Path, limit: u64) -> Result<Option<Vec<u8>>, Unsafe> {
    check_dir(parent_of(path))?;
    let f = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Unsafe::io(path, e)),
    };
    let md = f.metadata().map_err(|e| Unsafe::io(path, e))?;
    if !md.is_file() {
        return Err(Unsafe::io(
            path,
            std::io::Error::other("not a regular file"),
        ));
    }
    if !trusted(md.uid()) {
        return Err(Unsafe::Owner {
            path: path.to_path_buf(),
            uid: md.uid(),
        });
    }
    if md.mode() & 0o022 != 0 {
        return Err(Unsafe::Writable {
            dir: path.to_path_buf(),
            uid: md.uid(),
            mode: md.mode() & 0o7777,
        });
    }
    let mut body = Vec::new();
    f.take(limit)
        .read_to_end(&mut body)
        .map_err(|e| Unsafe::io(path, e))?;
    Ok(Some(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn writes_land_whole_with_private_modes_and_never_through_a_planted_name() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("sub/x.state");
        write_atomically(&path, b"one").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"one");
        let md = std::fs::metadata(&path).unwrap();
        assert_eq!(md.mode() & 0o7777, 0o600);
        let md = std::fs::metadata(tmp.path().join("sub")).unwrap();
        assert_eq!(
            md.mode() & 0o022,
            0,
            "the made directory is not group/other writable"
        );
        // A symlink planted at the final name is replaced, never written through.
        let victim = tmp.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        write_atomically(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert!(!std::fs::symlink_metadata(&path).unwrap().is_symlink());
        assert_eq!(
            std::fs::read_dir(tmp.path().join("sub")).unwrap().count(),
            1
        );
    }

    #[test]
    fn directories_others_can_write_are_refused_unless_sticky_and_roots() {
        let tmp = tempfile::tempdir().unwrap();
        let open = tmp.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = write_atomically(&open.join("s"), b"x").unwrap_err();
        assert!(matches!(e, Unsafe::Writable { .. }), "{e}");
        assert!(e.to_string().contains("0777"), "{e}");
        // Below it too: the writable directory is an ancestor.
        let e = ensure_dir(&open.join("a/b"), 0o755).unwrap_err();
        assert!(matches!(e, Unsafe::Writable { .. }), "{e}");
        if nix::unistd::geteuid().is_root() {
            std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
            write_atomically(&open.join("s"), b"x").unwrap();
        }
    }

    #[test]
    fn reads_refuse_files_others_could_have_written() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("s");
        assert!(read_trusted(&path, 100).unwrap().is_none());
        write_atomically(&path, b"rec").unwrap();
        assert_eq!(read_trusted(&path, 100).unwrap().unwrap(), b"rec");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(read_trusted(&path, 100).is_err());
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("elsewhere"), &path).unwrap();
        assert!(read_trusted(&path, 100).is_err());
    }
}
