//! The storage a volume lives on, behind one trait.
//!
//! A [`Backend`] serves one volume. It is addressed by a directory and a name in it ([`At`]),
//! never by its own inode numbers: failoverfs owns inode numbers (see [`crate::inode`]) so that
//! the same path keeps the same number when the route switches to another volume. Open files are
//! [`OpenFile`] objects owned by the handle table.
//!
//! A directory is named either by its path from the volume root or, when the backend can, by a
//! [`Pin`]: a reference to that very directory which the backend handed out ([`Backend::pin`]),
//! such as an `O_PATH` descriptor. An operation through a pin acts in the directory the kernel's
//! inode stands for even when other clients renamed or exchanged it, or any directory above it,
//! meanwhile; a path would have been redirected. A pin is only ever handed back to the backend
//! that made it. Backends that cannot pin (an object store) are always addressed by path.
//!
//! Invariants every backend keeps:
//! - Nothing outside the volume root is ever reached: no path component is followed through a
//!   symlink, `..` never appears in a path (the core never builds one), and a name is always one
//!   component.
//! - Errors carry an errno and a kind ([`crate::error::Error`]): an ordinary answer (`ENOENT`) is
//!   not a failure of the volume.
//! - Calls are blocking and may run on any FUSE worker thread at the same time.

pub mod dir;
pub mod faulty;
pub mod identity;

/// Run `f`, a call that may reach a filesystem whose client hangs, on a thread of its own named
/// `name`, and wait for it at most `limit`. `None` when it did not answer in time (the thread is
/// left behind, stuck where the filesystem keeps it) or could not be started. For the few calls
/// outside the FUSE workers and the probes, which bound theirs themselves: the start, a dead
/// mount's check.
pub fn bounded<T: Send + 'static>(
    name: &str,
    limit: std::time::Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .ok()?;
    rx.recv_timeout(limit).ok()
}

use std::any::Any;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use crate::error::{Error, Result};

/// The type of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// Named pipe.
    Fifo,
    /// Unix socket.
    Socket,
    /// Character device.
    CharDev,
    /// Block device.
    BlockDev,
}

impl FileKind {
    /// The kind encoded in the `S_IFMT` bits of a mode.
    pub fn from_mode(mode: u32) -> Option<FileKind> {
        Some(match mode & libc::S_IFMT {
            libc::S_IFREG => FileKind::File,
            libc::S_IFDIR => FileKind::Dir,
            libc::S_IFLNK => FileKind::Symlink,
            libc::S_IFIFO => FileKind::Fifo,
            libc::S_IFSOCK => FileKind::Socket,
            libc::S_IFCHR => FileKind::CharDev,
            libc::S_IFBLK => FileKind::BlockDev,
            _ => return None,
        })
    }
}

/// Attributes of a file as the backend reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attr {
    /// File type.
    pub kind: FileKind,
    /// Permission bits, including setuid, setgid and sticky (`mode & 0o7777`).
    pub perm: u16,
    /// Number of hard links.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Device number, for device nodes.
    pub rdev: u32,
    /// Size in bytes.
    pub size: u64,
    /// Allocated 512-byte blocks.
    pub blocks: u64,
    /// Preferred I/O size.
    pub blksize: u32,
    /// Last access.
    pub atime: SystemTime,
    /// Last modification.
    pub mtime: SystemTime,
    /// Last status change.
    pub ctime: SystemTime,
    /// The backend's identity of the file. Only meaningful within one volume: the inode table
    /// compares it on every lookup to tell a file from another one that took its name (or its
    /// reused inode number), and derives the inode number the kernel sees from it.
    pub id: FileId,
}

