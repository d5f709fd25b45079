//! The switch controller: drain the dying route, pick the next healthy standby, swap, invalidate
//! the kernel's caches, record what happened.
//!
//! Invariants:
//! - **One writer.** The controller is the only code that publishes routes after startup, and it
//!   runs one switch at a time (the supervisor awaits each switch before it looks at anything
//!   else).
//! - **Drained.** A switch first closes the old route's gate: no new operation starts on it. New
//!   operations wait for the next route (bounded by `drain_timeout`) or fail at once when
//!   queueing is off. The switch then waits for the in-flight operations, at most
//!   `drain_timeout` minus a small reserve, so that waiting operations always get the new route
//!   before their own wait runs out. Operations still running at the deadline finish on their
//!   own; the switch does not wait for them (a hung volume cannot hold the mount hostage).
//! - **A volume that is gone is not waited for.** When the old volume's deletion is confirmed
//!   (not pending) or it was unavailable past `on_unavailable.after`, its calls can only fail:
//!   the drain waits [`GONE_DRAIN`] only, and every call still running in it is answered with
//!   `stale_errno` right after the swap ([`Calls::route_changed`]); what it returns later is
//!   dropped, so nothing that ran on the old volume is acknowledged after the swap. A call stuck
//!   there holds no name and no worker place of the new route.
//! - **Target.** The first volume *after* the current one in table order whose state is healthy
//!   (no automatic failback: a later deletion continues down the table). A manual switch may
//!   name any other volume.
//! - **Swap.** One publish of a route with the next generation. Inode numbers do not change
//!   (the inode table is path-based); open handles re-open by path on first use; the kernel's
//!   cached attributes and pages of every known inode are invalidated after the publish, from a
//!   blocking thread, never from a FUSE worker. Names are left to the kernel's revalidation
//!   (`entry_ttl`), except names that were extra hard links, which are invalidated at once.
//! - **Record.** Every switch (or failed or refused attempt) leaves one [`AuditEntry`] and one
//!   log line.
//! - **Let go of the old volume.** After a switch, every open file on another volume is closed
//!   (its handle re-opens on next use), and a volume left because it was deleted or remounted is
//!   closed too (re-opened if an operator switches back): nothing of ours keeps a dead mount
//!   busy. A remounted root is served again through the same steps, as a switch from the volume
//!   to a fresh opening of itself.

use std::ffi::{OsStr, OsString};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::metrics::histogram::Histogram;

use crate::events::Events;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::config::{FailoverSettings, OnDelete};
use crate::monitor::Health;
use crate::probe::dir::RootWatch;
use crate::routing::{Route, Router, Volume};
use crate::state::StateFile;
use crate::vfs::Vfs;

/// What the kernel caches, and how to drop it. Implemented over fuser's `Notifier` in
/// [`crate::fuse`]; tests use a recorder.
pub trait KernelCache: Send + Sync + 'static {
    /// Drop attributes and cached data of `ino`.
    fn invalidate_inode(&self, ino: u64) -> std::io::Result<()>;
    /// Drop the name `name` in directory `parent`.
    fn invalidate_entry(&self, parent: u64, name: &OsStr) -> std::io::Result<()>;
    /// Drop `ino`'s cached attributes only (its pages stay).
    fn invalidate_attributes(&self, ino: u64) -> std::io::Result<()> {
        self.invalidate_inode(ino)
    }
}

/// Why a switch starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// The monitor confirmed the active volume's deletion.
    Deleted {
        /// Evidence, as the monitor reported it.
        evidence: String,
        /// The deletion is a pending one (CubeFS delayed mode).
        pending: bool,
    },
    /// The active volume's root was found remounted (or replaced by the same volume): serve a
    /// fresh opening of it.
    Remounted {
        /// The volume's index.
        index: usize,
    },
    /// The active volume answered only transient failures for `on_unavailable.after`, and the
    /// policy says to act as for a deletion.
    Unavailable {
        /// The last failure, and for how long.
        detail: String,
        /// Exit (3) without trying a standby.
        exit: bool,
    },
    /// An operator (or a test) asked; `target` names the volume, or the next healthy one.
    Manual {
        /// Volume index to switch to.
        target: Option<usize>,
        /// Free text for the audit.
        reason: String,
    },
}

impl Trigger {
    fn reason(&self) -> String {
        match self {
            Trigger::Deleted { pending: false, .. } => "confirmed deletion".into(),
            Trigger::Deleted { pending: true, .. } => {
                "deletion pending (on_pending_delete = failover)".into()
            }
            Trigger::Remounted { .. } => "volume root remounted: re-opened".into(),
            Trigger::Unavailable { exit: false, .. } => {
                "unavailable too long (on_unavailable = failover)".into()
            }
            Trigger::Unavailable { exit: true, .. } => {
                "unavailable too long (on_unavailable = exit)".into()
            }
            Trigger::Manual { reason, .. } => format!("manual: {reason}"),
        }
    }

    fn evidence(&self) -> String {
        match self {
            Trigger::Deleted { evidence, .. } => evidence.clone(),
            Trigger::Unavailable { detail, .. } => detail.clone(),
            Trigger::Remounted { .. } | Trigger::Manual { .. } => "-".into(),
        }
    }
}

