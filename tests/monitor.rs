//! The monitor with real probes against real parts, on the real clock (short intervals).

mod common;

use std::time::{Duration, Instant};

use common::fake_master::{FakeCluster, Fault, VolState};
use common::*;
use failoverfs::config::{BackendSettings, CubefsProbeSettings, DirProbeSettings, HealthSettings};
use failoverfs::monitor::{Health, Monitor, Watched};
use failoverfs::probe::Probe;
use std::sync::Arc;

fn fast_policy() -> HealthSettings {
    HealthSettings {
        interval: Duration::from_millis(100),
        standby_interval: Duration::from_millis(500),
        jitter: 0.1,
        timeout: Duration::from_millis(500),
        confirm_interval: Duration::from_millis(50),
        confirmations: 3,
        confirm_window: Duration::from_millis(100),
        weak_confirmations: 10,
        weak_confirm_window: Duration::from_secs(2),
        max_backoff: Duration::from_millis(400),
        ..HealthSettings::default()
    }
}

fn cubefs_probe(c: &FakeCluster) -> Arc<dyn Probe> {
    Arc::new(failoverfs::probe::cubefs::CubefsProbe::new(
        &CubefsProbeSettings {
            masters: c.addrs(),
            volume: None,
            timeout: Duration::from_millis(200),
            cluster: None,
        },
        "vol1",
        Duration::from_secs(30),
        failoverfs::probe::http_client().unwrap(),
    ))
}

/// A monitor of `vol1` on the fake cluster `c`.
fn watch_cubefs(rt: &tokio::runtime::Runtime, c: &FakeCluster) -> Monitor {
    Monitor::spawn(
        rt.handle(),
        vec![Watched {
            index: 0,
            name: "vol1".into(),
            probes: vec![cubefs_probe(c)],
            policy: fast_policy(),
        }],
        0,
    )
}

#[test]
fn a_real_deletion_is_confirmed_and_published() {
    let rt = runtime();
    let c = FakeCluster::start(2);
    c.create("vol1");
    let m = watch_cubefs(&rt, &c);
    wait_until(Duration::from_secs(10), "healthy", || {
        m.state(0).unwrap().health.usable()
    });
    let t = Instant::now();
    c.set("vol1", VolState::MarkedDirect);
    wait_until(Duration::from_secs(10), "deletion confirmed", || {
        m.state(0).unwrap().health.is_deleted()
    });
    println!("confirmed {:?} after the deletion", t.elapsed());
    let s = m.state(0).unwrap();
    match s.health {
        Health::Deleted {
            evidence, count, ..
        } => {
            assert!(evidence.detail.contains("Status 1"), "{evidence}");
            assert!(count >= 3);
        }
        h => panic!("{h}"),
    }
    // Code 7 afterwards keeps it deleted.
    c.set("vol1", VolState::Gone);
    std::thread::sleep(Duration::from_millis(300));
    assert!(m.state(0).unwrap().health.is_deleted());
}

#[test]
fn a_master_outage_longer_than_the_window_never_confirms() {
    let rt = runtime();
    let c = FakeCluster::start(2);
    c.create("vol1");
    let m = watch_cubefs(&rt, &c);
    let mut rx = m.subscribe(0).unwrap();
    wait_until(Duration::from_secs(10), "healthy", || {
        m.state(0).unwrap().health.usable()
    });
    // Refused for a second (ten confirmation windows), then no leader for another.
    c.fault(0, Fault::Refuse);
    c.fault(1, Fault::Refuse);
    let watch_until =
        |until: Instant,
         rx: &mut tokio::sync::watch::Receiver<failoverfs::monitor::VolumeState>| {
            let mut seen = Vec::new();
            while Instant::now() < until {
                let s: failoverfs::monitor::VolumeState = rx.borrow_and_update().clone();
                assert!(
                    !s.health.is_deleted(),
                    "outage confirmed as deletion: {}",
                    s.health
                );
                seen.push(s.health.name());
                std::thread::sleep(Duration::from_millis(20));
            }
            seen
        };
    let seen = watch_until(Instant::now() + Duration::from_secs(1), &mut rx);
    assert!(seen.contains(&"unreachable"), "{seen:?}");
    c.fault(0, Fault::None);
    c.fault(1, Fault::None);
    c.set_electing(true);
    watch_until(Instant::now() + Duration::from_secs(1), &mut rx);
    c.set_electing(false);
    wait_until(Duration::from_secs(10), "healthy again", || {
        m.state(0).unwrap().health.usable()
    });
}

#[test]
fn standbys_are_probed_less_often() {
    let rt = runtime();
    let dirs = tempfile::tempdir().unwrap();
    let watched: Vec<Watched> = (0..2)
        .map(|i| {
            let path = dirs.path().join(format!("v{i}"));
            std::fs::create_dir(&path).unwrap();
            Watched {
                index: i,
                name: format!("v{i}"),
                probes: vec![Arc::new(failoverfs::probe::dir::DirProbe::new(
                    &DirProbeSettings::default(),
                    &BackendSettings::Dir { path },
                    None,
                ))],
                policy: fast_policy(),
            }
        })
        .collect();
    let m = Monitor::spawn(rt.handle(), watched, 0);
    wait_until(
        Duration::from_secs(10),
        "ten rounds on the active volume",
        || m.state(0).unwrap().rounds >= 10,
    );
    let (active, standby) = (m.state(0).unwrap().rounds, m.state(1).unwrap().rounds);
    assert!(
        standby * 2 < active,
        "active {active} rounds, standby {standby}"
    );
    assert!(m.state(1).unwrap().health.usable());
    // Switching the active volume switches the rates.
    m.set_active(1);
    let base = m.state(1).unwrap().rounds;
    wait_until(
        Duration::from_secs(10),
        "the new active volume speeds up",
        || m.state(1).unwrap().rounds >= base + 10,
    );
}
