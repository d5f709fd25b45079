//! The namespace: the one owner of what inode numbers and file handles mean.
//!
//! It holds the inode table ([`crate::inode`]: numbers, names, identities, directory pins) and
//! the handle table ([`crate::handles`]: open files and which volume they are bound to), and it
//! alone applies the rules that tie both to routes:
//! - **Identity.** An inode stands for one file. Every operation finds its file through
//!   [`Namespace::checked`] (or, for a directory, its pin): a name that now holds another file
//!   is `ESTALE`, never that other file; a directory is its pin on the serving volume.
//! - **Generations.** A switch to another volume is two calls, and the switch controller
//!   ([`crate::failover`]) makes only those: [`Namespace::prepare`] before the new route is
//!   published (identities and extra hard-link names of the old volume forgotten, pins on it
//!   dropped, handles that wrote there turned stale, its files let go of), and
//!   [`Namespace::settle`] after the old route's last operations are done (the same sweep again,
//!   what was left behind named, its files closed). [`Namespace::carry`] continues on the same
//!   volume under a new generation (identities and pins stay valid).
//! - **Re-opening.** A handle opened on an earlier volume re-opens by its inode's place on the
//!   current one ([`Namespace::reopen`]), or goes stale (see [`crate::handles`]).
//! - **Cached pages.** The kernel keeps a file's cached pages across an `open` only when
//!   [`Namespace::opened`] says so: the file's attributes on the same volume opening are what they
//!   were at its previous open, and had already settled then ([`open_stamp`]). Any change seen by
//!   another client, or a switch, makes the kernel drop them.

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use smallvec::SmallVec;

use crate::backend::{At, Attr, Caller, Dir, FileKind, Place};
use crate::error::{Error, Result};
use crate::handles::{Epoch, FileHandle, HandleTable, LeftBehind, Reopen, StaleWhy};
use crate::inode::{IdDigest, InodeTable, MAX_DEPTH, Name, ROOT, SETTLED, Seen, Whereabouts};
use crate::routing::{Ticket, Volume};
use crate::vfs::Entry;

/// See the module docs.
pub struct Namespace {
    pub(crate) inodes: InodeTable,
    pub(crate) handles: HandleTable,
    /// Handles that found their file missing when they tried to follow a switch, in all, and
    /// that count when the switch under way was prepared: an operation may re-open a handle
    /// between [`Namespace::prepare`] and [`Namespace::settle`], and its handle must still count
    /// as missing on the new volume.
    gone: AtomicU64,
    gone_at_prepare: AtomicU64,
    /// Names found holding another file than the node the kernel has for them: the kernel's
    /// entries must be dropped (from outside a FUSE worker: see `crate::fuse`), so that its next
    /// use of the name looks it up again instead of reaching the old node.
    stale_names: parking_lot::Mutex<Vec<Stale>>,
    stale_names_wake: std::sync::Arc<tokio::sync::Notify>,
}

/// Something the kernel cached that no longer holds, to be dropped from outside a FUSE worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stale {
    /// The kernel's entry for a name in a directory.
    Entry(u64, OsString),
    /// The kernel's cached attributes of an inode (not its pages).
    Attributes(u64),
}

/// What [`Namespace::prepare`] left for the rest of the switch.
pub struct Prepared {
    /// Names unmapped because they were extra hard links on the old volume: the kernel's entries
    /// for them must be invalidated.
    pub detached: Vec<(u64, OsString)>,
    /// Open files let go of, and inodes whose handles wrote on the old volume.
    pub left: LeftBehind,
}

/// What [`Namespace::settle`] found once the switch was done.
pub struct Settled {
    /// Paths of files whose handles wrote on the old volume (now stale), sorted.
    pub wrote: Vec<PathBuf>,
    /// Open files of the old volume closed.
    pub released: u64,
    /// Open handles whose file does not exist on the new volume.
    pub missing: u64,
}

