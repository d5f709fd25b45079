//! The routing handle: which volume serves operations right now.
//!
//! Every FUSE operation loads the current [`Route`] once (one `ArcSwap` load), takes an in-flight
//! [`Ticket`] from the route's gate, and runs against that route's volume. A route is immutable;
//! switching volumes means publishing a new route with the next generation number.
//!
//! Invariants:
//! - **One writer.** Only the switch controller (and, before any switch, the code that builds
//!   the first route) publishes routes. Readers never lock.
//! - **Generations only grow.** A route published later always has a larger generation.
//! - **Drained.** After [`Gate::close`] no new ticket is issued on that route; once
//!   [`Gate::wait_drained`] returns `true`, every operation that held a ticket on it has finished
//!   (its ticket was dropped). Operations that arrive while the gate is closed wait for the next
//!   route, at most [`WaitPolicy::max_wait`], or fail at once with [`WaitPolicy::errno`] when
//!   queueing is off. A waiting operation is always answered well before the kernel's own FUSE
//!   request timeout.
//! - **Fenced.** A fenced route serves nothing: every operation fails at once with its errno.
//! - The hot path allocates nothing and takes no lock: one atomic load, one atomic add and, when
//!   the ticket drops, one atomic subtract, plus a relaxed store of the generation entered into
//!   the worker's own mark ([`mark_thread`]). Locks exist only on the slow path (a closed gate).

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, Guard};
use parking_lot::{Condvar, Mutex};

use crate::backend::Backend;
use crate::error::{Error, Result};

/// A volume of the table, opened.
pub struct Volume {
    /// Position in the volume table (0 = primary).
    pub index: usize,
    /// Configured name.
    pub name: String,
    /// Where the data lives.
    pub backend: Arc<dyn Backend>,
    serial: u64,
}

impl Volume {
    /// Volume `index` of the table, named `name`, served by `backend` (freshly opened: every
    /// `Volume` gets its own serial number, so a volume re-opened after a remount is told apart
    /// from its earlier incarnation).
    pub fn new(index: usize, name: impl Into<String>, backend: Arc<dyn Backend>) -> Volume {
        static SERIAL: AtomicU64 = AtomicU64::new(1);
        Volume {
            index,
            name: name.into(),
            backend,
            serial: SERIAL.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// This incarnation of the volume: unique per opened backend within the process.
    pub fn serial(&self) -> u64 {
        self.serial
    }
}

impl std::fmt::Debug for Volume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Volume")
            .field("index", &self.index)
            .field("name", &self.name)
            .field("backend", &self.backend.describe())
            .finish()
    }
}

const CLOSED: u64 = 1 << 63;

thread_local! {
    /// Where this thread records the generation of the route its operation entered (see
    /// [`mark_thread`]).
    static MARK: RefCell<Option<Arc<AtomicU64>>> = const { RefCell::new(None) };
}

/// Record, from now on, the generation of every route this thread enters in `mark` (0 is left
/// to the owner to reset between operations). The deadline keeper gives each FUSE worker one,
/// so it can tell a call stuck in an old route's volume from one running on the current route.
pub fn mark_thread(mark: Arc<AtomicU64>) {
    MARK.with_borrow_mut(|m| *m = Some(mark));
}

/// The worker left its route to wait for another (or for changes to be released): until it
/// enters one, it runs on none, so a switch never takes it for a call stuck in the old volume.
#[cold]
fn note_left() {
    note_entered(0);
}

#[inline]
fn note_entered(generation: u64) {
    MARK.with_borrow(|m| {
        if let Some(m) = m {
            m.store(generation, Ordering::Relaxed);
        }
    });
}

/// Admission to a route: an in-flight count and a closed bit in one word.
#[derive(Debug, Default)]
pub struct Gate {
    state: AtomicU64,
    drained: tokio::sync::Notify,
}

impl Gate {
    /// Take a ticket unless the gate is closed.
    #[inline]
    fn try_enter(&self) -> bool {
        // One atomic add on the hot path. On a closed gate the add is taken back at once, so a
        // refused operation shows in the count only for that instant (the drainer is woken again
        // when it takes it back, and reports use saturating arithmetic).
        let prev = self.state.fetch_add(1, Ordering::AcqRel);
        if prev & CLOSED == 0 {
            return true;
        }
        self.leave();
        false
    }

