//! The probes against real parts: the fake CubeFS master over loopback HTTP, a real S3 server,
//! real mounts (tmpfs, and a hung FUSE mount) for the dir probe.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::fake_master::{FakeCluster, Fault, Profile, VolState};
use common::s3_server::{ACCESS_KEY, S3Server, SECRET_KEY};
use common::*;
use failoverfs::config::{BackendSettings, CubefsProbeSettings, DirProbeSettings, S3ProbeSettings};
use failoverfs::probe::cubefs::CubefsProbe;
use failoverfs::probe::dir::DirProbe;
use failoverfs::probe::s3::S3Probe;
use failoverfs::probe::{Probe, Strength, TransientKind, Verdict};

fn cubefs(masters: Vec<String>, timeout_ms: u64, cluster: Option<&str>) -> CubefsProbe {
    let s = CubefsProbeSettings {
        masters,
        volume: None,
        timeout: Duration::from_millis(timeout_ms),
        cluster: cluster.map(str::to_string),
    };
    CubefsProbe::new(
        &s,
        "vol1",
        Duration::from_secs(30),
        failoverfs::probe::http_client().unwrap(),
    )
}

fn kind(v: &Verdict) -> Option<TransientKind> {
    match v {
        Verdict::Transient { kind, .. } => Some(*kind),
        _ => None,
    }
}

#[test]
fn cubefs_probe_reads_every_volume_state() {
    let rt = runtime();
    let c = FakeCluster::start(1);
    c.create("vol1");
    let p = cubefs(c.addrs(), 500, None);
    assert_eq!(rt.block_on(p.check()), Verdict::healthy());
    c.set("vol1", VolState::ReadOnly);
    assert!(matches!(
        rt.block_on(p.check()),
        Verdict::Healthy { note: Some(_) }
    ));
    c.set("vol1", VolState::MarkedDirect);
    let v = rt.block_on(p.check());
    assert!(
        matches!(&v, Verdict::Deleted(e) if e.strength == Strength::Strong),
        "{v}"
    );
    c.set("vol1", VolState::Gone);
    let v = rt.block_on(p.check());
    assert!(
        matches!(&v, Verdict::Deleted(e) if e.detail.contains("code 7")),
        "{v}"
    );

    // Delayed mode through the API: pending, then deleted once the time has passed.
    c.create("vol1");
    c.set_delete_mode(false, Duration::from_secs(48 * 3600));
    let key = "8afbe187f35151d9b5aa6d6cdd28cb72"; // md5("cfsuser")
    let client = http_get(&format!(
        "http://{}/vol/delete?name=vol1&authKey={key}",
        c.addrs()[0]
    ));
    assert!(client.contains("forbid vol[vol1] successfully"), "{client}");
    assert!(matches!(rt.block_on(p.check()), Verdict::PendingDelete(_)));
    // Undelete: healthy again.
    let undo = http_get(&format!(
        "http://{}/vol/delete?name=vol1&authKey={key}&delete=false",
        c.addrs()[0]
    ));
    assert!(undo.contains("\"code\":0"), "{undo}");
    assert_eq!(rt.block_on(p.check()), Verdict::healthy());
    c.set(
        "vol1",
        VolState::PendingDelayed(c.now() + Duration::from_secs(3600)),
    );
    c.advance(Duration::from_secs(7200));
    assert!(matches!(rt.block_on(p.check()), Verdict::Deleted(_)));
}

#[test]
fn the_probe_does_not_rely_on_the_lagging_client_view() {
    let rt = runtime();
    let c = FakeCluster::start(1);
    c.create("vol1");
    c.set_client_vol_lag(Duration::from_secs(20));
    let client_vol = format!(
        "http://{}/client/vol?name=vol1&authKey=8afbe187f35151d9b5aa6d6cdd28cb72",
        c.addrs()[0]
    );
    assert!(http_get(&client_vol).contains("\"Status\":0"));
    c.set("vol1", VolState::MarkedDirect);
    // The cached view still says Status 0; /admin/getVol already says Status 1.
    assert!(http_get(&client_vol).contains("\"Status\":0"));
    let p = cubefs(c.addrs(), 500, None);
    assert!(matches!(rt.block_on(p.check()), Verdict::Deleted(_)));
    // Wrong authKey on /client/vol is code 34, which the probe never asks for anyway.
    let wrong = format!("http://{}/client/vol?name=vol1&authKey=wrong", c.addrs()[0]);
    assert!(http_get(&wrong).contains("\"code\":34"));
}

