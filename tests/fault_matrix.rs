//! The fault matrix: thousands of injected transient faults of mixed kinds, across the probe
//! kinds, through the real classifiers and the real monitor, on tokio's paused clock. Zero false
//! confirmations are allowed, and every real deletion must be confirmed within the policy's
//! bound.
//!
//! Each scripted probe turns the scenario's episode at the current (virtual) time into the raw
//! answer a server would give (status and body bytes, a refused connection, a black hole), and
//! classifies it with the same functions the real probes use.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use failoverfs::config::{HealthSettings, StatusPattern};
use failoverfs::monitor::{Health, Monitor, Watched};
use failoverfs::probe::{
    self, Authority, BoxFuture, Probe, Strength, TransientKind, Verdict, cubefs, http, s3,
};
use tokio::time::Instant;

const HEALTHY_BODY: &str = r#"{"code":0,"msg":"success","data":{"ID":4,"Name":"vol1","Owner":"cfsuser","Status":0,"Capacity":10,"Forbidden":false,"DeleteExecTime":"0001-01-01T00:00:00Z","VolType":0}}"#;
const GONE_BODY: &str = r#"{"code":7,"msg":"vol not exists","data":null}"#;
const NO_SUCH_BUCKET: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>NoSuchBucket</Code><Message>The specified bucket does not exist</Message></Error>";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Cubefs,
    S3,
    Http,
    Dir,
    /// A CubeFS volume seen through both its master and its ObjectNode.
    CubefsAndS3,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Episode {
    Healthy,
    /// Transient faults of mixed kinds.
    Faults,
    /// S3 answers 404 for a while although the volume exists (ObjectNode blacklist).
    Blip404,
    /// The volume is really gone (until the end of the scenario).
    Deleted,
}

struct Scenario {
    /// (start, episode), sorted by start.
    timeline: Vec<(Duration, Episode)>,
    end: Duration,
}

impl Scenario {
    fn at(&self, t: Duration) -> Episode {
        self.timeline
            .iter()
            .rev()
            .find(|(start, _)| *start <= t)
            .map(|(_, e)| *e)
            .unwrap_or(Episode::Healthy)
    }

    fn deletion_start(&self) -> Option<Duration> {
        self.timeline
            .iter()
            .find(|(_, e)| *e == Episode::Deleted)
            .map(|(s, _)| *s)
    }

    fn generate(rng: &mut fastrand::Rng, kind: Kind, delete: bool, after_faults: bool) -> Scenario {
        let mut timeline = Vec::new();
        let mut t = Duration::ZERO;
        let secs = |rng: &mut fastrand::Rng, lo: u64, hi: u64| {
            Duration::from_millis(rng.u64(lo * 1000..=hi * 1000))
        };
        for _ in 0..rng.usize(6..12) {
            timeline.push((t, Episode::Healthy));
            t += secs(rng, 3, 40);
            // Outages from a blink to far longer than the confirmation window.
            timeline.push((t, Episode::Faults));
            t += secs(rng, 1, 90);
            if matches!(kind, Kind::S3 | Kind::CubefsAndS3) && rng.bool() {
                timeline.push((t, Episode::Healthy));
                t += secs(rng, 2, 20);
                timeline.push((t, Episode::Blip404));
                t += secs(rng, 1, 10);
            }
        }
        if delete {
            if !after_faults {
                // Long enough for the monitor to leave any outage backoff and see the volume
                // healthy: the deletion then starts from a healthy state.
                timeline.push((t, Episode::Healthy));
                t += secs(rng, 12, 25);
            }
            timeline.push((t, Episode::Deleted));
            t += Duration::from_secs(90);
        } else {
            timeline.push((t, Episode::Healthy));
            t += Duration::from_secs(30);
        }
        Scenario { timeline, end: t }
    }
}

/// A probe that answers what the scenario says, through the real classifiers.
struct Scripted {
    /// Which face of the volume this probe is (Cubefs, S3, Http or Dir).
    face: Kind,
    scenario: Arc<Scenario>,
    start: Instant,
    rng: parking_lot::Mutex<fastrand::Rng>,
    faults: Arc<AtomicU64>,
    live_dir: PathBuf,
    gone_dir: PathBuf,
}

