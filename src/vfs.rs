//! The logical volume: filesystem operations as plain functions that return values.
//!
//! The FUSE adapter ([`crate::fuse`]) turns kernel requests into calls on [`Vfs`] and the results
//! into replies; nothing here knows fuser. Each operation takes exactly one route snapshot
//! ([`Router::enter`]), finds the directory and name an inode stands for on that route's volume
//! through the [`Namespace`] (which owns the inode and handle tables and their rules), and calls
//! the route's backend.
//!
//! Invariants:
//! - One route per operation: an operation never mixes two volumes. Open handles re-bind to the
//!   current route's volume on first use after a switch (see [`crate::handles`]).
//! - Idempotent operations (lookup, getattr, read, readdir, readlink, statfs, getxattr, listxattr,
//!   and a write at an explicit offset) that fail with a volume failure while their route is
//!   being replaced run once more on the new route; every other failure is returned as is.
//! - The inode table changes only after the backend agreed (a failed rename leaves it alone).

use std::ffi::OsStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::backend::{At, Attr, Caller, FileKind, Listing, OpenFile, SetAttr, StatFs};
use crate::error::{Error, Kind, Result};
use crate::handles::{Epoch, FileHandle, Handle, HandleTable};
use crate::inode::InodeTable;
use crate::namespace::{Namespace, itself};
use crate::routing::{Router, Ticket};
use crate::writes::WritesInFlight;

/// A file as the kernel sees it: our inode number and the backend's attributes.
#[derive(Clone, Copy, Debug)]
pub struct Entry {
    /// failoverfs inode number.
    pub ino: u64,
    /// Attributes (their `id` is the backend's and is not shown to the kernel).
    pub attr: Attr,
}

/// What `open` hands the kernel.
#[derive(Clone, Copy, Debug)]
pub struct Opened {
    /// The handle number.
    pub fh: u64,
    /// The kernel may keep the pages it cached for the file, or the listing it cached for the
    /// directory (see [`crate::namespace`]).
    pub keep_cache: bool,
    /// A directory: let the kernel cache its listing (see [`InodeTable::dir_opened`]).
    pub cache_listing: bool,
}

/// One item of a directory listing, as handed to the adapter.
pub struct DirItem<'a> {
    /// The offset of the next item (what the kernel passes back to continue).
    pub next_offset: u64,
    /// Entry name.
    pub name: &'a OsStr,
    /// Our inode number if known (always known with `plus`).
    pub ino: u64,
    /// Entry type.
    pub kind: FileKind,
    /// With `readdirplus`: the entry, whose lookup was counted.
    pub entry: Option<Entry>,
}

/// Options of the logical volume.
#[derive(Clone, Copy, Debug)]
pub struct VfsOptions {
    /// Refuse every change with `EROFS`.
    pub read_only: bool,
    /// What a handle that cannot follow a switch answers.
    pub stale_errno: i32,
    /// Re-open a handle on a new volume only when its file there has the size and modification
    /// time it had when opened.
    pub verify_reopen: bool,
}

impl Default for VfsOptions {
    fn default() -> Self {
        VfsOptions {
            read_only: false,
            stale_errno: libc::ESTALE,
            verify_reopen: false,
        }
    }
}

/// Whether an operation may run again on a new route after a volume failure.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Retry {
    Safe,
    Never,
    /// A write on handle `fh`: safe unless the handle appends (the backend appends wherever its
    /// end is, so a second try after a write that landed unacknowledged would append twice).
    Write(u64),
}

/// d_ino for an entry we have no inode for yet (what libfuse uses too).
const UNKNOWN_INO: u64 = 0xffff_ffff;

/// The logical volume; see the module docs.
pub struct Vfs {
    router: Arc<Router>,
    ns: Namespace,
    opts: VfsOptions,
    retried: AtomicU64,
    alarm: Arc<tokio::sync::Notify>,
    alarms: AtomicU64,
    /// `ESTALE` answers sent to the kernel (see [`Vfs::count_stale_answer`]).
    stale_answers: AtomicU64,
    writing: WritesInFlight,
    /// The route whose client died, and until when failures on it wait for a new route
    /// ([`Vfs::wait_for_the_client`]).
    client_wait: parking_lot::Mutex<(u64, std::time::Instant)>,
}