/// A file's identity within one backend: device, inode number, and a generation that tells two
/// files apart that held the same inode number one after the other.
///
/// The generation is the birth time in nanoseconds where the filesystem reports one (ext4, xfs,
/// btrfs, tmpfs on current kernels), and 0 where it does not (most FUSE filesystems, such as
/// `cfs-client`): there, a file deleted and re-created with the same inode number between two
/// lookups is taken for the old one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileId {
    /// Backend device.
    pub dev: u64,
    /// Backend inode.
    pub ino: u64,
    /// Birth time in nanoseconds since the epoch, or 0 when unknown.
    pub birth: u64,
}

/// Where a volume root is: which directory, on which mount. The mark of the configured path and
/// the mark of the directory a backend serves differ once the directory was moved away or
/// replaced, or its filesystem unmounted or remounted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RootMark {
    /// The directory.
    pub id: FileId,
    /// The mount it was reached through (`statx` mount id).
    pub mount: u64,
}

/// A directory a backend pinned ([`Backend::pin`]). Opaque to the core; cloning it is cheap.
pub type Pin = Arc<dyn Any + Send + Sync>;

/// A directory, as the core names it to a backend.
#[derive(Clone)]
pub enum Dir {
    /// The volume root.
    Root,
    /// A directory this backend pinned: that directory, wherever it is now.
    Pinned(Pin),
    /// A directory by its path from the volume root.
    Path(PathBuf),
}

impl std::fmt::Debug for Dir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dir::Root => f.write_str("Root"),
            Dir::Pinned(_) => f.write_str("Pinned"),
            Dir::Path(p) => write!(f, "Path({p:?})"),
        }
    }
}

/// A place: `name` in directory `dir`. An empty name is the directory itself; otherwise the name
/// is one component, never `.` or `..`.
#[derive(Clone, Copy, Debug)]
pub struct At<'a> {
    /// The directory.
    pub dir: &'a Dir,
    /// The name in it (empty: the directory itself).
    pub name: &'a OsStr,
}

impl<'a> At<'a> {
    /// The volume root itself.
    pub fn root() -> At<'static> {
        At {
            dir: &Dir::Root,
            name: OsStr::new(""),
        }
    }

    /// The same name in another directory (a wrapper handing its inner backend the inner pin).
    pub fn with<'b>(&self, dir: &'b Dir) -> At<'b>
    where
        'a: 'b,
    {
        At {
            dir,
            name: self.name,
        }
    }

    /// The path of this place from the volume root, when the directory is named by path
    /// (`None` for a pinned directory, whose path only the backend could tell).
    pub fn path(&self) -> Option<PathBuf> {
        let dir = match self.dir {
            Dir::Root => Path::new(""),
            Dir::Path(p) => p.as_path(),
            Dir::Pinned(_) => return None,
        };
        Some(if self.name.is_empty() {
            dir.to_path_buf()
        } else {
            dir.join(self.name)
        })
    }
}

/// An owned [`At`]: what the core resolves an inode to before calling the backend.
#[derive(Clone, Debug)]
pub struct Place {
    /// The directory.
    pub dir: Dir,
    /// The name in it (empty: the directory itself).
    pub name: Arc<OsStr>,
}

impl Place {
    /// Borrow as an [`At`].
    pub fn at(&self) -> At<'_> {
        At {
            dir: &self.dir,
            name: &self.name,
        }
    }

    /// The place of `path` (from the volume root), its directory named by path.
    pub fn of_path(path: &Path) -> Place {
        match (path.parent(), path.file_name()) {
            (Some(parent), Some(name)) => Place {
                dir: if parent.as_os_str().is_empty() {
                    Dir::Root
                } else {
                    Dir::Path(parent.to_path_buf())
                },
                name: name.into(),
            },
            _ => Place {
                dir: Dir::Path(path.to_path_buf()),
                name: OsStr::new("").into(),
            },
        }
    }
}

/// A time to set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetTime {
    /// The current time.
    Now,
    /// A given time.
    At(SystemTime),
}