impl Namespace {
    /// A namespace serving `volume` under route `generation`.
    pub fn new(generation: u64, volume: &Volume) -> Namespace {
        let inodes = InodeTable::new();
        inodes.begin_generation(generation, volume.backend.root_id());
        inodes.set_pin_limit(pin_limit());
        inodes.release_pins(volume.serial());
        Namespace {
            inodes,
            handles: HandleTable::new(),
            gone: AtomicU64::new(0),
            gone_at_prepare: AtomicU64::new(0),
            stale_names: parking_lot::Mutex::new(Vec::new()),
            stale_names_wake: std::sync::Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// What the kernel must drop from its caches (see `stale_names`), taken.
    pub fn take_stale_names(&self) -> Vec<Stale> {
        std::mem::take(&mut *self.stale_names.lock())
    }

    /// Notified when a name is added to those.
    pub fn stale_names_wake(&self) -> std::sync::Arc<tokio::sync::Notify> {
        self.stale_names_wake.clone()
    }

    fn name_went_stale(&self, parent: u64, name: &OsStr) {
        self.stale_names
            .lock()
            .push(Stale::Entry(parent, name.to_owned()));
        self.stale_names_wake.notify_one();
    }

    /// The volume changed `ino`'s attributes beyond what the request asked (set-ID bits dropped
    /// by a write): the kernel's cached attributes must be dropped (its pages stay).
    pub(crate) fn attributes_went_stale(&self, ino: u64) {
        self.stale_names.lock().push(Stale::Attributes(ino));
        self.stale_names_wake.notify_one();
    }

    /// Before a switch to `volume` under `generation` is published; see the module docs. Only
    /// table locks, never I/O: files are closed by dropping [`Prepared::left`].
    pub fn prepare(&self, generation: u64, volume: &Volume) -> Prepared {
        // Backend identities of the old volume mean nothing on the new one, and names that were
        // hard links there must be looked up again.
        self.inodes
            .begin_generation(generation, volume.backend.root_id());
        let detached = self.inodes.detach_extra_links();
        self.gone_at_prepare
            .store(self.gone.load(Ordering::Relaxed), Ordering::Relaxed);
        // Before anything runs on the new volume: handles that wrote on the old one must not
        // follow (see `crate::handles`).
        let left = self.leave_old(generation, volume);
        Prepared { detached, left }
    }

    /// After the switch published `volume` under `generation`: operations of the old route that
    /// were still running may have opened, written or pinned since [`Namespace::prepare`], so
    /// sweep again; then close every file of the old volume (this may block on a dead volume:
    /// the caller bounds it).
    pub fn settle(&self, generation: u64, volume: &Volume, prepared: LeftBehind) -> Settled {
        let late = self.leave_old(generation, volume);
        let mut wrote = prepared.wrote;
        wrote.extend(late.wrote);
        let wrote = self.paths_of(&wrote);
        let released = (prepared.files.len() + late.files.len()) as u64;
        drop((prepared.files, late.files));
        Settled {
            wrote,
            released,
            missing: self.handles_missing_on(volume) + self.gone.load(Ordering::Relaxed)
                - self.gone_at_prepare.load(Ordering::Relaxed),
        }
    }

    /// Every inode number the kernel may hold (what a switch invalidates).
    pub fn known(&self) -> Vec<u64> {
        self.inodes.known()
    }

    /// `ino` was opened on `volume` with attributes `attr`: may the kernel keep the pages it
    /// cached for it? See the module docs.
    pub fn opened(&self, ino: u64, attr: &Attr, volume: &Volume) -> bool {
        self.inodes.reopened(ino, stamp_now(attr, volume))
    }

    /// Directory `ino` was opened on `volume` with attributes `attr`: may the kernel keep the
    /// listing it cached, and should it cache listings of it at all? See
    /// [`InodeTable::dir_opened`].
    pub fn dir_opened(&self, ino: u64, attr: &Attr, volume: &Volume) -> (bool, bool) {
        self.inodes.dir_opened(ino, stamp_now(attr, volume))
    }

    /// Continue on the same volume under `generation`: identities and pins stay valid.
    pub fn carry(&self, generation: u64) {
        self.inodes.carry_generation(generation);
    }

    /// After a switch to `volume` under `generation`: let go of the old volume's files and
    /// directory pins, and turn stale the handles that wrote there (see [`crate::handles`]). Idempotent: the switch runs
    /// it before the publish, and once more after, for operations of the old route that were
    /// still running.
    fn leave_old(&self, generation: u64, volume: &Volume) -> LeftBehind {
        // Directories pinned on the old volume: no descriptor may stay there.
        self.inodes.release_pins(volume.serial());
        self.handles.leave_old(Epoch {
            generation,
            volume: volume.serial(),
            index: volume.index,
        })
    }

    /// The paths of `inos`, sorted, once each (an inode with no path is named by number).
    fn paths_of(&self, inos: &[u64]) -> Vec<PathBuf> {
        let mut paths: Vec<PathBuf> = inos
            .iter()
            .map(|&ino| {
                self.inodes
                    .path(ino)
                    .unwrap_or_else(|_| PathBuf::from(format!("<unlinked inode {ino}>")))
            })
            .collect();
        paths.sort();
        paths.dedup();
        paths
    }

    /// Open file handles whose file does not exist on `volume` (they will answer the stale errno
    /// once used there).
    fn handles_missing_on(&self, volume: &Volume) -> u64 {
        let mut missing = 0;
        self.handles.for_each_file(|ino| {
            let gone = match self.inodes.path(ino) {
                Ok(path) => {
                    let place = Place::of_path(&path);
                    matches!(volume.backend.stat(place.at()), Err(e) if e.errno() == libc::ENOENT)
                }
                Err(_) => true,
            };
            missing += gone as u64;
        });
        missing
    }

    /// Record a lookup of `parent/name`, found with `attr` on ticket `t`'s volume (an entry of a
    /// listing, a create, a link...).
    pub(crate) fn entry(&self, t: &Ticket, parent: u64, name: &OsStr, attr: Attr) -> Result<Entry> {
        self.record(t, parent, name, attr, false)
    }

    /// [`Namespace::entry`] for the kernel's own lookup of the name: it also counts as a lookup
    /// in `parent` (see [`InodeTable::note_child_lookup`]).
    pub(crate) fn looked_up(
        &self,
        t: &Ticket,
        parent: u64,
        name: &OsStr,
        attr: Attr,
    ) -> Result<Entry> {
        self.record(t, parent, name, attr, true)
    }

    fn record(
        &self,
        t: &Ticket,
        parent: u64,
        name: &OsStr,
        attr: Attr,
        by_name: bool,
    ) -> Result<Entry> {
        let generation = t.generation();
        let ino = self.inodes.lookup(
            parent, name, attr.kind, attr.id, attr.nlink, generation, by_name,
        )?;
        Ok(Entry { ino, attr })
    }

    /// The path of `ino` on ticket `t`'s volume, checked: `check` runs on it and returns what it
    /// made of the file there with the file's attributes. When the name no longer holds the file
    /// (gone, or another file took it) the next name of the file is tried (hard links); with
    /// none left, `ESTALE`. The kernel answers `ESTALE` from a path-based call (open, stat,
    /// chmod, ...) by looking the name up again, bypassing its caches: the application then gets
    /// the file the name holds now, or `ENOENT`, never the wrong file and never a stale `ENOENT`
    /// for a file that was renamed by another client and is back. A node last seen under an
    /// earlier generation (before a switch) accepts what the new volume has. A name found
    /// holding another file is also dropped from the kernel's cache (in the background).
    pub(crate) fn checked<T>(
        &self,
        t: &Ticket,
        ino: u64,
        check: impl FnMut(At<'_>) -> Result<(T, Attr)>,
    ) -> Result<(Place, T)> {
        self.checked_as(t, ino, false, check)
    }

    /// [`Namespace::checked`] for an open or a change (`strict`): when a name had to be dropped
    /// on the way to the file, the answer is `ESTALE` even though another name still holds it,
    /// because the kernel may have come through the dropped name and must look it up again
    /// rather than reach this file under it. Reads of attributes are not strict: the node's
    /// attributes are right whichever name the kernel used.
    pub(crate) fn checked_as<T>(
        &self,
        t: &Ticket,
        ino: u64,
        strict: bool,
        mut check: impl FnMut(At<'_>) -> Result<(T, Attr)>,
    ) -> Result<(Place, T)> {
        let mut dropped = false;
        loop {
            let mut parent_of_name = None;
            let (place, known) = match self.inodes.whereabouts(ino, t.volume().serial())? {
                Whereabouts::Pinned(pin) => {
                    // A pinned directory is that very directory, unless it was removed: then
                    // the kernel should look its name up again, as for any file that is gone.
                    let place = itself(Dir::Pinned(pin));
                    let (v, attr) = check(place.at())?;
                    if attr.nlink == 0 {
                        return Err(Error::posix(libc::ESTALE));
                    }
                    return Ok((place, v));
                }
                Whereabouts::Root => (itself(Dir::Root), None),
                Whereabouts::Named { parent, name, seen } => match self.dir_of(t, parent) {
                    Ok(dir) => {
                        parent_of_name = Some(parent);
                        (Place { dir, name }, seen)
                    }
                    // The directory of this name is gone: like a check that failed here.
                    Err(e) if matches!(e.errno(), libc::ENOENT | libc::ESTALE) => {
                        if self.inodes.places(ino) > 1 {
                            self.inodes.drop_first_place(ino);
                            dropped = true;
                            continue;
                        }
                        return Err(Error::posix(libc::ESTALE));
                    }
                    Err(e) => return Err(e),
                },
            };
            match check(place.at()) {
                Ok((v, attr)) => match known {
                    Some((generation, id))
                        if generation == t.generation() && id != IdDigest::of(&attr.id) => {}
                    _ if dropped && strict => return Err(Error::posix(libc::ESTALE)),
                    _ => return Ok((place, v)),
                },
                Err(e) if e.errno() == libc::ENOENT && ino != ROOT => {}
                Err(e) => return Err(e),
            }
            if self.inodes.places(ino) > 1 {
                // That name holds another file now. The kernel may have come through it: drop
                // its entry and answer ESTALE once the node is found under another name, so
                // the kernel looks the name it used up again (it retries once, with a real
                // lookup) instead of acting on the other name's file.
                if let Some(parent) = parent_of_name {
                    self.name_went_stale(parent, &place.name);
                }
                self.inodes.drop_first_place(ino);
                dropped = true;
                continue;
            }
            return Err(Error::posix(libc::ESTALE));
        }
    }

    /// The checked place of `ino` (see [`Namespace::checked`]) and the file's attributes there.
    pub(crate) fn located(&self, t: &Ticket, ino: u64) -> Result<(Place, Attr)> {
        let backend = &t.volume().backend;
        self.checked(t, ino, |at| backend.stat(at).map(|a| (a, a)))
    }

    /// For a node with several names (hard links), check that each name but the one
    /// [`Namespace::checked`] used still holds the file with `attr`'s identity: a name that
    /// holds another file now is forgotten, its kernel entry dropped, and the answer is ESTALE,
    /// so that the kernel looks the name it came through up again (it may have been that one,
    /// and an open must never reach one file under another's name). Opens and changes check
    /// this; reads of attributes need not (the node's attributes are right whatever its names).
    pub(crate) fn check_other_names(&self, t: &Ticket, ino: u64, attr: &Attr) -> Result<()> {
        let others = self.inodes.other_places(ino);
        if others.is_empty() {
            return Ok(());
        }
        let backend = &t.volume().backend;
        let mut dropped = false;
        for (parent, name) in others {
            let holds = match self.dir_of(t, parent) {
                Ok(dir) => match backend.stat(At {
                    dir: &dir,
                    name: &name,
                }) {
                    Ok(a) => a.id == attr.id,
                    Err(e) if matches!(e.errno(), libc::ENOENT | libc::ESTALE) => false,
                    Err(e) => return Err(e),
                },
                Err(e) if matches!(e.errno(), libc::ENOENT | libc::ESTALE) => false,
                Err(e) => return Err(e),
            };
            if !holds && self.inodes.drop_place(parent, &name, ino) {
                self.name_went_stale(parent, &name);
                dropped = true;
            }
        }
        if dropped {
            return Err(Error::posix(libc::ESTALE));
        }
        Ok(())
    }

    /// The checked place of `ino`, held (see [`crate::backend::Backend::hold`]) where the
    /// backend can: the place returned addresses the very file whose identity was checked, so
    /// a change made through it never lands on another file that took the name meanwhile.
    /// Every change by place goes through here.
    pub(crate) fn located_held(&self, t: &Ticket, ino: u64) -> Result<(Place, Attr)> {
        let backend = &t.volume().backend;
        let (place, (held, attr)) =
            self.checked_as(t, ino, true, |at| match backend.hold(at)? {
                Some((held, attr)) => Ok(((Some(held), attr), attr)),
                None => backend.stat(at).map(|a| ((None, a), a)),
            })?;
        self.check_other_names(t, ino, &attr)?;
        Ok(match held {
            Some(held) => (itself(Dir::Pinned(held)), attr),
            None => (place, attr),
        })
    }

    /// Where `ino` is on ticket `t`'s volume, unchecked: a pinned directory itself, else its
    /// first name in its parent directory.
    pub(crate) fn place_of(&self, t: &Ticket, ino: u64) -> Result<Place> {
        Ok(match self.inodes.whereabouts(ino, t.volume().serial())? {
            Whereabouts::Pinned(pin) => itself(Dir::Pinned(pin)),
            Whereabouts::Root => itself(Dir::Root),
            Whereabouts::Named { parent, name, .. } => Place {
                dir: self.dir_of(t, parent)?,
                name,
            },
        })
    }

    /// Directory `ino` on ticket `t`'s volume, for an operation in it: its pin when the backend
    /// pins (made now, with its ancestors', when the node holds none for this volume), else its
    /// path. A directory whose name now holds another directory is `ESTALE` (the kernel looks
    /// the name up again).
    pub(crate) fn dir_of(&self, t: &Ticket, ino: u64) -> Result<Dir> {
        let volume = t.volume();
        let serial = volume.serial();
        // Walk up to the nearest pinned directory (or the root), then pin back down.
        let mut chain: SmallVec<[(u64, Name, Seen); 8]> = SmallVec::new();
        let mut cur = ino;
        let mut dir = loop {
            match self.inodes.whereabouts(cur, serial)? {
                Whereabouts::Pinned(pin) => break Dir::Pinned(pin),
                Whereabouts::Root => break Dir::Root,
                Whereabouts::Named { parent, name, seen } => {
                    if chain.len() >= MAX_DEPTH {
                        return Err(Error::invalid(libc::ELOOP));
                    }
                    chain.push((cur, name, seen));
                    cur = parent;
                }
            }
        };
        while let Some((node, name, known)) = chain.pop() {
            let at = At {
                dir: &dir,
                name: &name,
            };
            let Some((pin, attr)) = volume.backend.pin(at)? else {
                // A backend without pins: by path.
                dir = Dir::Path(at.path().ok_or(Error::invalid(libc::EINVAL))?);
                continue;
            };
            if let Some((generation, id)) = known
                && generation == t.generation()
                && id != IdDigest::of(&attr.id)
            {
                return Err(Error::posix(libc::ESTALE));
            }
            self.inodes.set_pin(node, serial, pin.clone());
            dir = Dir::Pinned(pin);
        }
        Ok(dir)
    }

    /// A directory just found at `name` in `dir` (lookup, mkdir): pin it while its identity is
    /// known to be the one the kernel was told, so that a later rename by another client cannot
    /// redirect operations in it.
    pub(crate) fn pin_found(&self, t: &Ticket, dir: &Dir, name: &OsStr, entry: &Entry) {
        let serial = t.volume().serial();
        if entry.attr.kind != FileKind::Dir
            || self.inodes.pins_full()
            || self.inodes.pinned(entry.ino, serial).is_some()
        {
            return;
        }
        if let Ok(Some((pin, attr))) = t.volume().backend.pin(At { dir, name })
            && attr.id == entry.attr.id
        {
            self.inodes.set_pin(entry.ino, serial, pin);
        }
    }

    /// Re-open handle `h` on ticket `t`'s volume after a switch from the volume at table position
    /// `from`.
    pub(crate) fn reopen(&self, t: &Ticket, h: &FileHandle, from: usize) -> Result<Reopen> {
        let r = self.reopen_on(t, h, from);
        if let Ok(Reopen::Gone(StaleWhy::Gone)) = r {
            self.gone.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    fn reopen_on(&self, t: &Ticket, h: &FileHandle, from: usize) -> Result<Reopen> {
        let volume = t.volume();
        let place = match self.place_of(t, h.ino) {
            Ok(p) => p,
            Err(e) if e.errno() == libc::ENOENT => return Ok(Reopen::Gone(StaleWhy::Gone)),
            Err(e) => return Err(e),
        };
        let flags = h.flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC);
        // Without O_TRUNC, the caller plays no part in opening.
        let (file, now) = match volume.backend.open(place.at(), flags, Caller::ROOT) {
            Ok(f) => f,
            Err(e) if e.errno() == libc::ENOENT => return Ok(Reopen::Gone(StaleWhy::Gone)),
            Err(e) => return Err(e),
        };
        // The same volume re-opened (a remount) holds the same data: nothing to verify.
        if let Some((size, mtime)) = h.opened_as.filter(|_| from != volume.index)
            && (now.size, now.mtime) != (size, mtime)
        {
            return Ok(Reopen::Gone(StaleWhy::Differs));
        }
        Ok(Reopen::Opened(file))
    }
}

/// The place of a directory itself.
pub(crate) fn itself(dir: Dir) -> Place {
    static EMPTY: std::sync::LazyLock<Name> = std::sync::LazyLock::new(|| OsStr::new("").into());
    Place {
        dir,
        name: EMPTY.clone(),
    }
}

/// How many directories the inode table may pin: a quarter of the descriptors this process may
/// open (the rest are for open files and the daemon itself).
pub(crate) fn pin_limit() -> usize {
    let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| soft);
    usize::try_from(soft / 4)
        .unwrap_or(usize::MAX)
        .clamp(64, 1 << 20)
}

/// How long after its last change a file counts as settled. Timestamps are coarse (the kernel's
/// clock tick; whole seconds on some network filesystems): a change within the same tick as the
/// one before leaves them as they were. A change *after* a settled stamp was taken shows in them.
pub const SETTLE_TIME: std::time::Duration = std::time::Duration::from_secs(2);

fn stamp_now(attr: &Attr, volume: &Volume) -> u64 {
    open_stamp(attr, volume.serial(), std::time::SystemTime::now())
}

/// What a file is at an `open`, for [`InodeTable::reopened`]: a digest of the volume opening,
/// the backend identity, size, modification and change times, with the [`SETTLED`] bit set when
/// both times lie at least [`SETTLE_TIME`] before `now`. Never 0 (the "never opened" mark).
pub fn open_stamp(attr: &Attr, volume: u64, now: std::time::SystemTime) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    (volume, attr.id.dev, attr.id.ino, attr.id.birth, attr.size).hash(&mut h);
    attr.mtime.hash(&mut h);
    attr.ctime.hash(&mut h);
    let newest = attr.mtime.max(attr.ctime);
    // A time in the future (another clock) is not settled.
    let settled = now
        .duration_since(newest)
        .is_ok_and(|age| age >= SETTLE_TIME);
    (h.finish() & !SETTLED) | 2 | if settled { SETTLED } else { 0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::FileId;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    fn attr(changed: SystemTime) -> Attr {
        Attr {
            kind: FileKind::File,
            perm: 0o644,
            nlink: 1,
            uid: 0,
            gid: 0,
            rdev: 0,
            size: 10,
            blocks: 1,
            blksize: 4096,
            atime: changed,
            mtime: changed,
            ctime: changed,
            id: FileId {
                dev: 1,
                ino: 2,
                birth: 3,
            },
        }
    }

    #[test]
    fn a_stamp_settles_two_seconds_after_the_last_change_and_names_its_volume() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let old = attr(now - SETTLE_TIME);
        assert_ne!(open_stamp(&old, 7, now) & SETTLED, 0, "settled");
        let fresh = attr(now - SETTLE_TIME + Duration::from_millis(1));
        assert_eq!(
            open_stamp(&fresh, 7, now) & SETTLED,
            0,
            "changed too recently"
        );
        let mut ctime_fresh = old;
        ctime_fresh.ctime = fresh.ctime;
        assert_eq!(
            open_stamp(&ctime_fresh, 7, now) & SETTLED,
            0,
            "ctime counts"
        );
        let future = attr(now + Duration::from_secs(60));
        assert_eq!(
            open_stamp(&future, 7, now) & SETTLED,
            0,
            "another clock ahead"
        );
        assert_ne!(open_stamp(&old, 7, now), 0);
        // Another volume opening (a switch), size, times or identity: another stamp.
        let base = open_stamp(&old, 7, now);
        assert_ne!(open_stamp(&old, 8, now), base);
        let mut other = old;
        other.size = 11;
        assert_ne!(open_stamp(&other, 7, now), base);
        let mut other = old;
        other.ctime += Duration::from_nanos(1);
        assert_ne!(open_stamp(&other, 7, now) | SETTLED, base | SETTLED);
        let mut other = old;
        other.id.birth = 4;
        assert_ne!(open_stamp(&other, 7, now), base);
    }

    #[test]
    fn pages_are_kept_only_for_a_settled_stamp_seen_twice_in_a_row() {
        let t = InodeTable::new();
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let settled = open_stamp(&attr(now - SETTLE_TIME), 7, now);
        let unsettled = open_stamp(&attr(now), 7, now);
        let on_standby = open_stamp(&attr(now - SETTLE_TIME), 8, now);
        assert!(!t.reopened(ROOT, settled), "first open");
        assert!(t.reopened(ROOT, settled), "unchanged");
        assert!(!t.reopened(ROOT, on_standby), "after a switch");
        assert!(
            !t.reopened(ROOT, settled),
            "back: the previous open differed"
        );
        assert!(!t.reopened(ROOT, unsettled));
        assert!(!t.reopened(ROOT, unsettled), "never kept unsettled");
        assert!(!t.reopened(42, settled), "unknown inode");
    }
}
