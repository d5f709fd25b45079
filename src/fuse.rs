//! The FUSE adapter: the only module that knows fuser.
//!
//! Each kernel request becomes one call on [`Vfs`] with plain values, and the result becomes one
//! reply: every request is answered exactly once, on every path (an error maps to its errno).
//! Failures are logged at their own level ([`crate::error::Level`]), so an expected `ENOENT`
//! stays quiet and a failing volume is loud.
//!
//! Requests run on fuser's worker threads (`mount.threads`, each with its own `/dev/fuse`
//! descriptor through `clone_fd`): a slow backend call holds one thread and the others keep
//! serving. Nothing in here calls the kernel's cache-invalidation interface; that happens from the
//! switch controller, never from a worker thread (it can deadlock the channel).

pub mod deadline;
pub mod guard;
pub mod passthrough;
pub mod session;

use std::cell::RefCell;
use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, BsdFileFlags, CopyFileRangeFlags, Errno, FileAttr, FileHandle, FileType,
    Filesystem, FopenFlags, Generation, INodeNo, InitFlags, IoctlFlags, KernelConfig, LockOwner,
    OpenFlags, PollEvents, PollFlags, PollNotifier, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLseek, ReplyOpen,
    ReplyPoll, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use tokio::sync::Notify;

use crate::backend::{Attr, Caller, FileKind, SetAttr, SetTime};
use crate::error::{Error, Level};
use crate::vfs::{DirItem, Entry, Opened, Vfs};
use deadline::{Deadlines, Park};
use passthrough::{Open, Passthrough};