#[test]
fn cubefs_fault_modes_are_transient() {
    let rt = runtime();
    let c = FakeCluster::start(1);
    c.create("vol1");
    let p = cubefs(c.addrs(), 300, None);
    let cases: Vec<(Fault, TransientKind)> = vec![
        (Fault::NoLeader, TransientKind::NoLeader),
        (Fault::LeaderNotReady, TransientKind::LeaderNotReady),
        (Fault::RateLimited, TransientKind::RateLimited),
        (Fault::BadGateway, TransientKind::Proxy),
        (Fault::Status(404), TransientKind::WrongEndpoint),
        (Fault::Status(405), TransientKind::WrongEndpoint),
        (Fault::Status(503), TransientKind::ServerError),
        (
            Fault::Raw(b"<html>oops</html>".to_vec()),
            TransientKind::Malformed,
        ),
        (
            Fault::Raw(br#"{"code":0,"msg":"success","data":{"Name":"vol1"}}"#.to_vec()),
            TransientKind::Malformed,
        ),
        (Fault::Truncated, TransientKind::Malformed),
        (
            Fault::Code(1, "internal error".into()),
            TransientKind::ServerError,
        ),
        (Fault::Code(31, "no leader".into()), TransientKind::NoLeader),
        (Fault::Code(33, "no leader".into()), TransientKind::NoLeader),
        (
            Fault::Code(50, "no vol policy".into()),
            TransientKind::Unexpected,
        ),
        (Fault::BlackHole, TransientKind::Timeout),
        (
            Fault::Slow(Duration::from_millis(900)),
            TransientKind::Timeout,
        ),
    ];
    for (fault, expected) in cases {
        c.fault(0, fault.clone());
        let v = rt.block_on(p.check());
        let k = kind(&v);
        // A truncated body is reported either as malformed or as the transport error it causes.
        let ok =
            k == Some(expected) || (fault == Fault::Truncated && k == Some(TransientKind::Down));
        assert!(ok, "{fault:?}: {v}");
    }
    c.fault(0, Fault::Refuse);
    assert_eq!(kind(&rt.block_on(p.check())), Some(TransientKind::Down));
    c.fault(0, Fault::None);
    assert_eq!(rt.block_on(p.check()), Verdict::healthy());
    // Old numbering: 31 no leader, 32 auth; neither is read as anything but transient.
    c.set_profile(Profile::Old);
    c.fault(
        0,
        Fault::Code(32, "client and server auth key do not match".into()),
    );
    assert_eq!(kind(&rt.block_on(p.check())), Some(TransientKind::Auth));
}

#[test]
fn masters_are_tried_last_good_first_then_in_order() {
    let rt = runtime();
    let c = FakeCluster::start(3);
    c.create("vol1");
    let p = cubefs(c.addrs(), 300, None);
    c.set_leader(2);
    c.fault(0, Fault::Refuse);
    c.fault(1, Fault::NoLeader);
    assert_eq!(rt.block_on(p.check()), Verdict::healthy());
    let order: Vec<usize> = c.log().iter().map(|r| r.master).collect();
    assert_eq!(
        order,
        vec![1, 2],
        "refused 0 leaves no log; 1 said no leader; 2 answered"
    );
    c.clear_log();
    c.fault(0, Fault::None);
    assert_eq!(rt.block_on(p.check()), Verdict::healthy());
    let order: Vec<usize> = c.log().iter().map(|r| r.master).collect();
    assert_eq!(order, vec![2], "the last good master is asked first");
    // The probe sends no authKey and no compression header, with GET.
    for r in c.log() {
        assert_eq!(
            (r.method.as_str(), r.path.as_str()),
            ("GET", "/admin/getVol")
        );
        assert_eq!(r.query, "name=vol1");
        assert!(!r.headers.iter().any(|(k, _)| k == "x-cfs-accept-encoding"));
    }
}

#[test]
fn black_holed_masters_cost_one_timeout_each() {
    let rt = runtime();
    let c = FakeCluster::start(3);
    c.create("vol1");
    c.set_leader(2);
    c.fault(0, Fault::BlackHole);
    c.fault(1, Fault::BlackHole);
    let p = cubefs(c.addrs(), 200, None);
    let t = Instant::now();
    assert_eq!(rt.block_on(p.check()), Verdict::healthy());
    let took = t.elapsed();
    assert!(took < Duration::from_millis(1500), "took {took:?}");
}

#[test]
fn followers_proxy_or_fail_when_the_leader_is_down() {
    let rt = runtime();
    let c = FakeCluster::start(2);
    c.create("vol1");
    c.set("vol1", VolState::Gone);
    // Master 1 (a follower) proxies the leader's answer: authoritative.
    let p1 = cubefs(vec![c.addrs()[1].clone()], 300, None);
    assert!(matches!(rt.block_on(p1.check()), Verdict::Deleted(_)));
    // With the leader down, the follower answers 502: transient, never a deletion.
    c.fault(0, Fault::Refuse);
    assert_eq!(kind(&rt.block_on(p1.check())), Some(TransientKind::Proxy));
    // During an election everybody says no leader.
    c.fault(0, Fault::None);
    c.set_electing(true);
    let both = cubefs(c.addrs(), 300, None);
    assert_eq!(
        kind(&rt.block_on(both.check())),
        Some(TransientKind::NoLeader)
    );
}

#[test]
fn a_deletion_from_another_cluster_does_not_count() {
    let rt = runtime();
    let c = FakeCluster::start(1);
    c.set_cluster_name("someone-else");
    let p = cubefs(c.addrs(), 300, Some("cfs_test"));
    // vol1 does not exist there: code 7, but from the wrong cluster.
    assert_eq!(
        kind(&rt.block_on(p.check())),
        Some(TransientKind::WrongCluster)
    );
    c.set_cluster_name("cfs_test");
    assert!(matches!(rt.block_on(p.check()), Verdict::Deleted(_)));
}

#[test]
fn master_restart_is_never_a_deletion() {
    let rt = runtime();
    let c = Arc::new(FakeCluster::start(1));
    c.create("vol1");
    let p = cubefs(c.addrs(), 200, None);
    let c2 = c.clone();
    let restart = std::thread::spawn(move || {
        c2.restart(Duration::from_millis(500), Duration::from_millis(1000))
    });
    let mut seen = Vec::new();
    while !restart.is_finished() {
        let v = rt.block_on(p.check());
        assert!(
            !matches!(v, Verdict::Deleted(_) | Verdict::PendingDelete(_)),
            "{v}"
        );
        seen.push(kind(&v));
        std::thread::sleep(Duration::from_millis(50));
    }
    restart.join().unwrap();
    assert!(seen.contains(&Some(TransientKind::Down)), "{seen:?}");
    assert!(seen.contains(&Some(TransientKind::NoLeader)), "{seen:?}");
    assert_eq!(rt.block_on(p.check()), Verdict::healthy());
}

fn s3_probe(endpoint: &str, bucket: &str, creds_file: Option<std::path::PathBuf>) -> S3Probe {
    let s = S3ProbeSettings {
        endpoint: endpoint.to_string(),
        bucket: Some(bucket.to_string()),
        region: "us-east-1".into(),
        path_style: true,
        access_key_env: "FAILOVERFS_TEST_NO_SUCH_ENV_ACCESS".into(),
        secret_key_env: "FAILOVERFS_TEST_NO_SUCH_ENV_SECRET".into(),
        credentials_file: creds_file,
        timeout: Duration::from_secs(2),
    };
    S3Probe::new(&s, "unused", failoverfs::probe::http_client().unwrap())
}

#[test]
fn s3_probe_against_a_real_server() {
    let rt = runtime();
    let mut server = S3Server::start();
    assert_eq!(server.create_bucket("vol1"), 200);
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("creds.toml");
    std::fs::write(
        &creds,
        format!("access_key = \"{ACCESS_KEY}\"\nsecret_key = \"{SECRET_KEY}\"\n"),
    )
    .unwrap();
    let p = s3_probe(&server.endpoint, "vol1", Some(creds.clone()));
    assert_eq!(rt.block_on(p.check()), Verdict::healthy());

    // Wrong credentials: 403, transient.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "access_key = \"nope\"\nsecret_key = \"nope\"\n").unwrap();
    let wrong = s3_probe(&server.endpoint, "vol1", Some(bad));
    assert_eq!(kind(&rt.block_on(wrong.check())), Some(TransientKind::Auth));
    // An unreadable credentials file never leaks its contents and is transient.
    let broken = dir.path().join("broken.toml");
    std::fs::write(&broken, "secret_key = \"TOPSECRET\"").unwrap();
    let v = rt.block_on(s3_probe(&server.endpoint, "vol1", Some(broken)).check());
    assert_eq!(kind(&v), Some(TransientKind::Auth));
    assert!(!v.to_string().contains("TOPSECRET"));

    // Delete the bucket mid-test: weak deletion evidence.
    assert!(matches!(server.delete_bucket("vol1"), 200 | 204));
    let v = rt.block_on(p.check());
    assert!(
        matches!(&v, Verdict::Deleted(e) if e.strength == Strength::Weak),
        "{v}"
    );

    // Server down: transient.
    server.stop();
    assert_eq!(kind(&rt.block_on(p.check())), Some(TransientKind::Down));
    server.resume();
    assert_eq!(server.create_bucket("vol1"), 200);
    assert_eq!(rt.block_on(p.check()), Verdict::healthy());
}

#[test]
fn dir_probe_require_mountpoint_on_a_real_tmpfs() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("vol");
    std::fs::create_dir(&root).unwrap();
    let settings = DirProbeSettings {
        require_mountpoint: true,
        marker: Some(".volume".into()),
        ..Default::default()
    };
    let backend = BackendSettings::Dir { path: root.clone() };
    let p = DirProbe::new(&settings, &backend, None);
    // Not mounted: the empty directory is not the volume.
    assert!(matches!(rt.block_on(p.check()), Verdict::Deleted(_)));
    nix::mount::mount(
        Some("tmpfs"),
        &root,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=1m"),
    )
    .expect("mount tmpfs");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    let guard = Unmount(root.clone());
    // Mounted, but no marker yet.
    assert!(matches!(rt.block_on(p.check()), Verdict::Deleted(e) if e.detail.contains("marker")));
    std::fs::write(root.join(".volume"), b"").unwrap();
    assert_eq!(rt.block_on(p.check()), Verdict::healthy());
    drop(guard);
    let v = rt.block_on(p.check());
    assert!(
        matches!(&v, Verdict::Deleted(e) if e.detail.contains("mount point")),
        "{v}"
    );
}