impl Scripted {
    fn cubefs_fault(&self, rng: &mut fastrand::Rng) -> Raw {
        let healthy = HEALTHY_BODY.as_bytes();
        match rng.u8(0..16) {
            0 => Raw::Refused,
            1 => Raw::BlackHole,
            2 => Raw::Slow,
            3 => Raw::Http(400, b"no leader\n".to_vec()),
            4 => Raw::Http(400, b"127.0.0.1:17010\n".to_vec()),
            5 => Raw::Http(429, b"too many requests for api: /admin/getVol\n".to_vec()),
            6 => Raw::Http(502, Vec::new()),
            7 => Raw::Http(404, b"404 page not found\n".to_vec()),
            8 => Raw::Http(405, Vec::new()),
            9 => Raw::Http(200, (0..rng.usize(0..300)).map(|_| rng.u8(..)).collect()),
            10 => Raw::Http(200, healthy[..rng.usize(0..healthy.len())].to_vec()),
            11 => Raw::Http(
                200,
                br#"{"code":33,"msg":"no leader","data":null}"#.to_vec(),
            ),
            12 => Raw::Http(
                200,
                br#"{"code":31,"msg":"no leader","data":null}"#.to_vec(),
            ),
            13 => Raw::Http(
                200,
                br#"{"code":1,"msg":"internal error","data":null}"#.to_vec(),
            ),
            14 => Raw::Http(
                200,
                br#"{"code":0,"msg":"success","data":{"Name":"vol1"}}"#.to_vec(),
            ),
            _ => Raw::Http(503, Vec::new()),
        }
    }

    fn answer(&self, episode: Episode) -> Raw {
        let mut rng = self.rng.lock();
        let face = self.face;
        match (face, episode) {
            // The master is authoritative and unaffected by the ObjectNode's blacklist.
            (Kind::Cubefs, Episode::Healthy | Episode::Blip404) => {
                Raw::Http(200, HEALTHY_BODY.into())
            }
            (Kind::Cubefs, Episode::Faults) => self.cubefs_fault(&mut rng),
            (Kind::Cubefs, Episode::Deleted) => Raw::Http(200, GONE_BODY.into()),
            (Kind::S3, Episode::Healthy) => Raw::Head(200, None),
            (Kind::S3, Episode::Faults) => match rng.u8(0..5) {
                0 => Raw::Head(403, None),
                1 => Raw::Head(500, None),
                2 => Raw::Head(503, None),
                3 => Raw::BlackHole,
                _ => Raw::Refused,
            },
            (Kind::S3, Episode::Blip404 | Episode::Deleted) => {
                Raw::Head(404, Some((404, NO_SUCH_BUCKET.as_bytes().to_vec())))
            }
            (Kind::Http, Episode::Healthy | Episode::Blip404) => Raw::Status(200),
            (Kind::Http, Episode::Faults) => match rng.u8(0..7) {
                0 => Raw::Status(500),
                1 => Raw::Status(502),
                2 => Raw::Status(503),
                3 => Raw::Status(429),
                4 => Raw::Status(301),
                5 => Raw::BlackHole,
                _ => Raw::Refused,
            },
            (Kind::Http, Episode::Deleted) => Raw::Status(if rng.bool() { 404 } else { 410 }),
            (Kind::Dir, Episode::Healthy | Episode::Blip404) => Raw::Dir(true),
            (Kind::Dir, Episode::Faults) => {
                if rng.bool() {
                    Raw::Hung
                } else {
                    Raw::DirIo
                }
            }
            (Kind::Dir, Episode::Deleted) => Raw::Dir(false),
            (Kind::CubefsAndS3, _) => unreachable!("faces are Cubefs or S3"),
        }
    }
}

/// What a server did.
enum Raw {
    Refused,
    BlackHole,
    Slow,
    Http(u16, Vec<u8>),
    Head(u16, Option<(u16, Vec<u8>)>),
    Status(u16),
    Dir(bool),
    Hung,
    DirIo,
}