/// How a switch ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A new route serves `to` under `generation`.
    Swapped {
        /// Volume index now active.
        to: usize,
        /// The new route's generation.
        generation: u64,
    },
    /// No usable volume to switch to; the old route's gate stays closed.
    NoTarget,
    /// A manual switch to nowhere (the active volume, or one that is not open): nothing was
    /// touched, the gate never closed.
    Refused,
    /// Interrupted by a forced stop while draining; the old route's gate stays closed.
    Interrupted,
}

/// One switch, for the log and the status API.
#[derive(Clone, Debug)]
pub struct AuditEntry {
    /// Generation of the new route (or the one that would have been).
    pub generation: u64,
    /// Volume switched from.
    pub from: String,
    /// Volume switched to, if any.
    pub to: Option<String>,
    /// Why.
    pub reason: String,
    /// The monitor's evidence.
    pub evidence: String,
    /// Operations in flight when the gate closed.
    pub in_flight: u64,
    /// Of those, still running at the drain deadline.
    pub still_running: u64,
    /// Whether every in-flight operation finished in time.
    pub drained: bool,
    /// Operations still running in the old volume that were answered with `stale_errno` at the
    /// swap (the old volume is gone: they could only fail).
    pub abandoned: u64,
    /// Operations that waited for the new route.
    pub queued: u64,
    /// Idempotent operations retried on the new route.
    pub retried: u64,
    /// Open handles whose file is missing on the new volume.
    pub stale_handles: u64,
    /// Files changed through handles on the old volume (those handles are now stale: the standby
    /// may not hold what they wrote), sorted, at most [`WRITES_LEFT_LISTED`].
    pub writes_left: Vec<String>,
    /// How many such files there were in all.
    pub writes_left_total: u64,
    /// Files of the old volume closed after the swap (their handles re-open on next use).
    pub released: u64,
    /// Inodes and names whose kernel caches were invalidated.
    pub invalidated: u64,
    /// Wall-clock time the switch started.
    pub started_at: SystemTime,
    /// Gate closed → drained (or deadline).
    pub drain: Duration,
    /// Gate closed → new route published.
    pub swap: Duration,
    /// Publish → caches invalidated.
    pub invalidate: Duration,
    /// Wall-clock time the switch was complete (caches invalidated, entry recorded).
    pub completed_at: SystemTime,
    /// How it ended.
    pub outcome: Outcome,
    /// Which of [`SWITCH_REASONS`] started it.
    pub reason_index: usize,
}

/// Totals over every switch since start, kept apart from the (bounded) audit list so that they
/// only ever grow: what `/status` and `/metrics` count.
#[derive(Debug)]
pub struct SwitchTotals {
    /// Switches that swapped the route, by reason ([`SWITCH_REASONS`]).
    pub by_reason: [AtomicU64; SWITCH_REASONS.len()],
    /// Operations in the old volume when a switch closed it.
    pub drained: AtomicU64,
    /// Open handles with no file on the new volume.
    pub stale_handles: AtomicU64,
    /// Files changed on the old volume through handles open at a switch.
    pub writes_left: AtomicU64,
    /// Drain durations of the switches that swapped, in seconds.
    pub drain: Histogram,
    /// Gate closed to new route published, in seconds.
    pub swap: Histogram,
}

impl Default for SwitchTotals {
    fn default() -> Self {
        SwitchTotals {
            by_reason: Default::default(),
            drained: AtomicU64::new(0),
            stale_handles: AtomicU64::new(0),
            writes_left: AtomicU64::new(0),
            drain: Histogram::new([0.001, 0.01, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0]),
            swap: Histogram::new([0.0001, 0.001, 0.01, 0.1, 1.0, 10.0]),
        }
    }
}

/// The reasons of [`SwitchTotals::by_reason`], in order.
pub const SWITCH_REASONS: [&str; 5] = [
    "deleted",
    "unavailable",
    "remounted",
    "manual",
    "pending-delete",
];

impl SwitchTotals {
    /// Switches to another volume (every reason but a remount, which serves the same volume).
    pub fn failovers(&self) -> u64 {
        let remounted = Trigger::Remounted { index: 0 }.reason_index();
        self.by_reason
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != remounted)
            .map(|(_, n)| n.load(Ordering::Relaxed))
            .sum()
    }
}

impl Trigger {
    /// Whether the volume switched from is gone (its deletion confirmed, or unavailable for
    /// longer than `on_unavailable.after`): its calls can only fail. A pending deletion keeps
    /// its data until the deadline, a remount or a manual switch leaves a working volume.
    pub fn old_volume_gone(&self) -> bool {
        matches!(
            self,
            Trigger::Deleted { pending: false, .. } | Trigger::Unavailable { .. }
        )
    }

    /// Which of [`SWITCH_REASONS`] this is.
    pub fn reason_index(&self) -> usize {
        match self {
            Trigger::Deleted { pending: false, .. } => 0,
            Trigger::Deleted { pending: true, .. } => 4,
            Trigger::Unavailable { .. } => 1,
            Trigger::Remounted { .. } => 2,
            Trigger::Manual { .. } => 3,
        }
    }
}

/// Files with writes left on the old volume named in an audit entry (the rest are counted).
pub const WRITES_LEFT_LISTED: usize = 20;