impl Vfs {
    /// A logical volume routed by `router`.
    pub fn new(router: Arc<Router>, opts: VfsOptions) -> Vfs {
        let route = router.current();
        let ns = Namespace::new(route.generation(), route.volume());
        Vfs {
            router,
            ns,
            opts,
            retried: AtomicU64::new(0),
            alarm: Arc::new(tokio::sync::Notify::new()),
            alarms: AtomicU64::new(0),
            stale_answers: AtomicU64::new(0),
            writing: WritesInFlight::new(),
            client_wait: parking_lot::Mutex::new((0, std::time::Instant::now())),
        }
    }

    /// Notified when an operation fails in a way that says the volume itself may be going away
    /// (a [`Kind::Backend`] failure: `EIO`, `ENOTCONN`, `ESTALE` from below, a timeout…): whoever
    /// watches the volume should look at it now rather than at its next interval.
    pub fn alarm(&self) -> &Arc<tokio::sync::Notify> {
        &self.alarm
    }

    /// Operations that raised the alarm (a counter).
    pub fn alarms_total(&self) -> u64 {
        self.alarms.load(Ordering::Relaxed)
    }

    /// Raise the alarm (see [`Vfs::alarm`]).
    pub fn raise_alarm(&self) {
        self.alarms.fetch_add(1, Ordering::Relaxed);
        self.alarm.notify_one();
    }

    /// Count an `ESTALE` answer to the kernel. The kernel looks the name up again once and
    /// retries; an application sees `ESTALE` only when the retry fails the same way, which a
    /// local filesystem would not do: this count is the upper bound to watch.
    pub fn count_stale_answer(&self) {
        self.stale_answers.fetch_add(1, Ordering::Relaxed);
    }

    /// `ESTALE` answers sent to the kernel so far.
    pub fn stale_answers_total(&self) -> u64 {
        self.stale_answers.load(Ordering::Relaxed)
    }

    /// Operations retried on a new route after failing on the old one (a counter).
    pub fn retried_total(&self) -> u64 {
        self.retried.load(Ordering::Relaxed)
    }

    /// The routing handle.
    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    /// The namespace: inode and handle tables and the rules that tie them to routes.
    pub fn namespace(&self) -> &Namespace {
        &self.ns
    }

    /// The inode table.
    pub fn inodes(&self) -> &InodeTable {
        &self.ns.inodes
    }

    /// The handle table.
    pub fn handles(&self) -> &HandleTable {
        &self.ns.handles
    }

    /// Run `f` on the current route; retry once on the next route when it is safe and the
    /// failure came from a route that is going away.
    #[inline]
    fn run<T>(&self, retry: Retry, f: impl FnMut(&Ticket) -> Result<T>) -> Result<T> {
        self.admitted(self.router.enter()?, retry, f)
    }

    /// [`Vfs::run`] for an operation that changes data or metadata: refused on a read-only
    /// mount, and held while the volume is suspected deleted ([`Router::enter_change`]).
    #[inline]
    fn change<T>(&self, retry: Retry, f: impl FnMut(&Ticket) -> Result<T>) -> Result<T> {
        self.writable()?;
        self.admitted(self.router.enter_change()?, retry, f)
    }

    #[inline]
    fn admitted<T>(
        &self,
        ticket: Ticket,
        retry: Retry,
        mut f: impl FnMut(&Ticket) -> Result<T>,
    ) -> Result<T> {
        match f(&ticket) {
            Err(e) if e.retryable() => self.failed(e, ticket, retry, f),
            r => r,
        }
    }

