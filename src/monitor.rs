//! The monitor: probes every volume on an interval and turns the answers into a *confirmed*
//! state, published per volume through a `tokio::sync::watch` channel.
//!
//! **Only what was there can be deleted.** Deletion answers about a volume this process never saw
//! healthy (a misspelt CubeFS volume name or marker, a wrong path) count for nothing: the volume
//! is reported unreachable with kind `never-healthy`, logged as a configuration error, and is
//! never switched away from or exited for.
//!
//! **Confirmed deletion.** A volume is confirmed deleted only after `confirmations` consecutive
//! deletion answers spanning at least `confirm_window`; when the evidence is weak (an S3 404),
//! `weak_confirmations` answers spanning `weak_confirm_window`. Any healthy or transient answer
//! resets the count. With `on_pending_delete = "failover"` a pending deletion (CubeFS delayed
//! mode) counts like a deletion; with `"wait"` it is only reported. Once confirmed, the state
//! stays deleted until a healthy answer (transient answers do not hide a confirmed deletion).
//!
//! **Scheduling.** One task per volume, so probes of one volume never overlap. The active volume
//! is probed every `interval`, standbys every `standby_interval` (both with jitter); while
//! deletion answers accumulate, every `confirm_interval`; while answers are transient, with an
//! exponential backoff (backon, with jitter) from the interval up to `max_backoff`. Each round
//! is bounded by `timeout`. When the data path meets a failure that says the active volume may
//! be going away ([`Monitor::probe_active_now`]), its next round starts at once instead, but never
//! sooner than `confirm_interval` after the previous one began: a failing application cannot
//! turn the probes into a flood.
//!
//! **Available is not the same as existing.** Existence is the call of the most authoritative
//! probe (a master); availability on this node is also the volume root's: a round the master
//! answers healthy while the volume's own root fails (`ENOTCONN`, `EIO`) or hangs is transient,
//! so a dead or hung client under a volume that exists makes it unreachable (readiness, the
//! `on_unavailable` policy), never deleted.
//!
//! **Logging.** Each change of state is logged once, with the volume, the old and new state, the
//! evidence and the count: not a line per probe.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{HealthSettings, PendingPolicy};
use crate::probe::{self, Authority, Evidence, Probe, Strength, TransientKind, Verdict};

/// What the monitor believes about a volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    /// No answer yet.
    Unknown,
    /// The last answer was healthy.
    Healthy {
        /// An observation worth showing (e.g. read-only).
        note: Option<String>,
    },
    /// The last answer was not authoritative.
    Unreachable {
        /// Why.
        kind: TransientKind,
        /// Details.
        detail: String,
    },
    /// Deletion requested, not final, and the policy says to wait.
    PendingDelete(Evidence),
    /// Deletion answers are accumulating; not confirmed yet.
    Suspect {
        /// The strongest evidence so far.
        evidence: Evidence,
        /// Consecutive deletion answers.
        count: u32,
    },
    /// Confirmed deleted (or pending deletion under the `failover` policy).
    Deleted {
        /// The strongest evidence.
        evidence: Evidence,
        /// The deletion is a pending one (CubeFS delayed mode).
        pending: bool,
        /// Consecutive deletion answers that confirmed it.
        count: u32,
    },
}

impl Health {
    /// A one-word name.
    pub fn name(&self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Healthy { .. } => "healthy",
            Health::Unreachable { .. } => "unreachable",
            Health::PendingDelete(_) | Health::Deleted { pending: true, .. } => "pending-delete",
            Health::Suspect { .. } => "suspect",
            Health::Deleted { .. } => "deleted",
        }
    }

    /// Whether the volume can take over as the active one.
    pub fn usable(&self) -> bool {
        matches!(self, Health::Healthy { .. })
    }

    /// Whether the deletion is confirmed.
    pub fn is_deleted(&self) -> bool {
        matches!(self, Health::Deleted { .. })
    }

    fn evidence(&self) -> Option<&Evidence> {
        match self {
            Health::PendingDelete(e) => Some(e),
            Health::Suspect { evidence, .. } | Health::Deleted { evidence, .. } => Some(evidence),
            _ => None,
        }
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Health::Unknown => write!(f, "unknown"),
            Health::Healthy { note: None } => write!(f, "healthy"),
            Health::Healthy { note: Some(n) } => write!(f, "healthy ({n})"),
            Health::Unreachable { kind, detail } => {
                write!(f, "unreachable ({}: {detail})", kind.label())
            }
            Health::PendingDelete(e) => write!(f, "pending-delete ({e})"),
            Health::Suspect { evidence, count } => write!(f, "suspect x{count} ({evidence})"),
            Health::Deleted {
                evidence, pending, ..
            } => {
                let what = if *pending {
                    "deletion pending"
                } else {
                    "deleted"
                };
                write!(f, "{what} ({evidence})")
            }
        }
    }
}

