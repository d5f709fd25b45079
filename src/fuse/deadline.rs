//! Deadlines: a hung volume answers errors, not silence.
//!
//! A system call into a hung filesystem (a dead `cfs-client`, an NFS server gone) cannot be
//! interrupted, and the kernel waits for our answer as long as we take. So every request parks its
//! reply in its worker's [`Slot`] while the volume works, and the watchdog thread answers it with
//! `errno` once it has run longer than `limit`.
//!
//! Invariants:
//! - **Exactly one answer.** Whoever takes the reply out of the slot (the worker when the
//!   operation returns, the watchdog at the deadline) answers it; the slot's lock makes the two
//!   exclusive. A result that comes back after the watchdog answered is dropped (logged at DEBUG).
//! - **A hung volume never holds every worker.** A worker whose operation overran stays in the
//!   system call until it returns; the others keep serving. At most `threads - threads / 4`
//!   operations are in the volume at once: a worker that finds them all busy waits for one to
//!   return, at most until its own deadline, and then answers `errno` without calling the volume.
//!   So a quarter of the workers always keep reading requests, and every request is answered
//!   within about `limit`. A new operation on the same file or name as an overrunning one fails at
//!   once (an application retrying a hung file does not take a second worker). The mount stays
//!   responsive and can be unmounted; other files keep being served as long as their own calls
//!   return.
//! - **The hot path** pays two clock reads (start and end), two uncontended locks of the worker's own slot, an
//!   atomic add and subtract on the count of operations in the volume, and one atomic load (is
//!   anything overrunning?), and three uncontended atomic adds to the worker's own tally of
//!   operations and latencies (for the metrics); nothing is allocated once a worker has its slot.
//! - Every overrun raises the alarm (`on_overrun`), so the volume is probed at once.
//! - **A stuck call belongs to its route.** Each worker records the generation of the route its
//!   operation entered ([`crate::routing::mark_thread`]). "A call on this name hangs" refuses
//!   new operations only on the route now serving: after a switch, a call stuck in the old
//!   volume never refuses the same name on the standby, and the places in the volume of calls
//!   left behind are given back ([`Deadlines::route_changed`], called by the switch controller).
//! - **Not everything can be ended.** A worker whose call was taken by a hung FUSE client under
//!   the volume waits in the kernel, uninterruptibly, until that client answers or dies; its
//!   request is answered by us and the rest of the process goes on (and ends: the mount is
//!   unmounted and the last line logged), but the process entry stays until that worker
//!   returns. Nothing in user space can end such a wait.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fuser::{
    Errno, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty,
    ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr,
};
use parking_lot::{Condvar, Mutex};

pub use crate::metrics::LATENCY_BOUNDS;
use crate::metrics::Latencies;

/// A fuser reply type that can be parked.
pub(crate) trait Park: Sized {
    fn park(self) -> Parked;
    fn unpark(p: Parked) -> Option<Self>;
    fn borrow(p: &mut Parked) -> Option<&mut Self>;
    fn fail(self, e: Errno);
}

/// [`Parked`], with one variant per reply type, and [`Park`] for each.
macro_rules! parked {
    ($($variant:ident($ty:ty)),* $(,)?) => {
        /// A reply waiting for its operation.
        pub(crate) enum Parked {
            $($variant($ty),)*
        }

        impl Parked {
            fn fail(self, e: Errno) {
                match self {
                    $(Parked::$variant(r) => r.error(e),)*
                }
            }
        }

        $(impl Park for $ty {
            #[inline]
            fn park(self) -> Parked {
                Parked::$variant(self)
            }
            #[inline]
            fn unpark(p: Parked) -> Option<Self> {
                match p {
                    Parked::$variant(r) => Some(r),
                    _ => None,
                }
            }
            #[inline]
            fn borrow(p: &mut Parked) -> Option<&mut Self> {
                match p {
                    Parked::$variant(r) => Some(r),
                    _ => None,
                }
            }
            fn fail(self, e: Errno) {
                self.error(e)
            }
        })*
    };
}