thread_local! {
    /// Per-worker read buffer: reads allocate nothing once a worker has seen its largest read.
    static READ_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The kernel's caches, dropped through fuser's `Notifier`. Only the switch controller uses it,
/// from a blocking thread, never from a FUSE worker.
pub struct NotifierCache(fuser::Notifier);

impl NotifierCache {
    /// Wrap the session's notifier.
    pub fn new(n: fuser::Notifier) -> NotifierCache {
        NotifierCache(n)
    }
}

impl crate::failover::KernelCache for NotifierCache {
    fn invalidate_inode(&self, ino: u64) -> std::io::Result<()> {
        // Offset 0, length 0: attributes and every cached page.
        self.0.inval_inode(INodeNo(ino), 0, 0)
    }

    fn invalidate_entry(&self, parent: u64, name: &OsStr) -> std::io::Result<()> {
        self.0.inval_entry(INodeNo(parent), name)
    }

    fn invalidate_attributes(&self, ino: u64) -> std::io::Result<()> {
        // A negative offset: attributes only.
        self.0.inval_inode(INodeNo(ino), -1, 0)
    }
}

/// Cache lifetimes handed to the kernel.
#[derive(Clone, Copy, Debug)]
pub struct Ttls {
    /// Attribute cache lifetime.
    pub attr: Duration,
    /// Name lookup cache lifetime.
    pub entry: Duration,
}

/// The fuser filesystem: a thin shell around [`Vfs`].
pub struct FuseFs {
    vfs: Arc<Vfs>,
    deadlines: Arc<Deadlines>,
    ttl: Ttls,
    ended: Arc<Notify>,
    ready: Arc<Notify>,
    /// Asked for (`mount.passthrough`) and, once `init` ran, granted by the kernel.
    passthrough: Option<Passthrough>,
    /// Who applies a creating caller's umask, once `init` ran: `None`, the kernel (the mode
    /// arrives final); `Some(true)`, the volume, with the caller's umask on the worker thread
    /// (`FUSE_DONT_MASK` granted; see [`crate::backend::identity::with_umask`]); `Some(false)`,
    /// the kernel, with the thread's umask 0.
    volume_masks: Option<bool>,
}

impl FuseFs {
    /// Serve `vfs`; `ready` is notified when the kernel's INIT is answered, `ended` when the
    /// session ends (unmounted, or connection lost).
    pub fn new(
        ready: Arc<Notify>,
        vfs: Arc<Vfs>,
        deadlines: Arc<Deadlines>,
        ttl: Ttls,
        ended: Arc<Notify>,
    ) -> FuseFs {
        FuseFs {
            vfs,
            deadlines,
            ttl,
            ended,
            ready,
            passthrough: None,
            volume_masks: None,
        }
    }

    /// Who the caller of a create is, with the umask the volume must apply (see
    /// [`FuseFs::volume_masks`]).
    fn creator(&self, req: &Request, umask: u32) -> Caller {
        Caller {
            umask: self
                .volume_masks
                .map(|volume| if volume { umask } else { 0 }),
            ..caller(req)
        }
    }

    /// Ask the kernel for FUSE passthrough (see [`passthrough`]).
    pub fn with_passthrough(mut self, on: bool) -> FuseFs {
        self.passthrough = on.then(Passthrough::default);
        self
    }

    /// How to serve the file just opened as handle `fh` of inode `ino`; `register` makes a
    /// backing id of a descriptor. A refused open's handle is for the caller to release, after
    /// its answer (closing a file may block on a hung volume).
    fn serve_open(
        &self,
        ino: u64,
        fh: u64,
        register: impl FnOnce(std::os::fd::BorrowedFd<'_>) -> std::io::Result<fuser::BackingId>,
    ) -> Open {
        let Some(pt) = &self.passthrough else {
            return Open::Daemon;
        };
        match self.vfs.open_file_now(fh) {
            Some((file, volume)) => pt.open(ino, fh, file.passthrough_fd(), volume, register),
            None => pt.open(ino, fh, None, 0, register),
        }
    }

    /// Answer an open.
    fn reply_open(&self, reply: ReplyOpen, ino: u64, flags: i32, o: Opened) {
        let fopen = open_flags(flags, o.keep_cache);
        match self.serve_open(ino, o.fh, |fd| reply.open_backing(fd)) {
            Open::Daemon => reply.opened(FileHandle(o.fh), fopen),
            // The kernel reads the volume's file and its page cache, not the mount's.
            Open::Pass(id) => reply.opened_passthrough(
                FileHandle(o.fh),
                fopen - FopenFlags::FOPEN_KEEP_CACHE,
                &id,
            ),
            Open::Busy => {
                reply.error(Errno::from_i32(libc::EBUSY));
                self.vfs.release(o.fh);
            }
        }
    }

    /// Run `run` under the deadline ([`deadline`]) and answer `reply` with `ok` or the error.
    /// `ino` (and `name`, for an operation on a name in directory `ino`) say what it is about.
    #[inline]
    fn serve<R: Park, T>(
        &self,
        op: &'static str,
        ino: u64,
        name: Option<&OsStr>,
        reply: R,
        run: impl FnOnce() -> Result<T, Error>,
        ok: impl FnOnce(R, T),
    ) {
        self.deadlines.serve(
            op,
            ino,
            deadline::key(ino, name),
            reply,
            |_| run(),
            |reply, r| match r {
                Ok(v) => {
                    ok(reply, v);
                    true
                }
                Err(e) => {
                    reply.fail(self.errno(op, ino, e));
                    false
                }
            },
        );
    }

    fn reply_entry(&self, e: Entry, reply: ReplyEntry) {
        reply.entry_with_ttls(
            &self.ttl.attr,
            &self.ttl.entry,
            &file_attr(e.ino, &e.attr),
            Generation(0),
        );
    }
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
        umask: None,
    }
}

fn file_type(k: FileKind) -> FileType {
    match k {
        FileKind::File => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
        FileKind::CharDev => FileType::CharDevice,
        FileKind::BlockDev => FileType::BlockDevice,
    }
}

fn file_attr(ino: u64, a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: a.size,
        blocks: a.blocks,
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.ctime,
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: a.blksize,
        flags: 0,
    }
}

fn set_time(t: Option<TimeOrNow>) -> Option<SetTime> {
    t.map(|t| match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(t) => SetTime::At(t),
    })
}

impl FuseFs {
    /// Log a failure at its level and turn it into the errno for the reply. A failure worth a
    /// warning is logged once per (operation, errno) per [`WarnLimit::WINDOW_SECS`], with the
    /// count of the same failures left out since, and at most [`WarnLimit::BURST`] such lines per
    /// window overall, naming the volume serving and the route generation; everything else goes
    /// to DEBUG.
    #[inline]
    fn errno(&self, op: &'static str, ino: u64, e: Error) -> Errno {
        if e.errno() == libc::ESTALE {
            self.vfs.count_stale_answer();
        }
        match e.level() {
            Level::Quiet => tracing::trace!(op, ino, error = %e, "operation failed"),
            Level::Debug => tracing::debug!(op, ino, error = %e, "operation failed"),
            Level::Warn => {
                let route = self.vfs.router().current();
                warn_failure(op, ino, e, &route.volume().name, route.generation());
            }
        }
        Errno::from_i32(e.errno())
    }
}

