//! Open file and directory handles.
//!
//! The kernel holds a handle number for every `open` and `opendir`; we map it to the inode, the
//! open flags, and the backend file it is bound to, together with the route generation that file
//! was opened under.
//!
//! Invariants:
//! - A handle is bound to at most one backend file at a time, opened on the volume of the
//!   generation recorded next to it. When an operation arrives under a newer generation, the
//!   handle is re-opened by path on the current volume (same flags minus `O_CREAT`, `O_EXCL`,
//!   `O_TRUNC`) before the operation runs; reads and writes carry explicit offsets, so the handle
//!   simply continues. If the file is gone from the new volume, the handle turns stale and answers
//!   `ESTALE` (or the configured errno) from then on.
//! - A handle that changed its file (a write, truncation, allocation, or the create or `O_TRUNC`
//!   open that made it) never moves to another volume of the table: the standby is kept in sync
//!   by something else, and failoverfs cannot know whether it holds what the handle wrote. Such a
//!   handle turns stale at the switch (every later use, `fsync` and `close` included, answers the
//!   stale errno), so no write acknowledged on the old volume is silently replaced by older
//!   content. A re-open of the *same* volume (after a remount) keeps it: the data is the same.
//! - Handle numbers are never reused within a process.
//! - No global lock: the table is sharded, and each handle has its own small lock, held only to
//!   read or replace its binding (never across backend I/O).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use parking_lot::{Mutex, RwLock};

use crate::backend::{Listing, OpenFile};
use crate::error::{Error, Result};

const SHARDS: usize = 64;

/// Which route a handle's file belongs to: the route's generation and its volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Epoch {
    /// Route generation.
    pub generation: u64,
    /// The route's volume: its serial ([`crate::routing::Volume::serial`]), which a volume
    /// re-opened after a remount does not share with its earlier incarnation.
    pub volume: u64,
    /// The volume's position in the table: the same data across re-openings of one volume.
    pub index: usize,
}

/// An open regular file.
pub struct FileHandle {
    /// The inode the handle was opened on.
    pub ino: u64,
    /// Open flags as the kernel passed them.
    pub flags: i32,
    /// Size and modification time of the file when it was opened (kept only when re-opens are
    /// verified): a re-open that finds anything else turns the handle stale.
    pub opened_as: Option<(u64, SystemTime)>,
    bound: Mutex<Bound>,
}

/// A handle's binding and what it did through it.
struct Bound {
    binding: Binding,
    /// The handle changed its file on the volume of its epoch (see the module docs).
    wrote: bool,
}

enum Binding {
    Open {
        epoch: Epoch,
        file: Arc<dyn OpenFile>,
    },
    /// The file was closed after the route switched away from its volume (so that nothing keeps
    /// a dead volume's mount busy); the next operation on a newer route re-opens it.
    Released {
        epoch: Epoch,
    },
    Stale,
}

/// What a re-open found.
pub enum Reopen {
    /// The file was opened on the current volume.
    Opened(Arc<dyn OpenFile>),
    /// The handle cannot follow: it turns stale.
    Gone(StaleWhy),
}

/// What the binding says for an operation of a given epoch, short of re-opening.
enum Check {
    Use(Arc<dyn OpenFile>),
    Fail(Error),
    /// Re-open on the new volume; `from` is the table position of the volume left.
    Reopen {
        from: usize,
    },
}

/// Why a handle turned stale, for the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StaleWhy {
    /// Its file does not exist on the new volume.
    Gone,
    /// Its file differs there (`reopen_verify`).
    Differs,
    /// It changed its file on the old volume.
    WroteOnOld,
}

impl Bound {
    /// What the binding says for an operation at `at`; `change`: the operation changes the file.
    /// A file the binding lets go of goes to `displaced`, for the caller to drop once it released
    /// the lock (closing a file of a hung volume may block).
    fn check(
        &mut self,
        at: Epoch,
        stale_errno: i32,
        change: bool,
        displaced: &mut Option<Arc<dyn OpenFile>>,
    ) -> Check {
        let check = match &mut self.binding {
            Binding::Stale => return Check::Fail(Error::stale(stale_errno)),
            Binding::Open { epoch, file } => {
                if epoch.generation == at.generation {
                    Check::Use(file.clone())
                } else if epoch.generation > at.generation {
                    // An operation still running on a drained route: never hand it the newer
                    // volume's file (one operation, one volume); it may retry on the new route.
                    return Check::Fail(Error::unavailable(libc::EIO));
                } else if epoch.volume == at.volume {
                    // A newer route over the same volume: the file is still the right one.
                    *epoch = at;
                    Check::Use(file.clone())
                } else {
                    Check::Reopen { from: epoch.index }
                }
            }
            Binding::Released { epoch } => {
                if epoch.generation < at.generation {
                    Check::Reopen { from: epoch.index }
                } else {
                    return Check::Fail(Error::unavailable(libc::EIO));
                }
            }
        };
        match check {
            Check::Reopen { from } if self.wrote && from != at.index => {
                *displaced = self.stale(StaleWhy::WroteOnOld);
                Check::Fail(Error::stale(stale_errno))
            }
            Check::Use(_) => {
                self.wrote |= change;
                check
            }
            other => other,
        }
    }