/// Attribute changes requested by `setattr`; `None` leaves a field alone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetAttr {
    /// New permission bits.
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New size (truncate or extend).
    pub size: Option<u64>,
    /// New access time.
    pub atime: Option<SetTime>,
    /// New modification time.
    pub mtime: Option<SetTime>,
    /// Who asks. A change of size or owner by an unprivileged caller drops the file's set-ID
    /// bits as the volume would for that caller's own call (see [`OpenFile::write_as`]).
    pub by: Option<Caller>,
}

impl SetAttr {
    /// Whether the request changes nothing (a `setattr` that only asks for attributes).
    pub fn is_empty(&self) -> bool {
        *self
            == SetAttr {
                by: self.by,
                ..SetAttr::default()
            }
    }

    /// Whether the request may drop set-ID bits (a change of size or owner).
    pub fn kills_privileges(&self) -> bool {
        self.size.is_some() || self.uid.is_some() || self.gid.is_some()
    }
}

/// Who asks: new files belong to the caller, as on a local filesystem, and what a caller creates
/// or opens while creating is subject to the caller's own permissions on the volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    /// Caller's user id (filesystem uid).
    pub uid: u32,
    /// Caller's group id (filesystem gid).
    pub gid: u32,
    /// Caller's process id in our pid namespace (0 when unknown): where its supplementary
    /// groups are read from.
    pub pid: u32,
    /// The caller's umask, for a create the kernel left unmasked (`FUSE_DONT_MASK`): the volume
    /// applies it, or a default ACL instead, as for a local process. `None`: the mode is final.
    pub umask: Option<u32>,
}

impl Caller {
    /// The superuser.
    pub const ROOT: Caller = Caller {
        uid: 0,
        gid: 0,
        pid: 0,
        umask: None,
    };
}

/// The entries of a directory, kept compactly: every name in one buffer, so a listing of a
/// million names costs a few allocations, not a million (and gives its memory back whole).
#[derive(Default, Debug)]
pub struct Listing {
    names: Vec<u8>,
    items: Vec<ListingItem>,
}

#[derive(Clone, Copy, Debug)]
struct ListingItem {
    /// Where the name ends in `names` (it starts where the previous one ends).
    end: u32,
    kind: FileKind,
    /// The backend's inode number (`d_ino`), or 0 when the backend has none.
    ino: u64,
}

impl Listing {
    /// Append an entry; `EOVERFLOW` past 4 GiB of names.
    pub fn push(&mut self, name: &OsStr, kind: FileKind, ino: u64) -> Result<()> {
        let bytes = name.as_bytes();
        let end = u32::try_from(self.names.len() + bytes.len())
            .map_err(|_| Error::posix(libc::EOVERFLOW))?;
        self.names.extend_from_slice(bytes);
        self.items.push(ListingItem { end, kind, ino });
        Ok(())
    }

    /// How many entries.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Entry `i`: name, type and the backend's inode number (0 when unknown).
    pub fn get(&self, i: usize) -> Option<(&OsStr, FileKind, u64)> {
        let item = self.items.get(i)?;
        let start = match i {
            0 => 0,
            _ => self.items[i - 1].end as usize,
        };
        let name = self.names.get(start..item.end as usize)?;
        Some((OsStr::from_bytes(name), item.kind, item.ino))
    }
}

/// Filesystem statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatFs {
    /// Total blocks (of `frsize` bytes).
    pub blocks: u64,
    /// Free blocks.
    pub bfree: u64,
    /// Free blocks for unprivileged users.
    pub bavail: u64,
    /// Total inodes.
    pub files: u64,
    /// Free inodes.
    pub ffree: u64,
    /// Block size.
    pub bsize: u32,
    /// Maximum name length.
    pub namelen: u32,
    /// Fragment size.
    pub frsize: u32,
}

