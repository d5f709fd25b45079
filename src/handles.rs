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
//! - Handle numbers are never reused within a process.
//! - No global lock: the table is sharded, and each handle has its own small lock, held only to
//!   read or replace its binding (never across backend I/O).

use std::collections::HashMap;
use std::ffi::OsString;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};

use crate::backend::{FileKind, OpenFile};
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
}

/// An open regular file.
pub struct FileHandle {
    /// The inode the handle was opened on.
    pub ino: u64,
    /// Open flags as the kernel passed them.
    pub flags: i32,
    bound: Mutex<Binding>,
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
    /// The file does not exist there: the handle turns stale.
    Gone,
}

/// What the binding says for an operation of a given epoch, short of re-opening.
enum Check {
    Use(Arc<dyn OpenFile>),
    Fail(Error),
    Reopen,
}

impl Binding {
    fn check(&mut self, at: Epoch, stale_errno: i32) -> Check {
        match self {
            Binding::Stale => Check::Fail(Error::stale(stale_errno)),
            Binding::Open { epoch, file } => {
                if epoch.generation == at.generation {
                    Check::Use(file.clone())
                } else if epoch.generation > at.generation {
                    // An operation still running on a drained route: never hand it the newer
                    // volume's file (one operation, one volume); it may retry on the new route.
                    Check::Fail(Error::unavailable(libc::EIO))
                } else if epoch.volume == at.volume {
                    // A newer route over the same volume: the file is still the right one.
                    *epoch = at;
                    Check::Use(file.clone())
                } else {
                    Check::Reopen
                }
            }
            Binding::Released { epoch } => {
                if epoch.generation < at.generation {
                    Check::Reopen
                } else {
                    Check::Fail(Error::unavailable(libc::EIO))
                }
            }
        }
    }
}

impl FileHandle {
    /// The backend file for an operation running at `at`; re-opened through `reopen` when the
    /// handle belongs to an older route on another volume. `stale_errno` is what a stale handle
    /// answers.
    pub fn file(
        &self,
        at: Epoch,
        stale_errno: i32,
        reopen: impl FnOnce() -> Result<Reopen>,
    ) -> Result<Arc<dyn OpenFile>> {
        match self.bound.lock().check(at, stale_errno) {
            Check::Use(file) => return Ok(file),
            Check::Fail(e) => return Err(e),
            Check::Reopen => {}
        }
        // Re-open outside the lock; if two operations race, the first binding wins and the other
        // file is simply closed.
        let opened = reopen()?;
        let mut b = self.bound.lock();
        match b.check(at, stale_errno) {
            Check::Use(file) => Ok(file),
            Check::Fail(e) => Err(e),
            Check::Reopen => match opened {
                Reopen::Opened(file) => {
                    *b = Binding::Open {
                        epoch: at,
                        file: file.clone(),
                    };
                    Ok(file)
                }
                Reopen::Gone => {
                    tracing::warn!(
                        ino = self.ino,
                        "open handle has no file on the new volume; it answers the stale errno from now on"
                    );
                    *b = Binding::Stale;
                    Err(Error::stale(stale_errno))
                }
            },
        }
    }

    /// The generation the handle is bound to, or `None` when it is stale.
    pub fn generation(&self) -> Option<u64> {
        match &*self.bound.lock() {
            Binding::Open { epoch, .. } | Binding::Released { epoch } => Some(epoch.generation),
            Binding::Stale => None,
        }
    }

    /// The bound file and its epoch, if any.
    fn current(&self) -> Option<(Epoch, Arc<dyn OpenFile>)> {
        match &*self.bound.lock() {
            Binding::Open { epoch, file } => Some((*epoch, file.clone())),
            Binding::Released { .. } | Binding::Stale => None,
        }
    }

    /// Close the file if it belongs to another volume than `serial`; true when it did.
    fn release_unless_on(&self, serial: u64) -> bool {
        let mut b = self.bound.lock();
        match &*b {
            Binding::Open { epoch, .. } if epoch.volume != serial => {
                let epoch = *epoch;
                // The file itself closes when the last operation still using it lets go.
                *b = Binding::Released { epoch };
                true
            }
            _ => false,
        }
    }
}

/// One listed directory entry, resolved to our inode number when we know it.
#[derive(Clone, Debug)]
pub struct Listed {
    /// Entry name (`.` and `..` included, first).
    pub name: OsString,
    /// Entry type.
    pub kind: FileKind,
    /// The backend's inode number of the entry (0 when unknown).
    pub ino: u64,
}