    /// An operation failed on its route with a failure of the volume or of the route: raise the
    /// alarm for the first kind, and run the operation once more on the next route when it is
    /// safe and that route is there.
    #[cold]
    fn failed<T>(
        &self,
        e: Error,
        ticket: Ticket,
        retry: Retry,
        mut f: impl FnMut(&Ticket) -> Result<T>,
    ) -> Result<T> {
        if e.kind() == Kind::Backend {
            self.raise_alarm();
        }
        if !self.may_retry(retry) {
            return Err(e);
        }
        let generation = ticket.generation();
        drop(ticket);
        let next = match self.router.enter_newer(generation) {
            None if matches!(e.errno(), libc::ENOTCONN | libc::ECONNABORTED) => {
                self.wait_for_the_client(generation)
            }
            next => next,
        };
        match next {
            Some(Ok(next)) => {
                self.retried.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, generation = next.generation(), "retrying on the new route");
                f(&next)
            }
            _ => Err(e),
        }
    }

    /// The volume's client on this node is dead (`ENOTCONN`, `ECONNABORTED`: a FUSE client
    /// such as `cfs-client` killed or restarting). Its restart shows as a remount, which the
    /// switch controller follows with a new route: wait for one, at most `drain_timeout` from
    /// the first such failure on this route. Every failure in that window waits until its end;
    /// once it has passed without a new route (the client is not coming back by itself), such
    /// failures are answered at once, so a dead client costs one bounded pause, not one per
    /// operation.
    #[cold]
    fn wait_for_the_client(&self, generation: u64) -> Option<Result<Ticket>> {
        let now = std::time::Instant::now();
        let until = {
            let mut w = self.client_wait.lock();
            if w.0 != generation {
                *w = (generation, now + self.router.policy().max_wait);
            }
            w.1
        };
        (now < until).then(|| self.router.enter_next_by(generation, until))
    }

    /// The result of a create (`create`, `mkdir`, `mknod`, `symlink`): `ENOENT` there means
    /// that a directory the kernel knows is gone from the volume (removed on it, or the volume
    /// itself going: an `rm -rf` of its root starts with the children), so the volume is probed
    /// at once. The error itself is the answer.
    #[inline]
    fn made<T>(&self, r: Result<T>) -> Result<T> {
        if let Err(e) = &r
            && e.errno() == libc::ENOENT
        {
            self.raise_alarm();
        }
        r
    }

    /// Asked only once an operation failed, so the hot path pays nothing for it.
    fn may_retry(&self, retry: Retry) -> bool {
        match retry {
            Retry::Safe => true,
            Retry::Never => false,
            Retry::Write(fh) => match self.ns.handles.get(fh).as_deref() {
                Some(Handle::File(h)) => h.flags & libc::O_APPEND == 0,
                _ => true,
            },
        }
    }

    fn writable(&self) -> Result<()> {
        if self.opts.read_only {
            Err(Error::posix(libc::EROFS))
        } else {
            Ok(())
        }
    }

    /// The backend file of handle `fh` for an operation on ticket `t` that only reads it,
    /// re-opened on the current volume if the handle was opened on an earlier one.
    fn file_of(&self, t: &Ticket, fh: u64) -> Result<Arc<dyn OpenFile>> {
        self.bound_file(t, fh, false)
    }

    /// [`Vfs::file_of`] for an operation that changes the file: the handle is marked as having
    /// written on this volume (see [`crate::handles`]).
    fn file_to_change(&self, t: &Ticket, fh: u64) -> Result<Arc<dyn OpenFile>> {
        self.bound_file(t, fh, true)
    }

    fn bound_file(&self, t: &Ticket, fh: u64, change: bool) -> Result<Arc<dyn OpenFile>> {
        let h = self.ns.handles.file(fh)?;
        let Handle::File(h) = &*h else {
            return Err(Error::invalid(libc::EBADF));
        };
        self.file_of_handle(t, h, change)
    }

    fn file_of_handle(
        &self,
        t: &Ticket,
        h: &FileHandle,
        change: bool,
    ) -> Result<Arc<dyn OpenFile>> {
        h.file(epoch(t), self.opts.stale_errno, change, |from| {
            self.ns.reopen(t, h, from)
        })
    }

    /// The inode of file handle `fh`.
    fn ino_of(&self, fh: u64) -> Result<u64> {
        match &*self.ns.handles.file(fh)? {
            Handle::File(h) => Ok(h.ino),
            Handle::Dir(_) => Err(Error::invalid(libc::EBADF)),
        }
    }

    /// The open file behind `fh`.
    fn open_file(&self, fh: u64) -> Result<Arc<Handle>> {
        let h = self.ns.handles.file(fh)?;
        match &*h {
            Handle::File(_) => Ok(h),
            Handle::Dir(_) => Err(Error::invalid(libc::EBADF)),
        }
    }

    /// What a handle opened now at `attr` remembers for a verified re-open.
    fn opened_as(&self, attr: &Attr) -> Option<(u64, std::time::SystemTime)> {
        self.opts.verify_reopen.then_some((attr.size, attr.mtime))
    }

    /// `lookup`: find `name` in `parent` and count a kernel reference to it.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<Entry> {
        if name == "." || name == ".." {
            // The kernel resolves dot names itself; never build a path with them.
            return Err(Error::posix(libc::ENOENT));
        }
        self.run(Retry::Safe, |t| {
            let dir = self.ns.dir_of(t, parent)?;
            let attr = t.volume().backend.stat(At { dir: &dir, name })?;
            let entry = self.ns.looked_up(t, parent, name, attr)?;
            self.ns.pin_found(t, &dir, name, &entry);
            Ok(entry)
        })
    }

    /// Names whose kernel entries must be dropped, taken (see [`Vfs::stale_names_wake`]).
    pub fn take_stale_names(&self) -> Vec<crate::namespace::Stale> {
        self.ns.take_stale_names()
    }

    /// Notified when a name was found holding another file than the kernel's node for it: the
    /// kernel's entry must then be dropped, from outside a FUSE worker.
    pub fn stale_names_wake(&self) -> Arc<tokio::sync::Notify> {
        self.ns.stale_names_wake()
    }

    /// `forget`: the kernel dropped `n` references.
    pub fn forget(&self, ino: u64, n: u64) {
        self.ns.inodes.forget(ino, n);
    }

    /// `getattr`.
    pub fn getattr(&self, ino: u64, fh: Option<u64>) -> Result<Attr> {
        self.run(Retry::Safe, |t| {
            if let Some(fh) = fh {
                match self.file_of(t, fh) {
                    Ok(file) => return file.stat(),
                    // A handle whose file is gone from this volume stays stale for fstat too.
                    Err(e) if e.kind() == Kind::Stale => return Err(e),
                    // Not a file handle (the kernel passes directory handles too): use the path.
                    Err(_) => {}
                }
            }
            match self.ns.located(t, ino) {
                Ok((_, attr)) => Ok(attr),
                // Unlinked, or its name taken by another file, but still open: ask an open file
                // of this volume.
                Err(e) => {
                    match self
                        .ns
                        .handles
                        .any_file_of(ino, epoch(t), self.opts.stale_errno, false)
                    {
                        Some(file) => file?.stat(),
                        None => Err(e),
                    }
                }
            }
        })
    }

    /// `setattr`.
    pub fn setattr(&self, ino: u64, fh: Option<u64>, set: &SetAttr) -> Result<Attr> {
        if set.is_empty() {
            return self.getattr(ino, fh);
        }
        self.change(Retry::Never, |t| {
            if let Some(fh) = fh {
                return self.file_to_change(t, fh)?.setattr(set);
            }
            match self.ns.located_held(t, ino) {
                Ok((place, _)) => t.volume().backend.setattr(place.at(), set),
                Err(e) => {
                    match self
                        .ns
                        .handles
                        .any_file_of(ino, epoch(t), self.opts.stale_errno, true)
                    {
                        Some(file) => file?.setattr(set),
                        None => Err(e),
                    }
                }
            }
        })
    }

    /// `readlink`.
    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>> {
        self.run(Retry::Safe, |t| {
            let backend = &t.volume().backend;
            let (_, target) = self.ns.checked(t, ino, |at| {
                let attr = backend.stat(at)?;
                Ok((backend.readlink(at)?, attr))
            })?;
            Ok(target)
        })
    }

    /// `mknod` (fifos, sockets, device nodes; regular files come through `create`).
    pub fn mknod(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        rdev: u32,
        who: Caller,
    ) -> Result<Entry> {
        self.made(self.change(Retry::Never, |t| {
            let dir = self.ns.dir_of(t, parent)?;
            let attr = t.volume().backend.mknod(&dir, name, mode, rdev, who)?;
            self.ns.entry(t, parent, name, attr)
        }))
    }

    /// `mkdir`.
    pub fn mkdir(&self, parent: u64, name: &OsStr, mode: u32, who: Caller) -> Result<Entry> {
        self.made(self.change(Retry::Never, |t| {
            let dir = self.ns.dir_of(t, parent)?;
            let attr = t.volume().backend.mkdir(&dir, name, mode, who)?;
            let entry = self.ns.entry(t, parent, name, attr)?;
            self.ns.pin_found(t, &dir, name, &entry);
            Ok(entry)
        }))
    }

    /// `unlink`.
    pub fn unlink(&self, parent: u64, name: &OsStr) -> Result<()> {
        self.change(Retry::Never, |t| {
            t.volume()
                .backend
                .unlink(&self.ns.dir_of(t, parent)?, name)?;
            self.ns.inodes.unlink(parent, name);
            Ok(())
        })
    }

    /// `rmdir`.
    pub fn rmdir(&self, parent: u64, name: &OsStr) -> Result<()> {
        self.change(Retry::Never, |t| {
            t.volume()
                .backend
                .rmdir(&self.ns.dir_of(t, parent)?, name)?;
            self.ns.inodes.unlink(parent, name);
            Ok(())
        })
    }

    /// `symlink`: the target is stored verbatim.
    pub fn symlink(&self, parent: u64, name: &OsStr, target: &OsStr, who: Caller) -> Result<Entry> {
        self.made(self.change(Retry::Never, |t| {
            let dir = self.ns.dir_of(t, parent)?;
            let attr = t.volume().backend.symlink(&dir, name, target, who)?;
            self.ns.entry(t, parent, name, attr)
        }))
    }

    /// `rename`, with `RENAME_NOREPLACE` and `RENAME_EXCHANGE`.
    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        flags: u32,
    ) -> Result<()> {
        self.change(Retry::Never, |t| {
            let from = self.ns.dir_of(t, parent)?;
            let to = self.ns.dir_of(t, new_parent)?;
            t.volume()
                .backend
                .rename(&from, name, &to, new_name, flags)?;
            let exchange = flags & libc::RENAME_EXCHANGE != 0;
            self.ns
                .inodes
                .rename(parent, name, new_parent, new_name, exchange);
            Ok(())
        })
    }

    /// `link`: a new name for `ino`.
    pub fn link(&self, ino: u64, new_parent: u64, new_name: &OsStr) -> Result<Entry> {
        self.change(Retry::Never, |t| {
            let (place, _) = self.ns.located_held(t, ino)?;
            let dir = self.ns.dir_of(t, new_parent)?;
            let attr = t.volume().backend.link(place.at(), &dir, new_name)?;
            self.ns.entry(t, new_parent, new_name, attr)
        })
    }

    /// `open`: the handle number, and whether the kernel may keep the file's cached pages.
    pub fn open(&self, ino: u64, flags: i32, who: Caller) -> Result<Opened> {
        let changes = flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        if changes {
            self.writable()?;
        }
        // An open that changes nothing can run again on the next route (or the same volume
        // re-opened after its client restarted); one that may have truncated cannot.
        let retry = if changes { Retry::Never } else { Retry::Safe };
        self.run(retry, |t| {
            let backend = &t.volume().backend;
            let truncated = flags & libc::O_TRUNC != 0;
            // Opened without O_TRUNC: the name may hold another file than the one the kernel
            // checked the caller's rights on (replaced on the volume), and the daemon may be
            // root. Only the file that passed the identity check is truncated, through the
            // descriptor that was checked.
            let (_, (file, attr)) = self.ns.checked_as(t, ino, true, |at| {
                let (file, attr) = backend.open(at, flags & !libc::O_TRUNC, who)?;
                Ok(((file, attr), attr))
            })?;
            self.ns.check_other_names(t, ino, &attr)?;
            let attr = if truncated {
                file.setattr(&SetAttr {
                    size: Some(0),
                    by: Some(who),
                    ..SetAttr::default()
                })?
            } else {
                attr
            };
            let opened_as = self.opened_as(&attr);
            let keep_cache = self.ns.opened(ino, &attr, t.volume());
            let fh = self
                .ns
                .handles
                .open_file(ino, flags, epoch(t), file, truncated, opened_as);
            Ok(Opened {
                fh,
                keep_cache,
                cache_listing: false,
            })
        })
    }

    /// The file behind handle `fh` as it is open now, and its volume opening (for FUSE
    /// passthrough).
    pub fn open_file_now(&self, fh: u64) -> Option<(Arc<dyn OpenFile>, u64)> {
        match &*self.ns.handles.file(fh).ok()? {
            Handle::File(h) => h.bound_file(),
            Handle::Dir(_) => None,
        }
    }

    /// `create`: make and open a regular file.
    pub fn create(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: i32,
        who: Caller,
    ) -> Result<(Entry, u64)> {
        self.made(self.change(Retry::Never, |t| {
            let dir = self.ns.dir_of(t, parent)?;
            let (file, attr) = t.volume().backend.create(&dir, name, mode, flags, who)?;
            let entry = self.ns.entry(t, parent, name, attr)?;
            let opened_as = self.opened_as(&attr);
            let fh = self
                .ns
                .handles
                .open_file(entry.ino, flags, epoch(t), file, true, opened_as);
            Ok((entry, fh))
        }))
    }

    /// `read` into `buf`; returns the bytes read (short only at end of file).
    #[inline]
    pub fn read(&self, fh: u64, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let h = self.open_file(fh)?;
        let Handle::File(h) = &*h else {
            return Err(Error::invalid(libc::EBADF));
        };
        // A read that overlaps a write still in progress waits for it: the kernel may be filling
        // a page it dropped while that write was on its way (see `crate::writes`).
        self.writing.wait_clear(h.ino, offset, buf.len() as u64);
        self.run(Retry::Safe, |t| {
            self.file_of_handle(t, h, false)?.read_at(buf, offset)
        })
    }

    /// `write` at an explicit offset; returns the bytes written. Retried on a new route unless
    /// the handle appends (see [`Retry::Write`]).
    #[inline]
    /// `write`. `kill_privileges`: the kernel says the writer is not privileged and the file has
    /// set-ID bits, which the volume must then drop as for `who`'s own write.
    pub fn write(
        &self,
        fh: u64,
        offset: u64,
        data: &[u8],
        kill_privileges: Option<Caller>,
    ) -> Result<usize> {
        let h = self.open_file(fh)?;
        let Handle::File(h) = &*h else {
            return Err(Error::invalid(libc::EBADF));
        };
        self.change(Retry::Write(fh), |t| {
            let _writing = self.writing.begin(h.ino, offset, data.len() as u64);
            let file = self.file_of_handle(t, h, true)?;
            match kill_privileges {
                None => file.write_at(data, offset),
                Some(who) => {
                    let n = file.write_as(data, offset, who)?;
                    // The volume dropped set-ID bits the kernel still has cached (a write's
                    // reply carries no attributes).
                    self.ns.attributes_went_stale(h.ino);
                    Ok(n)
                }
            }
        })
    }

    /// `flush`: called on every `close()` of a descriptor.
    pub fn flush(&self, fh: u64) -> Result<()> {
        self.run(Retry::Never, |t| self.file_of(t, fh)?.flush())
    }

    /// `fsync`.
    pub fn fsync(&self, fh: u64, datasync: bool) -> Result<()> {
        self.run(Retry::Never, |t| self.file_of(t, fh)?.fsync(datasync))
    }

    /// `release`: the last reference to the handle is gone.
    pub fn release(&self, fh: u64) {
        self.ns.handles.remove(fh);
    }

    /// `fallocate`.
    pub fn fallocate(&self, fh: u64, offset: u64, len: u64, mode: i32, who: Caller) -> Result<()> {
        let ino = self.ino_of(fh)?;
        self.change(Retry::Never, |t| {
            // Punching or zeroing a range changes its bytes like a write does.
            let _writing = self.writing.begin(ino, offset, len);
            self.file_to_change(t, fh)?
                .allocate(offset, len, mode, who)?;
            if who.uid != 0 {
                // The volume may have dropped set-ID bits as for the caller's own call.
                self.ns.attributes_went_stale(ino);
            }
            Ok(())
        })
    }

    /// `lseek` (the kernel asks only for `SEEK_DATA` and `SEEK_HOLE`).
    pub fn lseek(&self, fh: u64, offset: i64, whence: i32) -> Result<i64> {
        self.run(Retry::Safe, |t| self.file_of(t, fh)?.seek(offset, whence))
    }

    /// `copy_file_range` between two open files.
    pub fn copy_file_range(
        &self,
        fh_in: u64,
        off_in: u64,
        fh_out: u64,
        off_out: u64,
        len: u64,
        who: Caller,
    ) -> Result<usize> {
        let ino_out = self.ino_of(fh_out)?;
        self.change(Retry::Never, |t| {
            let _writing = self.writing.begin(ino_out, off_out, len);
            let src = self.file_of(t, fh_in)?;
            let dst = self.file_to_change(t, fh_out)?;
            let n = src.copy_range(off_in, dst.as_ref(), off_out, len, who)?;
            if who.uid != 0 {
                // The volume may have dropped set-ID bits as for the caller's own call.
                self.ns.attributes_went_stale(ino_out);
            }
            Ok(n)
        })
    }

    /// `opendir`.
    pub fn opendir(&self, ino: u64) -> Result<Opened> {
        self.run(Retry::Safe, |t| {
            let (_, attr) = self.ns.located(t, ino)?;
            if attr.kind != FileKind::Dir {
                return Err(Error::posix(libc::ENOTDIR));
            }
            // The kernel's cached listing follows the rule of a file's cached pages.
            let (keep_cache, cache_listing) = self.ns.dir_opened(ino, &attr, t.volume());
            let fh = self.ns.handles.open_dir(ino);
            Ok(Opened {
                fh,
                keep_cache,
                cache_listing,
            })
        })
    }

    /// `releasedir`.
    pub fn releasedir(&self, fh: u64) {
        self.ns.handles.remove(fh);
    }

    /// `readdir` / `readdirplus` from `offset`: hands items to `sink` until it reports the reply
    /// buffer full (returns `true`). With `plus`, each item handed over counts as a lookup; an
    /// item refused by a full buffer does not.
    pub fn readdir(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        plus: bool,
        sink: &mut dyn FnMut(DirItem<'_>) -> bool,
    ) -> Result<()> {
        let Some(h) = self.ns.handles.get(fh) else {
            return Err(Error::invalid(libc::EBADF));
        };
        let Handle::Dir(dir) = &*h else {
            return Err(Error::invalid(libc::EBADF));
        };
        if plus && offset > 0 {
            self.ns.inodes.note_listed_with_stats(ino);
        }
        let mut added = 0usize;
        self.run(Retry::Safe, |t| {
            let listing = dir.listing(offset, || {
                let place = itself(self.ns.dir_of(t, ino)?);
                let mut out = Listing::default();
                out.push(OsStr::new("."), FileKind::Dir, 0)?;
                out.push(OsStr::new(".."), FileKind::Dir, 0)?;
                t.volume().backend.read_dir(place.at(), &mut out)?;
                Ok(out)
            })?;
            match self.fill_dir(t, ino, &listing, offset, plus, sink, &mut added) {
                // A short reply is a valid reply (the kernel asks again from the next offset).
                // Once entries are in the buffer, never fail or retry: they would be lost, with
                // their lookups counted, or listed twice.
                Err(e) if added > 0 => {
                    tracing::debug!(ino, error = %e, "readdir cut short");
                    Ok(())
                }
                r => r,
            }
        })
    }

    /// Hand listing items from `offset` to `sink` until it is full; `added` counts the items
    /// it accepted.
    #[allow(clippy::too_many_arguments)]
    fn fill_dir(
        &self,
        t: &Ticket,
        ino: u64,
        listing: &Listing,
        offset: u64,
        plus: bool,
        sink: &mut dyn FnMut(DirItem<'_>) -> bool,
        added: &mut usize,
    ) -> Result<()> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let dir = if plus {
            Some(self.ns.dir_of(t, ino)?)
        } else {
            None
        };
        for i in start..listing.len() {
            let Some((item_name, item_kind, item_ino)) = listing.get(i) else {
                break;
            };
            let next_offset = i as u64 + 1;
            let dots = i < 2;
            let fixed_ino = match i {
                0 => Some(ino),
                1 => Some(self.ns.inodes.parent(ino)),
                _ => None,
            };
            let (ino_of_item, kind, entry) = match (&dir, fixed_ino) {
                (Some(dir), _) => {
                    let name: &OsStr = if dots { OsStr::new("") } else { item_name };
                    let attr = match t.volume().backend.stat(At { dir, name }) {
                        Ok(a) => a,
                        // Removed since the listing was taken: skip it.
                        Err(e) if e.errno() == libc::ENOENT => continue,
                        Err(e) => return Err(e),
                    };
                    match fixed_ino {
                        // `.` and `..` are not counted as lookups.
                        Some(fixed) => (fixed, attr.kind, Some(Entry { ino: fixed, attr })),
                        None => {
                            let e = self.ns.entry(t, ino, item_name, attr)?;
                            (e.ino, attr.kind, Some(e))
                        }
                    }
                }
                (None, Some(fixed)) => (fixed, item_kind, None),
                (None, None) => (
                    self.ns
                        .inodes
                        .listing_ino(ino, item_name, item_ino, UNKNOWN_INO),
                    item_kind,
                    None,
                ),
            };
            let full = sink(DirItem {
                next_offset,
                name: item_name,
                ino: ino_of_item,
                kind,
                entry,
            });
            if full {
                if entry.is_some() && !dots {
                    self.ns.inodes.forget(ino_of_item, 1);
                }
                break;
            }
            *added += 1;
        }
        Ok(())
    }

    /// `statfs`.
    pub fn statfs(&self) -> Result<StatFs> {
        self.run(Retry::Safe, |t| t.volume().backend.statfs())
    }

    /// `getxattr`: the whole value.
    pub fn getxattr(&self, ino: u64, name: &OsStr) -> Result<Vec<u8>> {
        self.run(Retry::Safe, |t| {
            t.volume()
                .backend
                .getxattr(self.ns.located(t, ino)?.0.at(), name)
        })
    }

    /// `setxattr`.
    pub fn setxattr(&self, ino: u64, name: &OsStr, value: &[u8], flags: i32) -> Result<()> {
        self.change(Retry::Never, |t| {
            t.volume()
                .backend
                .setxattr(self.ns.located_held(t, ino)?.0.at(), name, value, flags)
        })
    }

    /// `listxattr`: NUL-terminated names.
    pub fn listxattr(&self, ino: u64) -> Result<Vec<u8>> {
        self.run(Retry::Safe, |t| {
            t.volume()
                .backend
                .listxattr(self.ns.located(t, ino)?.0.at())
        })
    }

    /// `removexattr`.
    pub fn removexattr(&self, ino: u64, name: &OsStr) -> Result<()> {
        self.change(Retry::Never, |t| {
            t.volume()
                .backend
                .removexattr(self.ns.located_held(t, ino)?.0.at(), name)
        })
    }

    /// `access`: POSIX permission check against the file's mode (only used without
    /// `default_permissions`, which failoverfs always sets, so it is a safety net).
    pub fn access(&self, ino: u64, mask: i32, who: Caller) -> Result<()> {
        let attr = self.getattr(ino, None)?;
        if mask == libc::F_OK {
            return Ok(());
        }
        if mask & libc::W_OK != 0 && self.opts.read_only {
            return Err(Error::posix(libc::EROFS));
        }
        if who.uid == 0 {
            // Root may do anything except execute a file nobody may execute.
            if mask & libc::X_OK != 0 && attr.kind != FileKind::Dir && attr.perm & 0o111 == 0 {
                return Err(Error::posix(libc::EACCES));
            }
            return Ok(());
        }
        let bits = if who.uid == attr.uid {
            (attr.perm >> 6) & 7
        } else if who.gid == attr.gid {
            (attr.perm >> 3) & 7
        } else {
            attr.perm & 7
        } as i32;
        if bits & mask == mask {
            Ok(())
        } else {
            Err(Error::posix(libc::EACCES))
        }
    }
}