/// Switches kept in the audit list (the oldest go first; every one was logged).
pub const AUDIT_KEPT: usize = 1000;

/// Opens volume `index` of the table afresh (blocking). Given by the code that opened the table.
pub type Opener = dyn Fn(usize) -> Result<Arc<Volume>, String> + Send + Sync;

/// The calls running in the volumes, as the FUSE side sees them. Implemented by the deadline
/// keeper ([`crate::fuse::deadline::Deadlines`]).
pub trait Calls: Send + Sync + 'static {
    /// A route of `generation` serves from now on: calls still running on older routes hold
    /// nothing of it; with `errno`, they are answered with it now. Returns how many were.
    fn route_changed(&self, generation: u64, errno: Option<i32>) -> u64;

    /// Calls still in a volume past their deadline or answered at a switch: their workers are
    /// stuck there until the volume lets them go.
    fn stuck(&self) -> u64;
}

/// How long a switch away from a volume that is gone (deletion confirmed, or unavailable past
/// `on_unavailable.after`) waits for its in-flight calls: those that finish at once keep their
/// answer; the rest can only fail, and are answered with `stale_errno` at the swap.
pub const GONE_DRAIN: Duration = Duration::from_millis(200);

/// The controller; see the module docs.
pub struct Controller {
    router: Arc<Router>,
    vfs: Arc<Vfs>,
    volumes: Vec<Option<Arc<Volume>>>,
    opener: Option<Arc<Opener>>,
    watches: Vec<Option<Arc<RootWatch>>>,
    settings: FailoverSettings,
    cache: Option<Arc<dyn KernelCache>>,
    calls: Option<Arc<dyn Calls>>,
    audit: Arc<Mutex<Vec<AuditEntry>>>,
    totals: Arc<SwitchTotals>,
    events: Events,
    state: StateFile,
}

/// How long a switch waits for the state file to be written.
const STATE_SAVE_LIMIT: Duration = Duration::from_secs(2);

/// A duration in milliseconds for a log line, to the microsecond (`0.014`, never
/// `0.014181000000000001`).
pub fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// Time reserved after the drain for picking and publishing, so waiting operations (which wait
/// at most `drain_timeout`) always see the new route.
pub fn drain_budget(drain_timeout: Duration) -> Duration {
    let reserve = (drain_timeout / 4).min(Duration::from_millis(500));
    drain_timeout.saturating_sub(reserve)
}

/// The first volume after `current` in table order that is open and healthy.
pub fn pick(current: usize, healths: &[Health], volumes: &[Option<Arc<Volume>>]) -> Option<usize> {
    (current + 1..volumes.len())
        .find(|&i| volumes[i].is_some() && healths.get(i).is_some_and(Health::usable))
}

impl Controller {
    /// A controller of `router` over `volumes` (in table order; `None` where a volume could not
    /// be opened). `cache` is `None` when there is no kernel to tell (tests without a mount).
    pub fn new(
        router: Arc<Router>,
        vfs: Arc<Vfs>,
        volumes: Vec<Option<Arc<Volume>>>,
        settings: FailoverSettings,
        cache: Option<Arc<dyn KernelCache>>,
    ) -> Controller {
        Controller {
            router,
            vfs,
            volumes,
            opener: None,
            watches: Vec::new(),
            settings,
            cache,
            calls: None,
            audit: Arc::new(Mutex::new(Vec::new())),
            totals: Arc::new(SwitchTotals::default()),
            events: Events::none(),
            state: StateFile::new(None),
        }
    }

    /// Record every volume switched to in `state` (see [`crate::state`]).
    pub fn with_state(mut self, state: StateFile) -> Controller {
        self.state = state;
        self
    }

    /// Tell `calls` at every swap which route serves (see [`Calls`]).
    pub fn with_calls(mut self, calls: Arc<dyn Calls>) -> Controller {
        self.calls = Some(calls);
        self
    }

    /// Calls stuck in a volume now (see [`Calls::stuck`]); 0 without a FUSE side.
    pub fn calls_stuck(&self) -> u64 {
        self.calls.as_ref().map_or(0, |c| c.stuck())
    }

    /// Tell `events` when a switch starts and how it ended (see [`crate::events`]).
    pub fn with_events(mut self, events: Events) -> Controller {
        self.events = events;
        self
    }

    /// Re-open volumes through `opener` (a remounted root, a switch back to a volume that was
    /// closed), and keep each volume's served root in `watches` (table order, `None` for volumes
    /// without a root to watch).
    pub fn with_reopening(
        mut self,
        opener: Arc<Opener>,
        watches: Vec<Option<Arc<RootWatch>>>,
    ) -> Controller {
        self.opener = Some(opener);
        self.watches = watches;
        self
    }

    /// Volume `index` freshly opened, off the async runtime and bounded by `drain_timeout`.
    async fn open_fresh(&self, index: usize) -> Option<Arc<Volume>> {
        let opener = self.opener.clone()?;
        let opening = tokio::task::spawn_blocking(move || opener(index));
        let failed = match tokio::time::timeout(self.settings.drain_timeout, opening).await {
            Ok(Ok(Ok(v))) => return Some(v),
            Ok(Ok(Err(e))) => e,
            _ => "not finished in time".into(),
        };
        tracing::warn!(index, error = %failed, "cannot re-open the volume");
        if let Some(Some(w)) = self.watches.get(index) {
            w.retry();
        }
        None
    }