#[cold]
fn warn_failure(op: &'static str, ino: u64, e: Error, volume: &str, generation: u64) {
    let window = WarnLimit::window_now();
    let repeats = {
        let mut seen = REPEATS.lock();
        let seen = seen.get_or_insert_with(std::collections::HashMap::new);
        let entry = seen.entry((op, e.errno())).or_insert((u64::MAX, 0));
        if entry.0 == window {
            entry.1 += 1;
            None
        } else {
            let left_out = entry.1;
            *entry = (window, 0);
            Some(left_out)
        }
    };
    match repeats.and_then(|r| WARNINGS.admit().map(|_| r)) {
        Some(0) => tracing::warn!(op, ino, volume, generation, error = %e, "operation failed"),
        Some(repeats) => tracing::warn!(
            op, ino, volume, generation, error = %e, repeats,
            "operation failed ({repeats} more of these since the last line)"
        ),
        None => tracing::debug!(op, ino, volume, generation, error = %e, "operation failed"),
    }
}

/// Per (operation, errno): the window of its last WARN line and the repeats left out since.
/// Bounded by the operations times the errnos a volume can answer. (The volume is the one
/// serving; a switch changes it, and the next failure opens a new window anyway.)
type Repeats = std::collections::HashMap<(&'static str, i32), (u64, u64)>;
static REPEATS: parking_lot::Mutex<Option<Repeats>> = parking_lot::Mutex::new(None);

/// Failed operations logged at WARN: at most [`WarnLimit::BURST`] per
/// [`WarnLimit::WINDOW_SECS`]; the others go to DEBUG and are counted in the next WARN line. A
/// failing volume must not turn every read of a busy application into a log line.
static WARNINGS: WarnLimit = WarnLimit {
    window: AtomicU64::new(u64::MAX),
    used: AtomicU64::new(0),
    suppressed: AtomicU64::new(0),
};

struct WarnLimit {
    window: AtomicU64,
    used: AtomicU64,
    suppressed: AtomicU64,
}

impl WarnLimit {
    const BURST: u64 = 10;
    const WINDOW_SECS: u64 = 10;

    /// The current window's number.
    fn window_now() -> u64 {
        static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        START
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_secs()
            / Self::WINDOW_SECS
    }

    /// `Some(suppressed so far)` when this warning may be logged, `None` when it is one too many.
    fn admit(&self) -> Option<u64> {
        let now = Self::window_now();
        if self.window.swap(now, Ordering::Relaxed) != now {
            self.used.store(0, Ordering::Relaxed);
        }
        if self.used.fetch_add(1, Ordering::Relaxed) < Self::BURST {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// The flags of an `open` reply. A file opened read-only has nothing to write back at
/// `close()` (byte-range locks are the kernel's own: no `getlk`/`setlk` here), so the kernel skips
/// the `FLUSH` round trip; the backend file is closed at `release` as always.
fn open_flags(flags: i32, keep_cache: bool) -> FopenFlags {
    let mut out = FopenFlags::empty();
    if keep_cache {
        out |= FopenFlags::FOPEN_KEEP_CACHE;
    }
    if flags & libc::O_ACCMODE == libc::O_RDONLY {
        out |= FopenFlags::FOPEN_NOFLUSH;
    }
    out
}

/// The flags of an `opendir` reply. The kernel may cache what it lists (a plain `readdir` is then
/// answered from its page cache, no round trip; see [`crate::vfs::Opened::cache_listing`]), and
/// keeps that listing for the next `opendir` only when the directory is unchanged and settled, by
/// the rule of a file's pages. The kernel also drops it when it sees the directory's
/// modification time change.
fn dir_open_flags(o: crate::vfs::Opened) -> FopenFlags {
    let mut out = FopenFlags::empty();
    if o.cache_listing {
        out |= FopenFlags::FOPEN_CACHE_DIR;
        if o.keep_cache {
            out |= FopenFlags::FOPEN_KEEP_CACHE;
        }
    }
    out
}

/// Answer an xattr request: the size when `size` is 0, the value when it fits, `ERANGE` else.
fn reply_xattr(value: Vec<u8>, size: u32, reply: ReplyXattr) {
    let len = u32::try_from(value.len()).unwrap_or(u32::MAX);
    if size == 0 {
        reply.size(len);
    } else if len > size {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(&value);
    }
}

impl Filesystem for FuseFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Each is optional: keep what the kernel supports.
        for flag in [
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_ATOMIC_O_TRUNC,
            InitFlags::FUSE_AUTO_INVAL_DATA,
            // Set-ID bits are dropped by the volume as for the caller's own call (the kernel's
            // own fallback keeps setgid on files that are not group-executable).
            InitFlags::FUSE_HANDLE_KILLPRIV_V2,
        ] {
            let _ = config.add_capabilities(flag);
        }
        // POSIX ACLs: the kernel reads `system.posix_acl_access` through getxattr and enforces
        // it with the mode bits (`default_permissions`), as ext4 does; creates carry the umask
        // unapplied so that the volume applies a parent's default ACL or the umask, whichever
        // it would for a local process. Without a thread-private umask the kernel keeps
        // masking, and ACLs are still enforced.
        let _ = config.add_capabilities(InitFlags::FUSE_POSIX_ACL);
        self.volume_masks = if crate::backend::identity::private_umask() {
            Some(config.add_capabilities(InitFlags::FUSE_DONT_MASK).is_ok())
        } else {
            None
        };
        if self.passthrough.is_some() {
            let granted = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
                && config.set_max_stack_depth(1).is_ok();
            if granted {
                tracing::info!(
                    "mount.passthrough: reads and writes of open files go to the volume directly"
                );
            } else {
                tracing::warn!(
                    "mount.passthrough: the kernel does not offer FUSE passthrough (Linux 6.9 or \
                     later, run as root): files are served through the daemon"
                );
                self.passthrough = None;
            }
        }
        tracing::debug!("FUSE session initialised");
        // The reply to INIT follows as soon as this returns.
        self.ready.notify_one();
        Ok(())
    }

    fn destroy(&mut self) {
        self.deadlines.stop();
        tracing::debug!("FUSE session ended");
        self.ended.notify_one();
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.serve(
            "lookup",
            parent.0,
            Some(name),
            reply,
            || self.vfs.lookup(parent.0, name),
            |reply, e| self.reply_entry(e, reply),
        );
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.vfs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        self.serve(
            "getattr",
            ino.0,
            None,
            reply,
            || self.vfs.getattr(ino.0, fh.map(|f| f.0)),
            |reply, a| reply.attr(&self.ttl.attr, &file_attr(ino.0, &a)),
        );
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: set_time(atime),
            mtime: set_time(mtime),
            by: Some(caller(req)),
        };
        self.serve(
            "setattr",
            ino.0,
            None,
            reply,
            || self.vfs.setattr(ino.0, fh.map(|f| f.0), &set),
            |reply, a| reply.attr(&self.ttl.attr, &file_attr(ino.0, &a)),
        );
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.serve(
            "readlink",
            ino.0,
            None,
            reply,
            || self.vfs.readlink(ino.0),
            |reply, target| reply.data(&target),
        );
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let who = self.creator(req, umask);
        self.serve(
            "mknod",
            parent.0,
            Some(name),
            reply,
            || self.vfs.mknod(parent.0, name, mode, rdev, who),
            |reply, e| self.reply_entry(e, reply),
        );
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let who = self.creator(req, umask);
        self.serve(
            "mkdir",
            parent.0,
            Some(name),
            reply,
            || self.vfs.mkdir(parent.0, name, mode, who),
            |reply, e| self.reply_entry(e, reply),
        );
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.serve(
            "unlink",
            parent.0,
            Some(name),
            reply,
            || self.vfs.unlink(parent.0, name),
            |reply, ()| reply.ok(),
        );
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.serve(
            "rmdir",
            parent.0,
            Some(name),
            reply,
            || self.vfs.rmdir(parent.0, name),
            |reply, ()| reply.ok(),
        );
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        self.serve(
            "symlink",
            parent.0,
            Some(link_name),
            reply,
            || {
                self.vfs
                    .symlink(parent.0, link_name, target.as_os_str(), caller(req))
            },
            |reply, e| self.reply_entry(e, reply),
        );
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        self.serve(
            "rename",
            parent.0,
            Some(name),
            reply,
            || {
                self.vfs
                    .rename(parent.0, name, newparent.0, newname, flags.bits())
            },
            |reply, ()| reply.ok(),
        );
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        self.serve(
            "link",
            ino.0,
            None,
            reply,
            || self.vfs.link(ino.0, newparent.0, newname),
            |reply, e| self.reply_entry(e, reply),
        );
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.serve(
            "open",
            ino.0,
            None,
            reply,
            || self.vfs.open(ino.0, flags.0, caller(req)),
            |reply, o| self.reply_open(reply, ino.0, flags.0, o),
        );
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        READ_BUF.with_borrow_mut(|buf| {
            let size = size as usize;
            if buf.len() < size {
                buf.resize(size, 0);
            }
            let buf = &mut buf[..size];
            self.deadlines.serve(
                "read",
                ino.0,
                ino.0,
                reply,
                // The buffer goes in and comes back out with the result, for the answer to send.
                move |_| (self.vfs.read(fh.0, offset, &mut *buf), buf),
                |reply: ReplyData, (r, buf)| match r {
                    Ok(n) => {
                        reply.data(&buf[..n]);
                        true
                    }
                    Err(e) => {
                        reply.error(self.errno("read", ino.0, e));
                        false
                    }
                },
            );
        });
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let kill = write_flags
            .contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID)
            .then(|| caller(req));
        self.serve(
            "write",
            ino.0,
            None,
            reply,
            || self.vfs.write(fh.0, offset, data, kill),
            |reply, n| reply.written(u32::try_from(n).unwrap_or(u32::MAX)),
        );
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.serve(
            "flush",
            ino.0,
            None,
            reply,
            || self.vfs.flush(fh.0),
            |reply, ()| reply.ok(),
        );
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        if let Some(pt) = &self.passthrough {
            pt.release(fh.0);
        }
        // Closing a file of a hung volume blocks like any other call.
        self.deadlines.serve(
            "release",
            _ino.0,
            _ino.0,
            reply,
            |_| self.vfs.release(fh.0),
            |reply: ReplyEmpty, ()| {
                reply.ok();
                true
            },
        );
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.serve(
            "fsync",
            ino.0,
            None,
            reply,
            || self.vfs.fsync(fh.0, datasync),
            |reply, ()| reply.ok(),
        );
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.serve(
            "opendir",
            ino.0,
            None,
            reply,
            || self.vfs.opendir(ino.0),
            |reply, o| reply.opened(FileHandle(o.fh), dir_open_flags(o)),
        );
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        self.deadlines.serve(
            "readdir",
            ino.0,
            ino.0,
            reply,
            |w| {
                self.vfs
                    .readdir(ino.0, fh.0, offset, false, &mut |item: DirItem<'_>| {
                        // Answered by the watchdog meanwhile: stop filling.
                        w.with_reply(|reply: &mut ReplyDirectory| {
                            reply.add(
                                INodeNo(item.ino),
                                item.next_offset,
                                file_type(item.kind),
                                item.name,
                            )
                        })
                        .unwrap_or(true)
                    })
            },
            |reply: ReplyDirectory, r| match r {
                Ok(()) => {
                    reply.ok();
                    true
                }
                Err(e) => {
                    reply.error(self.errno("readdir", ino.0, e));
                    false
                }
            },
        );
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectoryPlus,
    ) {
        let ttl = self.ttl.entry;
        self.deadlines.serve(
            "readdirplus",
            ino.0,
            ino.0,
            reply,
            |w| {
                self.vfs
                    .readdir(ino.0, fh.0, offset, true, &mut |item: DirItem<'_>| {
                        let Some(entry) = item.entry else {
                            return false;
                        };
                        // Answered by the watchdog meanwhile: stop filling. (The entry handed
                        // over was counted as a lookup the kernel never saw: the inode stays
                        // known until the next forget of it, at worst until unmount.)
                        w.with_reply(|reply: &mut ReplyDirectoryPlus| {
                            reply.add(
                                INodeNo(item.ino),
                                item.next_offset,
                                item.name,
                                &ttl,
                                &file_attr(item.ino, &entry.attr),
                                Generation(0),
                            )
                        })
                        .unwrap_or(true)
                    })
            },
            |reply: ReplyDirectoryPlus, r| match r {
                Ok(()) => {
                    reply.ok();
                    true
                }
                Err(e) => {
                    reply.error(self.errno("readdirplus", ino.0, e));
                    false
                }
            },
        );
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.vfs.releasedir(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Directory changes reach the backend synchronously; there is nothing buffered here.
        reply.ok();
    }

    fn statfs(&self, _req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        self.serve(
            "statfs",
            ino.0,
            None,
            reply,
            || self.vfs.statfs(),
            |reply, s| {
                reply.statfs(
                    s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
                )
            },
        );
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        self.serve(
            "setxattr",
            ino.0,
            None,
            reply,
            || self.vfs.setxattr(ino.0, name, value, flags),
            |reply, ()| reply.ok(),
        );
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        self.serve(
            "getxattr",
            ino.0,
            None,
            reply,
            || self.vfs.getxattr(ino.0, name),
            |reply, v| reply_xattr(v, size, reply),
        );
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.serve(
            "listxattr",
            ino.0,
            None,
            reply,
            || self.vfs.listxattr(ino.0),
            |reply, v| reply_xattr(v, size, reply),
        );
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.serve(
            "removexattr",
            ino.0,
            None,
            reply,
            || self.vfs.removexattr(ino.0, name),
            |reply, ()| reply.ok(),
        );
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        self.serve(
            "access",
            ino.0,
            None,
            reply,
            || self.vfs.access(ino.0, mask.bits(), caller(req)),
            |reply, ()| reply.ok(),
        );
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let who = self.creator(req, umask);
        self.serve(
            "create",
            parent.0,
            Some(name),
            reply,
            || self.vfs.create(parent.0, name, mode, flags, who),
            |reply, (e, fh)| {
                let attr = file_attr(e.ino, &e.attr);
                let (ttl, fh) = (&self.ttl.entry, FileHandle(fh));
                match self.serve_open(e.ino, fh.0, |fd| reply.open_backing(fd)) {
                    Open::Daemon => {
                        reply.created(ttl, &attr, Generation(0), fh, FopenFlags::empty())
                    }
                    Open::Pass(id) => reply.created_passthrough(
                        ttl,
                        &attr,
                        Generation(0),
                        fh,
                        FopenFlags::empty(),
                        &id,
                    ),
                    Open::Busy => {
                        reply.error(Errno::from_i32(libc::EBUSY));
                        // The entry went unanswered: the lookup it counted is not the kernel's.
                        self.vfs.forget(e.ino, 1);
                        self.vfs.release(fh.0);
                    }
                }
            },
        );
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        // No ioctl is passed through to a volume (they do not survive a switch).
        reply.error(Errno::from_i32(libc::ENOTTY));
    }

    fn poll(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _ph: PollNotifier,
        _events: PollEvents,
        _flags: PollFlags,
        reply: ReplyPoll,
    ) {
        // ENOSYS tells the kernel to treat our files as always ready, like regular files.
        reply.error(Errno::ENOSYS);
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        self.serve(
            "fallocate",
            ino.0,
            None,
            reply,
            || self.vfs.fallocate(fh.0, offset, length, mode, caller(req)),
            |reply, ()| reply.ok(),
        );
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        self.serve(
            "lseek",
            ino.0,
            None,
            reply,
            || self.vfs.lseek(fh.0, offset, whence),
            |reply, off| reply.offset(off),
        );
    }

    fn copy_file_range(
        &self,
        req: &Request,
        ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        // The reply carries a 32-bit count: copy at most that much per call.
        let len = len.min(u64::from(u32::MAX) & !0xfff);
        self.serve(
            "copy_file_range",
            ino_in.0,
            None,
            reply,
            || {
                self.vfs
                    .copy_file_range(fh_in.0, offset_in, fh_out.0, offset_out, len, caller(req))
            },
            |reply, n| reply.written(u32::try_from(n).unwrap_or(u32::MAX)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_failure_is_logged_once_per_window_and_counted() {
        let e = Error::from_errno(libc::EIO);
        for _ in 0..5 {
            warn_failure("test-only-op", 1, e, "v0", 1);
        }
        let seen = REPEATS.lock();
        let (window, repeats) = seen.as_ref().unwrap()[&("test-only-op", libc::EIO)];
        // (Unless the window turned meanwhile, in which case the count restarted.)
        assert!(window == WarnLimit::window_now() || window + 1 == WarnLimit::window_now());
        assert!(repeats <= 4);
        if window == WarnLimit::window_now() {
            assert!(repeats >= 1);
        }
    }

    #[test]
    fn warnings_are_limited_and_the_rest_counted() {
        let w = WarnLimit {
            window: AtomicU64::new(u64::MAX),
            used: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        };
        let admitted = (0..100).filter(|_| w.admit().is_some()).count() as u64;
        assert_eq!(admitted, WarnLimit::BURST);
        assert_eq!(w.suppressed.load(Ordering::Relaxed), 100 - WarnLimit::BURST);
        // The next window reports what was left out.
        w.window.store(u64::MAX, Ordering::Relaxed);
        assert_eq!(w.admit(), Some(100 - WarnLimit::BURST));
        assert_eq!(w.admit(), Some(0));
    }
}