parked!(
    Entry(ReplyEntry),
    Attr(ReplyAttr),
    Data(ReplyData),
    Empty(ReplyEmpty),
    Open(ReplyOpen),
    Write(ReplyWrite),
    Dir(ReplyDirectory),
    DirPlus(ReplyDirectoryPlus),
    Statfs(ReplyStatfs),
    Xattr(ReplyXattr),
    Create(ReplyCreate),
    Lseek(ReplyLseek),
);

/// The operations counted by [`OpStats`], by name.
/// The most frequent first: finding an operation's place is a short scan.
pub const OPS: [&str; 30] = [
    "getattr",
    "read",
    "write",
    "lookup",
    "open",
    "flush",
    "release",
    "readdirplus",
    "readdir",
    "opendir",
    "create",
    "access",
    "unlink",
    "getxattr",
    "setattr",
    "fsync",
    "statfs",
    "mkdir",
    "rmdir",
    "rename",
    "link",
    "symlink",
    "readlink",
    "mknod",
    "setxattr",
    "listxattr",
    "removexattr",
    "fallocate",
    "lseek",
    "copy_file_range",
];

/// How an operation ended, for [`OpStats`].
pub const RESULTS: [&str; 3] = ["ok", "error", "timeout"];

/// The position of `op` in [`OPS`] (the last one for anything else).
fn op_index(op: &str) -> usize {
    OPS.iter().position(|o| *o == op).unwrap_or(OPS.len() - 1)
}

/// Per-worker operation statistics: written only by the worker (no contention), summed at
/// scrape time.
pub(crate) struct OpStats {
    tallies: Box<[Latencies]>,
}

impl OpStats {
    fn new() -> OpStats {
        OpStats {
            tallies: (0..OPS.len() * RESULTS.len())
                .map(|_| Latencies::default())
                .collect(),
        }
    }

    #[inline]
    fn record(&self, op: usize, result: usize, took: Duration) {
        self.tallies[op * RESULTS.len() + result].record(took);
    }
}

/// One (operation, result) summed over the workers.
#[derive(Debug, Clone)]
pub struct OpSummary {
    /// Operation name.
    pub op: &'static str,
    /// `ok`, `error` or `timeout`.
    pub result: &'static str,
    /// How many.
    pub count: u64,
    /// Their total latency, in seconds.
    pub seconds: f64,
    /// Per bucket of [`LATENCY_BOUNDS`] (plus one for everything above), not cumulative.
    pub buckets: [u64; LATENCY_BOUNDS.len() + 1],
}

/// One worker's operation in progress.
pub(crate) struct Slot {
    /// What runs, and its reply while nobody answered it yet.
    parked: Mutex<Running>,
    /// The generation of the route the operation entered (0: none yet), written by the router
    /// ([`crate::routing::mark_thread`]).
    route: Arc<AtomicU64>,
    stats: OpStats,
}

#[derive(Default)]
struct Running {
    /// Milliseconds since the watchdog's epoch when the operation began, plus one; 0 when idle.
    began: u64,
    op: &'static str,
    /// The inode the operation is about (for the log).
    ino: u64,
    key: u64,
    reply: Option<Parked>,
    /// The watchdog answered it: the worker is stuck in the volume.
    overran: bool,
    /// Its place in the volume was given back when its route was left (see
    /// [`Deadlines::route_changed`]): the worker must not give it back again.
    released: bool,
}