    /// The table position of the volume the binding belongs to.
    fn index(&self) -> Option<usize> {
        match &self.binding {
            Binding::Open { epoch, .. } | Binding::Released { epoch } => Some(epoch.index),
            Binding::Stale => None,
        }
    }

    /// Turn stale; returns the file the binding held, if any, for the caller to drop.
    fn stale(&mut self, why: StaleWhy) -> Option<Arc<dyn OpenFile>> {
        tracing::debug!(?why, "open handle turns stale");
        match std::mem::replace(&mut self.binding, Binding::Stale) {
            Binding::Open { file, .. } => Some(file),
            Binding::Released { .. } | Binding::Stale => None,
        }
    }
}

impl FileHandle {
    /// The file this handle has open now and its volume opening
    /// ([`crate::routing::Volume::serial`]); `None` once released or stale.
    pub fn bound_file(&self) -> Option<(Arc<dyn OpenFile>, u64)> {
        match &self.bound.lock().binding {
            Binding::Open { epoch, file } => Some((file.clone(), epoch.volume)),
            Binding::Released { .. } | Binding::Stale => None,
        }
    }

    /// The backend file for an operation running at `at`; re-opened through `reopen` when the
    /// handle belongs to an older route on another volume. `stale_errno` is what a stale handle
    /// answers; `change`: the operation changes the file (the handle then never moves to another
    /// volume of the table).
    pub fn file(
        &self,
        at: Epoch,
        stale_errno: i32,
        change: bool,
        reopen: impl FnOnce(usize) -> Result<Reopen>,
    ) -> Result<Arc<dyn OpenFile>> {
        let mut displaced = None;
        let check = self
            .bound
            .lock()
            .check(at, stale_errno, change, &mut displaced);
        drop(displaced);
        let from = match check {
            Check::Use(file) => return Ok(file),
            Check::Fail(e) => return Err(e),
            Check::Reopen { from } => from,
        };
        // Re-open outside the lock; if two operations race, the first binding wins and the other
        // file is simply closed.
        let opened = reopen(from)?;
        let mut b = self.bound.lock();
        let mut displaced = None;
        let result = match b.check(at, stale_errno, change, &mut displaced) {
            Check::Use(file) => Ok(file),
            Check::Fail(e) => Err(e),
            Check::Reopen { .. } => match opened {
                Reopen::Opened(file) => {
                    let old = std::mem::replace(
                        &mut b.binding,
                        Binding::Open {
                            epoch: at,
                            file: file.clone(),
                        },
                    );
                    if let Binding::Open { file, .. } = old {
                        displaced = Some(file);
                    }
                    b.wrote |= change;
                    Ok(file)
                }
                Reopen::Gone(why) => {
                    tracing::warn!(
                        ino = self.ino,
                        ?why,
                        "open handle cannot follow the switch; it answers the stale errno from now on"
                    );
                    displaced = b.stale(why);
                    Err(Error::stale(stale_errno))
                }
            },
        };
        // Closed outside the lock (the losing re-open too, when `opened` was not used).
        drop(b);
        drop(displaced);
        result
    }

    /// Mark the handle as having changed its file, if it is bound at `at` (a change made through
    /// another route to the same open file, see [`HandleTable::any_file_of`]).
    fn mark_changed(&self, at: Epoch) {
        let mut b = self.bound.lock();
        if let Binding::Open { epoch, .. } = &b.binding
            && epoch.index == at.index
        {
            b.wrote = true;
        }
    }

    /// The generation the handle is bound to, or `None` when it is stale.
    pub fn generation(&self) -> Option<u64> {
        match &self.bound.lock().binding {
            Binding::Open { epoch, .. } | Binding::Released { epoch } => Some(epoch.generation),
            Binding::Stale => None,
        }
    }

    /// Whether the handle changed its file (see the module docs).
    pub fn wrote(&self) -> bool {
        self.bound.lock().wrote
    }