    /// Record volume `index` as now opened as `volume` (`None`: closed), and tell its root watch
    /// what is served (nothing, when closed).
    fn set_volume(&mut self, index: usize, volume: Option<Arc<Volume>>) {
        if let Some(Some(w)) = self.watches.get(index) {
            w.serve(volume.as_ref().and_then(|v| v.backend.root_mark()));
        }
        if let Some(slot) = self.volumes.get_mut(index) {
            *slot = volume;
        }
    }

    /// A standby's root was found remounted: open it afresh (the route is not touched).
    pub async fn refresh_standby(&mut self, index: usize) {
        if index == self.router.current().volume().index {
            return;
        }
        if let Some(v) = self.open_fresh(index).await {
            tracing::info!(volume = %v.name, backend = %v.backend.describe(), "standby volume root remounted: re-opened");
            self.set_volume(index, Some(v));
        }
    }

    /// Totals over every switch since start (for the status API and the metrics).
    pub fn totals(&self) -> Arc<SwitchTotals> {
        self.totals.clone()
    }

    /// The audit log, shared (for the status API).
    pub fn audit(&self) -> Arc<Mutex<Vec<AuditEntry>>> {
        self.audit.clone()
    }

    /// The settings.
    pub fn settings(&self) -> &FailoverSettings {
        &self.settings
    }