    #[inline]
    fn leave(&self) {
        let prev = self.state.fetch_sub(1, Ordering::AcqRel);
        if prev == CLOSED | 1 {
            // The last operation of a closed route: wake the drainer.
            self.drained.notify_one();
        }
    }

    /// Stop admitting operations. Idempotent.
    pub fn close(&self) {
        self.state.fetch_or(CLOSED, Ordering::AcqRel);
    }

    /// Whether the gate is closed.
    pub fn is_closed(&self) -> bool {
        self.state.load(Ordering::Acquire) & CLOSED != 0
    }

    /// Operations currently holding a ticket.
    pub fn in_flight(&self) -> u64 {
        self.state.load(Ordering::Acquire) & !CLOSED
    }

    /// Wait until no operation holds a ticket, at most `timeout`; `true` when drained. Only
    /// meaningful after [`Gate::close`].
    pub async fn wait_drained(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.in_flight() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, self.drained.notified())
                .await
                .is_err()
            {
                return self.in_flight() == 0;
            }
        }
    }
}

/// An immutable route: a volume, a generation, and the gate of operations running on it.
#[derive(Debug)]
pub struct Route {
    generation: u64,
    volume: Arc<Volume>,
    fenced: Option<i32>,
    gate: Gate,
    /// What happens to changes ([`Changes`], as a `u8`).
    changes: AtomicU8,
}

/// What a route does with operations that change data or metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Changes {
    /// They run.
    Run = 0,
    /// They wait (bounded) for the verdict: the volume is suspected deleted.
    Hold = 1,
    /// They fail at once with [`WaitPolicy::errno`]: the served root is no longer the
    /// volume's (detached), so nothing written through it would be found there again.
    Refuse = 2,
}

impl Changes {
    fn from_u8(v: u8) -> Changes {
        match v {
            1 => Changes::Hold,
            2 => Changes::Refuse,
            _ => Changes::Run,
        }
    }
}

impl Route {
    /// A route serving `volume` under `generation`.
    pub fn serving(generation: u64, volume: Arc<Volume>) -> Route {
        Route {
            generation,
            volume,
            fenced: None,
            gate: Gate::default(),
            changes: AtomicU8::new(Changes::Run as u8),
        }
    }

    /// A route that fails every operation with `errno`. `volume` is the last one served, kept
    /// for status reports.
    pub fn fenced(generation: u64, volume: Arc<Volume>, errno: i32) -> Route {
        let route = Route {
            generation,
            volume,
            fenced: Some(errno),
            gate: Gate::default(),
            changes: AtomicU8::new(Changes::Run as u8),
        };
        route.gate.close();
        route
    }

    /// The route's generation.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The volume this route serves (or served, when fenced).
    pub fn volume(&self) -> &Arc<Volume> {
        &self.volume
    }

    /// The errno every operation gets, when fenced.
    pub fn fenced_errno(&self) -> Option<i32> {
        self.fenced
    }

    /// The route's gate.
    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// Whether changes are held on this route (its volume is suspected deleted).
    pub fn is_held(&self) -> bool {
        self.changes() == Changes::Hold
    }

    /// What happens to changes on this route.
    pub fn changes(&self) -> Changes {
        Changes::from_u8(self.changes.load(Ordering::Acquire))
    }
}

/// What operations do while the current route's gate is closed.
#[derive(Debug, Clone, Copy)]
pub struct WaitPolicy {
    /// Wait for the next route (`true`) or fail at once (`false`).
    pub queue: bool,
    /// Longest wait for the next route.
    pub max_wait: Duration,
    /// The errno of an operation that found no route.
    pub errno: i32,
}

impl Default for WaitPolicy {
    fn default() -> Self {
        WaitPolicy {
            queue: true,
            max_wait: Duration::from_secs(5),
            errno: libc::EIO,
        }
    }
}

/// An operation's admission to a route; dropping it ends the operation.
pub struct Ticket {
    route: Guard<Arc<Route>>,
}

impl Ticket {
    /// The route the operation runs on.
    #[inline]
    pub fn route(&self) -> &Route {
        &self.route
    }