/// A file opened on a backend. Reads and writes use explicit offsets, so one object serves every
/// thread at once and a handle re-opened on another volume simply continues at the next offset.
pub trait OpenFile: Send + Sync + 'static {
    /// Read up to `buf.len()` bytes at `offset`; short only at end of file.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize>;
    /// Write `data` at `offset`; returns the bytes written.
    fn write_at(&self, data: &[u8], offset: u64) -> Result<usize>;
    /// A write the kernel says must drop the file's set-ID bits (an unprivileged writer of a
    /// set-ID file): drop them as the volume would for `who`'s own write (setuid always, setgid
    /// when group-executable or `who` is not in the file's group).
    fn write_as(&self, data: &[u8], offset: u64, who: Caller) -> Result<usize> {
        let _ = who;
        self.write_at(data, offset)
    }
    /// Called on every `close()` of a descriptor: report delayed write errors, if any.
    fn flush(&self) -> Result<()>;
    /// Make data (and with `datasync == false`, metadata) durable.
    fn fsync(&self, datasync: bool) -> Result<()>;
    /// The descriptor the kernel may read and write directly (FUSE passthrough, opt-in:
    /// [`crate::fuse::passthrough`]); `None` for a file that is not one on a local filesystem.
    fn passthrough_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        None
    }
    /// Attributes of the open file, even if it has been unlinked.
    fn stat(&self) -> Result<Attr>;
    /// Change attributes through the open file (`ftruncate`, `futimens`, ...).
    fn setattr(&self, set: &SetAttr) -> Result<Attr>;
    /// `fallocate(2)` for `who` (set-ID bits dropped as for `who`'s own call).
    fn allocate(&self, offset: u64, len: u64, mode: i32, who: Caller) -> Result<()>;
    /// `lseek(2)` with `SEEK_DATA` or `SEEK_HOLE` (and the plain whences); returns the offset.
    fn seek(&self, offset: i64, whence: i32) -> Result<i64>;
    /// Copy `len` bytes to `dst` for `who`, server-side when both live on the same backend.
    fn copy_range(
        &self,
        off_in: u64,
        dst: &dyn OpenFile,
        off_out: u64,
        len: u64,
        who: Caller,
    ) -> Result<usize>;
    /// For backends that need to recognise their own files (`copy_range`).
    fn as_any(&self) -> &dyn Any;
}