/// An open directory: a listing taken at the first `readdir` from offset 0 and served from
/// memory after, so offsets stay valid across a switch of volume.
pub struct DirHandle {
    /// The directory's inode.
    pub ino: u64,
    listing: Mutex<Option<Arc<Vec<Listed>>>>,
}

impl DirHandle {
    /// The listing; taken (again) when `offset` is 0 or none was taken yet.
    pub fn listing(
        &self,
        offset: u64,
        list: impl FnOnce() -> Result<Vec<Listed>>,
    ) -> Result<Arc<Vec<Listed>>> {
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

    /// Register an open file bound to `file`, opened at `epoch`.
    pub fn open_file(&self, ino: u64, flags: i32, epoch: Epoch, file: Arc<dyn OpenFile>) -> u64 {
        self.insert(Handle::File(FileHandle {
            ino,
            flags,
            bound: Mutex::new(Binding::Open { epoch, file }),
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
    pub fn any_file_of(
        &self,
        ino: u64,
        at: Epoch,
        stale_errno: i32,
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
                        return Some(Ok(file));
                    }
                    older |= epoch.generation < at.generation;
                }
            }
        }
        older.then(|| Err(Error::stale(stale_errno)))
    }

    /// Call `f` with the inode of every open file handle.
    pub fn for_each_file(&self, mut f: impl FnMut(u64)) {
        for shard in self.shards.iter() {
            let inos: Vec<u64> = shard
                .read()
                .values()
                .filter_map(|h| match &**h {
                    Handle::File(f) => Some(f.ino),
                    Handle::Dir(_) => None,
                })
                .collect();
            inos.into_iter().for_each(&mut f);
        }
    }

    /// Close every open file that belongs to another volume than the one with `serial` (after
    /// a switch: nothing may keep the old volume's mount busy). Each handle re-opens on its next
    /// use, as it would have anyway. Returns how many files were closed.
    pub fn release_unless_on(&self, serial: u64) -> u64 {
        let mut closed = 0;
        for shard in self.shards.iter() {
            for h in shard.read().values() {
                if let Handle::File(f) = &**h {
                    closed += f.release_unless_on(serial) as u64;
                }
            }
        }
        closed
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

    #[test]
    fn one_operation_one_volume() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("f"), b"x").unwrap();
        let b = DirBackend::open(tmp.path()).unwrap();
        let open = || {
            b.open(
                std::path::Path::new("f"),
                libc::O_RDONLY,
                crate::backend::Caller::ROOT,
            )
        };
        let table = HandleTable::new();
        let at = |generation, volume| Epoch { generation, volume };
        let fh = table.open_file(2, libc::O_RDONLY, at(1, 0), open().unwrap());
        let h = table.file(fh).unwrap();
        let Handle::File(h) = &*h else { panic!() };
        // A newer route over the same volume keeps the file, without re-opening...
        let same = h.file(at(2, 0), libc::ESTALE, || unreachable!()).unwrap();
        assert_eq!(h.generation(), Some(2));
        drop(same);
        // ...another volume re-opens it...
        let reopened = h
            .file(at(3, 1), libc::ESTALE, || Ok(Reopen::Opened(open()?)))
            .unwrap();
        assert_eq!(h.generation(), Some(3));
        drop(reopened);
        // ...after which an operation still running on an older route gets no file at all.
        let e = h
            .file(at(2, 0), libc::ESTALE, || unreachable!())
            .err()
            .unwrap();
        assert_eq!(e.kind(), crate::error::Kind::Unavailable);
        // A file missing on the next volume makes the handle stale, for good.
        let e = h
            .file(at(4, 0), libc::ESTALE, || Ok(Reopen::Gone))
            .err()
            .unwrap();
        assert_eq!(e.errno(), libc::ESTALE);
        let e = h
            .file(at(5, 1), libc::ESTALE, || unreachable!())
            .err()
            .unwrap();
        assert_eq!(e.errno(), libc::ESTALE);

        // After a switch, files on other volumes are closed (the stale one has none)...
        let fh = table.open_file(2, libc::O_RDONLY, at(6, 7), open().unwrap());
        assert_eq!(table.release_unless_on(7), 0);
        assert_eq!(table.release_unless_on(8), 1);
        assert_eq!(table.release_unless_on(8), 0);
        let h = table.file(fh).unwrap();
        let Handle::File(h) = &*h else { panic!() };
        // ...an operation still on the old route gets nothing, and the next route re-opens,
        // even over the same volume (a switch back).
        assert!(h.file(at(6, 7), libc::ESTALE, || unreachable!()).is_err());
        let reopened = h.file(at(7, 7), libc::ESTALE, || Ok(Reopen::Opened(open()?)));
        assert!(reopened.is_ok());
        assert_eq!(h.generation(), Some(7));
    }
}