    /// The volume the operation runs on.
    #[inline]
    pub fn volume(&self) -> &Volume {
        &self.route.volume
    }

    /// The route's generation.
    #[inline]
    pub fn generation(&self) -> u64 {
        self.route.generation
    }
}

impl Drop for Ticket {
    #[inline]
    fn drop(&mut self) {
        self.route.gate.leave();
    }
}

/// The routing handle; see the module docs.
pub struct Router {
    current: ArcSwap<Route>,
    policy: WaitPolicy,
    /// Generation of the last published route, for operations waiting on a closed gate.
    published: Mutex<u64>,
    republished: Condvar,
    waiting: AtomicU64,
    queued: AtomicU64,
}

impl Router {
    /// A router serving `first`.
    pub fn new(first: Route, policy: WaitPolicy) -> Router {
        let generation = first.generation;
        Router {
            current: ArcSwap::from_pointee(first),
            policy,
            published: Mutex::new(generation),
            republished: Condvar::new(),
            waiting: AtomicU64::new(0),
            queued: AtomicU64::new(0),
        }
    }

    /// The waiting policy.
    pub fn policy(&self) -> WaitPolicy {
        self.policy
    }

    /// The current route (for the controller and status; operations use [`Router::enter`]).
    pub fn current(&self) -> Arc<Route> {
        self.current.load_full()
    }