    /// The bound file and its epoch, if any.
    fn current(&self) -> Option<(Epoch, Arc<dyn OpenFile>)> {
        match &self.bound.lock().binding {
            Binding::Open { epoch, file } => Some((*epoch, file.clone())),
            Binding::Released { .. } | Binding::Stale => None,
        }
    }

    /// Before a switch to `to` is published: let go of the file if it belongs to another volume
    /// incarnation (handed back in `left.files`), and turn the handle stale if it changed its
    /// file on another volume of the table.
    fn leave_old(&self, to: Epoch, written: &HashSet<u64>, left: &mut LeftBehind) {
        let mut b = self.bound.lock();
        // A writable handle of a file another handle wrote may have carried its writes too (the
        // kernel writes mmap'ed pages back through any writable handle of the inode).
        let writable = self.flags & libc::O_ACCMODE != libc::O_RDONLY;
        let wrote_on_old = (b.wrote || (writable && written.contains(&self.ino)))
            && b.index().is_some_and(|i| i != to.index);
        if wrote_on_old {
            left.wrote.push(self.ino);
            left.files.extend(b.stale(StaleWhy::WroteOnOld));
            return;
        }
        if let Binding::Open { epoch, .. } = &b.binding
            && epoch.volume != to.volume
        {
            let epoch = *epoch;
            if let Binding::Open { file, .. } =
                std::mem::replace(&mut b.binding, Binding::Released { epoch })
            {
                left.files.push(file);
            }
        }
    }
}

/// What a switch did to the open files: see [`HandleTable::leave_old`].
#[derive(Default)]
pub struct LeftBehind {
    /// Files of the old volume let go of. Dropping them closes them (once no operation still
    /// running uses them), which may block on a dead volume: the caller decides where.
    pub files: Vec<Arc<dyn OpenFile>>,
    /// Inodes of handles that changed their file on the old volume (now stale).
    pub wrote: Vec<u64>,
}

/// An open directory: a listing taken at the first `readdir` from offset 0 and served from
/// memory after, so offsets stay valid across a switch of volume.
pub struct DirHandle {
    /// The directory's inode.
    pub ino: u64,
    listing: Mutex<Option<Arc<Listing>>>,
}

impl DirHandle {
    /// The listing; taken (again) when `offset` is 0 or none was taken yet.
    pub fn listing(
        &self,
        offset: u64,
        list: impl FnOnce() -> Result<Listing>,
    ) -> Result<Arc<Listing>> {
        if offset != 0
            && let Some(l) = &*self.listing.lock()
        {
            return Ok(l.clone());
        }
        let fresh = Arc::new(list()?);
        *self.listing.lock() = Some(fresh.clone());
        Ok(fresh)
    }
}

/// A handle of either kind.
pub enum Handle {
    /// From `open` or `create`.
    File(FileHandle),
    /// From `opendir`.
    Dir(DirHandle),
}

type Shard = RwLock<HashMap<u64, Arc<Handle>>>;

/// The handle table; see the module docs.
pub struct HandleTable {
    shards: Box<[Shard]>,
    next: AtomicU64,
}

impl Default for HandleTable {
    fn default() -> Self {
        Self::new()
    }
}

impl HandleTable {
    /// An empty table.
    pub fn new() -> Self {
        HandleTable {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            next: AtomicU64::new(1),
        }
    }

    fn shard(&self, fh: u64) -> &Shard {
        &self.shards[(fh as usize) % SHARDS]
    }

