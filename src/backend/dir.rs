//! A directory on a mounted filesystem, served as a volume.
//!
//! Confinement is the point of this module. The volume root is held open as an `O_PATH` directory
//! descriptor, and every path is resolved relative to it with `openat2(2)` and
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS`: no component may be a symlink
//! and nothing may resolve outside the root, whatever happens to the tree underneath us (a
//! directory swapped for a symlink to `/etc` between two calls is refused with `ELOOP`). Final
//! components are acted on with `*at` calls and `AT_SYMLINK_NOFOLLOW`, or through the
//! `/proc/self/fd/N` link of an `O_PATH` descriptor, which names exactly the file the descriptor
//! holds (a symlink stays a symlink). The daemon never follows a symlink found in a volume; the
//! kernel on the client side resolves them like on any filesystem.
//!
//! A pinned directory ([`Backend::pin`]) is an `O_PATH` descriptor of it, usable only with the
//! backend that opened it. Names are resolved beneath it the same way as beneath the root. A
//! directory that another client moved out of the volume (on the same filesystem) stays reachable
//! through its pin until the core drops the pin, as a process's working directory would.

use std::any::Any;
use std::ffi::{CStr, OsStr};
use std::fs::File;
use std::io::Write as _;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::{Mode, SFlag, fstat, fstatat, mkdirat, mknodat};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, fchownat, linkat, symlinkat, unlinkat};

use super::identity::{self, as_caller, with_umask};
use super::{
    At, Attr, Backend, Caller, Dir, FileKind, Listing, OpenFile, Pin, RootMark, SetAttr, SetTime,
    StatFs,
};
use crate::error::{Error, Result};

/// How every name is opened: beneath the directory it is named in, no symlink on the way.
fn how(flags: OFlag) -> OpenHow {
    OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
        .resolve(RESOLVE)
}

/// The longest relative path handed to one `openat2` call (below `PATH_MAX`, 4096 with the NUL).
const PATH_PIECE: usize = 4000;

const RESOLVE: ResolveFlag = ResolveFlag::RESOLVE_BENEATH
    .union(ResolveFlag::RESOLVE_NO_SYMLINKS)
    .union(ResolveFlag::RESOLVE_NO_MAGICLINKS);

/// A volume stored in a local directory tree.
#[derive(Debug)]
pub struct DirBackend {
    root_path: PathBuf,
    root: OwnedFd,
    root_mark: RootMark,
    /// Tells this backend's pins from another's (a pin is never used on another backend).
    serial: u64,
}

/// Serials of [`DirBackend`]s, never repeated in a process.
static SERIALS: AtomicU64 = AtomicU64::new(1);

/// A directory pinned by a [`DirBackend`], or any file it holds for one operation
/// ([`Backend::hold`]).
struct PinnedDir {
    fd: OwnedFd,
    owner: u64,
}

/// A descriptor: one held elsewhere (the root, a pin), or one opened for this call.
enum DirFd<'a> {
    Borrowed(BorrowedFd<'a>),
    Owned(OwnedFd),
}

impl AsFd for DirFd<'_> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            DirFd::Borrowed(fd) => *fd,
            DirFd::Owned(fd) => fd.as_fd(),
        }
    }
}

impl DirBackend {
    /// Open the directory at `path` as a volume root.
    pub fn open(path: &Path) -> std::io::Result<DirBackend> {
        let root = nix::fcntl::open(
            path,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let root_mark = mark_at(root.as_fd(), OsStr::new(""))?;
        Ok(DirBackend {
            root_path: path.to_path_buf(),
            root,
            root_mark,
            serial: SERIALS.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// Open `rel` beneath the root with `flags`, following no symlink on the way. A path longer
    /// than the kernel takes in one call (`PATH_MAX`) is walked in pieces, each beneath the
    /// directory the previous one opened, so depth is not limited.
    fn resolve(&self, rel: &Path, flags: OFlag) -> Result<OwnedFd> {
        // The root itself is "." beneath the root.
        if rel.as_os_str().is_empty() {
            return Ok(openat2(self.root.as_fd(), ".", how(flags))?);
        }
        let bytes = rel.as_os_str().as_bytes();
        if bytes.len() < PATH_PIECE {
            return Ok(openat2(self.root.as_fd(), rel, how(flags))?);
        }
        let mut dir: Option<OwnedFd> = None;
        let mut rest = bytes;
        while rest.len() >= PATH_PIECE {
            // Cut at the last separator that keeps the piece short enough.
            let cut = rest[..PATH_PIECE]
                .iter()
                .rposition(|&b| b == b'/')
                .filter(|&i| i > 0)
                .ok_or_else(|| Error::posix(libc::ENAMETOOLONG))?;
            let piece = Path::new(OsStr::from_bytes(&rest[..cut]));
            let at = dir.as_ref().map_or(self.root.as_fd(), |d| d.as_fd());
            dir = Some(openat2(at, piece, how(OFlag::O_PATH | OFlag::O_DIRECTORY))?);
            rest = &rest[cut + 1..];
        }
        let at = dir.as_ref().map_or(self.root.as_fd(), |d| d.as_fd());
        Ok(openat2(at, Path::new(OsStr::from_bytes(rest)), how(flags))?)
    }

    /// A descriptor of directory `dir`.
    fn dir<'a>(&'a self, dir: &'a Dir) -> Result<DirFd<'a>> {
        match dir {
            Dir::Root => Ok(DirFd::Borrowed(self.root.as_fd())),
            Dir::Pinned(pin) => match pin.downcast_ref::<PinnedDir>() {
                Some(p) if p.owner == self.serial => Ok(DirFd::Borrowed(p.fd.as_fd())),
                // The core hands a pin only to the backend that made it; refuse rather than act
                // on another volume.
                _ => Err(Error::stale(libc::ESTALE)),
            },
            Dir::Path(rel) if rel.as_os_str().is_empty() => Ok(DirFd::Borrowed(self.root.as_fd())),
            Dir::Path(rel) => self
                .resolve(rel, OFlag::O_PATH | OFlag::O_DIRECTORY)
                .map(DirFd::Owned),
        }
    }

    /// Open the place `at` with `flags`, following no symlink (see [`DirBackend::resolve`]).
    fn open_at(&self, at: At<'_>, flags: OFlag) -> Result<OwnedFd> {
        if at.name.is_empty() {
            if let Dir::Path(rel) = at.dir {
                return self.resolve(rel, flags);
            }
            let dir = self.dir(at.dir)?;
            return Ok(openat2(dir.as_fd(), ".", how(flags))?);
        }
        check_name(at.name)?;
        let dir = self.dir(at.dir)?;
        Ok(openat2(dir.as_fd(), at.name, how(flags))?)
    }

    /// An `O_PATH` descriptor of the file at `at` itself (a symlink stays a symlink).
    fn target<'a>(&'a self, at: At<'a>) -> Result<DirFd<'a>> {
        match at.dir {
            Dir::Root | Dir::Pinned(_) if at.name.is_empty() => self.dir(at.dir),
            _ => self.open_at(at, OFlag::O_PATH).map(DirFd::Owned),
        }
    }

    /// Open the regular file at `rel` with `flags` (open flags, `O_CREAT`/`O_EXCL` ignored), and
    /// its attributes as of the open. The file is first pinned as an `O_PATH` descriptor and
    /// checked: anything but a regular file is refused (a fifo would block the daemon, a device
    /// node would be opened by root); then that very file is opened through its descriptor's
    /// link. The attributes are taken from the opened file, after the open: a change that lands
    /// before the open must show in them (the kept-pages stamp), and on NFS only a real open
    /// revalidates (close-to-open).
    fn open_regular(&self, at: At<'_>, flags: i32, who: Caller) -> Result<(OwnedFd, Attr)> {
        let target = self.open_at(at, OFlag::O_PATH)?;
        let mode = fstat(target.as_fd())?.st_mode;
        match FileKind::from_mode(mode) {
            Some(FileKind::File) => {}
            Some(FileKind::Dir) => return Err(Error::posix(libc::EISDIR)),
            Some(FileKind::Symlink) => return Err(Error::posix(libc::ELOOP)),
            _ => return Err(Error::posix(libc::ENXIO)),
        }
        let flags = backend_open_flags(flags) & !(libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW);
        let open = || {
            with_proc_path(target.as_fd(), |proc| {
                Ok(nix::fcntl::open(
                    proc,
                    OFlag::from_bits_truncate(flags | libc::O_CLOEXEC),
                    Mode::empty(),
                )?)
            })
        };
        let fd = if flags & libc::O_TRUNC != 0 && has_set_id(mode) {
            // Truncating: the volume drops set-ID bits as for the caller's own open.
            as_caller(who, open)?
        } else {
            open()?
        };
        let attr = statx_attr(fd.as_fd(), OsStr::new(""))?;
        Ok((fd, attr))
    }

    /// Give a newly created entry to the caller, as a local filesystem would. New entries in a
    /// set-group-ID directory keep the directory's group (the backend already applied that).
    fn chown_new(&self, dir: &DirFd<'_>, name: &OsStr, who: Caller) -> Result<()> {
        if identity::switches_for(who) {
            // Created as the caller: already the caller's.
            return Ok(());
        }
        let parent_setgid = fstat(dir.as_fd())?.st_mode & libc::S_ISGID != 0;
        let me = (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        );
        let gid = if parent_setgid { None } else { Some(who.gid) };
        if who.uid == me.0 && gid.is_none_or(|g| g == me.1) {
            return Ok(());
        }
        let res = fchownat(
            dir.as_fd(),
            name,
            Some(Uid::from_raw(who.uid)),
            gid.map(Gid::from_raw),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        );
        if let Err(e) = res {
            // Leave no half-made entry behind; the caller sees the chown failure.
            let _ = unlinkat(dir.as_fd(), name, nix::unistd::UnlinkatFlags::NoRemoveDir)
                .or_else(|_| unlinkat(dir.as_fd(), name, nix::unistd::UnlinkatFlags::RemoveDir));
            return Err(e.into());
        }
        Ok(())
    }

    fn stat_at(&self, dir: &DirFd<'_>, name: &OsStr) -> Result<Attr> {
        statx_attr(dir.as_fd(), name)
    }
}

impl Backend for DirBackend {
    fn describe(&self) -> String {
        format!("dir:{}", self.root_path.display())
    }

    fn root_mark(&self) -> Option<RootMark> {
        Some(self.root_mark)
    }

    fn pin(&self, at: At<'_>) -> Result<Option<(Pin, Attr)>> {
        let fd = self.open_at(at, OFlag::O_PATH | OFlag::O_DIRECTORY)?;
        let attr = statx_attr(fd.as_fd(), OsStr::new(""))?;
        let pin = PinnedDir {
            fd,
            owner: self.serial,
        };
        Ok(Some((Arc::new(pin), attr)))
    }

    fn hold(&self, at: At<'_>) -> Result<Option<(Pin, Attr)>> {
        let fd = self.open_at(at, OFlag::O_PATH)?;
        let attr = statx_attr(fd.as_fd(), OsStr::new(""))?;
        let held = PinnedDir {
            fd,
            owner: self.serial,
        };
        Ok(Some((Arc::new(held), attr)))
    }

    fn stat(&self, at: At<'_>) -> Result<Attr> {
        if at.name.is_empty() {
            let target = self.target(at)?;
            return statx_attr(target.as_fd(), OsStr::new(""));
        }
        check_name(at.name)?;
        let dir = self.dir(at.dir)?;
        self.stat_at(&dir, at.name)
    }

    fn setattr(&self, at: At<'_>, set: &SetAttr) -> Result<Attr> {
        let target = self.target(at)?;
        // The mode matters only to a change of size or owner (chmod and times need no look).
        let mode = if set.kills_privileges() {
            fstat(target.as_fd())?.st_mode
        } else {
            0
        };
        if set.size.is_some() {
            // Only regular files have a size to set (never open a device node to truncate it).
            match mode & libc::S_IFMT {
                libc::S_IFREG => {}
                libc::S_IFDIR => return Err(Error::posix(libc::EISDIR)),
                _ => return Err(Error::posix(libc::EINVAL)),
            }
        }
        as_caller_killing(mode, set, || {
            with_proc_path(target.as_fd(), |proc| {
                if let Some(size) = set.size {
                    // Truncate through the descriptor's own link (a regular file, checked above).
                    let f = nix::fcntl::open(
                        proc,
                        OFlag::O_WRONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
                        Mode::empty(),
                    )?;
                    nix::unistd::ftruncate(&f, size_to_off(size)?)?;
                }
                apply_owner_mode_times(target.as_fd(), proc, set)
            })
        })?;
        statx_attr(target.as_fd(), OsStr::new(""))
    }

    fn readlink(&self, at: At<'_>) -> Result<Vec<u8>> {
        let target = self.target(at)?;
        Ok(nix::fcntl::readlinkat(target.as_fd(), "")?.into_vec())
    }

    fn mknod(&self, dir: &Dir, name: &OsStr, mode: u32, rdev: u32, who: Caller) -> Result<Attr> {
        check_name(name)?;
        let dir = self.dir(dir)?;
        let kind = SFlag::from_bits_truncate(mode & libc::S_IFMT);
        let perm = Mode::from_bits_truncate(mode & 0o7777);
        as_caller(who, || {
            with_umask(who.umask, || {
                Ok(mknodat(dir.as_fd(), name, kind, perm, rdev as libc::dev_t)?)
            })
        })?;
        self.chown_new(&dir, name, who)?;
        self.stat_at(&dir, name)
    }

    fn mkdir(&self, dir: &Dir, name: &OsStr, mode: u32, who: Caller) -> Result<Attr> {
        check_name(name)?;
        let dir = self.dir(dir)?;
        let perm = Mode::from_bits_truncate(mode & 0o7777);
        as_caller(who, || {
            with_umask(who.umask, || Ok(mkdirat(dir.as_fd(), name, perm)?))
        })?;
        self.chown_new(&dir, name, who)?;
        self.stat_at(&dir, name)
    }

    fn unlink(&self, dir: &Dir, name: &OsStr) -> Result<()> {
        check_name(name)?;
        let dir = self.dir(dir)?;
        Ok(unlinkat(
            dir.as_fd(),
            name,
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        )?)
    }

    fn rmdir(&self, dir: &Dir, name: &OsStr) -> Result<()> {
        check_name(name)?;
        let dir = self.dir(dir)?;
        Ok(unlinkat(
            dir.as_fd(),
            name,
            nix::unistd::UnlinkatFlags::RemoveDir,
        )?)
    }

    fn symlink(&self, dir: &Dir, name: &OsStr, target: &OsStr, who: Caller) -> Result<Attr> {
        check_name(name)?;
        let dir = self.dir(dir)?;
        as_caller(who, || Ok(symlinkat(target, dir.as_fd(), name)?))?;
        self.chown_new(&dir, name, who)?;
        self.stat_at(&dir, name)
    }

    fn rename(
        &self,
        dir: &Dir,
        name: &OsStr,
        new_dir: &Dir,
        new_name: &OsStr,
        flags: u32,
    ) -> Result<()> {
        check_name(name)?;
        check_name(new_name)?;
        let from = self.dir(dir)?;
        let to = self.dir(new_dir)?;
        Ok(nix::fcntl::renameat2(
            from.as_fd(),
            name,
            to.as_fd(),
            new_name,
            nix::fcntl::RenameFlags::from_bits_truncate(flags),
        )?)
    }

    fn link(&self, at: At<'_>, new_dir: &Dir, new_name: &OsStr) -> Result<Attr> {
        check_name(new_name)?;
        let to = self.dir(new_dir)?;
        if at.name.is_empty() {
            // A held file itself: link that very file, through its descriptor's link (which
            // names the file, never a symlink's target).
            let target = self.target(at)?;
            with_proc_path(target.as_fd(), |proc| {
                Ok(linkat(
                    nix::fcntl::AT_FDCWD,
                    proc,
                    to.as_fd(),
                    new_name,
                    AtFlags::AT_SYMLINK_FOLLOW,
                )?)
            })?;
            return self.stat_at(&to, new_name);
        }
        check_name(at.name)?;
        let from = self.dir(at.dir)?;
        linkat(
            from.as_fd(),
            at.name,
            to.as_fd(),
            new_name,
            AtFlags::empty(),
        )?;
        self.stat_at(&to, new_name)
    }

    fn open(&self, at: At<'_>, flags: i32, who: Caller) -> Result<(Arc<dyn OpenFile>, Attr)> {
        let (fd, attr) = self.open_regular(at, flags, who)?;
        Ok((Arc::new(DirFile::new(fd)), attr))
    }

    fn create(
        &self,
        parent: &Dir,
        name: &OsStr,
        mode: u32,
        flags: i32,
        who: Caller,
    ) -> Result<(Arc<dyn OpenFile>, Attr)> {
        check_name(name)?;
        let dir = self.dir(parent)?;
        let base = backend_open_flags(flags) | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        let perm = Mode::from_bits_truncate(mode & 0o7777);
        let exclusive = OFlag::from_bits_truncate(base | libc::O_CREAT | libc::O_EXCL);
        // As the caller: the volume checks the caller's rights, on the new file and on an
        // existing one alike, and the new file is the caller's from the start.
        let (fd, existing) = as_caller(who, || {
            let made = with_umask(who.umask, || {
                Ok(nix::fcntl::openat(dir.as_fd(), name, exclusive, perm)?)
            });
            match made {
                Ok(fd) => Ok((fd, None)),
                // The entry appeared (or was never visible to the kernel's cache): open what is
                // there, unless the caller asked for exclusive creation. The open already took
                // the file's attributes, after it (and after its truncation).
                // Already running as the caller: the open must not switch again.
                Err(e) if e.errno() == libc::EEXIST && flags & libc::O_EXCL == 0 => {
                    let (fd, attr) =
                        self.open_regular(At { dir: parent, name }, flags, Caller::ROOT)?;
                    Ok((fd, Some(attr)))
                }
                Err(e) => Err(e),
            }
        })?;
        let file = DirFile::new(fd);
        let attr = match existing {
            Some(attr) => attr,
            None => {
                self.chown_new(&dir, name, who)?;
                file.stat()?
            }
        };
        Ok((Arc::new(file), attr))
    }

    fn read_dir(&self, at: At<'_>, out: &mut Listing) -> Result<()> {
        let fd = self.open_at(at, OFlag::O_RDONLY | OFlag::O_DIRECTORY)?;
        let mut dir = nix::dir::Dir::from_fd(fd)?;
        let raw = dir.as_raw_fd();
        for entry in dir.iter() {
            let entry = entry?;
            let name = entry.file_name();
            let bytes = name.to_bytes();
            if bytes == b"." || bytes == b".." {
                continue;
            }
            let kind = match entry.file_type() {
                Some(t) => kind_from_dirent(t),
                None => {
                    // SAFETY: `raw` is the directory descriptor owned by `dir`, alive for this
                    // loop; fstatat only reads the name.
                    let dirfd = unsafe { BorrowedFd::borrow_raw(raw) };
                    match fstatat(dirfd, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
                        Ok(st) => FileKind::from_mode(st.st_mode).unwrap_or(FileKind::File),
                        // Gone since the listing: skip it, as a later readdir would.
                        Err(nix::errno::Errno::ENOENT) => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
            };
            out.push(OsStr::from_bytes(bytes), kind, entry.ino())?;
        }
        Ok(())
    }

    fn statfs(&self) -> Result<StatFs> {
        let s = nix::sys::statvfs::fstatvfs(self.root.as_fd())?;
        Ok(StatFs {
            blocks: s.blocks(),
            bfree: s.blocks_free(),
            bavail: s.blocks_available(),
            files: s.files(),
            ffree: s.files_free(),
            bsize: s.block_size() as u32,
            namelen: s.name_max() as u32,
            frsize: s.fragment_size() as u32,
        })
    }

    fn getxattr(&self, at: At<'_>, name: &OsStr) -> Result<Vec<u8>> {
        let target = self.target(at)?;
        let name = cstring(name)?;
        with_proc_path(target.as_fd(), |proc| {
            xattr_read(|buf| {
                // SAFETY: `proc` and `name` are NUL-terminated; `buf` is valid for its length
                // (null with length 0 asks for the size).
                unsafe {
                    libc::getxattr(
                        proc.as_ptr(),
                        name.as_ptr(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                    )
                }
            })
        })
    }

    fn setxattr(&self, at: At<'_>, name: &OsStr, value: &[u8], flags: i32) -> Result<()> {
        let target = self.target(at)?;
        let name = cstring(name)?;
        with_proc_path(target.as_fd(), |proc| {
            // SAFETY: `proc` and `name` are NUL-terminated; `value` is valid for its length.
            let rc = unsafe {
                libc::setxattr(
                    proc.as_ptr(),
                    name.as_ptr(),
                    value.as_ptr().cast(),
                    value.len(),
                    flags,
                )
            };
            errno_result(rc as isize).map(drop)
        })
    }

    fn listxattr(&self, at: At<'_>) -> Result<Vec<u8>> {
        let target = self.target(at)?;
        with_proc_path(target.as_fd(), |proc| {
            xattr_read(|buf| {
                // SAFETY: `proc` is NUL-terminated; `buf` is valid for its length.
                unsafe { libc::listxattr(proc.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) }
            })
        })
    }

    fn removexattr(&self, at: At<'_>, name: &OsStr) -> Result<()> {
        let target = self.target(at)?;
        let name = cstring(name)?;
        with_proc_path(target.as_fd(), |proc| {
            // SAFETY: both strings are NUL-terminated.
            let rc = unsafe { libc::removexattr(proc.as_ptr(), name.as_ptr()) };
            errno_result(rc as isize).map(drop)
        })
    }
}

/// A file open on a [`DirBackend`].
#[derive(Debug)]
pub struct DirFile {
    file: File,
}

impl DirFile {
    fn new(fd: OwnedFd) -> Self {
        DirFile {
            file: File::from(fd),
        }
    }
}

impl OpenFile for DirFile {
    fn passthrough_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.file.as_fd())
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if done > 0 => {
                    tracing::debug!(error = %e, "short read after partial success");
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(done)
    }

    fn write_at(&self, data: &[u8], offset: u64) -> Result<usize> {
        let mut done = 0;
        while done < data.len() {
            match self.file.write_at(&data[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) if done > 0 => break,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(done)
    }

    fn write_as(&self, data: &[u8], offset: u64, who: Caller) -> Result<usize> {
        as_caller(who, || self.write_at(data, offset))
    }

    fn flush(&self) -> Result<()> {
        // Closing a duplicate reports delayed write errors (NFS and friends) without closing the
        // descriptor other users of the handle still need.
        let dup = nix::unistd::dup(self.file.as_fd())?;
        let raw = std::os::fd::IntoRawFd::into_raw_fd(dup);
        // SAFETY: `raw` was just created by dup and is owned by nobody else.
        let rc = unsafe { libc::close(raw) };
        errno_result(rc as isize).map(drop)
    }

    fn fsync(&self, datasync: bool) -> Result<()> {
        if datasync {
            self.file.sync_data()?;
        } else {
            self.file.sync_all()?;
        }
        Ok(())
    }

    fn stat(&self) -> Result<Attr> {
        statx_attr(self.file.as_fd(), OsStr::new(""))
    }

    fn setattr(&self, set: &SetAttr) -> Result<Attr> {
        let mode = self.mode_if_killing(set.kills_privileges(), set.by)?;
        as_caller_killing(mode, set, || {
            if let Some(size) = set.size {
                let size = size_to_off(size)?;
                match nix::unistd::ftruncate(self.file.as_fd(), size) {
                    // Opened read-only (`O_RDONLY | O_TRUNC`, or a truncate the kernel sent
                    // with this handle): the kernel checked the caller's write permission on
                    // this very file, so truncate it through a writable descriptor of it.
                    Err(nix::errno::Errno::EINVAL | nix::errno::Errno::EBADF) => {
                        with_proc_path(self.file.as_fd(), |proc| {
                            let f = nix::fcntl::open(
                                proc,
                                OFlag::O_WRONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
                                Mode::empty(),
                            )?;
                            Ok(nix::unistd::ftruncate(&f, size)?)
                        })?;
                    }
                    r => r?,
                }
            }
            with_proc_path(self.file.as_fd(), |proc| {
                apply_owner_mode_times(self.file.as_fd(), proc, set)
            })
        })?;
        self.stat()
    }

    fn allocate(&self, offset: u64, len: u64, mode: i32, who: Caller) -> Result<()> {
        let flags = nix::fcntl::FallocateFlags::from_bits_truncate(mode);
        let allocate = || {
            nix::fcntl::fallocate(
                self.file.as_fd(),
                flags,
                size_to_off(offset)?,
                size_to_off(len)?,
            )?;
            Ok(())
        };
        if has_set_id(self.mode_if_killing(true, Some(who))?) {
            as_caller(who, allocate)
        } else {
            allocate()
        }
    }

    fn seek(&self, offset: i64, whence: i32) -> Result<i64> {
        // SAFETY: plain syscall on a descriptor we own. Our reads and writes carry explicit
        // offsets, so moving the descriptor's own offset disturbs nobody.
        let rc = unsafe { libc::lseek(self.file.as_raw_fd(), offset, whence) };
        errno_result(rc as isize).map(|v| v as i64)
    }

    fn copy_range(
        &self,
        off_in: u64,
        dst: &dyn OpenFile,
        off_out: u64,
        len: u64,
        who: Caller,
    ) -> Result<usize> {
        let Some(dst) = dst.as_any().downcast_ref::<DirFile>() else {
            // Different backends: let the kernel fall back to read + write.
            return Err(Error::posix(libc::EXDEV));
        };
        let mut off_in = size_to_off(off_in)?;
        let mut off_out = size_to_off(off_out)?;
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        let mut copy = || {
            Ok(nix::fcntl::copy_file_range(
                self.file.as_fd(),
                Some(&mut off_in),
                dst.file.as_fd(),
                Some(&mut off_out),
                len,
            )?)
        };
        if has_set_id(dst.mode_if_killing(true, Some(who))?) {
            as_caller(who, copy)
        } else {
            copy()
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl DirFile {
    /// The file's mode when a change by `who` may have to drop set-ID bits (`kills`, and `who`
    /// is a caller the daemon acts as), else 0 (no system call).
    fn mode_if_killing(&self, kills: bool, who: Option<Caller>) -> Result<u32> {
        match who {
            Some(who) if kills && identity::switches_for(who) => {
                Ok(fstat(self.file.as_fd())?.st_mode)
            }
            _ => Ok(0),
        }
    }
}

/// Whether `mode` has a set-ID bit.
fn has_set_id(mode: u32) -> bool {
    mode & (libc::S_ISUID | libc::S_ISGID) != 0
}

/// Run `f` (which changes size or owner as `set` asks) as `set.by` when that may drop set-ID bits
/// of a file with `mode`: the volume then drops exactly what it would for the caller's own call.
fn as_caller_killing<T>(mode: u32, set: &SetAttr, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match set.by {
        Some(who) if set.kills_privileges() && has_set_id(mode) => as_caller(who, f),
        _ => f(),
    }
}

/// Apply owner, mode and times (in that order, so that a chown that clears set-ID bits cannot undo
/// a mode given in the same request) to the file held by `fd`, whose own link is `proc`.
fn apply_owner_mode_times(fd: BorrowedFd<'_>, proc: &CStr, set: &SetAttr) -> Result<()> {
    if set.uid.is_some() || set.gid.is_some() {
        fchownat(
            fd,
            "",
            set.uid.map(Uid::from_raw),
            set.gid.map(Gid::from_raw),
            AtFlags::AT_EMPTY_PATH | AtFlags::AT_SYMLINK_NOFOLLOW,
        )?;
    }
    if let Some(mode) = set.mode {
        nix::sys::stat::fchmodat(
            nix::fcntl::AT_FDCWD,
            proc,
            Mode::from_bits_truncate(mode & 0o7777),
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )?;
    }
    if set.atime.is_some() || set.mtime.is_some() {
        let ts = |t: Option<SetTime>| match t {
            None => TimeSpec::UTIME_OMIT,
            Some(SetTime::Now) => TimeSpec::UTIME_NOW,
            Some(SetTime::At(t)) => timespec(t),
        };
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            proc,
            &ts(set.atime),
            &ts(set.mtime),
            nix::sys::stat::UtimensatFlags::FollowSymlink,
        )?;
    }
    Ok(())
}

/// Open flags that make sense on the backend: `O_DIRECT` would demand aligned buffers the FUSE
/// path does not promise, and the kernel already handled `O_NOCTTY`.
fn backend_open_flags(flags: i32) -> i32 {
    flags & !(libc::O_DIRECT | libc::O_NOCTTY)
}

/// A name must be one path component.
fn check_name(name: &OsStr) -> Result<()> {
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') || b.contains(&0) {
        return Err(Error::invalid(libc::EINVAL));
    }
    Ok(())
}

fn cstring(s: &OsStr) -> Result<std::ffi::CString> {
    std::ffi::CString::new(s.as_bytes()).map_err(|_| Error::invalid(libc::EINVAL))
}

/// Run `f` with `/proc/self/fd/N` for `fd`: a path that names exactly the file the descriptor
/// holds, usable by calls that have no descriptor form for `O_PATH` descriptors.
fn with_proc_path<T>(fd: BorrowedFd<'_>, f: impl FnOnce(&CStr) -> Result<T>) -> Result<T> {
    let mut buf = [0u8; 40];
    let len = {
        let mut cursor = std::io::Cursor::new(&mut buf[..]);
        write!(cursor, "/proc/self/fd/{}", fd.as_raw_fd())
            .map_err(|_| Error::invalid(libc::EIO))?;
        cursor.position() as usize
    };
    let c = CStr::from_bytes_with_nul(&buf[..=len]).map_err(|_| Error::invalid(libc::EIO))?;
    f(c)
}

/// Call an xattr getter twice if needed: once for the size, once for the value.
fn xattr_read(mut call: impl FnMut(&mut [u8]) -> isize) -> Result<Vec<u8>> {
    loop {
        let size = errno_result(call(&mut []))?;
        let mut buf = vec![0u8; size as usize];
        match errno_result(call(&mut buf)) {
            Ok(n) => {
                buf.truncate(n as usize);
                return Ok(buf);
            }
            // The value grew between the two calls: ask again.
            Err(e) if e.errno() == libc::ERANGE => continue,
            Err(e) => return Err(e),
        }
    }
}

fn errno_result(rc: isize) -> Result<isize> {
    if rc < 0 {
        Err(Error::from_errno(nix::errno::Errno::last_raw()))
    } else {
        Ok(rc)
    }
}

fn size_to_off(v: u64) -> Result<i64> {
    i64::try_from(v).map_err(|_| Error::posix(libc::EFBIG))
}

fn kind_from_dirent(t: nix::dir::Type) -> FileKind {
    use nix::dir::Type;
    match t {
        Type::Fifo => FileKind::Fifo,
        Type::CharacterDevice => FileKind::CharDev,
        Type::Directory => FileKind::Dir,
        Type::BlockDevice => FileKind::BlockDev,
        Type::File => FileKind::File,
        Type::Symlink => FileKind::Symlink,
        Type::Socket => FileKind::Socket,
    }
}

fn system_time(secs: i64, nsecs: i64) -> SystemTime {
    let nsecs = nsecs.clamp(0, 999_999_999) as u32;
    let t = if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::new(secs as u64, nsecs))
    } else {
        // secs is negative and nsecs counts forward from it.
        UNIX_EPOCH
            .checked_sub(Duration::new(secs.unsigned_abs(), 0))
            .and_then(|t| t.checked_add(Duration::new(0, nsecs)))
    };
    // Times a SystemTime cannot hold (a filesystem can store i64::MIN) read as the epoch.
    t.unwrap_or(UNIX_EPOCH)
}

fn timespec(t: SystemTime) -> TimeSpec {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => TimeSpec::new(d.as_secs() as i64, d.subsec_nanos() as i64),
        Err(e) => {
            let d = e.duration();
            let mut secs = -(d.as_secs() as i64);
            let mut nsecs = -(d.subsec_nanos() as i64);
            if nsecs < 0 {
                secs -= 1;
                nsecs += 1_000_000_000;
            }
            TimeSpec::new(secs, nsecs)
        }
    }
}

/// Attributes of `name` in `dir`, or of `dir` itself when `name` is empty, never following a
/// final symlink. `statx(2)` rather than `fstatat(2)`: it also reports the birth time, which
/// tells a file from another one that reused its inode number (see [`super::FileId`]).
pub(crate) fn statx_attr(dir: BorrowedFd<'_>, name: &OsStr) -> Result<Attr> {
    let flags = libc::AT_SYMLINK_NOFOLLOW;
    let stx = statx(
        dir,
        name,
        flags,
        libc::STATX_BASIC_STATS | libc::STATX_BTIME,
    )?;
    Ok(attr_from_statx(&stx))
}

/// The [`RootMark`] of `name` in `dir` (of `dir` itself when `name` is empty), following
/// symlinks as opening a volume root by its configured path does.
pub fn mark_at(dir: BorrowedFd<'_>, name: &OsStr) -> std::io::Result<RootMark> {
    let mask = libc::STATX_BASIC_STATS | libc::STATX_BTIME | libc::STATX_MNT_ID;
    let stx = statx(dir, name, 0, mask).map_err(std::io::Error::from)?;
    Ok(RootMark {
        id: attr_from_statx(&stx).id,
        mount: stx.stx_mnt_id,
    })
}

/// The [`RootMark`] of the directory at `path`.
pub fn mark_of(path: &Path) -> std::io::Result<RootMark> {
    // SAFETY: AT_FDCWD is a valid directory descriptor for the *at calls.
    let cwd = unsafe { BorrowedFd::borrow_raw(libc::AT_FDCWD) };
    mark_at(cwd, path.as_os_str())
}

/// `statx(2)` of `name` in `dir` (of `dir` itself when `name` is empty).
fn statx(dir: BorrowedFd<'_>, name: &OsStr, mut flags: i32, mask: u32) -> Result<libc::statx> {
    flags |= libc::AT_STATX_SYNC_AS_STAT;
    if name.is_empty() {
        flags |= libc::AT_EMPTY_PATH;
    }
    let mut stx = std::mem::MaybeUninit::<libc::statx>::zeroed();
    let rc = nix::NixPath::with_nix_path(name, |c| {
        // SAFETY: `c` is NUL-terminated and `stx` points to writable memory of the right size.
        unsafe { libc::statx(dir.as_raw_fd(), c.as_ptr(), flags, mask, stx.as_mut_ptr()) }
    })?;
    errno_result(rc as isize)?;
    // SAFETY: statx succeeded and filled the structure (it was zeroed before, too).
    Ok(unsafe { stx.assume_init() })
}

/// Convert a `statx` result.
pub(crate) fn attr_from_statx(st: &libc::statx) -> Attr {
    let time = |t: &libc::statx_timestamp| system_time(t.tv_sec, i64::from(t.tv_nsec));
    let birth = if st.stx_mask & libc::STATX_BTIME != 0 {
        let b = &st.stx_btime;
        (b.tv_sec as u64)
            .wrapping_mul(1_000_000_000)
            .wrapping_add(u64::from(b.tv_nsec))
            .max(1)
    } else {
        0
    };
    let mode = u32::from(st.stx_mode);
    Attr {
        kind: FileKind::from_mode(mode).unwrap_or(FileKind::File),
        perm: (mode & 0o7777) as u16,
        nlink: st.stx_nlink,
        uid: st.stx_uid,
        gid: st.stx_gid,
        rdev: libc::makedev(st.stx_rdev_major, st.stx_rdev_minor) as u32,
        size: st.stx_size,
        blocks: st.stx_blocks,
        blksize: st.stx_blksize,
        atime: time(&st.stx_atime),
        mtime: time(&st.stx_mtime),
        ctime: time(&st.stx_ctime),
        id: super::FileId {
            dev: libc::makedev(st.stx_dev_major, st.stx_dev_minor),
            ino: st.stx_ino,
            birth,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Place;

    fn at(p: &str) -> Place {
        Place::of_path(Path::new(p))
    }

    fn backend() -> (tempfile::TempDir, DirBackend) {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("vol")).unwrap();
        let b = DirBackend::open(&tmp.path().join("vol")).unwrap();
        (tmp, b)
    }

    #[test]
    fn symlinked_directory_is_never_followed() {
        let (tmp, b) = backend();
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("secret"), b"x").unwrap();
        std::os::unix::fs::symlink(&outside, tmp.path().join("vol/link")).unwrap();
        // The symlink itself is visible as a symlink.
        assert_eq!(b.stat(at("link").at()).unwrap().kind, FileKind::Symlink);
        // Nothing beneath it is reachable: the walk refuses the symlink (ELOOP, or ENOTDIR where
        // a directory was required).
        let refused = |e: Error| assert!(matches!(e.errno(), libc::ELOOP | libc::ENOTDIR), "{e}");
        refused(b.stat(at("link/secret").at()).unwrap_err());
        refused(
            b.open(at("link/secret").at(), libc::O_RDONLY, Caller::ROOT)
                .err()
                .unwrap(),
        );
        refused(
            b.read_dir(at("link").at(), &mut Listing::default())
                .unwrap_err(),
        );
        refused(
            b.create(
                &Dir::Path("link".into()),
                OsStr::new("f"),
                0o644,
                libc::O_RDWR,
                Caller::ROOT,
            )
            .err()
            .unwrap(),
        );
        refused(
            b.getxattr(at("link/secret").at(), OsStr::new("user.x"))
                .unwrap_err(),
        );
        assert!(!outside.join("f").exists());
    }

    #[test]
    fn dotdot_and_absolute_paths_stay_beneath() {
        let (_tmp, b) = backend();
        for p in ["../outside", "/etc/passwd", "a/../../x"] {
            let e = b.stat(at(p).at()).unwrap_err();
            assert!(
                matches!(e.errno(), libc::EXDEV | libc::ENOENT | libc::EINVAL),
                "{p}: {e}"
            );
        }
        let e = b
            .mkdir(&Dir::Root, OsStr::new(".."), 0o755, Caller::ROOT)
            .unwrap_err();
        assert_eq!(e.errno(), libc::EINVAL);
    }

    #[test]
    fn setattr_on_symlink_never_touches_target() {
        let (tmp, b) = backend();
        let outside = tmp.path().join("target");
        std::fs::write(&outside, b"x").unwrap();
        std::os::unix::fs::symlink(&outside, tmp.path().join("vol/l")).unwrap();
        let before = std::fs::metadata(&outside).unwrap();
        let set = SetAttr {
            mode: Some(0o600),
            ..Default::default()
        };
        let _ = b.setattr(at("l").at(), &set);
        let set = SetAttr {
            size: Some(0),
            ..Default::default()
        };
        assert!(b.setattr(at("l").at(), &set).is_err());
        let after = std::fs::metadata(&outside).unwrap();
        assert_eq!(before.len(), after.len());
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&before.permissions()),
            std::os::unix::fs::PermissionsExt::mode(&after.permissions())
        );
    }

    #[test]
    fn only_regular_files_are_opened() {
        let (tmp, b) = backend();
        let fifo = tmp.path().join("vol/fifo");
        nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o644)).unwrap();
        // Would block forever if the daemon opened it.
        let e = b
            .open(at("fifo").at(), libc::O_RDONLY, Caller::ROOT)
            .err()
            .unwrap();
        assert_eq!(e.errno(), libc::ENXIO);
        std::fs::create_dir(tmp.path().join("vol/d")).unwrap();
        let e = b
            .open(at("d").at(), libc::O_RDONLY, Caller::ROOT)
            .err()
            .unwrap();
        assert_eq!(e.errno(), libc::EISDIR);
        // create() of an existing fifo without O_EXCL does not open it either.
        let e = b
            .create(
                &Dir::Root,
                OsStr::new("fifo"),
                0o644,
                libc::O_RDWR,
                Caller::ROOT,
            )
            .err()
            .unwrap();
        assert_eq!(e.errno(), libc::ENXIO);
        let set = SetAttr {
            size: Some(0),
            ..Default::default()
        };
        assert_eq!(
            b.setattr(at("fifo").at(), &set).unwrap_err().errno(),
            libc::EINVAL
        );
    }

    #[test]
    fn create_read_write_roundtrip() {
        let (_tmp, b) = backend();
        let (f, attr) = b
            .create(
                &Dir::Root,
                OsStr::new("f"),
                0o640,
                libc::O_RDWR,
                Caller::ROOT,
            )
            .unwrap();
        assert_eq!(attr.kind, FileKind::File);
        assert_eq!(attr.perm, 0o640);
        assert_eq!(f.write_at(b"hello", 3).unwrap(), 5);
        let mut buf = [0u8; 16];
        let n = f.read_at(&mut buf, 0).unwrap();
        assert_eq!(&buf[..n], b"\0\0\0hello");
        let mut names = Listing::default();
        b.read_dir(at("").at(), &mut names).unwrap();
        assert_eq!(names.len(), 1);
        assert_eq!(names.get(0).unwrap().0, "f");
        // An open reports the file as it is after the open: as found, or truncated.
        let (g, attr) = b.open(at("f").at(), libc::O_RDONLY, Caller::ROOT).unwrap();
        assert_eq!((attr.size, attr.id), (8, f.stat().unwrap().id));
        assert_eq!(g.read_at(&mut buf, 0).unwrap(), 8);
        let (_, attr) = b
            .open(at("f").at(), libc::O_WRONLY | libc::O_TRUNC, Caller::ROOT)
            .unwrap();
        assert_eq!(attr.size, 0);
        assert_eq!(attr.mtime, f.stat().unwrap().mtime);
        // A create that finds the file there opens it, and reports it as opened (truncated).
        f.write_at(b"again", 0).unwrap();
        let (_, attr) = b
            .create(
                &Dir::Root,
                OsStr::new("f"),
                0o600,
                libc::O_RDWR | libc::O_TRUNC,
                Caller::ROOT,
            )
            .unwrap();
        assert_eq!(
            (attr.size, attr.perm, attr.id),
            (0, 0o640, f.stat().unwrap().id)
        );
    }

    #[test]
    fn extreme_times_do_not_panic() {
        let _ = system_time(i64::MIN, 0);
        let _ = system_time(i64::MAX, 999_999_999);
    }

    #[test]
    fn negative_times_roundtrip() {
        let t = UNIX_EPOCH - Duration::new(5, 250);
        let ts = timespec(t);
        assert_eq!(system_time(ts.tv_sec(), ts.tv_nsec()), t);
    }
}