#[test]
fn dir_probe_on_a_hung_filesystem_is_transient_and_never_blocks_the_runtime() {
    let rt = runtime();
    // A real FUSE mount whose backend blocks every operation: a hung network filesystem.
    let fx = Fixture::new(1);
    std::fs::create_dir(fx.path("vol")).unwrap();
    fx.faults[0].add("vol", failoverfs::backend::faulty::Fault::Block);
    let settings = DirProbeSettings {
        path: Some(fx.path("vol")),
        timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let p = DirProbe::new(
        &settings,
        &BackendSettings::Dir {
            path: fx.path("vol"),
        },
        None,
    );
    // Drop the kernel's cached attributes so the stat reaches the daemon.
    std::fs::write("/proc/sys/vm/drop_caches", b"2").unwrap();
    let t = Instant::now();
    let v = rt.block_on(p.check());
    assert_eq!(kind(&v), Some(TransientKind::Timeout), "{v}");
    assert!(t.elapsed() < Duration::from_secs(2));
    // The runtime stays responsive, and a second probe does not pile up another stuck thread.
    let v = rt.block_on(p.check());
    assert_eq!(kind(&v), Some(TransientKind::Io), "{v}");
    fx.faults[0].clear();
    wait_until(Duration::from_secs(10), "the probe recovers", || {
        rt.block_on(p.check()) == Verdict::healthy()
    });
}