/// A change of [`Health`], as logged and reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    /// Before.
    pub from: Health,
    /// After.
    pub to: Health,
}

#[derive(Clone, Debug)]
struct Streak {
    first: Instant,
    total: u32,
    strong: u32,
    evidence: Evidence,
    pending: bool,
}

/// The confirmation state machine of one volume; pure, driven by answers and a clock.
#[derive(Clone, Debug)]
pub struct Tracker {
    policy: HealthSettings,
    health: Health,
    streak: Option<Streak>,
    seen_healthy: bool,
}

impl Tracker {
    /// A tracker with no answer yet.
    pub fn new(policy: HealthSettings) -> Tracker {
        Tracker {
            policy,
            health: Health::Unknown,
            streak: None,
            seen_healthy: false,
        }
    }

    /// The current state.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Take one answer received at `now`, from the volume's most authoritative probes; returns
    /// the transition when the state changed kind.
    pub fn observe(&mut self, verdict: &Verdict, now: Instant) -> Option<Transition> {
        self.observe_with(verdict, true, now)
    }

    /// Take one answer received at `now`. `vouched`: a probe of the volume's highest authority
    /// answered healthy (see [`probe_round`]); a healthy answer from a lesser probe alone (the
    /// root under a master that is down) serves, but does not make the volume *seen healthy*,
    /// so a later deletion answer for a volume never seen healthy stays a configuration error.
    pub fn observe_with(
        &mut self,
        verdict: &Verdict,
        vouched: bool,
        now: Instant,
    ) -> Option<Transition> {
        let next = match verdict {
            Verdict::Healthy { note } => {
                self.streak = None;
                self.seen_healthy |= vouched;
                Health::Healthy { note: note.clone() }
            }
            Verdict::PendingDelete(e) | Verdict::Deleted(e) if !self.seen_healthy => {
                self.streak = None;
                Health::Unreachable {
                    kind: TransientKind::NeverHealthy,
                    detail: format!(
                        "{e}; but this volume was never seen healthy by this process: check its \
                         name, marker and path (a configuration error, not a deletion)"
                    ),
                }
            }
            Verdict::Transient { kind, detail } => {
                self.streak = None;
                if self.health.is_deleted() {
                    // A confirmed deletion is not undone by silence.
                    self.health.clone()
                } else {
                    Health::Unreachable {
                        kind: *kind,
                        detail: detail.clone(),
                    }
                }
            }
            Verdict::PendingDelete(e) if self.policy.on_pending_delete == PendingPolicy::Wait => {
                self.streak = None;
                Health::PendingDelete(e.clone())
            }
            Verdict::PendingDelete(e) => self.deletion_answer(e, true, now),
            Verdict::Deleted(e) => self.deletion_answer(e, false, now),
        };
        let changed = std::mem::discriminant(&next) != std::mem::discriminant(&self.health);
        let from = std::mem::replace(&mut self.health, next);
        changed.then(|| Transition {
            from,
            to: self.health.clone(),
        })
    }