    /// Operations currently waiting for a route.
    pub fn waiting(&self) -> u64 {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Operations that ever waited for a route (a counter).
    pub fn queued_total(&self) -> u64 {
        self.queued.load(Ordering::Relaxed)
    }

    /// Admit an operation to the current route, waiting (bounded) while its gate is closed.
    #[inline]
    pub fn enter(&self) -> Result<Ticket> {
        let route = self.current.load();
        if route.gate.try_enter() {
            note_entered(route.generation);
            return Ok(Ticket { route });
        }
        let generation = route.generation;
        drop(route);
        self.enter_after(generation)
    }

    /// Admit an operation that changes data or metadata: like [`Router::enter`], but while the
    /// route holds changes (its volume is suspected deleted) wait until it releases them or a
    /// newer route is published, at most [`WaitPolicy::max_wait`]; still held then, fail with
    /// [`WaitPolicy::errno`]. While the route refuses changes, fail at once with that errno.
    /// One more atomic load on the hot path.
    #[inline]
    pub fn enter_change(&self) -> Result<Ticket> {
        let ticket = self.enter()?;
        if ticket.route.changes.load(Ordering::Acquire) == Changes::Run as u8 {
            return Ok(ticket);
        }
        self.changes_not_running(ticket)
    }

    #[cold]
    fn changes_not_running(&self, ticket: Ticket) -> Result<Ticket> {
        match ticket.route.changes() {
            Changes::Run => Ok(ticket),
            Changes::Refuse => Err(Error::unavailable(self.policy.errno)),
            Changes::Hold => self.wait_release(ticket),
        }
    }

    #[cold]
    fn wait_release(&self, ticket: Ticket) -> Result<Ticket> {
        let deadline = Instant::now() + self.policy.max_wait;
        let generation = ticket.generation();
        drop(ticket);
        note_left();
        self.queued.fetch_add(1, Ordering::Relaxed);
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let released = {
            let mut published = self.published.lock();
            loop {
                let route = self.current.load();
                if route.generation != generation || route.changes() != Changes::Hold {
                    break true;
                }
                drop(route);
                if self
                    .republished
                    .wait_until(&mut published, deadline)
                    .timed_out()
                {
                    break false;
                }
            }
        };
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        if released {
            let ticket = self.enter()?;
            match ticket.route.changes() {
                // Refused meanwhile (the suspicion turned into a detached root): fail.
                Changes::Refuse => Err(Error::unavailable(self.policy.errno)),
                // Held again right away: one wait is all a change gets.
                Changes::Run | Changes::Hold => Ok(ticket),
            }
        } else {
            Err(Error::unavailable(self.policy.errno))
        }
    }

    /// Set what happens to changes on the current route, if it is still `generation`. Only the
    /// supervisor calls this (it watches the active volume's state).
    pub fn set_changes(&self, generation: u64, changes: Changes) -> bool {
        let route = self.current.load();
        if route.generation != generation {
            return false;
        }
        let was = Changes::from_u8(route.changes.swap(changes as u8, Ordering::AcqRel));
        if was == Changes::Hold && changes != Changes::Hold {
            // Under the lock: a waiter checks the flag under it before it sleeps.
            let _published = self.published.lock();
            self.republished.notify_all();
        }
        true
    }

    /// Admit an operation to a route newer than `generation`. Used to retry an idempotent
    /// operation that failed on a route that is going away. `None` when the route of
    /// `generation` is still current and open (nothing is changing, so nothing to retry on).
    pub fn enter_newer(&self, generation: u64) -> Option<Result<Ticket>> {
        let route = self.current.load();
        if route.generation == generation && !route.gate.is_closed() {
            return None;
        }
        drop(route);
        Some(self.enter_after(generation))
    }

    /// Wait, at most until `deadline`, for a route newer than `generation` (whose volume failed
    /// in a way a new route may cure: a client restarting under it), and enter it.
    pub fn enter_next_by(&self, generation: u64, deadline: Instant) -> Result<Ticket> {
        self.enter_after_by(generation, deadline)
    }

    /// Slow path: wait for a route newer than `generation` whose gate is open, then enter it.
    #[cold]
    fn enter_after(&self, generation: u64) -> Result<Ticket> {
        self.enter_after_by(generation, Instant::now() + self.policy.max_wait)
    }

    #[cold]
    fn enter_after_by(&self, generation: u64, deadline: Instant) -> Result<Ticket> {
        note_left();
        let mut after = generation;
        let mut counted = false;
        loop {
            let route = self.current.load();
            if let Some(errno) = route.fenced {
                return Err(Error::unavailable(errno));
            }
            if route.generation > after && route.gate.try_enter() {
                note_entered(route.generation);
                return Ok(Ticket { route });
            }
            // This route is closing too (a switch right after a switch): wait for the next one.
            after = after.max(route.generation);
            drop(route);
            if !self.policy.queue {
                return Err(Error::unavailable(self.policy.errno));
            }
            let mut published = self.published.lock();
            // Re-check under the lock: a publish between our load and here has already notified.
            if *published <= after {
                if !counted {
                    self.queued.fetch_add(1, Ordering::Relaxed);
                    counted = true;
                }
                self.waiting.fetch_add(1, Ordering::Relaxed);
                let timed_out = self
                    .republished
                    .wait_until(&mut published, deadline)
                    .timed_out();
                self.waiting.fetch_sub(1, Ordering::Relaxed);
                if timed_out && *published <= after {
                    return Err(Error::unavailable(self.policy.errno));
                }
            }
        }
    }

    /// Publish a new route and wake the operations waiting for one. Only the switch controller
    /// calls this (see the module docs). Returns the route it replaced.
    pub fn publish(&self, route: Route) -> Arc<Route> {
        let generation = route.generation;
        let old = self.current.swap(Arc::new(route));
        debug_assert!(generation > old.generation, "generations only grow");
        *self.published.lock() = generation;
        self.republished.notify_all();
        old
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::dir::DirBackend;

    fn volume(index: usize) -> Arc<Volume> {
        Arc::new(Volume::new(
            index,
            format!("v{index}"),
            Arc::new(DirBackend::open(std::path::Path::new("/")).unwrap()),
        ))
    }

    #[test]
    fn tickets_count_and_drain() {
        let router = Router::new(Route::serving(1, volume(0)), WaitPolicy::default());
        let t1 = router.enter().unwrap();
        let t2 = router.enter().unwrap();
        let route = router.current();
        assert_eq!(route.gate().in_flight(), 2);
        route.gate().close();
        drop(t1);
        assert_eq!(route.gate().in_flight(), 1);
        drop(t2);
        assert_eq!(route.gate().in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn wait_drained_times_out_with_ops_in_flight() {
        let router = Router::new(Route::serving(1, volume(0)), WaitPolicy::default());
        let t = router.enter().unwrap();
        let route = router.current();
        route.gate().close();
        assert!(!route.gate().wait_drained(Duration::from_millis(100)).await);
        drop(t);
        assert!(route.gate().wait_drained(Duration::from_millis(100)).await);
    }

    #[test]
    fn closed_gate_waits_for_next_route() {
        let router = Arc::new(Router::new(
            Route::serving(1, volume(0)),
            WaitPolicy {
                max_wait: Duration::from_secs(10),
                ..Default::default()
            },
        ));
        router.current().gate().close();
        let r = router.clone();
        let waiter = std::thread::spawn(move || r.enter().map(|t| t.volume().index));
        let deadline = Instant::now() + Duration::from_secs(5);
        while router.waiting() == 0 {
            assert!(
                Instant::now() < deadline,
                "the operation never started waiting"
            );
            std::thread::yield_now();
        }
        router.publish(Route::serving(2, volume(1)));
        assert_eq!(waiter.join().unwrap().unwrap(), 1);
    }

    #[test]
    fn closed_gate_without_queue_fails_at_once() {
        let router = Router::new(
            Route::serving(1, volume(0)),
            WaitPolicy {
                queue: false,
                errno: libc::EHOSTDOWN,
                ..Default::default()
            },
        );
        router.current().gate().close();
        let e = router.enter().err().unwrap();
        assert_eq!(e.errno(), libc::EHOSTDOWN);
        assert_eq!(e.kind(), crate::error::Kind::Unavailable);
    }

    #[test]
    fn waiting_is_bounded() {
        let router = Router::new(
            Route::serving(1, volume(0)),
            WaitPolicy {
                max_wait: Duration::from_millis(50),
                ..Default::default()
            },
        );
        router.current().gate().close();
        let e = router.enter().err().unwrap();
        assert_eq!(e.errno(), libc::EIO);
    }

    #[test]
    fn fenced_route_fails_everything() {
        let router = Router::new(Route::serving(1, volume(0)), WaitPolicy::default());
        router.publish(Route::fenced(2, volume(0), libc::ENOTCONN));
        assert_eq!(router.enter().err().unwrap().errno(), libc::ENOTCONN);
    }

    #[test]
    fn refused_changes_fail_at_once_and_reads_go_on() {
        let router = Router::new(
            Route::serving(1, volume(0)),
            WaitPolicy {
                max_wait: Duration::from_secs(30),
                ..Default::default()
            },
        );
        assert!(router.set_changes(1, Changes::Refuse));
        let t0 = Instant::now();
        assert_eq!(router.enter_change().err().unwrap().errno(), libc::EIO);
        assert!(t0.elapsed() < Duration::from_secs(5));
        assert!(router.enter().is_ok());
        // Not for another generation.
        assert!(!router.set_changes(7, Changes::Run));
        assert!(router.set_changes(1, Changes::Run));
        assert!(router.enter_change().is_ok());
    }

    #[test]
    fn a_worker_waiting_for_released_changes_is_on_no_route() {
        let router = Arc::new(Router::new(
            Route::serving(1, volume(0)),
            WaitPolicy {
                max_wait: Duration::from_secs(30),
                ..Default::default()
            },
        ));
        assert!(router.set_changes(1, Changes::Hold));
        let mark = Arc::new(AtomicU64::new(0));
        let (r, m) = (router.clone(), mark.clone());
        let waiter = std::thread::spawn(move || {
            mark_thread(m);
            r.enter_change().map(|t| t.generation())
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while router.waiting() == 0 {
            assert!(Instant::now() < deadline, "the change never waited");
            std::thread::yield_now();
        }
        // Waiting, it holds no ticket: a switch must not answer it as a call of route 1.
        assert_eq!(mark.load(Ordering::Relaxed), 0);
        router.publish(Route::serving(2, volume(1)));
        assert_eq!(waiter.join().unwrap().unwrap(), 2);
        assert_eq!(mark.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn retry_only_when_route_moves() {
        let router = Router::new(Route::serving(1, volume(0)), WaitPolicy::default());
        assert!(router.enter_newer(1).is_none());
        router.publish(Route::serving(2, volume(1)));
        let t = router.enter_newer(1).unwrap().unwrap();
        assert_eq!(t.generation(), 2);
    }
}