/// One volume's storage. See the module docs for the invariants.
pub trait Backend: Send + Sync + 'static {
    /// A short description for logs and `check` (`dir:/srv/vol`).
    fn describe(&self) -> String;
    /// The volume root this backend serves, as seen when it was opened (`None` when the backend
    /// is not a directory on a mounted filesystem).
    fn root_mark(&self) -> Option<RootMark>;
    /// The identity of that root. Inode numbers derive from files on its device.
    fn root_id(&self) -> Option<FileId> {
        self.root_mark().map(|m| m.id)
    }
    /// Pin the directory at `at` (see the module docs) and return its attributes, or `None`
    /// when this backend has no pins (then directories are always named by path). A place that
    /// is not a directory is `ENOTDIR`.
    fn pin(&self, at: At<'_>) -> Result<Option<(Pin, Attr)>> {
        let _ = at;
        Ok(None)
    }
    /// Hold the file at `at`, whatever its type, for one operation, and return its attributes
    /// as of that hold, or `None` when this backend cannot. `At { dir: &Dir::Pinned(held), name:
    /// "" }` then addresses that very file, whatever happens to its name: a change checked
    /// against the attributes lands on the file that was checked.
    fn hold(&self, at: At<'_>) -> Result<Option<(Pin, Attr)>> {
        let _ = at;
        Ok(None)
    }
    /// Attributes of the file at `at`, not following a final symlink.
    fn stat(&self, at: At<'_>) -> Result<Attr>;
    /// Change attributes by place (through a handle, see [`OpenFile::setattr`]).
    fn setattr(&self, at: At<'_>, set: &SetAttr) -> Result<Attr>;
    /// Target of the symlink at `at`.
    fn readlink(&self, at: At<'_>) -> Result<Vec<u8>>;
    /// Create a device node, fifo or socket.
    fn mknod(&self, dir: &Dir, name: &OsStr, mode: u32, rdev: u32, who: Caller) -> Result<Attr>;
    /// Create a directory.
    fn mkdir(&self, dir: &Dir, name: &OsStr, mode: u32, who: Caller) -> Result<Attr>;
    /// Remove a non-directory.
    fn unlink(&self, dir: &Dir, name: &OsStr) -> Result<()>;
    /// Remove an empty directory.
    fn rmdir(&self, dir: &Dir, name: &OsStr) -> Result<()>;
    /// Create a symlink whose target is stored verbatim and never resolved by failoverfs.
    fn symlink(&self, dir: &Dir, name: &OsStr, target: &OsStr, who: Caller) -> Result<Attr>;
    /// `renameat2(2)`, with `RENAME_NOREPLACE` / `RENAME_EXCHANGE` in `flags`.
    fn rename(
        &self,
        dir: &Dir,
        name: &OsStr,
        new_dir: &Dir,
        new_name: &OsStr,
        flags: u32,
    ) -> Result<()>;
    /// Create a hard link to the file at `at` as `new_dir/new_name`.
    fn link(&self, at: At<'_>, new_dir: &Dir, new_name: &OsStr) -> Result<Attr>;
    /// Open an existing file for `who`, and its attributes as of the open (after an
    /// `O_TRUNC`). `flags` are open flags without `O_CREAT`, `O_EXCL`, `O_NOCTTY`; an `O_TRUNC`
    /// drops set-ID bits as for `who`'s own call.
    fn open(&self, at: At<'_>, flags: i32, who: Caller) -> Result<(Arc<dyn OpenFile>, Attr)>;
    /// Create and open a file.
    fn create(
        &self,
        dir: &Dir,
        name: &OsStr,
        mode: u32,
        flags: i32,
        who: Caller,
    ) -> Result<(Arc<dyn OpenFile>, Attr)>;
    /// Append the entries of the directory at `at` to `out`, without `.` and `..`.
    fn read_dir(&self, at: At<'_>, out: &mut Listing) -> Result<()>;
    /// Filesystem statistics.
    fn statfs(&self) -> Result<StatFs>;
    /// Value of an extended attribute.
    fn getxattr(&self, at: At<'_>, name: &OsStr) -> Result<Vec<u8>>;
    /// Set an extended attribute (`flags`: `XATTR_CREATE`, `XATTR_REPLACE`).
    fn setxattr(&self, at: At<'_>, name: &OsStr, value: &[u8], flags: i32) -> Result<()>;
    /// Names of the extended attributes, each followed by a NUL byte.
    fn listxattr(&self, at: At<'_>) -> Result<Vec<u8>>;
    /// Remove an extended attribute.
    fn removexattr(&self, at: At<'_>, name: &OsStr) -> Result<()>;
}

/// Open the backend a volume's settings describe.
pub fn open(settings: &crate::config::BackendSettings) -> std::io::Result<Arc<dyn Backend>> {
    match settings {
        crate::config::BackendSettings::Dir { path } => {
            let b = dir::DirBackend::open(path)?;
            // A root that is not a directory (or vanished) is not a volume.
            let attr = b.stat(At::root()).map_err(std::io::Error::from)?;
            if attr.kind != FileKind::Dir {
                return Err(std::io::Error::from_raw_os_error(libc::ENOTDIR));
            }
            Ok(Arc::new(b))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_gives_back_every_name_in_order() {
        let mut l = Listing::default();
        assert!(l.is_empty());
        let names = [".", "..", "a", "", "long name with ü", "z"];
        for (i, n) in names.iter().enumerate() {
            l.push(OsStr::new(n), FileKind::File, i as u64).unwrap();
        }
        assert_eq!(l.len(), names.len());
        for (i, n) in names.iter().enumerate() {
            assert_eq!(l.get(i), Some((OsStr::new(n), FileKind::File, i as u64)));
        }
        assert_eq!(l.get(names.len()), None);
    }
}