    fn deletion_answer(&mut self, e: &Evidence, pending: bool, now: Instant) -> Health {
        if self.health.is_deleted() {
            return self.health.clone();
        }
        let streak = self.streak.get_or_insert_with(|| Streak {
            first: now,
            total: 0,
            strong: 0,
            evidence: e.clone(),
            pending,
        });
        streak.total += 1;
        if e.strength == Strength::Strong {
            streak.strong += 1;
            if streak.evidence.strength == Strength::Weak {
                streak.evidence = e.clone();
            }
        }
        // A final deletion outranks a pending one.
        streak.pending &= pending;
        let span = now.saturating_duration_since(streak.first);
        let p = &self.policy;
        let confirmed = (streak.strong >= p.confirmations && span >= p.confirm_window)
            || (streak.total >= p.weak_confirmations && span >= p.weak_confirm_window);
        if confirmed {
            Health::Deleted {
                evidence: streak.evidence.clone(),
                pending: streak.pending,
                count: streak.total,
            }
        } else {
            Health::Suspect {
                evidence: streak.evidence.clone(),
                count: streak.total,
            }
        }
    }

    /// How long to wait before the next probe (`backoff` is the transient backoff sequence,
    /// restarted whenever the answers are not transient).
    pub fn next_delay(&self, base: Duration, backoff: &mut Backoff) -> Duration {
        match self.health {
            Health::Suspect { .. } => {
                backoff.reset();
                self.policy.confirm_interval
            }
            Health::Unreachable { .. } => backoff.next_delay(),
            _ => {
                backoff.reset();
                jittered(base, self.policy.jitter)
            }
        }
    }
}

/// Exponential backoff with jitter between transient answers (backon's builder), from the probe
/// interval up to `max_backoff`.
pub struct Backoff {
    builder: ExponentialBuilder,
    current: Option<backon::ExponentialBackoff>,
    cap: Duration,
}

impl Backoff {
    /// Start at `base`, double each time, never above `cap`.
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        let cap = cap.max(base);
        Backoff {
            builder: ExponentialBuilder::default()
                .with_min_delay(base)
                .with_max_delay(cap)
                .with_factor(2.0)
                .with_jitter()
                .without_max_times(),
            current: None,
            cap,
        }
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let it = self.current.get_or_insert_with(|| self.builder.build());
        // With jitter, backon may add up to one more delay on top: keep the configured cap.
        it.next().unwrap_or(self.cap).min(self.cap)
    }

    /// Start again from the base delay.
    pub fn reset(&mut self) {
        self.current = None;
    }
}

fn jittered(base: Duration, jitter: f64) -> Duration {
    if jitter <= 0.0 {
        return base;
    }
    let factor = 1.0 + jitter * (fastrand::f64() * 2.0 - 1.0);
    base.mul_f64(factor.max(0.0))
}

/// What the monitor publishes about one volume.
#[derive(Clone, Debug)]
pub struct VolumeState {
    /// Position in the volume table.
    pub index: usize,
    /// Volume name.
    pub name: String,
    /// The confirmed state.
    pub health: Health,
    /// The last combined answer.
    pub last: Option<Verdict>,
    /// When it came.
    pub last_at: Option<Instant>,
    /// Probe rounds so far.
    pub rounds: u64,
    /// Of those, rounds whose answer was not healthy.
    pub failures: u64,
    /// How long the last round took.
    pub last_latency: Option<Duration>,
    /// How long every round took.
    pub latencies: Arc<crate::metrics::Latencies>,
    /// When `health` last changed kind.
    pub since: Instant,
    /// Each probe's own answers, in configuration order: a probe that fails while the combined
    /// answer is healthy (a master down while the directory answers: deletion detection is
    /// blind meanwhile) shows here.
    pub probes: Vec<ProbeState>,
}

/// One probe's answers (see [`VolumeState::probes`]).
#[derive(Debug, Clone)]
pub struct ProbeState {
    /// The probe's name: its kind, with its position when a volume has several of that kind
    /// (`http#2`).
    pub name: String,
    /// Its last answer.
    pub last: Option<Verdict>,
    /// Its answers that were not healthy.
    pub failures: u64,
}

/// The names of `probes` for [`ProbeState::name`].
fn probe_names(probes: &[Arc<dyn Probe>]) -> Vec<String> {
    probes
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let several = probes.iter().filter(|q| q.kind() == p.kind()).count() > 1;
            if several {
                format!("{}#{}", p.kind(), i + 1)
            } else {
                p.kind().to_string()
            }
        })
        .collect()
}

