//! Writes in progress, so that a read never caches bytes older than a write that is on its way.
//!
//! Without the kernel's writeback cache, a write copies the caller's bytes into a page the kernel
//! already holds, lets go of the page, and sends the write to us. If the kernel drops that page
//! meanwhile (an `open` without `FOPEN_KEEP_CACHE`, or attributes with a newer modification time
//! under `FUSE_AUTO_INVAL_DATA`, both caused by *other* writes to the same file) and a reader
//! asks for it again, a read served before the write reached the volume fills the page with the
//! old bytes, and the writer reads them back after its write returned (LTP's `iogen`/`doio` sees
//! this with several `O_SYNC` writers sharing pages of one file).
//!
//! Invariant: a read of a range that overlaps a write received and not yet answered runs only
//! after that write reached the volume. "Write" covers every call that changes a file's bytes
//! through a handle: write, fallocate (punching or zeroing a range), and the destination range of
//! copy_file_range. (A write the kernel sent but no worker has picked up yet
//! cannot be seen here; the kernel hands requests out in order, so that window is the few
//! microseconds between a worker receiving the write and registering it.)
//!
//! Cost: a write takes its shard's lock twice (register, unregister); a read one atomic load, and
//! the shard's lock only when some write is in progress on that shard. Shards are chosen by inode, so writers
//! to different files do not meet.

use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::{Condvar, Mutex};
use smallvec::SmallVec;

const SHARDS: usize = 64;

#[derive(Clone, Copy, PartialEq, Eq)]
struct Range {
    ino: u64,
    start: u64,
    end: u64,
}

impl Range {
    fn overlaps(&self, ino: u64, start: u64, end: u64) -> bool {
        self.ino == ino && self.start < end && start < self.end
    }
}

#[derive(Default)]
struct Shard {
    /// Writes registered in `writes` (read without the lock: a read with none in progress on its
    /// shard takes no lock at all).
    active: AtomicUsize,
    writes: Mutex<SmallVec<[Range; 4]>>,
    done: Condvar,
}

/// The writes in progress; see the module docs.
pub struct WritesInFlight {
    shards: Box<[Shard]>,
}

impl Default for WritesInFlight {
    fn default() -> Self {
        Self::new()
    }
}

impl WritesInFlight {
    /// Nothing in progress.
    pub fn new() -> WritesInFlight {
        WritesInFlight {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
        }
    }

    fn shard(&self, ino: u64) -> &Shard {
        &self.shards[(ino as usize) % SHARDS]
    }

    /// A write of `len` bytes at `offset` of `ino` starts; it ends when the guard is dropped.
    #[inline]
    pub fn begin(&self, ino: u64, offset: u64, len: u64) -> Writing<'_> {
        let range = Range {
            ino,
            start: offset,
            end: offset.saturating_add(len),
        };
        let shard = self.shard(ino);
        let mut writes = shard.writes.lock();
        writes.push(range);
        shard.active.fetch_add(1, Ordering::SeqCst);
        drop(writes);
        Writing { shard, range }
    }

    /// Wait until no write in progress overlaps `len` bytes at `offset` of `ino`.
    #[inline]
    pub fn wait_clear(&self, ino: u64, offset: u64, len: u64) {
        let end = offset.saturating_add(len);
        let shard = self.shard(ino);
        // A write registered before this read was sent is counted by now (the kernel sent the
        // write first, and its worker registered it before we looked).
        if shard.active.load(Ordering::SeqCst) == 0 {
            return;
        }
        let mut writes = shard.writes.lock();
        while writes.iter().any(|w| w.overlaps(ino, offset, end)) {
            // Woken when a write of this shard ends. A write stuck in a hung volume keeps the
            // read waiting too; the read's deadline answers the caller meanwhile.
            shard.done.wait(&mut writes);
        }
    }
}

/// A write in progress; see [`WritesInFlight::begin`].
pub struct Writing<'a> {
    shard: &'a Shard,
    range: Range,
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        let mut writes = self.shard.writes.lock();
        if let Some(i) = writes.iter().position(|w| *w == self.range) {
            writes.swap_remove(i);
            self.shard.active.fetch_sub(1, Ordering::SeqCst);
        }
        drop(writes);
        self.shard.done.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    #[test]
    fn a_read_overlapping_a_write_waits_for_it_and_others_do_not() {
        let w = Arc::new(WritesInFlight::new());
        let writing = w.begin(7, 100, 50);
        // Elsewhere in the file, another file on the same shard, a range that only touches: no
        // wait.
        w.wait_clear(7, 0, 100);
        w.wait_clear(7 + SHARDS as u64, 100, 50);
        w.wait_clear(7, 150, 10);
        let done = Arc::new(AtomicBool::new(false));
        let reader = {
            let (w, done) = (w.clone(), done.clone());
            std::thread::spawn(move || {
                w.wait_clear(7, 120, 4096);
                done.store(true, Ordering::SeqCst);
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(!done.load(Ordering::SeqCst), "the read did not wait");
        drop(writing);
        reader.join().unwrap();
        assert!(done.load(Ordering::SeqCst));
    }
}