/// The deadline keeper of one mount; see the module docs.
pub struct Deadlines {
    limit_ms: u64,
    errno: Errno,
    /// How many operations may be in the volume at once.
    cap: usize,
    /// Operations in the volume now.
    running: AtomicUsize,
    /// Workers waiting for `running` to drop below `cap`, and their wake-up.
    waiting: AtomicUsize,
    room: (Mutex<()>, Condvar),
    epoch: Instant,
    slots: Mutex<Vec<Arc<Slot>>>,
    /// Slots marked overran (a hint for the hot path; the slots say exactly).
    overrunning: AtomicU64,
    /// The generation of the route now serving: calls on older routes hold nothing of it.
    floor: AtomicU64,
    timeouts: AtomicU64,
    refused: AtomicU64,
    on_overrun: Box<dyn Fn() + Send + Sync>,
    stop: Mutex<Option<mpsc::Sender<()>>>,
    stopped: AtomicBool,
}

thread_local! {
    /// This worker's slot, and the deadline keeper it belongs to.
    static SLOT: RefCell<Option<(usize, Arc<Slot>)>> = const { RefCell::new(None) };
}

impl Deadlines {
    /// Operations get `limit`; past it they are answered with `errno`. `threads` is the mount's
    /// worker count; `on_overrun` is called (from the watchdog) for every operation that overran.
    pub fn new(
        limit: Duration,
        errno: i32,
        threads: usize,
        on_overrun: Box<dyn Fn() + Send + Sync>,
    ) -> Arc<Deadlines> {
        let d = Arc::new(Deadlines {
            limit_ms: u64::try_from(limit.as_millis()).unwrap_or(u64::MAX).max(1),
            errno: Errno::from_i32(errno),
            cap: threads - threads / 4,
            running: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            room: (Mutex::new(()), Condvar::new()),
            epoch: Instant::now(),
            slots: Mutex::new(Vec::new()),
            overrunning: AtomicU64::new(0),
            floor: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            on_overrun,
            stop: Mutex::new(None),
            stopped: AtomicBool::new(false),
        });
        let (tx, rx) = mpsc::channel();
        *d.stop.lock() = Some(tx);
        let tick = (limit / 20).clamp(Duration::from_millis(2), Duration::from_secs(1));
        let watched = Arc::downgrade(&d);
        let spawned = std::thread::Builder::new()
            .name("failoverfs-deadlines".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(tick) {
                    match watched.upgrade() {
                        Some(d) => d.sweep(),
                        None => return,
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the deadline watchdog; operations are not bounded");
        }
        d
    }

    /// Stop the watchdog (the session ended).
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
        self.stop.lock().take();
    }

    /// Operations answered by the watchdog (a counter).
    pub fn timeouts_total(&self) -> u64 {
        self.timeouts.load(Ordering::Relaxed)
    }

    /// Operations by name and result, with their latencies, summed over the workers.
    pub fn op_summaries(&self) -> Vec<OpSummary> {
        let slots: Vec<Arc<Slot>> = self.slots.lock().clone();
        let mut out = Vec::new();
        for (o, op) in OPS.iter().enumerate() {
            for (r, result) in RESULTS.iter().enumerate() {
                let mut s = OpSummary {
                    op,
                    result,
                    count: 0,
                    seconds: 0.0,
                    buckets: [0; LATENCY_BOUNDS.len() + 1],
                };
                for slot in &slots {
                    slot.stats.tallies[o * RESULTS.len() + r].add_to(
                        &mut s.count,
                        &mut s.seconds,
                        &mut s.buckets,
                    );
                }
                if s.count > 0 {
                    out.push(s);
                }
            }
        }
        out
    }

    /// Operations refused at once because of overrunning ones (a counter).
    pub fn refused_total(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Run `run` with `reply` parked; then `answer` it with the result, unless the watchdog
    /// answered first. `ino` is the inode the operation is about; `key` names the file or name
    /// ([`key`]), for refusing new operations on one that hangs.
    #[inline]
    pub(crate) fn serve<R: Park, T>(
        &self,
        op: &'static str,
        ino: u64,
        key: u64,
        reply: R,
        run: impl FnOnce(&Watch) -> T,
        answer: impl FnOnce(R, T) -> bool,
    ) {
        let t0 = Instant::now();
        let began =
            u64::try_from(t0.duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX) + 1;
        if self.overrunning.load(Ordering::Relaxed) != 0 && self.hangs(key) {
            return self.refuse(op, key, reply);
        }
        if !self.enter() && !self.room(began) {
            return self.refuse(op, key, reply);
        }
        SLOT.with_borrow_mut(|mine| {
            let owner = self as *const Deadlines as usize;
            let slot = match mine {
                Some((o, slot)) if *o == owner => slot.clone(),
                _ => {
                    let slot = Arc::new(Slot {
                        parked: Mutex::new(Running::default()),
                        route: Arc::new(AtomicU64::new(0)),
                        stats: OpStats::new(),
                    });
                    crate::routing::mark_thread(slot.route.clone());
                    self.slots.lock().push(slot.clone());
                    *mine = Some((owner, slot.clone()));
                    slot
                }
            };
            {
                let mut r = slot.parked.lock();
                slot.route.store(0, Ordering::Relaxed);
                r.began = began;
                r.op = op;
                r.ino = ino;
                r.key = key;
                r.reply = Some(reply.park());
            }
            let watch = Watch { slot: &slot };
            let result = run(&watch);
            let (parked, released) = {
                let mut r = slot.parked.lock();
                r.began = 0;
                if std::mem::take(&mut r.overran) {
                    self.overrunning.fetch_sub(1, Ordering::Relaxed);
                }
                (r.reply.take(), std::mem::take(&mut r.released))
            };
            self.leave(!released);
            let outcome = match parked.and_then(R::unpark) {
                Some(reply) => usize::from(!answer(reply, result)),
                None => {
                    tracing::debug!(op, key, "result after the deadline dropped");
                    2
                }
            };
            slot.stats.record(op_index(op), outcome, t0.elapsed());
        });
    }

    #[cold]
    fn refuse<R: Park>(&self, op: &'static str, key: u64, reply: R) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(op, key, "refused: the volume hangs");
        reply.fail(self.errno);
    }

    /// Take a place in the volume, if there is one.
    #[inline]
    fn enter(&self) -> bool {
        self.running
            .fetch_update(Ordering::Acquire, Ordering::Relaxed, |n| {
                (n < self.cap).then_some(n + 1)
            })
            .is_ok()
    }

    /// An operation left the volume (`held`: its place was still counted): make room for a
    /// waiting one.
    #[inline]
    fn leave(&self, held: bool) {
        if held {
            self.running.fetch_sub(1, Ordering::Release);
        }
        if self.waiting.load(Ordering::Relaxed) != 0 {
            let _g = self.room.0.lock();
            self.room.1.notify_one();
        }
    }

    /// Every place in the volume is taken: wait for one, at most until the deadline of an
    /// operation that began at `began`. True when a place was taken.
    #[cold]
    fn room(&self, began: u64) -> bool {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let mut g = self.room.0.lock();
        let ok = loop {
            if self.enter() {
                break true;
            }
            let left = (began + self.limit_ms).saturating_sub(self.now_ms() + 1);
            if left == 0 {
                break false;
            }
            // Woken by a leaving operation, or at the deadline.
            self.room
                .1
                .wait_for(&mut g, Duration::from_millis(left.min(50)));
        };
        drop(g);
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        ok
    }

    /// Whether an operation about `key` is overrunning on the route now serving (cold:
    /// something overran). A call stuck in a volume that was left holds nothing of the next one.
    #[cold]
    fn hangs(&self, key: u64) -> bool {
        let floor = self.floor.load(Ordering::Acquire);
        self.slots.lock().iter().any(|s| {
            let r = s.parked.lock();
            let route = s.route.load(Ordering::Relaxed);
            r.overran && r.began != 0 && r.key == key && route != 0 && route >= floor
        })
    }

    /// A route of `generation` serves from now on. Calls still running on older routes hold
    /// nothing of it: names they overran on are not refused, and the places in the volume of
    /// those that overran (or are answered now) are given back. With `errno` (the old volume is
    /// gone: its calls can only fail), every call still running on an older route is answered
    /// with it now rather than at `op_timeout`; its result, when it comes, is dropped. Returns
    /// how many were answered. Called by the switch controller right after it publishes.
    pub fn route_changed(&self, generation: u64, errno: Option<i32>) -> u64 {
        self.floor.fetch_max(generation, Ordering::AcqRel);
        let slots: Vec<Arc<Slot>> = self.slots.lock().clone();
        let mut answered = 0;
        for s in slots {
            let mut r = s.parked.lock();
            let route = s.route.load(Ordering::Relaxed);
            if r.began == 0 || route == 0 || route >= generation {
                continue;
            }
            let reply = match errno {
                Some(_) if !r.overran => {
                    r.overran = true;
                    self.overrunning.fetch_add(1, Ordering::Relaxed);
                    r.reply.take()
                }
                _ => None,
            };
            if r.overran && !r.released {
                r.released = true;
                self.leave(true);
            }
            let op = r.op;
            drop(r);
            if let (Some(reply), Some(errno)) = (reply, errno) {
                answered += 1;
                reply.fail(Errno::from_i32(errno));
                tracing::debug!(op, route, "call in a left volume answered at the switch");
            }
        }
        answered
    }

    /// Answer every operation past its deadline (the watchdog's round).
    fn sweep(&self) {
        if self.stopped.load(Ordering::Relaxed) {
            return;
        }
        let now = self.now_ms() + 1;
        let slots: Vec<Arc<Slot>> = self.slots.lock().clone();
        for s in slots {
            let mut r = s.parked.lock();
            if r.began == 0 || r.overran || now.saturating_sub(r.began) <= self.limit_ms {
                continue;
            }
            r.overran = true;
            self.overrunning.fetch_add(1, Ordering::Relaxed);
            let (op, ino) = (r.op, r.ino);
            let reply = r.reply.take();
            drop(r);
            // The alarm first: whoever sees the error may ask at once whether the volume is
            // being probed.
            (self.on_overrun)();
            if let Some(reply) = reply {
                // Counted before the answer, which anyone watching may act on at once.
                self.timeouts.fetch_add(1, Ordering::Relaxed);
                reply.fail(self.errno);
                match super::WARNINGS.admit() {
                    Some(suppressed) => tracing::warn!(
                        op,
                        ino,
                        limit_ms = self.limit_ms,
                        suppressed,
                        "operation overran op_timeout: answered with an error; the volume call \
                         goes on in its worker"
                    ),
                    None => tracing::debug!(op, ino, "operation overran op_timeout"),
                }
            }
        }
    }
}

/// What an operation is about, for [`Deadlines::serve`]: an inode, or a name in a directory
/// (FNV-1a of both, so that one hung name does not refuse every other name in its directory).
#[inline]
pub(crate) fn key(ino: u64, name: Option<&std::ffi::OsStr>) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    match name {
        None => ino,
        Some(name) => {
            let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ ino;
            for b in name.as_bytes() {
                h ^= u64::from(*b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
            h
        }
    }
}

/// The running operation, for one that fills its reply as it goes (directory listings).
pub(crate) struct Watch<'a> {
    slot: &'a Slot,
}

impl Watch<'_> {
    /// Call `f` with the parked reply; `None` when the watchdog has answered it already.
    #[inline]
    pub(crate) fn with_reply<R: Park, X>(&self, f: impl FnOnce(&mut R) -> X) -> Option<X> {
        let mut r = self.slot.parked.lock();
        r.reply.as_mut().and_then(R::borrow).map(f)
    }
}

impl crate::failover::Calls for Deadlines {
    fn route_changed(&self, generation: u64, errno: Option<i32>) -> u64 {
        Deadlines::route_changed(self, generation, errno)
    }

    fn stuck(&self) -> u64 {
        // Every overrunning slot is counted here until its worker comes back (answered at the
        // switch counts as overran too).
        self.overrunning.load(Ordering::Relaxed)
    }
}
