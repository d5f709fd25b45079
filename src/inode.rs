//! The inode table: failoverfs's own inode numbers, mapped to places in the volume.
//!
//! The kernel knows files by inode number. The numbers are ours, not the backend's: each maps to
//! a place (parent inode + name), so the same path keeps the same number when the route switches
//! to another volume whose own inode numbers mean nothing to us.
//!
//! What an inode number means: **one file**, not one name. The volume is shared, so other
//! clients rename, delete and re-create files under us at any time; every lookup compares the
//! backend's identity of what the name holds now ([`FileId`]: device, inode, birth time) with what
//! the name's node holds, and a different file gets a different number.
//!
//! Invariants:
//! - A number stands for one file while the kernel may hold it: a node is freed only when the
//!   kernel forgot every lookup of it (`nlookup == 0`) and no child is mapped beneath it, and only
//!   then can its number be handed out again.
//! - A new node takes the file's backend inode number when that number is free and the file
//!   lives on the volume root's device, so `st_ino` of an unchanged file survives the kernel
//!   forgetting it (tar, `rsync -H`, `find -inum` and git's index rely on that) and `d_ino` in a
//!   listing equals `st_ino`. Otherwise (a collision with a number the kernel still holds, another
//!   device, or no known root) it gets a number of our own, `>= OWN_BASE`, from a counter that
//!   never repeats. The generation the kernel sees is always 0.
//! - A node stays in the table while the kernel holds lookups on it, or while a child is still
//!   mapped beneath it; `forget` brings the count down and frees the node, so a walk over a
//!   million files costs memory only while the kernel caches them.
//! - Every name mapped in a directory's `children` refers to a node that exists, and that node
//!   lists the name among its places. Rename, unlink and link keep both sides in step.
//! - A node may have several places (hard links, joined only when the file has several links).
//!   Nodes whose last place was unlinked are *detached*: still valid for open handles and until
//!   `forget`, but they have no path.
//! - Identities are remembered per route generation only: a new generation (a switch to another
//!   volume) starts with an empty identity index, and a node looked up under an older generation
//!   keeps its number when its name is found again on the new volume.
//! - No global lock: nodes live in shards by inode number, and an operation that spans nodes
//!   locks their shards in ascending shard order, then re-checks what it read before locking.
//!   The identity index's locks are never held together with a shard's, in either order.
//! - A directory node may hold a [`Pin`] of its directory on one volume opening (by
//!   [`crate::routing::Volume::serial`]): operations in it then address that very directory,
//!   never a path that another client's rename may have redirected. A pin is only handed out
//!   for the opening it was made on; a switch drops the others ([`InodeTable::release_pins`]:
//!   no descriptor may be left on the old volume), and a node's pin goes with the node. At most
//!   [`InodeTable::set_pin_limit`] pins are held; beyond that directories are named by path.
//! - What a switch must find before the new route serves is found without visiting every node:
//!   each shard lists its nodes that hold a pin (in step with the nodes, under the shard's
//!   lock), and a flag tells whether any node may have more than one place (set when a second
//!   place is added, cleared by the switch's sweep). A switch with a million files known then
//!   costs what the pins and hard links cost, not what the table holds.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use parking_lot::{Mutex, MutexGuard};
use smallvec::SmallVec;

use crate::backend::{FileId, FileKind, Pin};
use crate::error::{Error, Result};

/// The root directory's inode number, fixed by FUSE.
pub const ROOT: u64 = 1;

const SHARDS: usize = 64;
/// Inode numbers from here up are handed out by our own counter (never reused); below it, a
/// file's number is its backend inode number when that is free.
pub const OWN_BASE: u64 = 1 << 32;
/// Deepest path we are willing to build; deeper means the table is corrupt.
pub const MAX_DEPTH: usize = 4096;

/// A name in a directory, shared between the table and the operations that use it.
pub type Name = Arc<OsStr>;

/// A file's backend identity and the route generation it was seen under (`None`: not known).
pub type Seen = Option<(u64, IdDigest)>;

/// A backend identity ([`FileId`], 24 bytes) as the table keeps it: a 64-bit digest. Two files
/// whose identities share a digest would be taken for one; the chance, 2^-64 per comparison, is
/// far below the inode-number reuse that filesystems without birth times already let through.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IdDigest(u64);

impl IdDigest {
    /// The digest of `id` (SipHash with fixed keys: the same in every process).
    pub fn of(id: &FileId) -> Self {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        IdDigest(BuildHasherDefault::<DefaultHasher>::default().hash_one(id))
    }
}

/// One file the kernel may know. Field order and widths are chosen for size (72 bytes, boxed in
/// the shard maps): a mount that knows a million files keeps a million of these.
#[derive(Debug)]
struct Node {
    /// Kernel lookup count.
    nlookup: u64,
    /// Places of this node: (parent, name). Empty when detached. The first is the primary.
    places: SmallVec<[(u64, Name); 1]>,
    /// What only a directory holds (nothing for files).
    dir: DirPart,
    /// Backend identity, valid when `id_generation` is not [`NOT_SEEN`].
    id: IdDigest,
    /// What the file was when it was last opened ([`InodeTable::reopened`]; 0: never).
    opened: u64,
    /// The route generation `id` was observed under ([`pack_generation`]), or [`NOT_SEEN`].
    id_generation: u32,
    kind: FileKind,
}

/// What [`InodeTable::join_known`] made of a file it may know under another name.
enum Join {
    /// The name joined the node of that number.
    Joined(u64),
    /// No node holds that identity.
    Unknown,
    /// The node or the name changed while nothing was locked: look again.
    Retry,
}

/// A node's `id_generation` when its backend identity is not known.
const NOT_SEEN: u32 = u32::MAX;

/// A route generation as a node stores it. Generations count switches and remounts (one each),
/// so 32 bits never run out in practice; past `NOT_SEEN - 1` they saturate, and the table then
/// takes every lookup for the first after a switch (hard links are no longer joined).
fn pack_generation(generation: u64) -> u32 {
    generation.min(u64::from(NOT_SEEN - 1)) as u32
}

impl Node {
    fn new(kind: FileKind, places: SmallVec<[(u64, Name); 1]>, seen: Seen) -> Box<Self> {
        let mut node = Box::new(Node {
            nlookup: 1,
            places,
            dir: DirPart::default(),
            id: IdDigest::default(),
            opened: 0,
            id_generation: NOT_SEEN,
            kind,
        });
        if let Some((generation, id)) = seen {
            node.set_seen(generation, id);
        }
        node
    }

    /// The backend identity and the generation it was seen under.
    fn seen(&self) -> Seen {
        (self.id_generation != NOT_SEEN).then_some((u64::from(self.id_generation), self.id))
    }

    /// Record `id` seen under `generation`; returns what was recorded before.
    fn set_seen(&mut self, generation: u64, id: IdDigest) -> Seen {
        let before = self.seen();
        self.id_generation = pack_generation(generation);
        self.id = id;
        before
    }

    /// Record the open stamp `stamp`; whether the kernel may keep what it cached: the same stamp
    /// as at the previous open, and settled then.
    fn reopened_as(&mut self, stamp: u64) -> bool {
        let before = std::mem::replace(&mut self.opened, stamp);
        before == stamp && stamp & SETTLED != 0
    }

    fn unreferenced(&self) -> bool {
        self.nlookup == 0 && self.dir.has_no_children()
    }

    fn remove_place(&mut self, parent: u64, name: &OsStr) -> bool {
        match self
            .places
            .iter()
            .position(|(p, n)| *p == parent && **n == *name)
        {
            Some(i) => {
                // Keep the order: the first remaining place becomes the primary.
                self.places.remove(i);
                true
            }
            None => false,
        }
    }
}