impl Probe for Scripted {
    fn kind(&self) -> &'static str {
        match self.face {
            Kind::Cubefs => "cubefs",
            Kind::S3 => "s3",
            Kind::Http => "http",
            _ => "dir",
        }
    }

    fn authority(&self) -> Authority {
        match self.face {
            Kind::Cubefs => Authority::Master,
            Kind::S3 => Authority::ObjectStore,
            _ => Authority::Service,
        }
    }

    fn check(&self) -> BoxFuture<'_, Verdict> {
        Box::pin(async move {
            let t = Instant::now() - self.start;
            let episode = self.scenario.at(t);
            let raw = self.answer(episode);
            let v = match raw {
                Raw::Refused => Verdict::transient(TransientKind::Down, "connection refused"),
                Raw::BlackHole | Raw::Hung => {
                    // Longer than any probe timeout: the monitor cuts it off.
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Verdict::healthy()
                }
                Raw::Slow => {
                    tokio::time::sleep(Duration::from_secs(20)).await;
                    Verdict::healthy()
                }
                Raw::Http(status, body) => {
                    cubefs::classify(
                        status,
                        &body,
                        SystemTime::now(),
                        Duration::from_secs(30),
                        "m",
                    )
                    .verdict
                }
                Raw::Head(status, witness) => match (status, witness) {
                    (404, Some((ws, body))) => s3::classify_witness(ws, &body, "s3"),
                    (s, _) => s3::classify_head(s, "s3"),
                },
                Raw::Status(s) => http::classify(
                    s,
                    &[StatusPattern::parse("2xx").unwrap()],
                    &[
                        StatusPattern::parse("404").unwrap(),
                        StatusPattern::parse("410").unwrap(),
                    ],
                    Strength::Strong,
                    "u",
                ),
                Raw::Dir(live) => probe::dir::inspect(
                    if live { &self.live_dir } else { &self.gone_dir },
                    None,
                    false,
                ),
                Raw::DirIo => Verdict::transient(TransientKind::Io, "ENOTCONN"),
            };
            let fault = match episode {
                Episode::Faults => true,
                // A blip is a fault only for the face that shows it.
                Episode::Blip404 => self.face == Kind::S3,
                _ => false,
            };
            if fault {
                self.faults.fetch_add(1, Ordering::Relaxed);
            }
            v
        })
    }
}

#[derive(Default)]
struct Tally {
    scenarios: u64,
    faults: u64,
    false_confirmations: u64,
    deletions: u64,
    missed: u64,
    worst_from_healthy: Duration,
    worst_from_outage: Duration,
    worst_weak: Duration,
}

async fn run(
    kind: Kind,
    scenario: Scenario,
    policy: HealthSettings,
    tally: &mut Tally,
    after_faults: bool,
) {
    let scenario = Arc::new(scenario);
    let faults = Arc::new(AtomicU64::new(0));
    let tmp = tempfile::tempdir().unwrap();
    let live_dir = tmp.path().to_path_buf();
    let gone_dir = tmp.path().join("gone");
    let start = Instant::now();
    let faces: Vec<Kind> = match kind {
        Kind::CubefsAndS3 => vec![Kind::Cubefs, Kind::S3],
        k => vec![k],
    };
    let probes: Vec<Arc<dyn Probe>> = faces
        .into_iter()
        .enumerate()
        .map(|(i, face)| -> Arc<dyn Probe> {
            Arc::new(Scripted {
                face,
                scenario: scenario.clone(),
                start,
                rng: parking_lot::Mutex::new(fastrand::Rng::with_seed(
                    tally.scenarios * 7 + i as u64,
                )),
                faults: faults.clone(),
                live_dir: live_dir.clone(),
                gone_dir: gone_dir.clone(),
            })
        })
        .collect();
    let monitor = Monitor::spawn(
        &tokio::runtime::Handle::current(),
        vec![Watched {
            index: 0,
            name: "vol1".into(),
            probes,
            policy,
        }],
        0,
    );
    let mut rx = monitor.subscribe(0).unwrap();
    let mut confirmed_at = None;
    let deadline = start + scenario.end;
    loop {
        let changed = tokio::time::timeout_at(deadline, rx.changed()).await;
        if !matches!(changed, Ok(Ok(()))) {
            break;
        }
        if confirmed_at.is_none() && matches!(rx.borrow().health, Health::Deleted { .. }) {
            confirmed_at = Some(Instant::now() - start);
        }
    }
    monitor.shutdown();
    tally.scenarios += 1;
    tally.faults += faults.load(Ordering::Relaxed);
    match (scenario.deletion_start(), confirmed_at) {
        (None, Some(at)) => {
            tally.false_confirmations += 1;
            eprintln!(
                "{kind:?}: false confirmation at {at:?}: {:?}",
                scenario.timeline
            );
        }
        (Some(del), Some(at)) if at < del => {
            tally.false_confirmations += 1;
            eprintln!("{kind:?}: confirmed at {at:?} before the deletion at {del:?}");
        }
        (Some(del), Some(at)) => {
            tally.deletions += 1;
            let latency = at - del;
            let worst = if kind == Kind::S3 {
                &mut tally.worst_weak
            } else if after_faults {
                &mut tally.worst_from_outage
            } else {
                &mut tally.worst_from_healthy
            };
            *worst = (*worst).max(latency);
        }
        (Some(del), None) => {
            tally.deletions += 1;
            tally.missed += 1;
            eprintln!("{kind:?}: deletion at {del:?} never confirmed");
        }
        (None, None) => {}
    }
}