    /// Switch away from the current route. `healths` are the monitor's states in table order;
    /// `forced` resolves when a forced stop is requested (then the drain is abandoned).
    pub async fn switch(
        &mut self,
        trigger: Trigger,
        healths: &[Health],
        forced: impl std::future::Future<Output = ()>,
    ) -> Outcome {
        let old = self.router.current();
        // A manual switch to nowhere (the current volume, or one that is not open) changes
        // nothing: refuse it before closing the gate, and say so in the audit.
        if let Trigger::Manual {
            target: Some(t), ..
        } = &trigger
            && (*t == old.volume().index
                || self.volumes.get(*t).is_none()
                || (self.volumes[*t].is_none() && self.opener.is_none()))
        {
            let now = SystemTime::now();
            self.record(AuditEntry {
                generation: old.generation(),
                from: old.volume().name.clone(),
                to: None,
                reason: format!(
                    "{} (target {t}: not an open volume, or already active)",
                    trigger.reason()
                ),
                evidence: trigger.evidence(),
                in_flight: 0,
                still_running: 0,
                drained: true,
                abandoned: 0,
                queued: 0,
                retried: 0,
                stale_handles: 0,
                writes_left: Vec::new(),
                writes_left_total: 0,
                released: 0,
                invalidated: 0,
                started_at: now,
                drain: Duration::ZERO,
                swap: Duration::ZERO,
                invalidate: Duration::ZERO,
                completed_at: now,
                outcome: Outcome::Refused,
                reason_index: trigger.reason_index(),
            });
            return Outcome::Refused;
        }
        tokio::pin!(forced);
        let started_at = SystemTime::now();
        let t0 = Instant::now();
        let (queued0, retried0) = (self.router.queued_total(), self.vfs.retried_total());
        old.gate().close();
        let in_flight = old.gate().in_flight();
        tracing::warn!(
            volume = %old.volume().name,
            reason = %trigger.reason(),
            evidence = %trigger.evidence(),
            in_flight,
            "switching volumes: draining"
        );
        self.events.emit(
            "failover_started",
            serde_json::json!({
                "from": old.volume().name,
                "reason": trigger.reason(),
                "evidence": trigger.evidence(),
                "in_flight": in_flight,
            }),
        );
        // A volume that is gone has nothing left to finish that matters: its calls can only
        // fail, so they are not waited for (they are answered at the swap).
        let gone = trigger.old_volume_gone();
        let budget = if gone {
            GONE_DRAIN.min(drain_budget(self.settings.drain_timeout))
        } else {
            drain_budget(self.settings.drain_timeout)
        };
        let drained = tokio::select! {
            d = old.gate().wait_drained(budget) => Some(d),
            _ = &mut forced => None,
        };
        let drain = t0.elapsed();
        let still_running = old.gate().in_flight();
        let mut entry = AuditEntry {
            generation: old.generation() + 1,
            from: old.volume().name.clone(),
            to: None,
            reason: trigger.reason(),
            evidence: trigger.evidence(),
            in_flight,
            still_running,
            drained: drained == Some(true),
            abandoned: 0,
            queued: 0,
            retried: 0,
            stale_handles: 0,
            writes_left: Vec::new(),
            writes_left_total: 0,
            released: 0,
            invalidated: 0,
            started_at,
            drain,
            swap: Duration::ZERO,
            invalidate: Duration::ZERO,
            completed_at: started_at,
            outcome: Outcome::Interrupted,
            reason_index: trigger.reason_index(),
        };
        if drained.is_none() {
            self.record(entry);
            return Outcome::Interrupted;
        }
        let volume = match &trigger {
            Trigger::Remounted { index } => self.open_fresh(*index).await,
            Trigger::Manual {
                target: Some(t), ..
            } => match self.volumes.get(*t).cloned().flatten() {
                Some(v) => Some(v),
                None => self.open_fresh(*t).await,
            },
            Trigger::Deleted { .. } if self.settings.on_delete == OnDelete::Exit => {
                entry.reason.push_str(" (on_delete = exit)");
                None
            }
            Trigger::Unavailable { exit: true, .. } => None,
            _ => pick(old.volume().index, healths, &self.volumes)
                .and_then(|t| self.volumes.get(t).cloned().flatten()),
        };
        let Some(volume) = volume else {
            entry.outcome = Outcome::NoTarget;
            entry.queued = self.router.queued_total().saturating_sub(queued0);
            self.record(entry);
            return Outcome::NoTarget;
        };
        let generation = old.generation() + 1;
        // The namespace forgets the old volume's identities, pins and extra link names, and
        // turns stale the handles that wrote there; table locks only, never I/O.
        let prepared = self.vfs.namespace().prepare(generation, &volume);
        let left = prepared.left;
        self.router
            .publish(Route::serving(generation, volume.clone()));
        entry.swap = t0.elapsed();
        if let Some(calls) = &self.calls {
            entry.abandoned =
                calls.route_changed(generation, gone.then_some(self.settings.stale_errno.0));
        }
        // Said at once: the summary line ("switched volumes") comes once the old volume's files
        // are let go and the caches invalidated, which a dead volume can make take a while.
        tracing::info!(
            generation,
            from = %old.volume().name,
            to = %volume.name,
            drain_ms = millis(entry.drain),
            swap_ms = millis(entry.swap),
            answered_at_swap = entry.abandoned,
            "now serving the new volume"
        );
        // From now on a restart serves the new volume (see `crate::state`); written while the
        // rest of the switch goes on.
        let saved = {
            let (state, name, reason) = (
                self.state.clone(),
                volume.name.clone(),
                entry.reason.clone(),
            );
            tokio::task::spawn_blocking(move || state.save(generation, &name, &reason))
        };
        entry.to = Some(volume.name.clone());
        entry.outcome = Outcome::Swapped {
            to: volume.index,
            generation,
        };

        // Everything below happens with the new route already serving. Each step runs on a
        // blocking thread and is bounded: an operation still stuck in the old volume may hold a
        // kernel lock the invalidation needs, and the switch must not wait for it forever.
        let limit = self.settings.drain_timeout;
        let t1 = Instant::now();
        let counted = Arc::new(AtomicU64::new(0));
        // Inodes written on the old volume first: their cached pages must not outlive the switch.
        let invalidation =
            self.invalidate_kernel_caches(left.wrote.clone(), prepared.detached, counted.clone());
        let finished = tokio::select! {
            r = tokio::time::timeout(limit, invalidation) => r.is_ok(),
            _ = &mut forced => false,
        };
        if !finished {
            tracing::warn!(
                done = counted.load(Ordering::Relaxed),
                "kernel cache invalidation not finished in time (an operation stuck in the old \
                 volume may hold a lock); continuing without waiting for it"
            );
        }
        entry.invalidated = counted.load(Ordering::Relaxed);
        entry.invalidate = t1.elapsed();
        let vfs = self.vfs.clone();
        let v = volume.clone();
        // Closing the old volume's files may block on a dead volume: here, bounded, not before
        // the publish.
        let settled =
            tokio::task::spawn_blocking(move || vfs.namespace().settle(generation, &v, left));
        if let Ok(Ok(settled)) = tokio::time::timeout(limit, settled).await {
            let wrote = settled.wrote;
            entry.released = settled.released;
            entry.stale_handles = settled.missing;
            entry.writes_left_total = wrote.len() as u64;
            entry.writes_left = wrote
                .iter()
                .take(WRITES_LEFT_LISTED)
                .map(|p| p.to_string_lossy().into_owned())
                .collect();
        }
        // The volume now serving is recorded; one left because it is gone (or was re-opened) is
        // closed, so its mount can be unmounted.
        let from = old.volume().index;
        drop(old);
        if from != volume.index
            && matches!(
                trigger,
                Trigger::Deleted { .. } | Trigger::Unavailable { .. }
            )
        {
            self.set_volume(from, None);
        }
        self.set_volume(volume.index, Some(volume.clone()));
        entry.queued = self.router.queued_total().saturating_sub(queued0);
        entry.retried = self.vfs.retried_total().saturating_sub(retried0);
        // Bounded: a state file on a hung disk must not hold the controller.
        if tokio::time::timeout(STATE_SAVE_LIMIT, saved).await.is_err() {
            tracing::warn!(
                volume = %volume.name,
                "recording the serving volume did not finish in time; continuing"
            );
        }
        let outcome = entry.outcome;
        self.record(entry);
        outcome
    }

    /// Serve `volume` again under a new generation (a manual switch that found no target
    /// reopens the gate this way).
    pub fn reopen(&self, generation: u64, volume: Arc<Volume>) {
        // Same volume: backend identities stay valid, and open handles keep their files.
        self.vfs.namespace().carry(generation);
        self.router.publish(Route::serving(generation, volume));
        if let Some(calls) = &self.calls {
            calls.route_changed(generation, None);
        }
    }