/// One shard: nodes by inode number, and which of them hold a pin.
#[derive(Debug, Default)]
struct Shard {
    /// Boxed: the map's slots (a power of two, up to 8/7 of the nodes, more just after growing)
    /// then cost 16 bytes each instead of a whole node.
    nodes: HashMap<u64, Box<Node>>,
    /// The nodes of this shard that hold a pin, so a switch finds them without walking every
    /// node ([`InodeTable::release_pins`]). Kept in step with the nodes under the shard's lock.
    pinned: Vec<u64>,
}

impl Shard {
    /// `ino` no longer holds a pin.
    fn unpinned(&mut self, ino: u64) {
        if let Some(i) = self.pinned.iter().position(|&p| p == ino) {
            self.pinned.swap_remove(i);
        }
    }
}

impl std::ops::Deref for Shard {
    type Target = HashMap<u64, Box<Node>>;
    fn deref(&self) -> &Self::Target {
        &self.nodes
    }
}

impl std::ops::DerefMut for Shard {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.nodes
    }
}

/// What only a directory node holds: allocated on first use, one word in the node until then
/// (most nodes are files, and there is a node for every file the kernel knows).
#[derive(Debug, Default)]
struct DirPart(Option<Box<DirState>>);

#[derive(Debug, Default)]
struct DirState {
    /// Names mapped in this directory.
    children: HashMap<Name, u64>,
    /// The directory pinned on one volume opening.
    pin: Option<(u64, Pin)>,
    /// Kernel lookups of names in it (wrapping), and the count at its last open.
    child_lookups: u32,
    lookups_at_open: u32,
    /// `readdirplus` was asked past the first batch since it was last opened
    /// ([`InodeTable::dir_opened`]).
    listed_with_stats: bool,
}

impl DirPart {
    fn state(&mut self) -> &mut DirState {
        self.0.get_or_insert_default()
    }

    /// Free the state once it holds nothing a fresh one would not (counters in step read as
    /// zeros in step).
    fn tidy(&mut self) {
        if let Some(s) = &mut self.0
            && s.children.is_empty()
        {
            // A map that held many names keeps its capacity: let it go.
            s.children = HashMap::new();
            if s.pin.is_none() && !s.listed_with_stats && s.child_lookups == s.lookups_at_open {
                self.0 = None;
            }
        }
    }

    fn child(&self, name: &OsStr) -> Option<&u64> {
        self.0.as_ref()?.children.get(name)
    }

    fn has_child(&self, name: &OsStr) -> bool {
        self.child(name).is_some()
    }

    fn insert_child(&mut self, name: Name, ino: u64) -> Option<u64> {
        self.state().children.insert(name, ino)
    }

    fn remove_child(&mut self, name: &OsStr) -> Option<u64> {
        let removed = self.0.as_mut()?.children.remove(name);
        self.tidy();
        removed
    }

    fn has_no_children(&self) -> bool {
        self.0.as_ref().is_none_or(|s| s.children.is_empty())
    }

    fn pin(&self) -> Option<&(u64, Pin)> {
        self.0.as_ref()?.pin.as_ref()
    }

    fn take_pin(&mut self) -> Option<(u64, Pin)> {
        let pin = self.0.as_mut()?.pin.take();
        self.tidy();
        pin
    }
}

/// Where an inode is; see [`InodeTable::whereabouts`].
#[derive(Clone)]
pub enum Whereabouts {
    /// The volume root.
    Root,
    /// A directory, by its pin on the volume opening asked about.
    Pinned(Pin),
    /// A name in a directory.
    Named {
        /// The directory.
        parent: u64,
        /// The name (the inode's first).
        name: Name,
        /// The identity the file was last seen with.
        seen: Seen,
    },
}

/// Counts for tests, metrics and the status API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableStats {
    /// Nodes in the table, root included.
    pub nodes: usize,
}

/// See the module docs.
#[derive(Debug)]
pub struct InodeTable {
    shards: Box<[Mutex<Shard>]>,
    next: AtomicU64,
    nodes: AtomicUsize,
    /// Backend identity ([`IdDigest`]) → inode, for the current generation: how hard links and
    /// files renamed by other clients are recognised. A hit is checked against the node's own
    /// identity before it is believed.
    ids: Box<[Mutex<HashMap<u64, u64>>]>,
    id_generation: AtomicU64,
    /// The current volume root's device and inode number (`ROOT_UNKNOWN` when unknown): derived
    /// numbers belong to that device. Written only by `begin_generation`; a lookup racing with it
    /// may derive from a mix of old and new values, which only changes which free number a new
    /// node gets, never whether a held number is handed out.
    root_dev: AtomicU64,
    root_ino: AtomicU64,
    /// Pins held, and how many may be.
    pins: AtomicUsize,
    pin_limit: AtomicUsize,
    /// The volume opening pins may be made on (see [`InodeTable::release_pins`]).
    serving: AtomicU64,
    /// Set when a node gets a second place (a hard link joined, or a rename onto a name the node
    /// did not hold), cleared by [`InodeTable::detach_extra_links`] before it looks: while clear,
    /// no node has more than one place and the switch need not walk the table for them.
    linked: AtomicBool,
}

const ROOT_UNKNOWN: u64 = 0;

/// The bit of an open stamp saying the file had settled when it was taken.
pub const SETTLED: u64 = 1;

/// Pins held at most unless told otherwise ([`InodeTable::set_pin_limit`]).
const DEFAULT_PIN_LIMIT: usize = 4096;

/// Shard guards held together, in ascending shard order.
struct Locked<'a> {
    guards: SmallVec<[(usize, MutexGuard<'a, Shard>); 4]>,
}

impl Locked<'_> {
    fn shard(&mut self, ino: u64) -> &mut Shard {
        let idx = shard_of(ino);
        match self.guards.iter_mut().find(|(i, _)| *i == idx) {
            Some((_, g)) => g,
            // Every caller locks the shards of every inode it touches; reaching this is a bug in
            // this module, caught by the tests.
            None => unreachable!("shard {idx} not locked"),
        }
    }

    fn node(&mut self, ino: u64) -> Option<&mut Node> {
        self.shard(ino).get_mut(&ino).map(|n| &mut **n)
    }

    fn child(&mut self, parent: u64, name: &OsStr) -> Option<u64> {
        self.node(parent).and_then(|p| p.dir.child(name).copied())
    }
}

fn shard_of(ino: u64) -> usize {
    (ino as usize) % SHARDS
}

impl Default for InodeTable {
    fn default() -> Self {
        Self::new()
    }
}

impl InodeTable {
    /// A table holding only the root.
    pub fn new() -> Self {
        let shards: Box<[Mutex<Shard>]> = (0..SHARDS).map(|_| Mutex::default()).collect();
        shards[shard_of(ROOT)]
            .lock()
            .insert(ROOT, Node::new(FileKind::Dir, SmallVec::new(), None));
        InodeTable {
            shards,
            next: AtomicU64::new(OWN_BASE),
            nodes: AtomicUsize::new(1),
            ids: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            id_generation: AtomicU64::new(0),
            root_dev: AtomicU64::new(0),
            root_ino: AtomicU64::new(ROOT_UNKNOWN),
            pins: AtomicUsize::new(0),
            pin_limit: AtomicUsize::new(DEFAULT_PIN_LIMIT),
            serving: AtomicU64::new(0),
            linked: AtomicBool::new(false),
        }
    }