#[tokio::test(start_paused = true)]
async fn thousands_of_faults_no_false_confirmation_every_deletion_in_bound() {
    let policy = HealthSettings::default();
    let mut tally = Tally::default();
    let mut rng = fastrand::Rng::with_seed(20261125);
    for round in 0..12u64 {
        for kind in [
            Kind::Cubefs,
            Kind::S3,
            Kind::Http,
            Kind::Dir,
            Kind::CubefsAndS3,
        ] {
            let delete = round % 2 == 1;
            let after_faults = round % 4 == 3;
            let scenario = Scenario::generate(&mut rng, kind, delete, after_faults);
            run(kind, scenario, policy, &mut tally, after_faults).await;
        }
    }
    // The bounds, from the policy: the first probe after the deletion comes within one
    // (jittered) interval, or one backoff step after an outage; confirmation then takes the
    // confirmation window (or the answers it needs, whichever is longer), plus a probe timeout.
    let p = &policy;
    let confirm = p
        .confirm_window
        .max(p.confirm_interval * (p.confirmations - 1));
    // One more confirm interval of slack: the last answer lands on a tick, not on the window.
    let confirm = confirm + p.confirm_interval;
    let from_healthy = p.interval.mul_f64(1.0 + p.jitter) + confirm + p.timeout;
    // After an outage, a probe may be hanging (up to `timeout`) when the deletion happens,
    // then the backoff waits up to `max_backoff` before the next one.
    let from_outage = p.timeout + p.max_backoff + confirm;
    let weak = p.max_backoff + p.weak_confirm_window + p.confirm_interval + p.timeout;
    println!(
        "fault matrix: {} scenarios, {} transient faults injected, {} false confirmations, \
         {} real deletions ({} missed); worst confirmation: {:?} from healthy (bound {:?}), \
         {:?} right after an outage (bound {:?}), {:?} for weak-only S3 evidence (bound {:?})",
        tally.scenarios,
        tally.faults,
        tally.false_confirmations,
        tally.deletions,
        tally.missed,
        tally.worst_from_healthy,
        from_healthy,
        tally.worst_from_outage,
        from_outage,
        tally.worst_weak,
        weak,
    );
    assert!(
        tally.faults >= 1000,
        "only {} faults injected",
        tally.faults
    );
    assert_eq!(tally.false_confirmations, 0);
    assert_eq!(tally.missed, 0);
    assert!(tally.worst_from_healthy <= from_healthy);
    assert!(tally.worst_from_outage <= from_outage);
    assert!(tally.worst_weak <= weak);
    // A real CubeFS deletion seen from a healthy state is confirmed within about 3 s.
    assert!(tally.worst_from_healthy <= Duration::from_millis(3500));
}