/// The route an operation runs on, as handles record it.
fn epoch(t: &Ticket) -> Epoch {
    Epoch {
        generation: t.generation(),
        volume: t.volume().serial(),
        index: t.volume().index,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::dir::DirBackend;
    use crate::backend::faulty::{Fault, Faults, FaultyBackend};
    use crate::inode::ROOT;
    use crate::routing::{Route, Volume, WaitPolicy};

    #[test]
    fn readdirplus_cut_short_by_a_failure_keeps_what_it_gave() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("a"), b"").unwrap();
        std::fs::write(tmp.path().join("zz"), b"").unwrap();
        let faults = Faults::new();
        let volume = Arc::new(Volume::new(
            0,
            "v",
            Arc::new(FaultyBackend::new(
                Arc::new(DirBackend::open(tmp.path()).unwrap()),
                faults.clone(),
            )),
        ));
        let router = Arc::new(Router::new(
            Route::serving(1, volume),
            WaitPolicy::default(),
        ));
        let vfs = Vfs::new(router, VfsOptions::default());
        let fh = vfs.opendir(ROOT).unwrap().fh;
        faults.add("zz", Fault::Fail(libc::EIO));
        let mut seen = Vec::new();
        let mut next = 0;
        let r = vfs.readdir(ROOT, fh, 0, true, &mut |item| {
            seen.push(item.name.to_os_string());
            next = item.next_offset;
            false
        });
        // The dots (and `a`, when it comes first) went out: the reply is a success, short.
        assert!(r.is_ok(), "{r:?}");
        assert!(
            seen.len() >= 2 && !seen.iter().any(|n| n == "zz"),
            "{seen:?}"
        );
        // Every counted lookup is one the kernel received: `a` at most once.
        let a_listed = seen.iter().any(|n| n == "a");
        assert_eq!(vfs.inodes().stats().nodes, 1 + a_listed as usize);
        // Continuing from there, the failure comes first: nothing to return but the error.
        let r = vfs.readdir(ROOT, fh, next, true, &mut |_| false);
        assert_eq!(r.unwrap_err().errno(), libc::EIO);
    }
}