    /// Drop what the kernel cached from the old volume: the attributes and pages of every known
    /// inode, and the `names` that no longer map where they did (hard links). Other names are
    /// left to the kernel's own revalidation (`entry_ttl`): dropping them would make the kernel
    /// forget inodes nobody holds, and their numbers would change, while the same path keeps the
    /// same inode number. The inodes in `first` (files written on the old volume) go before all
    /// others. `done` counts what was dropped. Runs on a blocking thread (the kernel
    /// may need a FUSE worker to answer something meanwhile; a worker must never be the one
    /// waiting).
    async fn invalidate_kernel_caches(
        &self,
        first: Vec<u64>,
        names: Vec<(u64, OsString)>,
        done: Arc<AtomicU64>,
    ) {
        let Some(cache) = self.cache.clone() else {
            return;
        };
        let vfs = self.vfs.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for (parent, name) in &names {
                match cache.invalidate_entry(*parent, name) {
                    Ok(()) => {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        tracing::debug!(parent, ?name, error = %e, "entry invalidation failed")
                    }
                }
            }
            for ino in first.into_iter().chain(vfs.namespace().known()) {
                match cache.invalidate_inode(ino) {
                    Ok(()) => {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => tracing::debug!(ino, error = %e, "inode invalidation failed"),
                }
            }
        })
        .await;
    }

    fn record(&self, mut e: AuditEntry) {
        e.completed_at = SystemTime::now();
        let t = &self.totals;
        if let Outcome::Swapped { .. } = e.outcome {
            t.by_reason[e.reason_index].fetch_add(1, Ordering::Relaxed);
            t.drain.observe(e.drain.as_secs_f64());
            t.swap.observe(e.swap.as_secs_f64());
        }
        t.drained.fetch_add(e.in_flight, Ordering::Relaxed);
        t.stale_handles
            .fetch_add(e.stale_handles, Ordering::Relaxed);
        t.writes_left
            .fetch_add(e.writes_left_total, Ordering::Relaxed);
        let ms = millis;
        match e.outcome {
            Outcome::Swapped { generation, .. } => tracing::warn!(
                generation,
                from = %e.from,
                to = e.to.as_deref().unwrap_or("-"),
                reason = %e.reason,
                evidence = %e.evidence,
                in_flight = e.in_flight,
                still_running = e.still_running,
                answered_at_swap = e.abandoned,
                queued = e.queued,
                retried = e.retried,
                stale_handles = e.stale_handles,
                writes_left = e.writes_left_total,
                writes_left_in = %WritesLeft(&e),
                released = e.released,
                invalidated = e.invalidated,
                drain_ms = ms(e.drain),
                swap_ms = ms(e.swap),
                invalidate_ms = ms(e.invalidate),
                "switched volumes"
            ),
            Outcome::NoTarget => tracing::warn!(
                from = %e.from,
                reason = %e.reason,
                evidence = %e.evidence,
                in_flight = e.in_flight,
                still_running = e.still_running,
                drain_ms = ms(e.drain),
                "no usable volume to switch to"
            ),
            Outcome::Interrupted => tracing::warn!(
                from = %e.from,
                in_flight = e.in_flight,
                still_running = e.still_running,
                "switch interrupted by a forced stop"
            ),
            Outcome::Refused => tracing::warn!(reason = %e.reason, "manual switch refused"),
        }
        self.events.emit(
            "failover_completed",
            serde_json::json!({
                "from": e.from,
                "to": e.to,
                "generation": e.generation,
                "outcome": crate::admin::outcome_name(&e.outcome),
                "reason": e.reason,
                "evidence": e.evidence,
                "drain_ms": millis(e.drain),
                "swap_ms": millis(e.swap),
                "writes_left": e.writes_left,
                "writes_left_total": e.writes_left_total,
            }),
        );
        let mut audit = self.audit.lock();
        if audit.len() >= AUDIT_KEPT {
            audit.remove(0);
        }
        audit.push(e);
    }
}

/// The files an audit entry lists as written on the old volume, for the log line.
struct WritesLeft<'a>(&'a AuditEntry);

