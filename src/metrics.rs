//! Prometheus metrics, every name in one place.
//!
//! Built at each scrape from the same state `/status` shows (the monitor, the audit trail, the
//! counters), so nothing on the operation path updates a metric: the hot path stays as it is.
//! Every series carries `fleet` (`mount.fleet_name`, or the first volume's name), so that
//! Prometheus can tell, across the nodes that mount one logical volume, which volume each serves.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::admin::AdminState;
use crate::failover::SWITCH_REASONS;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// 1 for each volume's current confirmed state (`state` label).
pub const VOLUME_HEALTH: &str = "failoverfs_volume_health";
/// 1 for the volume serving now.
pub const ACTIVE_VOLUME: &str = "failoverfs_active_volume_info";
/// Route generation (one more per switch).
pub const GENERATION: &str = "failoverfs_generation";
/// Switches to another volume, by reason.
pub const FAILOVERS: &str = "failoverfs_failovers";
/// Standbys after the active volume whose probes say healthy.
pub const USABLE_STANDBYS: &str = "failoverfs_usable_standbys";
/// Probe rounds, by volume.
pub const PROBE_ROUNDS: &str = "failoverfs_probe_rounds";
/// Probe rounds that did not answer healthy, by volume.
pub const PROBE_FAILURES: &str = "failoverfs_probe_failures";
/// Answers of one probe that were not healthy, by volume and probe.
pub const PROBE_ANSWER_FAILURES: &str = "failoverfs_probe_answer_failures";
/// Whether one probe's last answer was healthy, by volume and probe.
pub const PROBE_ANSWER_HEALTHY: &str = "failoverfs_probe_answer_healthy";
/// Duration of the last probe round, by volume.
pub const PROBE_LATENCY: &str = "failoverfs_probe_last_duration_seconds";
/// Drain durations of the switches.
pub const DRAIN_SECONDS: &str = "failoverfs_drain_duration_seconds";
/// Gate closed to new route published, per switch.
pub const SWITCH_SECONDS: &str = "failoverfs_switch_duration_seconds";
/// Operations in the volume now.
pub const IN_FLIGHT: &str = "failoverfs_operations_in_flight";
/// Operations that waited for a new route.
pub const QUEUED: &str = "failoverfs_operations_queued";
/// Operations run again on a new route.
pub const RETRIED: &str = "failoverfs_operations_retried";
/// Operations answered after `mount.op_timeout`.
pub const OP_TIMEOUTS: &str = "failoverfs_op_timeouts";
/// Operations refused because the volume hangs.
pub const REFUSED: &str = "failoverfs_operations_refused";
/// Data-path failures that had the volume probed at once.
pub const ALARMS: &str = "failoverfs_data_path_alarms";
/// `ESTALE` answers to the kernel.
pub const STALE_ANSWERS: &str = "failoverfs_stale_answers";
/// Open handles that could not follow a switch (file missing on the new volume).
pub const STALE_HANDLES: &str = "failoverfs_stale_handles";
/// Files changed on the old volume through handles open at a switch.
pub const WRITES_LEFT: &str = "failoverfs_writes_left";
/// Probe round durations, by volume.
pub const PROBE_SECONDS: &str = "failoverfs_probe_duration_seconds";
/// FUSE operations and their latency, by operation and result (`ok`, `error`, `timeout`).
pub const FUSE_OPERATIONS: &str = "failoverfs_fuse_operation_duration_seconds";

/// Upper bounds of the latency buckets, in seconds (one more bucket holds everything above).
pub const LATENCY_BOUNDS: [f64; 7] = [0.0001, 0.001, 0.01, 0.1, 1.0, 10.0, 60.0];

/// A latency histogram kept in plain atomics, for one writer at a time (a worker, a probe task),
/// read at scrape time.
#[derive(Default, Debug)]
pub struct Latencies {
    count: AtomicU64,
    nanos: AtomicU64,
    buckets: [AtomicU64; LATENCY_BOUNDS.len() + 1],
}

impl Latencies {
    /// Count one duration.
    #[inline]
    pub fn record(&self, took: Duration) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.nanos.fetch_add(nanos, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        let b = LATENCY_BOUNDS
            .iter()
            .position(|bound| secs <= *bound)
            .unwrap_or(LATENCY_BOUNDS.len());
        self.buckets[b].fetch_add(1, Ordering::Relaxed);
    }