    fn lock(&self, inos: &[u64]) -> Locked<'_> {
        let mut idx: SmallVec<[usize; 4]> = inos.iter().map(|&i| shard_of(i)).collect();
        idx.sort_unstable();
        idx.dedup();
        Locked {
            guards: idx
                .into_iter()
                .map(|i| (i, self.shards[i].lock()))
                .collect(),
        }
    }

    fn ids_of(&self, key: u64) -> &Mutex<HashMap<u64, u64>> {
        &self.ids[(key as usize) % SHARDS]
    }

    /// The node the identity index names for `id` in `generation`, if that node still holds it.
    fn known_id(&self, id: IdDigest, generation: u64) -> Option<u64> {
        if self.id_generation.load(Ordering::Acquire) != generation {
            return None;
        }
        let key = id.0;
        // The index's lock is let go before a shard's is taken (never under one, nor over).
        let ino = self.ids_of(key).lock().get(&key).copied()?;
        let shard = self.shards[shard_of(ino)].lock();
        (shard.get(&ino)?.seen() == Some((generation, id))).then_some(ino)
    }

    /// Statistics.
    pub fn stats(&self) -> TableStats {
        TableStats {
            nodes: self.nodes.load(Ordering::Relaxed),
        }
    }

    /// The path of `ino` relative to the volume root (empty for the root), for logs and for
    /// backends that address by path. `ENOENT` when the inode is detached (unlinked) or unknown.
    pub fn path(&self, ino: u64) -> Result<PathBuf> {
        let mut parts: SmallVec<[Name; 16]> = SmallVec::new();
        let mut cur = ino;
        let mut len = 0;
        while cur != ROOT {
            if parts.len() >= MAX_DEPTH {
                return Err(Error::invalid(libc::ELOOP));
            }
            let shard = self.shards[shard_of(cur)].lock();
            let node = shard.get(&cur).ok_or(Error::posix(libc::ENOENT))?;
            let (parent, name) = node.places.first().ok_or(Error::posix(libc::ENOENT))?;
            len += name.len() + 1;
            parts.push(name.clone());
            cur = *parent;
        }
        let mut path = OsString::with_capacity(len);
        for (i, part) in parts.iter().rev().enumerate() {
            if i > 0 {
                path.push("/");
            }
            path.push(&**part);
        }
        Ok(PathBuf::from(path))
    }

    /// Where `ino` is, for an operation on volume opening `volume` (one lock): the root, a
    /// directory pinned on that opening, or its first name in its parent with the backend
    /// identity it was last seen with. `ENOENT` when the inode is detached or unknown.
    pub fn whereabouts(&self, ino: u64, volume: u64) -> Result<Whereabouts> {
        if ino == ROOT {
            return Ok(Whereabouts::Root);
        }
        let shard = self.shards[shard_of(ino)].lock();
        let node = shard.get(&ino).ok_or(Error::posix(libc::ENOENT))?;
        if let Some(pinned) = node.dir.pin().filter(|p| p.0 == volume) {
            return Ok(Whereabouts::Pinned(pinned.1.clone()));
        }
        let (parent, name) = node.places.first().ok_or(Error::posix(libc::ENOENT))?;
        Ok(Whereabouts::Named {
            parent: *parent,
            name: name.clone(),
            seen: node.seen(),
        })
    }

    /// The pin of directory `ino` on volume opening `volume`, if it holds one.
    pub fn pinned(&self, ino: u64, volume: u64) -> Option<Pin> {
        let shard = self.shards[shard_of(ino)].lock();
        let pinned = shard.get(&ino)?.dir.pin()?;
        (pinned.0 == volume).then(|| pinned.1.clone())
    }

    /// Record that `ino` was opened as `stamp` (see [`crate::namespace::open_stamp`]) and tell
    /// whether the kernel may keep the pages it cached for it: only when the file is, to all
    /// that can be seen, unchanged since the last open and was already settled then.
    pub fn reopened(&self, ino: u64, stamp: u64) -> bool {
        let mut shard = self.shards[shard_of(ino)].lock();
        let Some(node) = shard.get_mut(&ino) else {
            return false;
        };
        node.reopened_as(stamp)
    }

    /// Directory `ino` is opened as `stamp`: whether the kernel may keep the listing it cached
    /// (as [`InodeTable::reopened`] for a file's pages), and whether it should cache listings
    /// of it at all: not when, since it was last opened, its entries were looked at one by one
    /// (kernel lookups of names in it, or `readdirplus` asked past the first batch, as `ls -l`
    /// does). A cached listing comes without attributes, so each entry would then cost a lookup
    /// of its own, where `readdirplus` brings them in batches.
    pub fn dir_opened(&self, ino: u64, stamp: u64) -> (bool, bool) {
        let mut shard = self.shards[shard_of(ino)].lock();
        let Some(node) = shard.get_mut(&ino) else {
            return (false, false);
        };
        let keep = node.reopened_as(stamp);
        let looked = node.dir.0.as_mut().is_some_and(|s| {
            let looked = s.listed_with_stats || s.child_lookups != s.lookups_at_open;
            s.listed_with_stats = false;
            s.lookups_at_open = s.child_lookups;
            looked
        });
        node.dir.tidy();
        (keep, !looked)
    }

    /// Count a kernel lookup of a name in directory `ino`.
    pub fn note_child_lookup(&self, ino: u64) {
        if let Some(node) = self.shards[shard_of(ino)].lock().get_mut(&ino) {
            let s = node.dir.state();
            s.child_lookups = s.child_lookups.wrapping_add(1);
        }
    }

    /// The kernel asked for directory `ino`'s entries with their attributes past the first
    /// batch: whoever lists it looks at each entry as it goes.
    pub fn note_listed_with_stats(&self, ino: u64) {
        if let Some(node) = self.shards[shard_of(ino)].lock().get_mut(&ino) {
            node.dir.state().listed_with_stats = true;
        }
    }

    /// Keep `pin` as directory `ino`'s pin on volume opening `volume` (unless the node is gone,
    /// or the table holds as many pins as it may).
    pub fn set_pin(&self, ino: u64, volume: u64, pin: Pin) {
        let mut shard = self.shards[shard_of(ino)].lock();
        // Read under the shard lock: `release_pins` publishes the serving opening before it
        // sweeps the shards, so a pin of an opening left behind is refused here or swept there.
        if volume != self.serving.load(Ordering::SeqCst) {
            return;
        }
        let Some(node) = shard.get_mut(&ino) else {
            return;
        };
        if node.kind != FileKind::Dir {
            return;
        }
        let fresh = node.dir.pin().is_none();
        if fresh {
            let limit = self.pin_limit.load(Ordering::Relaxed);
            if self.pins.fetch_add(1, Ordering::Relaxed) >= limit {
                self.pins.fetch_sub(1, Ordering::Relaxed);
                return;
            }
        }
        // The pin it replaces (same directory, same opening) is closed outside the lock.
        let replaced = node.dir.state().pin.replace((volume, pin));
        if fresh {
            shard.pinned.push(ino);
        }
        drop(shard);
        drop(replaced);
    }

    /// Hold at most `limit` pins (each is a descriptor on the volume).
    pub fn set_pin_limit(&self, limit: usize) {
        self.pin_limit.store(limit, Ordering::Relaxed);
    }

    /// Whether the table holds as many pins as it may (a new one would be refused).
    pub fn pins_full(&self) -> bool {
        self.pins.load(Ordering::Relaxed) >= self.pin_limit.load(Ordering::Relaxed)
    }

    /// Pins held now.
    pub fn pins(&self) -> usize {
        self.pins.load(Ordering::Relaxed)
    }

    /// Pin only on volume opening `keep` from now on, and drop every pin made on another
    /// (released after the shard locks). A switch calls this before the new route serves, and
    /// again after the old route's operations were drained; an operation of the old route that
    /// outlives both cannot add a pin (see [`InodeTable::set_pin`]), so no descriptor is left on
    /// the volume the switch left.
    pub fn release_pins(&self, keep: u64) {
        self.serving.store(keep, Ordering::SeqCst);
        let mut dropped: Vec<(u64, Pin)> = Vec::new();
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            let Shard { nodes, pinned } = &mut *shard;
            pinned.retain(|ino| {
                let Some(node) = nodes.get_mut(ino) else {
                    return false;
                };
                match node.dir.pin() {
                    Some(p) if p.0 == keep => true,
                    Some(_) => {
                        dropped.extend(node.dir.take_pin());
                        false
                    }
                    None => false,
                }
            });
        }
        self.pins.fetch_sub(dropped.len(), Ordering::Relaxed);
    }

    /// The place `ino`'s path is built from (its first name) no longer holds it: drop that name,
    /// so the path continues with the next name (another hard link), or the node is detached.
    /// The kernel's entry for the name is left to its own revalidation.
    pub fn drop_first_place(&self, ino: u64) {
        let first = self.shards[shard_of(ino)]
            .lock()
            .get(&ino)
            .and_then(|n| n.places.first().cloned());
        if let Some((parent, name)) = first {
            self.unmap(parent, &name, ino);
        }
    }

    /// Every name `ino` is known under but its first (its other hard links).
    pub fn other_places(&self, ino: u64) -> Vec<(u64, Name)> {
        self.shards[shard_of(ino)]
            .lock()
            .get(&ino)
            .map_or_else(Vec::new, |n| n.places.iter().skip(1).cloned().collect())
    }

    /// Forget that `name` in `parent` holds `ino` (it was found holding another file); whether
    /// it did.
    pub fn drop_place(&self, parent: u64, name: &OsStr, ino: u64) -> bool {
        self.unmap(parent, name, ino)
    }

    /// Number of names `ino` is known under.
    pub fn places(&self, ino: u64) -> usize {
        self.shards[shard_of(ino)]
            .lock()
            .get(&ino)
            .map_or(0, |n| n.places.len())
    }

    /// `d_ino` for a listing entry with backend inode number `backend_ino`: the known node when
    /// the name is mapped, else the number a lookup would derive when it is free, else
    /// `fallback`.
    pub fn listing_ino(&self, parent: u64, name: &OsStr, backend_ino: u64, fallback: u64) -> u64 {
        if let Some(known) = self.peek(parent, name) {
            return known;
        }
        let dev = self.root_dev.load(Ordering::Relaxed);
        match self.derived(dev, backend_ino) {
            Some(n) if !self.shards[shard_of(n)].lock().contains_key(&n) => n,
            _ => fallback,
        }
    }

    /// The parent of a directory, for `..` in listings (the root is its own parent).
    pub fn parent(&self, ino: u64) -> u64 {
        if ino == ROOT {
            return ROOT;
        }
        self.shards[shard_of(ino)]
            .lock()
            .get(&ino)
            .and_then(|n| n.places.first().map(|p| p.0))
            .unwrap_or(ROOT)
    }

    /// The inode mapped at `parent/name`, if any, without counting a lookup.
    pub fn peek(&self, parent: u64, name: &OsStr) -> Option<u64> {
        self.shards[shard_of(parent)]
            .lock()
            .get(&parent)
            .and_then(|p| p.dir.child(name).copied())
    }

    /// Record a kernel lookup of `parent/name`, found on the backend with `kind`, `id` and
    /// `nlink` under route generation `generation`; returns its inode number (existing or new).
    ///
    /// Identity, not the name, decides the number:
    /// - the name's node is kept when it holds the same file (same backend identity), or when it
    ///   was looked up under an earlier generation (a switch: held numbers keep their meaning);
    /// - a name that now holds another file is taken from its old node (which lives on for the
    ///   kernel until forgotten, detached) and mapped to the file's own node;
    /// - a file already known under another name joins that node: as one more name when it has
    ///   several links, or moved there when it has one (renamed behind our back);
    /// - otherwise a new node, numbered after the file's own inode number when that number is
    ///   free (see [`InodeTable::begin_generation`]).
    ///
    /// `by_name`: the kernel looked the name up itself (`LOOKUP`, not a listing's or a create's
    /// entry), which also counts as a lookup in `parent` ([`InodeTable::note_child_lookup`]),
    /// under the lock this takes anyway.
    #[allow(clippy::too_many_arguments)]
    pub fn lookup(
        &self,
        parent: u64,
        name: &OsStr,
        kind: FileKind,
        file: FileId,
        nlink: u32,
        generation: u64,
        by_name: bool,
    ) -> Result<u64> {
        let count = |l: &mut Locked<'_>| {
            if by_name && let Some(p) = l.node(parent) {
                let s = p.dir.state();
                s.child_lookups = s.child_lookups.wrapping_add(1);
            }
        };
        let id = IdDigest::of(&file);
        let mut adopted_elsewhere: Option<bool> = None;
        loop {
            let existing = {
                let shard = self.shards[shard_of(parent)].lock();
                let p = shard.get(&parent).ok_or(Error::posix(libc::ENOENT))?;
                p.dir.child(name).copied()
            };
            if let Some(child) = existing {
                let mut l = self.lock(&[parent, child]);
                if l.child(parent, name) != Some(child) {
                    continue;
                }
                let Some(node) = l.node(child) else {
                    // A mapping to a missing node breaks an invariant; repair and retry.
                    tracing::error!(parent, ?name, child, "inode table: dangling name");
                    if let Some(p) = l.node(parent) {
                        p.dir.remove_child(name);
                    }
                    continue;
                };
                let same = match node.seen() {
                    Some((g, known)) if known != id && g < generation => {
                        // After a switch a name's node adopts what the name holds now, unless
                        // another node already adopted that file (a hard link on this volume):
                        // then the name joins that node below, one file one number. The
                        // identity index and the shards are never locked together: ask without
                        // the shard locks, then look again (only on this post-switch path).
                        match adopted_elsewhere {
                            Some(elsewhere) => !elsewhere,
                            None => {
                                drop(l);
                                adopted_elsewhere =
                                    Some(self.adopted_elsewhere(id, generation, child));
                                continue;
                            }
                        }
                    }
                    Some((_, known)) => known == id,
                    None => true,
                };
                if node.kind == kind && same {
                    node.nlookup += 1;
                    let old = node.set_seen(generation, id);
                    // Adopted another file (after a switch): a pin of the old one is not it.
                    let stale_pin = match old {
                        Some((_, before)) if before != id => node.dir.take_pin(),
                        _ => None,
                    };
                    if stale_pin.is_some() {
                        l.shard(child).unpinned(child);
                    }
                    count(&mut l);
                    drop(l);
                    if stale_pin.is_some() {
                        self.pins.fetch_sub(1, Ordering::Relaxed);
                    }
                    if old != Some((generation, id)) {
                        self.remember_id(child, id, generation);
                    }
                    return Ok(child);
                }
                // The name now holds another file: the old node keeps living for the kernel
                // until it forgets it (detached if this was its only name).
                drop(l);
                self.unmap(parent, name, child);
                continue;
            }
            match self.join_known(parent, name, kind, id, nlink, generation)? {
                Join::Joined(ino) => {
                    if by_name {
                        self.note_child_lookup(parent);
                    }
                    return Ok(ino);
                }
                // The known node or the name changed while unlocked: a new node now could give
                // one file two numbers.
                Join::Retry => continue,
                Join::Unknown => {}
            }
            let candidate = self.derived(file.dev, file.ino);
            let mut ino = candidate.unwrap_or_else(|| self.next.fetch_add(1, Ordering::Relaxed));
            let mut l = loop {
                let mut l = self.lock(&[parent, ino]);
                if !l.shard(ino).contains_key(&ino) {
                    break l;
                }
                // Taken by a file the kernel still holds: a number of our own.
                drop(l);
                ino = self.next.fetch_add(1, Ordering::Relaxed);
            };
            let Some(p) = l.node(parent) else {
                return Err(Error::posix(libc::ENOENT));
            };
            if p.dir.has_child(name) {
                continue;
            }
            let name: Name = Arc::from(name);
            p.dir.insert_child(name.clone(), ino);
            let mut places = SmallVec::new();
            places.push((parent, name));
            l.shard(ino)
                .insert(ino, Node::new(kind, places, Some((generation, id))));
            count(&mut l);
            drop(l);
            self.nodes.fetch_add(1, Ordering::Relaxed);
            self.remember_id(ino, id, generation);
            return Ok(ino);
        }
    }

    /// The inode number a new file with backend inode `ino` on device `dev` should get: that
    /// very number, so that `st_ino` of a file stays the same when the kernel forgets and looks
    /// it up again. `None` for files on another device than the volume root (a filesystem
    /// mounted inside the volume), for the root's own number, for numbers in our own range, and
    /// while the root is unknown. Whether the number is free is for the caller to check.
    fn derived(&self, dev: u64, ino: u64) -> Option<u64> {
        let root_ino = self.root_ino.load(Ordering::Relaxed);
        let on_root_dev = dev == self.root_dev.load(Ordering::Relaxed);
        (root_ino != ROOT_UNKNOWN && on_root_dev && ino != root_ino && ino > ROOT && ino < OWN_BASE)
            .then_some(ino)
    }

    /// If `id` is a file already known under another name, map `parent/name` to that node: as
    /// one more name when the file has several links, or instead of its old name when it has
    /// one (it was renamed by someone else).
    fn join_known(
        &self,
        parent: u64,
        name: &OsStr,
        kind: FileKind,
        id: IdDigest,
        nlink: u32,
        generation: u64,
    ) -> Result<Join> {
        let Some(other) = self.known_id(id, generation) else {
            return Ok(Join::Unknown);
        };
        let old_places: SmallVec<[(u64, Name); 1]> = {
            let shard = self.shards[shard_of(other)].lock();
            match shard.get(&other) {
                Some(n) if n.kind == kind && n.seen() == Some((generation, id)) => n.places.clone(),
                // Another kind under the same identity: not this file.
                Some(n) if n.seen() == Some((generation, id)) => return Ok(Join::Unknown),
                _ => return Ok(Join::Retry),
            }
        };
        // A directory or a file with one link lives in one place only: its old name is gone.
        let moved = kind == FileKind::Dir || nlink <= 1;
        let mut inos: SmallVec<[u64; 4]> = SmallVec::new();
        inos.push(parent);
        inos.push(other);
        if moved {
            inos.extend(old_places.iter().map(|p| p.0));
        }
        let mut l = self.lock(&inos);
        if l.node(parent).is_none() {
            return Err(Error::posix(libc::ENOENT));
        }
        if l.child(parent, name).is_some() {
            return Ok(Join::Retry);
        }
        match l.node(other) {
            Some(n) if n.seen() == Some((generation, id)) && (!moved || n.places == old_places) => {
            }
            // Changed while we were not holding the locks: start over.
            _ => return Ok(Join::Retry),
        }
        if moved {
            for (p, n) in &old_places {
                if *p == parent && **n == *name {
                    continue;
                }
                if let Some(pn) = l.node(*p)
                    && pn.dir.child(n) == Some(&other)
                {
                    pn.dir.remove_child(n);
                }
            }
        }
        let name: Name = Arc::from(name);
        if let Some(n) = l.node(other) {
            if moved {
                n.places.clear();
            }
            n.nlookup += 1;
            n.places.push((parent, name.clone()));
            if n.places.len() > 1 {
                self.linked.store(true, Ordering::SeqCst);
            }
        }
        if let Some(p) = l.node(parent) {
            p.dir.insert_child(name, other);
        }
        drop(l);
        if moved {
            // Old parents may have been kept only for this child.
            for (p, _) in &old_places {
                self.remove_if_unreferenced(*p);
            }
        }
        Ok(Join::Joined(other))
    }

    /// Whether a node other than `ino` holds `id` in `generation`.
    fn adopted_elsewhere(&self, id: IdDigest, generation: u64, ino: u64) -> bool {
        self.known_id(id, generation)
            .is_some_and(|other| other != ino)
    }

    fn remember_id(&self, ino: u64, id: IdDigest, generation: u64) {
        if self.id_generation.load(Ordering::Acquire) == generation {
            self.ids_of(id.0).lock().insert(id.0, ino);
        }
    }

    fn forget_id(&self, ino: u64, id: Seen) {
        if let Some((_, id)) = id {
            let mut m = self.ids_of(id.0).lock();
            if m.get(&id.0) == Some(&ino) {
                m.remove(&id.0);
            }
        }
    }

    /// Start a new route generation on a volume whose root has identity `root` (`None` when
    /// unknown: every new node then gets a number of our own): backend identities seen before
    /// mean nothing any more.
    pub fn begin_generation(&self, generation: u64, root: Option<FileId>) {
        self.root_dev
            .store(root.map_or(0, |r| r.dev), Ordering::Relaxed);
        self.root_ino
            .store(root.map_or(ROOT_UNKNOWN, |r| r.ino), Ordering::Relaxed);
        self.id_generation.store(generation, Ordering::Release);
        for shard in self.ids.iter() {
            shard.lock().clear();
        }
    }

    /// Before serving another volume: a file known under several names (hard links) keeps only
    /// its first name; the others are unmapped, so their next lookup asks the new volume, where
    /// they may be separate files (a replica that did not keep hard links). Where the new volume
    /// has them linked too, the lookup finds the identity again and joins them. Returns the
    /// names unmapped; their kernel entries must be invalidated (the switch does).
    pub fn detach_extra_links(&self) -> Vec<(u64, OsString)> {
        // Cleared before the walk: a node that gets a second place during it sets it again.
        if !self.linked.swap(false, Ordering::SeqCst) {
            return Vec::new();
        }
        let mut extra: Vec<(u64, u64, Name)> = Vec::new();
        for shard in self.shards.iter() {
            for (ino, node) in shard.lock().iter() {
                for (parent, name) in node.places.iter().skip(1) {
                    extra.push((*ino, *parent, name.clone()));
                }
            }
        }
        let mut detached = Vec::new();
        for (ino, parent, name) in extra {
            if self.unmap(parent, &name, ino) {
                detached.push((parent, name.to_os_string()));
            } else {
                // Changed under us (an operation of the old route still running): the node may
                // keep a second place, so the next switch must look again.
                self.linked.store(true, Ordering::SeqCst);
            }
        }
        detached
    }

    /// Continue under `generation` on the same volume: identities seen so far stay valid.
    pub fn carry_generation(&self, generation: u64) {
        self.id_generation.store(generation, Ordering::Release);
        // Re-stamp what is known, so identities keep being compared: a node's identity from an
        // older generation means "another volume", and would be adopted unchecked.
        for shard in self.shards.iter() {
            for node in shard.lock().values_mut() {
                if node.id_generation != NOT_SEEN {
                    node.id_generation = node.id_generation.max(pack_generation(generation));
                }
            }
        }
    }

    /// The kernel dropped `n` lookups of `ino`.
    pub fn forget(&self, ino: u64, n: u64) {
        if ino == ROOT {
            return;
        }
        {
            let mut shard = self.shards[shard_of(ino)].lock();
            let Some(node) = shard.get_mut(&ino) else {
                return;
            };
            node.nlookup = node.nlookup.saturating_sub(n);
            if !node.unreferenced() {
                return;
            }
        }
        self.remove_if_unreferenced(ino);
    }

    /// Remove `ino` if nothing refers to it any more, then its parents if that left them bare.
    fn remove_if_unreferenced(&self, ino: u64) {
        let mut todo: SmallVec<[u64; 4]> = SmallVec::new();
        todo.push(ino);
        while let Some(ino) = todo.pop() {
            if ino == ROOT {
                continue;
            }
            let parents: SmallVec<[u64; 4]> = {
                let shard = self.shards[shard_of(ino)].lock();
                match shard.get(&ino) {
                    Some(n) if n.unreferenced() => n.places.iter().map(|p| p.0).collect(),
                    _ => continue,
                }
            };
            let mut all = parents.clone();
            all.push(ino);
            let mut l = self.lock(&all);
            let Some(node) = l.node(ino) else { continue };
            let same_parents = node.places.len() == parents.len()
                && node.places.iter().zip(&parents).all(|(a, b)| a.0 == *b);
            if !node.unreferenced() || !same_parents {
                // Changed under us: look again.
                todo.push(ino);
                continue;
            }
            let places = std::mem::take(&mut node.places);
            let id = node.seen();
            // Dropped after the locks: its pin, if any, is a descriptor to close.
            let removed = l.shard(ino).remove(&ino);
            if removed.as_ref().is_some_and(|n| n.dir.pin().is_some()) {
                l.shard(ino).unpinned(ino);
                self.pins.fetch_sub(1, Ordering::Relaxed);
            }
            for (parent, name) in &places {
                if let Some(p) = l.node(*parent) {
                    if p.dir.child(name) == Some(&ino) {
                        p.dir.remove_child(name);
                    }
                    if p.unreferenced() {
                        todo.push(*parent);
                    }
                }
            }
            drop(l);
            drop(removed);
            self.nodes.fetch_sub(1, Ordering::Relaxed);
            self.forget_id(ino, id);
        }
    }

    /// `parent/name` was removed from the volume (unlink or rmdir).
    pub fn unlink(&self, parent: u64, name: &OsStr) {
        while let Some(child) = self.peek(parent, name) {
            if self.unmap(parent, name, child) {
                return;
            }
        }
    }

    /// Unmap `parent/name` if it still maps to `ino` (the node keeps its other names, or lives
    /// on detached while the kernel holds it), then free what that left unreferenced: the node,
    /// and the parent when it was kept only for this child. Returns whether the name mapped to
    /// `ino`.
    fn unmap(&self, parent: u64, name: &OsStr, ino: u64) -> bool {
        let mut l = self.lock(&[parent, ino]);
        if l.child(parent, name) != Some(ino) {
            return false;
        }
        if let Some(p) = l.node(parent) {
            p.dir.remove_child(name);
        }
        if let Some(n) = l.node(ino) {
            n.remove_place(parent, name);
        }
        drop(l);
        self.remove_if_unreferenced(ino);
        self.remove_if_unreferenced(parent);
        true
    }

    /// `parent/name` was renamed to `new_parent/new_name` on the volume; with `exchange` the two
    /// entries swapped places (`RENAME_EXCHANGE`).
    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        exchange: bool,
    ) {
        loop {
            let moved = self.peek(parent, name);
            let target = self.peek(new_parent, new_name);
            let mut inos: SmallVec<[u64; 4]> = SmallVec::new();
            inos.push(parent);
            inos.push(new_parent);
            inos.extend(moved);
            inos.extend(target);
            let mut l = self.lock(&inos);
            if l.child(parent, name) != moved || l.child(new_parent, new_name) != target {
                continue;
            }
            if moved.is_some() && moved == target {
                // Two names of one file: the volume did nothing, and neither do we.
                return;
            }
            let from: Name = Arc::from(name);
            let to: Name = Arc::from(new_name);
            // Unmap both names, then map them again where they now belong.
            if let Some(p) = l.node(parent) {
                p.dir.remove_child(name);
            }
            if let Some(p) = l.node(new_parent) {
                p.dir.remove_child(new_name);
            }
            let mut orphan = None;
            if let Some(t) = target {
                if let Some(n) = l.node(t) {
                    if exchange {
                        self.rename_place(n, new_parent, new_name, parent, from.clone());
                    } else {
                        n.remove_place(new_parent, new_name);
                        orphan = Some(t);
                    }
                }
                if exchange && let Some(p) = l.node(parent) {
                    p.dir.insert_child(from.clone(), t);
                }
            }
            if let Some(m) = moved {
                if let Some(n) = l.node(m) {
                    self.rename_place(n, parent, name, new_parent, to.clone());
                }
                if let Some(p) = l.node(new_parent) {
                    p.dir.insert_child(to, m);
                }
            }
            drop(l);
            if let Some(t) = orphan {
                self.remove_if_unreferenced(t);
            }
            return;
        }
    }

    /// `node`'s place `parent/name` is now `new_parent/new_name` (a place it did not hold is
    /// added).
    fn rename_place(
        &self,
        node: &mut Node,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: Name,
    ) {
        match node
            .places
            .iter_mut()
            .find(|(p, n)| *p == parent && **n == *name)
        {
            Some(place) => *place = (new_parent, new_name),
            None => {
                node.places.push((new_parent, new_name));
                if node.places.len() > 1 {
                    self.linked.store(true, Ordering::SeqCst);
                }
            }
        }
    }

    /// Every known inode, for invalidating the kernel's caches after the volume underneath
    /// changed. Taken shard by shard: a consistent view is not needed, since invalidating
    /// something that just changed is harmless.
    pub fn known(&self) -> Vec<u64> {
        let mut inos = Vec::with_capacity(self.stats().nodes);
        for shard in self.shards.iter() {
            inos.extend(shard.lock().keys().copied());
        }
        inos
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    fn id(ino: u64) -> FileId {
        FileId {
            dev: 1,
            ino,
            birth: 7,
        }
    }

    fn lookup(t: &InodeTable, parent: u64, name: &str, kind: FileKind, fid: u64) -> u64 {
        t.lookup(parent, OsStr::new(name), kind, id(fid), 1, 0, false)
            .unwrap()
    }

    fn link(t: &InodeTable, parent: u64, name: &str, fid: u64, generation: u64) -> u64 {
        t.lookup(
            parent,
            OsStr::new(name),
            FileKind::File,
            id(fid),
            2,
            generation,
            false,
        )
        .unwrap()
    }

    /// Pins listed in the shards; must equal [`InodeTable::pins`] whenever the table is at rest.
    fn listed_pins(t: &InodeTable) -> usize {
        t.shards.iter().map(|s| s.lock().pinned.len()).sum()
    }

    #[test]
    fn a_node_stays_small() {
        // Every file the kernel knows costs one of these (plus the maps' slots and its name):
        // 72 bytes is an 80-byte allocation; one field more is 96.
        assert!(size_of::<Node>() <= 72, "{}", size_of::<Node>());
    }

    #[test]
    fn a_directory_listing_is_cached_only_when_its_entries_were_not_looked_at_since_its_open() {
        let t = InodeTable::new();
        let d = lookup(&t, ROOT, "d", FileKind::Dir, 10);
        let stamp = 4 | SETTLED;
        assert_eq!(
            t.dir_opened(d, stamp),
            (false, true),
            "first open: cache, nothing to keep"
        );
        assert_eq!(
            t.dir_opened(d, stamp),
            (true, true),
            "unchanged: keep and cache"
        );
        t.note_child_lookup(d);
        assert_eq!(
            t.dir_opened(d, stamp),
            (true, false),
            "a lookup in it since the last open"
        );
        assert_eq!(t.dir_opened(d, stamp), (true, true));
        t.note_listed_with_stats(d);
        assert_eq!(
            t.dir_opened(d, stamp),
            (true, false),
            "listed with attributes"
        );
        // A name the kernel looked up counts; one mapped from a listing or a create does not.
        let g = lookup(&t, d, "g", FileKind::File, 12);
        assert_eq!(
            t.dir_opened(d, stamp),
            (true, true),
            "mapped, not looked up"
        );
        let by_name = |fid: u64| {
            t.lookup(d, OsStr::new("g"), FileKind::File, id(fid), 1, 0, true)
                .unwrap()
        };
        assert_eq!(by_name(12), g);
        assert_eq!(
            t.dir_opened(d, stamp),
            (true, false),
            "the same file looked up"
        );
        assert_ne!(by_name(13), g);
        assert_eq!(
            t.dir_opened(d, stamp),
            (true, false),
            "a new file looked up"
        );
        t.unlink(d, OsStr::new("g"));
        t.forget(g, 2);
        // A name mapped, then forgotten: the directory's own state goes with its last name, and
        // what it knew about lookups is not lost with it.
        let f = lookup(&t, d, "f", FileKind::File, 11);
        t.note_child_lookup(d);
        t.forget(f, 1);
        let shard = t.shards[shard_of(d)].lock();
        assert!(shard[&d].dir.has_no_children());
        drop(shard);
        assert_eq!(t.dir_opened(d, stamp), (true, false));
        assert!(
            t.shards[shard_of(d)].lock()[&d].dir.0.is_none(),
            "freed once in step"
        );
        assert_eq!(t.dir_opened(d, stamp), (true, true));
    }

    #[test]
    fn same_name_same_inode_and_paths() {
        let t = InodeTable::new();
        let d = lookup(&t, ROOT, "d", FileKind::Dir, 10);
        let f = lookup(&t, d, "f", FileKind::File, 11);
        assert_eq!(lookup(&t, d, "f", FileKind::File, 11), f);
        assert_eq!(t.path(f).unwrap(), PathBuf::from("d/f"));
        assert_eq!(t.path(ROOT).unwrap(), PathBuf::new());
        let Whereabouts::Named { parent, name, seen } = t.whereabouts(f, 1).unwrap() else {
            panic!("a file is named in its directory");
        };
        assert_eq!((parent, &*name), (d, OsStr::new("f")));
        assert_eq!(seen, Some((0, IdDigest::of(&id(11)))));
        assert!(matches!(t.whereabouts(ROOT, 1), Ok(Whereabouts::Root)));
        assert_eq!(t.stats().nodes, 3);
    }

    #[test]
    fn identities_survive_a_carry_and_an_adopting_node_drops_its_pin() {
        let t = InodeTable::new();
        t.release_pins(7);
        let dir = |name: &str, fid: u64, generation: u64| {
            t.lookup(
                ROOT,
                OsStr::new(name),
                FileKind::Dir,
                id(fid),
                2,
                generation,
                false,
            )
            .unwrap()
        };
        let d = dir("d", 10, 1);
        t.set_pin(d, 7, Arc::new(0u8));
        // Same volume, next generation: another directory under the name is another inode.
        t.carry_generation(2);
        let d2 = dir("d", 11, 2);
        assert_ne!(d2, d);
        assert!(t.pinned(d, 7).is_some(), "the old directory keeps its pin");
        // A switch to another volume: the name's node adopts what the name holds there, and a
        // pin of what it held before is not that.
        t.begin_generation(3, None);
        t.set_pin(d2, 7, Arc::new(1u8));
        assert_eq!(t.pins(), 2);
        assert_eq!(dir("d", 12, 3), d2);
        assert!(t.pinned(d2, 7).is_none());
        assert_eq!((t.pins(), listed_pins(&t)), (1, 1));
    }

    #[test]
    fn pins_are_per_volume_bounded_and_go_with_their_node() {
        let t = InodeTable::new();
        t.set_pin_limit(2);
        t.release_pins(7);
        let a = lookup(&t, ROOT, "a", FileKind::Dir, 10);
        let b = lookup(&t, ROOT, "b", FileKind::Dir, 11);
        let c = lookup(&t, ROOT, "c", FileKind::Dir, 12);
        let f = lookup(&t, ROOT, "f", FileKind::File, 13);
        let pin = |n: u64| -> Pin { Arc::new(n) };
        t.set_pin(f, 7, pin(0));
        assert!(t.pinned(f, 7).is_none(), "only directories are pinned");
        t.set_pin(a, 7, pin(1));
        t.set_pin(b, 7, pin(2));
        t.set_pin(c, 7, pin(3));
        assert_eq!((t.pins(), listed_pins(&t)), (2, 2));
        assert!(t.pinned(c, 7).is_none(), "over the limit");
        assert!(t.pinned(a, 8).is_none(), "another volume opening");
        assert!(matches!(t.whereabouts(a, 7), Ok(Whereabouts::Pinned(_))));
        assert!(matches!(t.whereabouts(a, 8), Ok(Whereabouts::Named { .. })));
        let held = t.pinned(a, 7).unwrap();
        assert_eq!(held.downcast_ref::<u64>(), Some(&1));
        // A new opening: pins of the others go, and none of the old one is taken any more.
        t.set_pin(b, 8, pin(4));
        assert!(t.pinned(b, 8).is_none(), "not the serving opening");
        t.release_pins(8);
        t.set_pin(a, 7, pin(5));
        assert!(t.pinned(a, 7).is_none(), "an opening left behind");
        t.set_pin(b, 8, pin(4));
        assert_eq!((t.pins(), listed_pins(&t)), (1, 1));
        assert!(t.pinned(a, 7).is_none());
        assert!(t.pinned(b, 8).is_some());
        // The same opening again: the pin it holds stays, a pin of another goes.
        t.set_pin(c, 8, pin(6));
        t.release_pins(8);
        assert_eq!((t.pins(), listed_pins(&t)), (2, 2));
        assert!(t.pinned(b, 8).is_some() && t.pinned(c, 8).is_some());
        // A forgotten node takes its pin with it.
        t.forget(b, 1);
        assert_eq!((t.pins(), listed_pins(&t)), (1, 1));
        t.release_pins(9);
        assert_eq!((t.pins(), listed_pins(&t)), (0, 0));
        assert!(t.pinned(c, 8).is_none());
        drop(held);
    }

    #[test]
    fn forget_frees_and_cascades() {
        let t = InodeTable::new();
        let d = lookup(&t, ROOT, "d", FileKind::Dir, 10);
        let f = lookup(&t, d, "f", FileKind::File, 11);
        lookup(&t, d, "f", FileKind::File, 11);
        t.forget(d, 1);
        // d has no lookups left but still holds f.
        assert_eq!(t.stats().nodes, 3);
        t.forget(f, 1);
        assert_eq!(t.stats().nodes, 3);
        t.forget(f, 1);
        assert_eq!(t.stats().nodes, 1, "f and then d are freed");
        assert!(t.path(f).is_err());
    }

    #[test]
    fn rename_moves_subtree_and_replaces_target() {
        let t = InodeTable::new();
        let a = lookup(&t, ROOT, "a", FileKind::Dir, 10);
        let f = lookup(&t, a, "f", FileKind::File, 11);
        let b = lookup(&t, ROOT, "b", FileKind::Dir, 12);
        let victim = lookup(&t, b, "g", FileKind::File, 13);
        t.rename(a, OsStr::new("f"), b, OsStr::new("g"), false);
        assert_eq!(t.path(f).unwrap(), PathBuf::from("b/g"));
        assert_eq!(t.peek(b, OsStr::new("g")), Some(f));
        assert_eq!(t.peek(a, OsStr::new("f")), None);
        assert!(t.path(victim).is_err(), "the replaced file is detached");
        t.rename(ROOT, OsStr::new("b"), ROOT, OsStr::new("c"), false);
        assert_eq!(t.path(f).unwrap(), PathBuf::from("c/g"));
    }

    #[test]
    fn rename_exchange_swaps() {
        let t = InodeTable::new();
        let x = lookup(&t, ROOT, "x", FileKind::File, 10);
        let y = lookup(&t, ROOT, "y", FileKind::Dir, 11);
        t.rename(ROOT, OsStr::new("x"), ROOT, OsStr::new("y"), true);
        assert_eq!(t.path(x).unwrap(), PathBuf::from("y"));
        assert_eq!(t.path(y).unwrap(), PathBuf::from("x"));
        assert_eq!(t.peek(ROOT, OsStr::new("x")), Some(y));
    }

    #[test]
    fn hard_links_share_an_inode() {
        let t = InodeTable::new();
        let a = link(&t, ROOT, "a", 10, 0);
        let b = link(&t, ROOT, "b", 10, 0);
        assert_eq!(a, b);
        t.unlink(ROOT, OsStr::new("a"));
        assert_eq!(t.path(a).unwrap(), PathBuf::from("b"));
        // A new generation forgets identities: the same backend id is a new file now.
        t.begin_generation(1, None);
        let c = link(&t, ROOT, "c", 10, 1);
        assert_ne!(c, a);
    }

    #[test]
    fn extra_links_are_detached_before_a_switch() {
        let t = InodeTable::new();
        let a = link(&t, ROOT, "a", 10, 0);
        assert_eq!(link(&t, ROOT, "b", 10, 0), a);
        assert_eq!(t.detach_extra_links(), vec![(ROOT, OsString::from("b"))]);
        assert_eq!(t.path(a).unwrap(), PathBuf::from("a"));
        assert_eq!(t.peek(ROOT, OsStr::new("b")), None);
        assert!(t.detach_extra_links().is_empty(), "nothing joined since");
        // On the new generation, a separate `b` gets its own inode...
        t.begin_generation(1, None);
        let b = link(&t, ROOT, "b", 20, 1);
        assert_ne!(a, b);
        // ...and names that are links there too are joined again.
        assert_eq!(link(&t, ROOT, "a", 30, 1), a);
        assert_eq!(link(&t, ROOT, "c", 30, 1), a);
        assert_eq!(t.detach_extra_links(), vec![(ROOT, OsString::from("c"))]);
    }

    #[test]
    fn type_change_gets_new_inode() {
        let t = InodeTable::new();
        let a = lookup(&t, ROOT, "a", FileKind::File, 10);
        let b = lookup(&t, ROOT, "a", FileKind::Dir, 11);
        assert_ne!(a, b);
        assert!(t.path(a).is_err());
        assert_eq!(t.path(b).unwrap(), PathBuf::from("a"));
    }

    #[test]
    fn unlink_detaches_until_forget() {
        let t = InodeTable::new();
        let a = lookup(&t, ROOT, "a", FileKind::File, 10);
        t.unlink(ROOT, OsStr::new("a"));
        assert_eq!(t.stats().nodes, 2);
        assert!(t.path(a).is_err());
        t.forget(a, 1);
        assert_eq!(t.stats().nodes, 1);
    }

    #[test]
    fn concurrent_lookups_and_forgets_balance() {
        let t = Arc::new(InodeTable::new());
        let dirs: Vec<u64> = (0..8)
            .map(|i| lookup(&t, ROOT, &format!("d{i}"), FileKind::Dir, 1000 + i))
            .collect();
        let threads: Vec<_> = (0..4)
            .map(|w| {
                let t = t.clone();
                let dirs = dirs.clone();
                std::thread::spawn(move || {
                    for round in 0..2000u64 {
                        let d = dirs[((round + w) % 8) as usize];
                        let name = format!("f{}", round % 50);
                        let ino = t
                            .lookup(
                                d,
                                OsStr::new(&name),
                                FileKind::File,
                                id(round % 50 + d * 100),
                                1,
                                0,
                                false,
                            )
                            .unwrap();
                        if round % 7 == 0 {
                            t.rename(d, OsStr::new(&name), d, OsStr::new("tmp"), false);
                            t.rename(d, OsStr::new("tmp"), d, OsStr::new(&name), false);
                        }
                        t.forget(ino, 1);
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().unwrap();
        }
        for d in dirs {
            t.forget(d, 1);
        }
        assert_eq!(t.stats().nodes, 1, "everything forgotten is freed");
    }

    #[test]
    fn a_reused_backend_inode_is_another_file() {
        let t = InodeTable::new();
        let p = lookup(&t, ROOT, "p", FileKind::File, 10);
        // `p` is removed on the volume and its inode number goes to `newfile2`, born later.
        let reborn = FileId { birth: 8, ..id(10) };
        let n = t
            .lookup(
                ROOT,
                OsStr::new("newfile2"),
                FileKind::File,
                reborn,
                1,
                0,
                false,
            )
            .unwrap();
        assert_ne!(n, p);
        assert_eq!(t.path(n).unwrap(), PathBuf::from("newfile2"));
        // `p` now names a third file: a new node; the old one is detached, still held.
        let p2 = lookup(&t, ROOT, "p", FileKind::File, 11);
        assert_ne!(p2, p);
        assert!(t.path(p).is_err());
        assert_eq!(t.stats().nodes, 4);
        t.forget(p, 1);
        assert_eq!(t.stats().nodes, 3);
    }

    #[test]
    fn a_file_renamed_by_someone_else_keeps_its_inode() {
        let t = InodeTable::new();
        let a = lookup(&t, ROOT, "a", FileKind::Dir, 5);
        let b = lookup(&t, ROOT, "b", FileKind::Dir, 6);
        let f = lookup(&t, a, "f", FileKind::File, 10);
        // Renamed a/f -> b/f on the volume: one link, so the node moves with its name.
        assert_eq!(lookup(&t, b, "f", FileKind::File, 10), f);
        assert_eq!(t.path(f).unwrap(), PathBuf::from("b/f"));
        assert_eq!(t.peek(a, OsStr::new("f")), None);
        // ...and back.
        assert_eq!(lookup(&t, a, "f", FileKind::File, 10), f);
        assert_eq!(t.path(f).unwrap(), PathBuf::from("a/f"));
        assert_eq!(t.places(f), 1);
        // A directory moved by someone else takes its children along.
        assert_eq!(lookup(&t, b, "moved", FileKind::Dir, 5), a);
        assert_eq!(t.path(f).unwrap(), PathBuf::from("b/moved/f"));
    }

    #[test]
    fn numbers_follow_the_backend_and_survive_forget() {
        let t = InodeTable::new();
        let root = FileId {
            dev: 1,
            ino: 2,
            birth: 1,
        };
        t.begin_generation(0, Some(root));
        let f = lookup(&t, ROOT, "f", FileKind::File, 1234);
        assert_eq!(f, 1234);
        assert_eq!(t.listing_ino(ROOT, OsStr::new("f"), 1234, 0), 1234);
        assert_eq!(t.listing_ino(ROOT, OsStr::new("g"), 99, 0), 99);
        t.forget(f, 1);
        assert_eq!(t.stats().nodes, 1);
        assert_eq!(lookup(&t, ROOT, "f", FileKind::File, 1234), 1234);
        // The number is held for `f`; another file with that backend number (another birth)
        // gets one of our own, never the held one.
        t.unlink(ROOT, OsStr::new("f"));
        let other = t
            .lookup(
                ROOT,
                OsStr::new("g"),
                FileKind::File,
                FileId {
                    birth: 9,
                    ..id(1234)
                },
                1,
                0,
                false,
            )
            .unwrap();
        assert!(other >= OWN_BASE, "{other}");
        // Another device, or the root's own number: ours too.
        let sub = t
            .lookup(
                ROOT,
                OsStr::new("m"),
                FileKind::Dir,
                FileId {
                    dev: 2,
                    ino: 55,
                    birth: 1,
                },
                1,
                0,
                false,
            )
            .unwrap();
        assert!(sub >= OWN_BASE);
        let r = t
            .lookup(
                ROOT,
                OsStr::new("r"),
                FileKind::Dir,
                FileId { ino: 2, ..root },
                1,
                0,
                false,
            )
            .unwrap();
        assert!(r >= OWN_BASE);
    }
}