impl std::fmt::Display for WritesLeft<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let e = self.0;
        if e.writes_left.is_empty() {
            return f.write_str("-");
        }
        f.write_str(&e.writes_left.join(", "))?;
        let more = e
            .writes_left_total
            .saturating_sub(e.writes_left.len() as u64);
        if more > 0 {
            write!(f, " and {more} more")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Caller;
    use crate::backend::dir::DirBackend;

    use crate::backend::faulty::{Fault, Faults, FaultyBackend};
    use crate::probe::{Evidence, Strength};
    use crate::routing::WaitPolicy;
    use crate::vfs::VfsOptions;

    #[test]
    fn log_millis_are_short() {
        assert_eq!(format!("{}", millis(Duration::from_nanos(14_181))), "0.014");
        assert_eq!(
            format!("{}", millis(Duration::from_micros(1_234_567))),
            "1234.567"
        );
    }

    struct Setup {
        _tmp: tempfile::TempDir,
        router: Arc<Router>,
        vfs: Arc<Vfs>,
        faults: Vec<Arc<Faults>>,
        controller: Controller,
    }

    fn setup(n: usize, drain: Duration) -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        let mut faults = Vec::new();
        let volumes: Vec<Option<Arc<Volume>>> = (0..n)
            .map(|i| {
                let dir = tmp.path().join(format!("v{i}"));
                std::fs::create_dir(&dir).unwrap();
                std::fs::write(dir.join("f"), format!("volume {i}")).unwrap();
                let f = Faults::new();
                faults.push(f.clone());
                Some(Arc::new(Volume::new(
                    i,
                    format!("v{i}"),
                    Arc::new(FaultyBackend::new(
                        Arc::new(DirBackend::open(&dir).unwrap()),
                        f,
                    )),
                )))
            })
            .collect();
        let router = Arc::new(Router::new(
            Route::serving(1, volumes[0].clone().unwrap()),
            WaitPolicy {
                queue: true,
                max_wait: drain,
                errno: libc::EIO,
            },
        ));
        let vfs = Arc::new(Vfs::new(router.clone(), VfsOptions::default()));
        let settings = FailoverSettings {
            drain_timeout: drain,
            ..Default::default()
        };
        let controller = Controller::new(router.clone(), vfs.clone(), volumes, settings, None);
        Setup {
            _tmp: tmp,
            router,
            vfs,
            faults,
            controller,
        }
    }

    /// A lookup of `f` that hangs in the primary, in flight on the current route.
    async fn hang_a_lookup(s: &Setup) -> std::thread::JoinHandle<crate::error::Result<u64>> {
        s.faults[0].add("f", Fault::Block);
        let vfs = s.vfs.clone();
        let hung = std::thread::spawn(move || vfs.lookup(1, OsStr::new("f")).map(|e| e.ino));
        while s.faults[0].blocked() == 0 {
            tokio::task::yield_now().await;
            std::thread::yield_now();
        }
        hung
    }

    fn healthy(n: usize) -> Vec<Health> {
        vec![Health::Healthy { note: None }; n]
    }

    fn deleted() -> Trigger {
        Trigger::Deleted {
            evidence: "code 7".into(),
            pending: false,
        }
    }

    fn read_f(vfs: &Vfs) -> crate::error::Result<Vec<u8>> {
        let e = vfs.lookup(1, OsStr::new("f"))?;
        let fh = vfs.open(e.ino, libc::O_RDONLY, Caller::ROOT)?.fh;
        let mut buf = vec![0u8; 64];
        let n = vfs.read(fh, 0, &mut buf)?;
        vfs.release(fh);
        buf.truncate(n);
        Ok(buf)
    }

    #[test]
    fn pick_goes_down_the_table() {
        let s = setup(4, Duration::from_secs(1));
        let vols: Vec<Option<Arc<Volume>>> = s.controller.volumes.clone();
        let mut h = healthy(4);
        assert_eq!(pick(0, &h, &vols), Some(1));
        h[1] = Health::Unknown;
        assert_eq!(pick(0, &h, &vols), Some(2));
        h[2] = Health::Deleted {
            evidence: Evidence {
                source: "x".into(),
                detail: "y".into(),
                strength: Strength::Strong,
                detached: false,
            },
            pending: false,
            count: 3,
        };
        assert_eq!(pick(0, &h, &vols), Some(3));
        // No failback: from 3 nothing is left, even though 0 is healthy.
        assert_eq!(pick(3, &h, &vols), None);
    }

    #[tokio::test(start_paused = true)]
    async fn swap_serves_the_standby_with_the_same_inodes() {
        let mut s = setup(2, Duration::from_secs(2));
        let vfs = s.vfs.clone();
        let before = tokio::task::spawn_blocking(move || {
            let e = vfs.lookup(1, OsStr::new("f")).unwrap();
            (e.ino, read_f(&vfs).unwrap())
        })
        .await
        .unwrap();
        assert_eq!(before.1, b"volume 0");
        let out = s
            .controller
            .switch(deleted(), &healthy(2), std::future::pending())
            .await;
        assert_eq!(
            out,
            Outcome::Swapped {
                to: 1,
                generation: 2
            }
        );
        let vfs = s.vfs.clone();
        let after = tokio::task::spawn_blocking(move || {
            let e = vfs.lookup(1, OsStr::new("f")).unwrap();
            (e.ino, read_f(&vfs).unwrap())
        })
        .await
        .unwrap();
        assert_eq!(after.1, b"volume 1");
        assert_eq!(after.0, before.0, "same path, same inode number");
        let audit = s.controller.audit().lock().clone();
        assert_eq!(audit.len(), 1);
        assert_eq!(audit[0].to.as_deref(), Some("v1"));
        assert!(audit[0].drained);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_operation_does_not_hold_the_switch() {
        let mut s = setup(2, Duration::from_secs(2));
        let hung = hang_a_lookup(&s).await;
        assert_eq!(s.router.current().gate().in_flight(), 1);
        let t = Instant::now();
        let out = s
            .controller
            .switch(deleted(), &healthy(2), std::future::pending())
            .await;
        assert!(matches!(out, Outcome::Swapped { to: 1, .. }));
        // A confirmed deletion: the drain waited only GONE_DRAIN (virtual time) for a call that
        // can only fail.
        assert_eq!(t.elapsed(), GONE_DRAIN);
        let audit = s.controller.audit().lock().clone();
        assert!(!audit[0].drained);
        assert_eq!(audit[0].still_running, 1);
        // The hung operation finishes on its own once the volume answers.
        s.faults[0].clear();
        assert!(hung.join().unwrap().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_switch_from_a_volume_that_is_still_there_waits_for_its_calls() {
        let mut s = setup(2, Duration::from_secs(2));
        let hung = hang_a_lookup(&s).await;
        let t = Instant::now();
        let manual = Trigger::Manual {
            target: None,
            reason: "test".into(),
        };
        let out = s
            .controller
            .switch(manual, &healthy(2), std::future::pending())
            .await;
        assert!(matches!(out, Outcome::Swapped { to: 1, .. }));
        // The whole drain budget, minus the reserve for the swap.
        assert_eq!(t.elapsed(), drain_budget(Duration::from_secs(2)));
        s.faults[0].clear();
        assert!(hung.join().unwrap().is_ok());
    }

    /// Open `f` with `flags`, start `op` on the handle while `f` hangs on the primary, switch
    /// to the standby, and make the hung call fail with EIO once the switch has started (it is
    /// in flight when the gate closes). Returns what `op` returned.
    async fn op_failing_during_a_switch<T: Send + 'static>(
        s: &mut Setup,
        flags: i32,
        op: impl FnOnce(&Vfs, u64) -> T + Send + 'static,
    ) -> T {
        let fh = {
            let vfs = s.vfs.clone();
            tokio::task::spawn_blocking(move || {
                let e = vfs.lookup(1, OsStr::new("f")).unwrap();
                vfs.open(e.ino, flags, Caller::ROOT).unwrap().fh
            })
            .await
            .unwrap()
        };
        s.faults[0].add("f", Fault::Block);
        let vfs = s.vfs.clone();
        let running = std::thread::spawn(move || op(&vfs, fh));
        while s.faults[0].blocked() == 0 {
            tokio::task::yield_now().await;
            std::thread::yield_now();
        }
        let faults = s.faults[0].clone();
        let h = healthy(2);
        let switch = s.controller.switch(deleted(), &h, std::future::pending());
        let fail = async move { faults.replace("", Fault::Fail(libc::EIO)) };
        let (out, ()) = tokio::join!(switch, fail);
        assert!(matches!(out, Outcome::Swapped { .. }));
        running.join().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_idempotent_operation_is_retried_on_the_new_route() {
        let mut s = setup(2, Duration::from_secs(2));
        let read = op_failing_during_a_switch(&mut s, libc::O_RDONLY, |vfs, fh| {
            let mut buf = vec![0u8; 64];
            vfs.read(fh, 0, &mut buf).map(|n| buf[..n].to_vec())
        })
        .await;
        assert_eq!(read.unwrap(), b"volume 1", "retried on the standby");
        assert_eq!(s.vfs.retried_total(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_append_write_is_never_retried_on_the_new_route() {
        let mut s = setup(2, Duration::from_secs(2));
        // The append may have landed on the dying volume: running it again on the standby could
        // append it twice.
        let flags = libc::O_WRONLY | libc::O_APPEND;
        let written =
            op_failing_during_a_switch(&mut s, flags, |vfs, fh| vfs.write(fh, 8, b"+tail", None))
                .await;
        assert_eq!(written.unwrap_err().errno(), libc::EIO);
        assert_eq!(s.vfs.retried_total(), 0);
        let standby = std::fs::read(s._tmp.path().join("v1/f")).unwrap();
        assert_eq!(standby, b"volume 1", "nothing appended on the standby");
    }

    #[tokio::test(start_paused = true)]
    async fn no_target_keeps_the_gate_closed() {
        let mut s = setup(2, Duration::from_millis(500));
        let mut h = healthy(2);
        h[1] = Health::Unknown;
        let out = s
            .controller
            .switch(deleted(), &h, std::future::pending())
            .await;
        assert_eq!(out, Outcome::NoTarget);
        assert!(s.router.current().gate().is_closed());
        assert_eq!(s.router.current().generation(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_forced_stop_interrupts_the_drain() {
        let mut s = setup(2, Duration::from_secs(30));
        let hung = hang_a_lookup(&s).await;
        let forced = tokio::time::sleep(Duration::from_secs(1));
        let pending = Trigger::Deleted {
            evidence: "test".into(),
            pending: true,
        };
        let out = s.controller.switch(pending, &healthy(2), forced).await;
        assert_eq!(out, Outcome::Interrupted);
        s.faults[0].clear();
        let _ = hung.join();
    }

    #[tokio::test(start_paused = true)]
    async fn a_manual_switch_to_nowhere_is_refused_without_closing_the_gate() {
        let mut s = setup(2, Duration::from_secs(2));
        for target in [0, 7] {
            let manual = Trigger::Manual {
                target: Some(target),
                reason: "test".into(),
            };
            let out = s
                .controller
                .switch(manual, &healthy(2), std::future::pending())
                .await;
            assert_eq!(out, Outcome::Refused);
            assert!(!s.router.current().gate().is_closed());
        }
        assert_eq!(s.controller.audit().lock().len(), 2);
        assert_eq!(s.router.current().generation(), 1);
    }

    #[test]
    fn the_drain_leaves_a_reserve_for_the_swap() {
        assert_eq!(
            drain_budget(Duration::from_secs(5)),
            Duration::from_millis(4500)
        );
        assert_eq!(
            drain_budget(Duration::from_millis(400)),
            Duration::from_millis(300)
        );
    }
}