    /// Add this histogram to `count`, `seconds` and `buckets`.
    pub fn add_to(
        &self,
        count: &mut u64,
        seconds: &mut f64,
        buckets: &mut [u64; LATENCY_BOUNDS.len() + 1],
    ) {
        *count += self.count.load(Ordering::Relaxed);
        *seconds += self.nanos.load(Ordering::Relaxed) as f64 / 1e9;
        for (b, n) in buckets.iter_mut().zip(&self.buckets) {
            *b += n.load(Ordering::Relaxed);
        }
    }
}

/// Histogram families encoded from [`Latencies`] sums: (labels, count, seconds, buckets).
#[derive(Debug)]
struct Histograms {
    name: &'static str,
    help: &'static str,
    series: Vec<(Labels, u64, f64, [u64; LATENCY_BOUNDS.len() + 1])>,
}

impl Collector for Histograms {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family =
            encoder.encode_descriptor(self.name, self.help, None, MetricType::Histogram)?;
        for (labels, count, seconds, buckets) in &self.series {
            let buckets: Vec<(f64, u64)> = LATENCY_BOUNDS
                .iter()
                .copied()
                .chain([f64::INFINITY])
                .zip(buckets.iter().copied())
                .collect();
            family
                .encode_family(labels)?
                .encode_histogram::<NoLabelSet>(*seconds, *count, &buckets, None)?;
        }
        Ok(())
    }
}

/// Every state `VOLUME_HEALTH` reports.
const STATES: [&str; 6] = [
    "unknown",
    "healthy",
    "unreachable",
    "pending-delete",
    "suspect",
    "deleted",
];

type Labels = Vec<(String, String)>;

