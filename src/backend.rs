//! The storage a volume lives on, behind one trait.
//!
//! A [`Backend`] serves one volume. It is addressed by paths relative to the volume root (the
//! empty path is the root itself), never by its own inode numbers: failoverfs owns inode numbers
//! (see [`crate::inode`]) so that the same path keeps the same number when the route switches to
//! another volume. Open files are [`OpenFile`] objects owned by the handle table.
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

use std::any::Any;
use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use crate::error::Result;

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
}

impl Caller {
    /// The superuser.
    pub const ROOT: Caller = Caller {
        uid: 0,
        gid: 0,
        pid: 0,
    };
}

/// One directory entry (never `.` or `..`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// Entry name.
    pub name: std::ffi::OsString,
    /// Entry type.
    pub kind: FileKind,
    /// The backend's inode number of the entry (`d_ino`), or 0 when the backend has none.
    pub ino: u64,
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
    /// Attributes of the file at `path`, not following a final symlink.
    fn stat(&self, path: &Path) -> Result<Attr>;
    /// Change attributes by path (through a handle, see [`OpenFile::setattr`]).
    fn setattr(&self, path: &Path, set: &SetAttr) -> Result<Attr>;
    /// Target of the symlink at `path`.
    fn readlink(&self, path: &Path) -> Result<Vec<u8>>;
    /// Create a device node, fifo or socket.
    fn mknod(&self, parent: &Path, name: &OsStr, mode: u32, rdev: u32, who: Caller)
    -> Result<Attr>;
    /// Create a directory.
    fn mkdir(&self, parent: &Path, name: &OsStr, mode: u32, who: Caller) -> Result<Attr>;
    /// Remove a non-directory.
    fn unlink(&self, parent: &Path, name: &OsStr) -> Result<()>;
    /// Remove an empty directory.
    fn rmdir(&self, parent: &Path, name: &OsStr) -> Result<()>;
    /// Create a symlink whose target is stored verbatim and never resolved by failoverfs.
    fn symlink(&self, parent: &Path, name: &OsStr, target: &OsStr, who: Caller) -> Result<Attr>;
    /// `renameat2(2)`, with `RENAME_NOREPLACE` / `RENAME_EXCHANGE` in `flags`.
    fn rename(
        &self,
        parent: &Path,
        name: &OsStr,
        new_parent: &Path,
        new_name: &OsStr,
        flags: u32,
    ) -> Result<()>;
    /// Create a hard link to `path` at `new_parent/new_name`.
    fn link(&self, path: &Path, new_parent: &Path, new_name: &OsStr) -> Result<Attr>;
    /// Open an existing file for `who`. `flags` are open flags without `O_CREAT`, `O_EXCL`,
    /// `O_NOCTTY`; an `O_TRUNC` drops set-ID bits as for `who`'s own call.
    fn open(&self, path: &Path, flags: i32, who: Caller) -> Result<Arc<dyn OpenFile>>;
    /// Create and open a file.
    fn create(
        &self,
        parent: &Path,
        name: &OsStr,
        mode: u32,
        flags: i32,
        who: Caller,
    ) -> Result<(Arc<dyn OpenFile>, Attr)>;
    /// The entries of the directory at `path`, without `.` and `..`.
    fn read_dir(&self, path: &Path) -> Result<Vec<DirEntry>>;
    /// Filesystem statistics.
    fn statfs(&self) -> Result<StatFs>;
    /// Value of an extended attribute.
    fn getxattr(&self, path: &Path, name: &OsStr) -> Result<Vec<u8>>;
    /// Set an extended attribute (`flags`: `XATTR_CREATE`, `XATTR_REPLACE`).
    fn setxattr(&self, path: &Path, name: &OsStr, value: &[u8], flags: i32) -> Result<()>;
    /// Names of the extended attributes, each followed by a NUL byte.
    fn listxattr(&self, path: &Path) -> Result<Vec<u8>>;
    /// Remove an extended attribute.
    fn removexattr(&self, path: &Path, name: &OsStr) -> Result<()>;
}

/// Open the backend a volume's settings describe.
pub fn open(settings: &crate::config::BackendSettings) -> std::io::Result<Arc<dyn Backend>> {
    match settings {
        crate::config::BackendSettings::Dir { path } => {
            let b = dir::DirBackend::open(path)?;
            // A root that is not a directory (or vanished) is not a volume.
            let attr = b.stat(Path::new("")).map_err(std::io::Error::from)?;
            if attr.kind != FileKind::Dir {
                return Err(std::io::Error::from_raw_os_error(libc::ENOTDIR));
            }
            Ok(Arc::new(b))
        }
    }
}