/// A volume to watch.
pub struct Watched {
    /// Position in the volume table.
    pub index: usize,
    /// Volume name.
    pub name: String,
    /// Its probes.
    pub probes: Vec<Arc<dyn Probe>>,
    /// Its policy (`[health]` with the volume's overrides).
    pub policy: HealthSettings,
}

/// Run every probe of a volume once, concurrently, each bounded by `timeout`, and combine.
pub async fn probe_once(
    probes: &[Arc<dyn Probe>],
    timeout: Duration,
) -> (Verdict, Vec<(&'static str, Verdict)>) {
    let (verdict, answers, _) = probe_round(probes, timeout).await;
    (verdict, answers)
}

/// [`probe_once`], and whether a probe of the highest authority the volume has answered
/// healthy: only such an answer makes a volume *seen healthy* (see [`Tracker::observe_with`]),
/// because only the probe that can declare a volume deleted can vouch that it was ever there (a
/// root that answers under a master that says "no leader" vouches for a directory, not for the
/// volume name the master will be asked about).
pub async fn probe_round(
    probes: &[Arc<dyn Probe>],
    timeout: Duration,
) -> (Verdict, Vec<(&'static str, Verdict)>, bool) {
    let top = probes.iter().map(|p| p.authority()).max();
    let mut set = tokio::task::JoinSet::new();
    for (i, p) in probes.iter().enumerate() {
        let p = p.clone();
        set.spawn(async move {
            let v = match tokio::time::timeout(timeout, p.check()).await {
                Ok(v) => v,
                Err(_) => Verdict::transient(
                    TransientKind::Timeout,
                    format!(
                        "{} probe took longer than {}",
                        p.kind(),
                        humantime::format_duration(timeout)
                    ),
                ),
            };
            (i, p.kind(), p.authority(), v)
        });
    }
    let mut answers: Vec<(usize, &'static str, Authority, Verdict)> =
        Vec::with_capacity(probes.len());
    while let Some(res) = set.join_next().await {
        match res {
            Ok(a) => answers.push(a),
            // A probe that panicked answered nothing: transient.
            Err(e) => answers.push((
                usize::MAX,
                "?",
                Authority::ObjectStore,
                Verdict::transient(TransientKind::Unexpected, format!("probe task failed: {e}")),
            )),
        }
    }
    answers.sort_by_key(|a| a.0);
    let combined = probe::combine(
        &answers
            .iter()
            .map(|(_, _, a, v)| (*a, v.clone()))
            .collect::<Vec<_>>(),
    );
    // Existence is the most authoritative probe's call, availability is not: a volume whose
    // own root fails or hangs on this node (a dead or hung client) is unavailable here even
    // while its master says it exists.
    let combined = match combined {
        Verdict::Healthy { .. } => answers
            .iter()
            .find(|(_, kind, _, v)| {
                *kind == "dir"
                    && matches!(
                        v,
                        Verdict::Transient {
                            kind: TransientKind::Io
                                | TransientKind::Timeout
                                | TransientKind::Detached,
                            ..
                        }
                    )
            })
            .map(|(_, _, _, v)| v.clone())
            .unwrap_or(combined),
        other => other,
    };
    let vouched = answers
        .iter()
        .any(|(_, _, a, v)| Some(*a) == top && matches!(v, Verdict::Healthy { .. }));
    (
        combined,
        answers.into_iter().map(|(_, k, _, v)| (k, v)).collect(),
        vouched,
    )
}

/// The running monitor; see the module docs.
pub struct Monitor {
    states: Vec<watch::Receiver<VolumeState>>,
    wakes: Vec<Arc<tokio::sync::Notify>>,
    active: watch::Sender<usize>,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Monitor {
    /// Start probing `volumes` on `runtime`, with `active` as the active volume.
    pub fn spawn(
        runtime: &tokio::runtime::Handle,
        volumes: Vec<Watched>,
        active: usize,
    ) -> Monitor {
        let (active_tx, _) = watch::channel(active);
        let cancel = CancellationToken::new();
        let mut states = Vec::new();
        let mut tasks = Vec::new();
        let mut wakes = Vec::new();
        for w in volumes {
            let wake = Arc::new(tokio::sync::Notify::new());
            let (tx, rx) = watch::channel(VolumeState {
                index: w.index,
                name: w.name.clone(),
                health: Health::Unknown,
                last: None,
                last_at: None,
                rounds: 0,
                failures: 0,
                last_latency: None,
                latencies: Arc::default(),
                since: Instant::now(),
                probes: probe_names(&w.probes)
                    .into_iter()
                    .map(|name| ProbeState {
                        name,
                        last: None,
                        failures: 0,
                    })
                    .collect(),
            });
            tasks.push(runtime.spawn(watch_volume(
                w,
                tx,
                active_tx.subscribe(),
                wake.clone(),
                cancel.clone(),
            )));
            states.push(rx);
            wakes.push(wake);
        }
        Monitor {
            states,
            wakes,
            active: active_tx,
            cancel,
            tasks,
        }
    }

    /// Follow volume `index`'s state.
    pub fn subscribe(&self, index: usize) -> Option<watch::Receiver<VolumeState>> {
        self.states.get(index).cloned()
    }

    /// Volume `index`'s current state.
    pub fn state(&self, index: usize) -> Option<VolumeState> {
        self.states.get(index).map(|rx| rx.borrow().clone())
    }

    /// Every volume's current state, in table order.
    pub fn states(&self) -> Vec<VolumeState> {
        self.states.iter().map(|rx| rx.borrow().clone()).collect()
    }

    /// Probe the active volume now (rate-limited; see the module docs): the data path saw it
    /// fail in a way that says it may be going away.
    pub fn probe_active_now(&self) {
        if let Some(w) = self.wakes.get(*self.active.borrow()) {
            w.notify_one();
        }
    }

    /// Make `index` the active volume (probed at the active interval).
    pub fn set_active(&self, index: usize) {
        self.active.send_replace(index);
    }

    /// Stop every probe task.
    pub fn shutdown(&self) {
        self.cancel.cancel();
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.shutdown();
    }
}

async fn watch_volume(
    w: Watched,
    tx: watch::Sender<VolumeState>,
    mut active: watch::Receiver<usize>,
    wake: Arc<tokio::sync::Notify>,
    cancel: CancellationToken,
) {
    let mut tracker = Tracker::new(w.policy);
    let is_active = |a: &watch::Receiver<usize>| *a.borrow() == w.index;
    let base = |active: bool| {
        if active {
            w.policy.interval
        } else {
            w.policy.standby_interval
        }
    };
    let mut backoff = Backoff::new(base(is_active(&active)), w.policy.max_backoff);
    let mut was_active = is_active(&active);
    loop {
        let began = Instant::now();
        let (verdict, answers, vouched) = tokio::select! {
            r = probe_round(&w.probes, w.policy.timeout) => r,
            _ = cancel.cancelled() => return,
        };
        let now = Instant::now();
        if let Some(t) = tracker.observe_with(&verdict, vouched, now) {
            log_transition(&w.name, &t, &answers);
        }
        tx.send_modify(|s| {
            for (p, (_, v)) in s.probes.iter_mut().zip(&answers) {
                let healthy = matches!(v, Verdict::Healthy { .. });
                let was = p
                    .last
                    .as_ref()
                    .map(|l| matches!(l, Verdict::Healthy { .. }));
                if was != Some(healthy) && (was.is_some() || !healthy) {
                    // One line per change of one probe's answer, also when the combined answer
                    // does not change (a master outage under a directory that answers).
                    if healthy {
                        tracing::info!(volume = %w.name, probe = %p.name, "probe answers again");
                    } else {
                        tracing::warn!(
                            volume = %w.name, probe = %p.name, answer = %v,
                            "probe failing"
                        );
                    }
                }
                p.failures += u64::from(!healthy);
                p.last = Some(v.clone());
            }
            if s.health != *tracker.health() {
                if std::mem::discriminant(&s.health) != std::mem::discriminant(tracker.health()) {
                    s.since = now;
                }
                s.health = tracker.health().clone();
            }
            s.failures += u64::from(!matches!(verdict, Verdict::Healthy { .. }));
            s.last = Some(verdict);
            s.last_at = Some(now);
            s.last_latency = Some(now - began);
            s.latencies.record(now - began);
            s.rounds += 1;
        });
        let now_active = is_active(&active);
        if now_active != was_active {
            backoff = Backoff::new(base(now_active), w.policy.max_backoff);
            was_active = now_active;
        }
        let delay = tracker.next_delay(base(now_active), &mut backoff);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = active.changed() => {}
            _ = wake.notified() => {
                let gap = w.policy.confirm_interval.min(delay);
                tokio::select! {
                    _ = tokio::time::sleep_until(began + gap) => {}
                    _ = cancel.cancelled() => return,
                }
            }
            _ = cancel.cancelled() => return,
        }
    }
}

fn log_transition(volume: &str, t: &Transition, answers: &[(&'static str, Verdict)]) {
    let evidence = t.to.evidence().map(|e| e.to_string());
    let count = match &t.to {
        Health::Suspect { count, .. } | Health::Deleted { count, .. } => *count,
        _ => 0,
    };
    let probes = answers
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join("; ");
    let (from, to) = (t.from.to_string(), t.to.to_string());
    match &t.to {
        Health::Deleted { .. } => tracing::error!(
            volume, from = %from, to = %to, evidence = evidence.as_deref().unwrap_or("-"),
            consecutive = count, probes = %probes, "volume deletion confirmed"
        ),
        Health::Healthy { .. } => tracing::info!(
            volume, from = %from, to = %to, probes = %probes, "volume health changed"
        ),
        Health::Unreachable {
            kind: TransientKind::NeverHealthy,
            ..
        } => tracing::error!(
            volume, to = %to, probes = %probes,
            "configuration error: the probes say this volume does not exist, and it was never \
             seen healthy; not treated as a deletion"
        ),
        _ => tracing::warn!(
            volume, from = %from, to = %to, evidence = evidence.as_deref().unwrap_or("-"),
            consecutive = count, probes = %probes, "volume health changed"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tracker that has seen the volume healthy once (deletion answers count from then on).
    fn seen(mut t: Tracker) -> Tracker {
        t.observe(&Verdict::healthy(), Instant::now());
        t
    }

    fn policy() -> HealthSettings {
        HealthSettings::default()
    }

    fn deleted(strength: Strength) -> Verdict {
        Verdict::Deleted(Evidence {
            source: "m".into(),
            detail: "code 7".into(),
            strength,
            detached: false,
        })
    }

    fn pending() -> Verdict {
        Verdict::PendingDelete(Evidence {
            source: "m".into(),
            detail: "Status 1".into(),
            strength: Strength::Strong,
            detached: false,
        })
    }

    #[test]
    fn a_volume_never_seen_healthy_is_never_deleted() {
        let mut t = Tracker::new(policy());
        let t0 = Instant::now();
        for i in 0..50 {
            t.observe(&deleted(Strength::Strong), t0 + Duration::from_secs(i));
            t.observe(&pending(), t0 + Duration::from_secs(i));
        }
        assert!(
            matches!(
                t.health(),
                Health::Unreachable {
                    kind: TransientKind::NeverHealthy,
                    ..
                }
            ),
            "{:?}",
            t.health()
        );
        // Healthy by a lesser probe only (the root while the master is down): still never seen.
        t.observe_with(&Verdict::healthy(), false, t0 + Duration::from_secs(55));
        for i in 0..5 {
            t.observe(
                &deleted(Strength::Strong),
                t0 + Duration::from_secs(56 + i / 2),
            );
        }
        assert!(!t.health().is_deleted(), "{:?}", t.health());
        // Once seen, it can go.
        t.observe(&Verdict::healthy(), t0 + Duration::from_secs(60));
        for i in 0..5 {
            t.observe(&deleted(Strength::Strong), t0 + Duration::from_secs(61 + i));
        }
        assert!(t.health().is_deleted(), "{:?}", t.health());
    }

    #[test]
    fn strong_deletion_needs_count_and_window() {
        let mut t = Tracker::new(policy());
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        assert!(t.observe(&Verdict::healthy(), t0).is_some());
        t.observe(&deleted(Strength::Strong), t0);
        assert!(matches!(t.health(), Health::Suspect { count: 1, .. }));
        t.observe(&deleted(Strength::Strong), t0 + ms(100));
        t.observe(&deleted(Strength::Strong), t0 + ms(200));
        assert!(
            matches!(t.health(), Health::Suspect { count: 3, .. }),
            "window not reached"
        );
        let tr = t
            .observe(&deleted(Strength::Strong), t0 + ms(1000))
            .unwrap();
        assert!(tr.to.is_deleted());
    }

    #[test]
    fn any_other_answer_resets_the_count() {
        let ms = Duration::from_millis;
        for interruption in [
            Verdict::healthy(),
            Verdict::transient(TransientKind::Timeout, "t"),
        ] {
            let mut t = seen(Tracker::new(policy()));
            let t0 = Instant::now();
            t.observe(&deleted(Strength::Strong), t0);
            t.observe(&deleted(Strength::Strong), t0 + ms(500));
            t.observe(&interruption, t0 + ms(900));
            t.observe(&deleted(Strength::Strong), t0 + ms(1000));
            t.observe(&deleted(Strength::Strong), t0 + ms(1500));
            assert!(!t.health().is_deleted());
            t.observe(&deleted(Strength::Strong), t0 + ms(2000));
            assert!(t.health().is_deleted());
        }
    }

    #[test]
    fn weak_evidence_needs_more() {
        let mut t = seen(Tracker::new(policy()));
        let t0 = Instant::now();
        // A 10 s blip of 404s every 500 ms (20 answers) never confirms.
        for i in 0..20 {
            t.observe(
                &deleted(Strength::Weak),
                t0 + Duration::from_millis(500 * i),
            );
        }
        assert!(!t.health().is_deleted());
        t.observe(&Verdict::healthy(), t0 + Duration::from_secs(10));
        // A real, lasting 404: confirmed once 30 s have passed.
        for i in 0..=60 {
            t.observe(
                &deleted(Strength::Weak),
                t0 + Duration::from_secs(11) + Duration::from_millis(500 * i),
            );
        }
        assert!(t.health().is_deleted());
    }

    #[test]
    fn pending_policy() {
        let ms = Duration::from_millis;
        let mut t = seen(Tracker::new(policy()));
        let t0 = Instant::now();
        for i in 0..3 {
            t.observe(&pending(), t0 + ms(500 * i));
        }
        assert!(matches!(t.health(), Health::Deleted { pending: true, .. }));
        let mut wait = policy();
        wait.on_pending_delete = PendingPolicy::Wait;
        let mut t = seen(Tracker::new(wait));
        for i in 0..10 {
            t.observe(&pending(), t0 + ms(500 * i));
        }
        assert!(matches!(t.health(), Health::PendingDelete(_)));
        assert!(!t.health().usable());
    }

    #[test]
    fn confirmed_deletion_survives_silence_not_health() {
        let ms = Duration::from_millis;
        let mut t = seen(Tracker::new(policy()));
        let t0 = Instant::now();
        for i in 0..3 {
            t.observe(&deleted(Strength::Strong), t0 + ms(500 * i));
        }
        assert!(t.health().is_deleted());
        assert!(
            t.observe(&Verdict::transient(TransientKind::Down, "x"), t0 + ms(2000))
                .is_none()
        );
        assert!(t.health().is_deleted());
        t.observe(&Verdict::healthy(), t0 + ms(3000));
        assert!(t.health().usable());
    }

    #[test]
    fn delays_follow_the_state() {
        let mut p = policy();
        p.jitter = 0.0;
        let mut t = seen(Tracker::new(p));
        let mut b = Backoff::new(p.interval, p.max_backoff);
        let now = Instant::now();
        t.observe(&Verdict::healthy(), now);
        assert_eq!(t.next_delay(p.interval, &mut b), p.interval);
        t.observe(&deleted(Strength::Strong), now);
        assert_eq!(t.next_delay(p.interval, &mut b), p.confirm_interval);
        t.observe(&Verdict::transient(TransientKind::Timeout, "t"), now);
        let delays: Vec<Duration> = (0..10).map(|_| t.next_delay(p.interval, &mut b)).collect();
        assert!(delays.iter().all(|d| *d <= p.max_backoff), "{delays:?}");
        assert!(delays.iter().all(|d| *d >= p.interval), "{delays:?}");
        assert!(delays[9] > delays[0], "backs off: {delays:?}");
    }
}