/// The metrics, in Prometheus (OpenMetrics) text.
pub fn render(st: &AdminState) -> Result<String, std::fmt::Error> {
    let fleet = st.fleet.clone();
    let with = |pairs: &[(&str, &str)]| -> Labels {
        let mut l = vec![("fleet".to_string(), fleet.clone())];
        l.extend(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        l
    };
    let mut reg = Registry::default();
    let status = st.status();
    let route = st.vfs.router().current();
    let active = route.volume().index;
    let states = st.monitor.states();

    let health = Family::<Labels, Gauge>::default();
    let rounds = Family::<Labels, Counter>::default();
    let failures = Family::<Labels, Counter>::default();
    let latency = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    let mut usable = 0;
    for s in &states {
        for name in STATES {
            let on = i64::from(s.health.name() == name);
            health
                .get_or_create(&with(&[("volume", &s.name), ("state", name)]))
                .set(on);
        }
        let v = with(&[("volume", &s.name)]);
        rounds.get_or_create(&v).inc_by(s.rounds);
        failures.get_or_create(&v).inc_by(s.failures);
        if let Some(d) = s.last_latency {
            latency.get_or_create(&v).set(d.as_secs_f64());
        }
        usable += i64::from(s.index > active && s.health.usable());
    }
    reg.register(
        VOLUME_HEALTH,
        "Confirmed state of each volume (1 for the current state)",
        health,
    );
    reg.register(PROBE_ROUNDS, "Probe rounds", rounds);
    reg.register(
        PROBE_FAILURES,
        "Probe rounds that did not answer healthy",
        failures,
    );
    reg.register(PROBE_LATENCY, "Duration of the last probe round", latency);
    let answer_failures = Family::<Labels, Counter>::default();
    let answer_healthy = Family::<Labels, Gauge>::default();
    for s in &states {
        for p in &s.probes {
            let l = with(&[("volume", &s.name), ("probe", &p.name)]);
            answer_failures.get_or_create(&l).inc_by(p.failures);
            answer_healthy.get_or_create(&l).set(i64::from(matches!(
                p.last,
                Some(crate::probe::Verdict::Healthy { .. })
            )));
        }
    }
    reg.register(
        PROBE_ANSWER_FAILURES,
        "Answers of each probe that were not healthy, by volume and probe",
        answer_failures,
    );
    reg.register(
        PROBE_ANSWER_HEALTHY,
        "Whether each probe's last answer was healthy (1) or not (0), by volume and probe",
        answer_healthy,
    );

    let active_info = Family::<Labels, Gauge>::default();
    for s in &states {
        active_info
            .get_or_create(&with(&[("volume", &s.name)]))
            .set(i64::from(s.index == active));
    }
    reg.register(
        ACTIVE_VOLUME,
        "The volume serving now (1) and the others (0)",
        active_info,
    );
    let fleet_gauge = |v: i64| {
        let f = Family::<Labels, Gauge>::default();
        f.get_or_create(&with(&[])).set(v);
        f
    };
    reg.register(
        GENERATION,
        "Route generation (one more per switch)",
        fleet_gauge(i64::try_from(route.generation()).unwrap_or(i64::MAX)),
    );
    reg.register(
        USABLE_STANDBYS,
        "Standbys after the active volume whose probes say healthy",
        fleet_gauge(usable),
    );
    reg.register(
        IN_FLIGHT,
        "Operations in the volume now",
        fleet_gauge(i64::try_from(status.counters.in_flight).unwrap_or(i64::MAX)),
    );

    let failovers = Family::<Labels, Counter>::default();
    for (i, r) in SWITCH_REASONS.iter().enumerate() {
        let n = st.totals.by_reason[i].load(std::sync::atomic::Ordering::Relaxed);
        failovers.get_or_create(&with(&[("reason", r)])).inc_by(n);
    }
    reg.register(
        FAILOVERS,
        "Switches of the serving volume, by reason",
        failovers,
    );
    // The histograms live across scrapes; the fleet label comes from a sub-registry.
    let fleet_reg = reg.sub_registry_with_label(("fleet".into(), fleet.clone().into()));
    fleet_reg.register(
        DRAIN_SECONDS,
        "How long switches waited for operations in the old volume",
        st.totals.drain.clone(),
    );
    fleet_reg.register(
        SWITCH_SECONDS,
        "Gate closed to new route published, per switch",
        st.totals.swap.clone(),
    );

    let c = &status.counters;
    for (name, help, v) in [
        (
            QUEUED,
            "Operations that waited for a new route",
            c.queued_operations,
        ),
        (
            RETRIED,
            "Operations run again on a new route",
            c.retried_operations,
        ),
        (
            OP_TIMEOUTS,
            "Operations answered after mount.op_timeout",
            c.op_timeouts,
        ),
        (
            REFUSED,
            "Operations refused because the volume hangs",
            c.refused_operations,
        ),
        (
            ALARMS,
            "Data-path failures that had the volume probed at once",
            c.data_path_alarms,
        ),
        (
            STALE_ANSWERS,
            "ESTALE answers to the kernel (it looks the name up again and retries once)",
            c.stale_answers,
        ),
        (
            STALE_HANDLES,
            "Open handles with no file on the new volume at a switch",
            c.stale_handles,
        ),
        (
            WRITES_LEFT,
            "Files changed on the old volume through handles open at a switch",
            c.writes_left,
        ),
    ] {
        let f = Family::<Labels, Counter>::default();
        f.get_or_create(&with(&[])).inc_by(v);
        reg.register(name, help, f);
    }
    reg.register_collector(Box::new(Histograms {
        name: FUSE_OPERATIONS,
        help: "FUSE operations answered, and how long they took, by operation and result",
        series: st
            .deadlines
            .op_summaries()
            .into_iter()
            .map(|s| {
                let labels = with(&[("op", s.op), ("result", s.result)]);
                (labels, s.count, s.seconds, s.buckets)
            })
            .collect(),
    }));
    reg.register_collector(Box::new(Histograms {
        name: PROBE_SECONDS,
        help: "How long probe rounds took, by volume",
        series: states
            .iter()
            .map(|s| {
                let mut h = (
                    with(&[("volume", &s.name)]),
                    0,
                    0.0,
                    [0; LATENCY_BOUNDS.len() + 1],
                );
                s.latencies.add_to(&mut h.1, &mut h.2, &mut h.3);
                h
            })
            .collect(),
    }));
    let mut out = String::new();
    encode(&mut out, &reg)?;
    Ok(out)
}