    fn insert(&self, h: Handle) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed);
        self.shard(fh).write().insert(fh, Arc::new(h));
        fh
    }

    /// Register an open file bound to `file`, opened at `epoch`; `wrote`: opening it changed it
    /// (create, `O_TRUNC`); `opened_as`: see [`FileHandle::opened_as`].
    pub fn open_file(
        &self,
        ino: u64,
        flags: i32,
        epoch: Epoch,
        file: Arc<dyn OpenFile>,
        wrote: bool,
        opened_as: Option<(u64, SystemTime)>,
    ) -> u64 {
        self.insert(Handle::File(FileHandle {
            ino,
            flags,
            opened_as,
            bound: Mutex::new(Bound {
                binding: Binding::Open { epoch, file },
                wrote,
            }),
        }))
    }

    /// Register an open directory.
    pub fn open_dir(&self, ino: u64) -> u64 {
        self.insert(Handle::Dir(DirHandle {
            ino,
            listing: Mutex::new(None),
        }))
    }

    /// Look up a handle.
    pub fn get(&self, fh: u64) -> Option<Arc<Handle>> {
        self.shard(fh).read().get(&fh).cloned()
    }

    /// Look up a file handle; `EBADF` for anything else.
    pub fn file(&self, fh: u64) -> Result<Arc<Handle>> {
        match self.get(fh) {
            Some(h) if matches!(*h, Handle::File(_)) => Ok(h),
            _ => Err(Error::invalid(libc::EBADF)),
        }
    }

    /// Forget a handle (`release`, `releasedir`).
    pub fn remove(&self, fh: u64) -> Option<Arc<Handle>> {
        self.shard(fh).write().remove(&fh)
    }

    /// An open file of `ino` usable at `at` (for `getattr` and `setattr` of an unlinked file
    /// that is still open). `Err(stale)` when the inode is open only on an earlier volume: its
    /// file is not on the current one. Walks the table: only used on that rare path.
    /// `change`: the caller changes the file through it, which marks the handle as having
    /// written (see the module docs).
    pub fn any_file_of(
        &self,
        ino: u64,
        at: Epoch,
        stale_errno: i32,
        change: bool,
    ) -> Option<Result<Arc<dyn OpenFile>>> {
        let mut older = false;
        for shard in self.shards.iter() {
            for h in shard.read().values() {
                if let Handle::File(f) = &**h
                    && f.ino == ino
                    && let Some((epoch, file)) = f.current()
                {
                    if epoch.generation == at.generation
                        || (epoch.generation < at.generation && epoch.volume == at.volume)
                    {
                        if change {
                            f.mark_changed(at);
                        }
                        return Some(Ok(file));
                    }
                    older |= epoch.generation < at.generation;
                }
            }
        }
        older.then(|| Err(Error::stale(stale_errno)))
    }

    /// Call `f` with the inode of every open file handle that is not stale.
    pub fn for_each_file(&self, mut f: impl FnMut(u64)) {
        for shard in self.shards.iter() {
            let inos: Vec<u64> = shard
                .read()
                .values()
                .filter_map(|h| match &**h {
                    Handle::File(f) if f.generation().is_some() => Some(f.ino),
                    _ => None,
                })
                .collect();
            inos.into_iter().for_each(&mut f);
        }
    }

    /// Before a switch to `to` is published (the old route drained): let go of every open file
    /// that belongs to another volume incarnation (nothing may keep the old volume's mount busy;
    /// each handle re-opens on its next use, as it would have anyway), and turn stale every
    /// handle that changed its file on another volume of the table (see the module docs). Takes
    /// only the handles' own locks; closing the files is left to the caller.
    pub fn leave_old(&self, to: Epoch) -> LeftBehind {
        let mut written = HashSet::new();
        for shard in self.shards.iter() {
            for h in shard.read().values() {
                if let Handle::File(f) = &**h
                    && f.bound.lock().wrote
                {
                    written.insert(f.ino);
                }
            }
        }
        let mut left = LeftBehind::default();
        for shard in self.shards.iter() {
            for h in shard.read().values() {
                if let Handle::File(f) = &**h {
                    f.leave_old(to, &written, &mut left);
                }
            }
        }
        left
    }

    /// Number of open handles.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().len()).sum()
    }

    /// Whether no handle is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backend;
    use crate::backend::dir::DirBackend;

    fn file_f() -> (tempfile::TempDir, DirBackend) {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("f"), b"x").unwrap();
        let b = DirBackend::open(tmp.path()).unwrap();
        (tmp, b)
    }

    fn open_f(b: &DirBackend) -> Result<Arc<dyn OpenFile>> {
        b.open(
            crate::backend::Place::of_path(std::path::Path::new("f")).at(),
            libc::O_RDWR,
            crate::backend::Caller::ROOT,
        )
        .map(|(f, _)| f)
    }

    /// Generation, volume serial; the serial doubles as the table index (one volume, one
    /// incarnation) unless given.
    fn at(generation: u64, volume: u64) -> Epoch {
        Epoch {
            generation,
            volume,
            index: volume as usize,
        }
    }

    #[test]
    fn one_operation_one_volume() {
        let (_tmp, b) = file_f();
        let open = || open_f(&b);
        let table = HandleTable::new();
        let fh = table.open_file(2, libc::O_RDONLY, at(1, 0), open().unwrap(), false, None);
        let h = table.file(fh).unwrap();
        let Handle::File(h) = &*h else { panic!() };
        // A newer route over the same volume keeps the file, without re-opening...
        let same = h
            .file(at(2, 0), libc::ESTALE, false, |_| unreachable!())
            .unwrap();
        assert_eq!(h.generation(), Some(2));
        drop(same);
        // ...another volume re-opens it...
        let reopened = h
            .file(at(3, 1), libc::ESTALE, false, |_| {
                Ok(Reopen::Opened(open()?))
            })
            .unwrap();
        assert_eq!(h.generation(), Some(3));
        drop(reopened);
        // ...after which an operation still running on an older route gets no file at all.
        let e = h
            .file(at(2, 0), libc::ESTALE, false, |_| unreachable!())
            .err()
            .unwrap();
        assert_eq!(e.kind(), crate::error::Kind::Unavailable);
        // A file missing on the next volume makes the handle stale, for good.
        let e = h
            .file(at(4, 0), libc::ESTALE, false, |_| {
                Ok(Reopen::Gone(StaleWhy::Gone))
            })
            .err()
            .unwrap();
        assert_eq!(e.errno(), libc::ESTALE);
        let e = h
            .file(at(5, 1), libc::ESTALE, false, |_| unreachable!())
            .err()
            .unwrap();
        assert_eq!(e.errno(), libc::ESTALE);

        // After a switch, files on other volumes are closed (the stale one has none)...
        let fh = table.open_file(2, libc::O_RDONLY, at(6, 7), open().unwrap(), false, None);
        assert_eq!(table.leave_old(at(7, 7)).files.len(), 0);
        assert_eq!(table.leave_old(at(7, 8)).files.len(), 1);
        assert_eq!(table.leave_old(at(7, 8)).files.len(), 0);
        let h = table.file(fh).unwrap();
        let Handle::File(h) = &*h else { panic!() };
        // ...an operation still on the old route gets nothing, and the next route re-opens,
        // even over the same volume (a switch back).
        assert!(
            h.file(at(6, 7), libc::ESTALE, false, |_| unreachable!())
                .is_err()
        );
        let reopened = h.file(at(7, 7), libc::ESTALE, false, |_| {
            Ok(Reopen::Opened(open()?))
        });
        assert!(reopened.is_ok());
        assert_eq!(h.generation(), Some(7));
    }

    #[test]
    fn a_handle_that_wrote_never_moves_to_another_volume() {
        let (_tmp, b) = file_f();
        let open = || open_f(&b);
        let table = HandleTable::new();
        let get = |fh| table.file(fh).unwrap();
        // Read only: follows a switch.
        let reader = table.open_file(2, libc::O_RDWR, at(1, 0), open().unwrap(), false, None);
        let h = get(reader);
        let Handle::File(h) = &*h else { panic!() };
        h.file(at(1, 0), libc::ESTALE, false, |_| unreachable!())
            .unwrap();
        assert!(!h.wrote());
        // Written: stale after the switch, found at once by the switch itself...
        let writer = table.open_file(3, libc::O_RDWR, at(1, 0), open().unwrap(), false, None);
        let w = get(writer);
        let Handle::File(w) = &*w else { panic!() };
        w.file(at(1, 0), libc::ESTALE, true, |_| unreachable!())
            .unwrap();
        assert!(w.wrote());
        let left = table.leave_old(at(2, 1));
        assert_eq!((left.files.len(), left.wrote), (2, vec![3]));
        let e = w
            .file(at(2, 1), libc::ESTALE, false, |_| unreachable!())
            .err()
            .unwrap();
        assert_eq!(e.errno(), libc::ESTALE);
        assert!(
            h.file(at(2, 1), libc::ESTALE, false, |_| Ok(Reopen::Opened(
                open()?
            )))
            .is_ok()
        );
        // ...or by its next use when the switch has not got to it yet; created or truncated at
        // open counts as written.
        let created = table.open_file(4, libc::O_RDWR, at(2, 1), open().unwrap(), true, None);
        let c = get(created);
        let Handle::File(c) = &*c else { panic!() };
        let e = c
            .file(at(3, 2), libc::ESTALE, false, |_| unreachable!())
            .err()
            .unwrap();
        assert_eq!(e.errno(), libc::ESTALE);
        // A re-opening of the same volume (a remount: new serial, same table position) keeps a
        // handle that wrote.
        let again = table.open_file(5, libc::O_RDWR, at(3, 2), open().unwrap(), true, None);
        let a = get(again);
        let Handle::File(a) = &*a else { panic!() };
        let remounted = Epoch {
            generation: 4,
            volume: 9,
            index: 2,
        };
        let left = table.leave_old(remounted);
        assert!(left.wrote.is_empty());
        assert!(
            a.file(remounted, libc::ESTALE, true, |_| Ok(Reopen::Opened(
                open()?
            )))
            .is_ok()
        );
    }
}
