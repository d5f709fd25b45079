//! The admin server through real mounts: `/status` and `/metrics` after a real failover, the
//! token, a manual switch under a read load, the `status` and `switch` commands, and the metrics
//! parsed by a real Prometheus parser.
mod common;

use std::fs;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use failoverfs::admin;
use failoverfs::config::AdminAddress;

const TOKEN: &str = "s3cr3t-t0ken-for-the-admin-api";

/// Two volumes with `f` holding their own name, an admin socket in the test's directory, and a
/// bearer token.
fn mount_with_admin() -> (Fixture, AdminAddress) {
    let layout = Layout::new(2, "fleet_name = \"data\"\n", FAST_HEALTH);
    let socket = layout.dir.path().join("admin.sock");
    let token_file = layout.dir.path().join("token");
    fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    // The layout's [admin] section already listens on `socket`; add the token.
    let config = fs::read_to_string(&layout.config).unwrap().replace(
        "\n[admin]\n",
        &format!("\n[admin]\ntoken_file = \"{}\"\n", token_file.display()),
    );
    assert!(config.contains(&socket.display().to_string()));
    fs::write(&layout.config, config).unwrap();
    for (i, v) in layout.vols.iter().enumerate() {
        fs::write(v.join("f"), format!("v{i}")).unwrap();
    }
    (Fixture::mount(layout), AdminAddress::Unix(socket))
}

fn ask(address: &AdminAddress, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    runtime()
        .block_on(admin::request(address, method, path, token))
        .unwrap()
}

fn get(address: &AdminAddress, path: &str) -> String {
    let (code, body) = ask(address, "GET", path, Some(TOKEN));
    assert_eq!(code, 200, "{path}: {body}");
    body
}

/// Parse Prometheus text with the Python client's OpenMetrics parser; the samples as
/// `name{labels} value` lines, sorted.
fn parse_metrics(text: &str) -> Vec<String> {
    let script = r#"
import sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = []
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
        out.append(f"{s.name}{{{labels}}} {float(s.value)!r}")
print("\n".join(sorted(out)))
"#;
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 (run .ci/install-test-tools)");
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), text.as_bytes()).unwrap();
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the metrics do not parse: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn status_and_metrics_after_a_real_failover() {
    let (fx, address) = mount_with_admin();
    // Without the token: 401, on every endpoint.
    for path in ["/healthz", "/readyz", "/status", "/metrics"] {
        assert_eq!(ask(&address, "GET", path, None).0, 401, "{path}");
        assert_eq!(ask(&address, "GET", path, Some("wrong")).0, 401, "{path}");
    }
    assert_eq!(get(&address, "/healthz"), "ok\n");
    wait_until(Duration::from_secs(10), "ready", || {
        ask(&address, "GET", "/readyz", Some(TOKEN)).0 == 200
    });

    fs::rename(&fx.layout.vols[0], fx.layout.dir.path().join("v0.gone")).unwrap();
    wait_until(Duration::from_secs(30), "the switch", || {
        !fx.app().audit().is_empty()
    });
    assert_eq!(fs::read(fx.path("f")).unwrap(), b"v1");

    let status: serde_json::Value = serde_json::from_str(&get(&address, "/status")).unwrap();
    assert_eq!(status["active"], "v1", "{status:#}");
    assert_eq!(status["fleet"], "data");
    assert_eq!(status["state"], "serving");
    assert_eq!(status["generation"], 2);
    assert_eq!(status["volumes"][0]["state"], "deleted");
    assert_eq!(status["volumes"][0]["role"], "standby");
    assert_eq!(status["volumes"][1]["role"], "active");
    assert_eq!(status["counters"]["failovers"], 1);
    let t = &status["transitions"][0];
    assert_eq!(
        (t["from"].as_str(), t["to"].as_str()),
        (Some("v0"), Some("v1"))
    );
    assert_eq!(t["outcome"], "swapped");
    assert!(t["reason"].as_str().unwrap().contains("deletion"), "{t:#}");

    let metrics = get(&address, "/metrics");
    let samples = parse_metrics(&metrics);
    let has = |line: &str| samples.iter().any(|s| s == line);
    for line in [
        r#"failoverfs_failovers_total{fleet="data",reason="deleted"} 1.0"#,
        r#"failoverfs_active_volume_info{fleet="data",volume="v1"} 1.0"#,
        r#"failoverfs_active_volume_info{fleet="data",volume="v0"} 0.0"#,
        r#"failoverfs_volume_health{fleet="data",state="deleted",volume="v0"} 1.0"#,
        r#"failoverfs_volume_health{fleet="data",state="healthy",volume="v1"} 1.0"#,
        r#"failoverfs_generation{fleet="data"} 2.0"#,
        r#"failoverfs_usable_standbys{fleet="data"} 0.0"#,
        r#"failoverfs_switch_duration_seconds_count{fleet="data"} 1.0"#,
    ] {
        assert!(has(line), "missing {line} in:\n{}", samples.join("\n"));
    }
    // FUSE operations by operation and result: reads of `f` were served.
    let reads = samples
        .iter()
        .find_map(|s| {
            s.strip_prefix(
                r#"failoverfs_fuse_operation_duration_seconds_count{fleet="data",op="read",result="ok"} "#,
            )
        })
        .unwrap_or_else(|| panic!("no read count in:\n{}", samples.join("\n")));
    assert!(reads.parse::<f64>().unwrap() >= 1.0, "{reads}");
    let rounds = samples
        .iter()
        .find_map(|s| {
            s.strip_prefix(r#"failoverfs_probe_duration_seconds_count{fleet="data",volume="v1"} "#)
        })
        .unwrap_or_else(|| panic!("no probe durations in:\n{}", samples.join("\n")));
    assert!(rounds.parse::<f64>().unwrap() >= 1.0, "{rounds}");
    // No secret in any output.
    for body in [&metrics, &get(&address, "/status")] {
        assert!(!body.contains(TOKEN));
    }
    // The deleted volume is not a switch target without force.
    let (code, body) = ask(&address, "POST", "/switch?to=v0", Some(TOKEN));
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("not switching"), "{body}");
}

#[test]
fn a_manual_switch_under_a_read_load_and_the_commands() {
    let (fx, address) = mount_with_admin();
    let AdminAddress::Unix(socket) = &address else {
        unreachable!()
    };
    wait_until(Duration::from_secs(10), "both volumes healthy", || {
        fx.app()
            .monitor()
            .states()
            .iter()
            .all(|s| s.health.usable())
    });
    // A reader on a long-lived handle and on fresh opens.
    let stop = Arc::new(AtomicBool::new(false));
    let (reads, errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let reader = {
        let (stop, reads, errors) = (stop.clone(), reads.clone(), errors.clone());
        let path = fx.path("f");
        std::thread::spawn(move || {
            let held = fs::File::open(&path).unwrap();
            let mut buf = [0u8; 8];
            while !stop.load(Ordering::Relaxed) {
                let a = std::os::unix::fs::FileExt::read_at(&held, &mut buf, 0);
                let b = fs::read(&path);
                reads.fetch_add(2, Ordering::Relaxed);
                errors.fetch_add(
                    u64::from(a.is_err()) + u64::from(b.is_err()),
                    Ordering::Relaxed,
                );
            }
        })
    };
    wait_until(Duration::from_secs(10), "reads", || {
        reads.load(Ordering::Relaxed) > 100
    });
    let config = fx.layout.config.clone();
    assert!(switch_to(&config, "v1").contains("now serving v1"));
    let base = reads.load(Ordering::Relaxed);
    wait_until(Duration::from_secs(10), "reads after the switch", || {
        reads.load(Ordering::Relaxed) > base + 100
    });
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    assert_eq!(
        errors.load(Ordering::Relaxed),
        0,
        "read errors during the switch"
    );
    assert_eq!(fs::read(fx.path("f")).unwrap(), b"v1");

    // `status`, as a table and as JSON, through the socket flag.
    let out = bin()
        .args(["status", "--socket"])
        .arg(socket)
        .output()
        .unwrap();
    // The socket flag gives no token: refused, with the server's answer.
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
    let out = bin()
        .args(["status", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("active v1"), "{table}");
    assert!(table.contains("manual"), "{table}");
    assert!(!table.contains(TOKEN));
    let out = bin()
        .args(["status", "--json", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["active"], "v1");
    assert_eq!(v["counters"]["failovers"], 1);
}

#[test]
fn the_commands_say_clearly_when_no_mount_answers() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nobody.sock");
    let out = bin()
        .args(["status", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is the mount running?"), "{err}");
    assert!(err.contains(&socket.display().to_string()), "{err}");
    let out = bin()
        .args(["switch", "--to", "v1", "--socket", "127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

/// Two volumes, v0 watched through a fake CubeFS master (`vol-a`) as well as its directory, and
/// the admin socket (no token).
fn mount_under_a_master(c: &common::fake_master::FakeCluster) -> (Fixture, AdminAddress) {
    let masters = format!("{:?}", c.addrs());
    let layout = Layout::with_volumes(2, "", FAST_HEALTH, |i| {
        if i == 0 {
            format!(
                "probes = [{{ kind = \"cubefs\", masters = {masters}, volume = \"vol-a\", timeout = \"200ms\" }}, {{ kind = \"dir\" }}]"
            )
        } else {
            String::new()
        }
    });
    for (i, v) in layout.vols.iter().enumerate() {
        fs::write(v.join("f"), format!("v{i}")).unwrap();
    }
    let socket = layout.dir.path().join("admin.sock");
    let fx = Fixture::mount(layout);
    wait_until(Duration::from_secs(10), "the primary seen healthy", || {
        fx.app().monitor().state(0).unwrap().health.usable()
    });
    (fx, AdminAddress::Unix(socket))
}

fn status_of(address: &AdminAddress) -> serde_json::Value {
    serde_json::from_str(&get_open(address, "/status")).unwrap()
}

fn get_open(address: &AdminAddress, path: &str) -> String {
    let (code, body) = ask(address, "GET", path, None);
    assert_eq!(code, 200, "{path}: {body}");
    body
}

#[test]
fn a_master_outage_under_a_directory_that_answers_shows_per_probe() {
    let c = common::fake_master::FakeCluster::start(1);
    c.create("vol-a");
    let (fx, address) = mount_under_a_master(&c);
    c.fault(0, common::fake_master::Fault::Refuse);
    // The master's own answers say it is down, in /status and in the metrics, while the volume
    // (its data reachable) stays healthy.
    wait_until(Duration::from_secs(10), "the cubefs probe failing", || {
        let v = status_of(&address);
        let probes = v["volumes"][0]["probes"].as_array().cloned().unwrap();
        probes
            .iter()
            .any(|p| p["probe"] == "cubefs" && p["healthy"] == false)
    });
    let v = status_of(&address);
    let probes = v["volumes"][0]["probes"].as_array().cloned().unwrap();
    let dir = probes.iter().find(|p| p["probe"] == "dir").unwrap();
    assert_eq!(dir["healthy"], true, "{probes:?}");
    assert_eq!(v["volumes"][0]["state"], "healthy", "{v}");
    let metrics = parse_metrics(&get_open(&address, "/metrics"));
    assert!(
        metrics.iter().any(|l| l.starts_with(
            "failoverfs_probe_answer_healthy{fleet=\"v0\",probe=\"cubefs\",volume=\"v0\"} 0.0"
        )),
        "{metrics:?}"
    );
    assert!(
        metrics.iter().any(|l| l.starts_with(
            "failoverfs_probe_answer_failures_total{fleet=\"v0\",probe=\"cubefs\",volume=\"v0\"}"
        ) && !l.ends_with(" 0.0")),
        "{metrics:?}"
    );
    // The text table says it too.
    let out = bin()
        .args(["status", "--config"])
        .arg(&fx.layout.config)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("cubefs") && table.contains("probe failing"),
        "{table}"
    );
    // Back: the probe answers healthy again.
    c.fault(0, common::fake_master::Fault::None);
    wait_until(
        Duration::from_secs(10),
        "the cubefs probe healthy again",
        || {
            let v = status_of(&address);
            v["volumes"][0]["probes"]
                .as_array()
                .is_some_and(|p| p.iter().all(|p| p["healthy"] == true))
        },
    );
}

#[test]
fn a_pending_deletion_is_its_own_state_and_reason() {
    let c = common::fake_master::FakeCluster::start(1);
    c.create("vol-a");
    let (fx, address) = mount_under_a_master(&c);
    c.set(
        "vol-a",
        common::fake_master::VolState::PendingDelayed(c.now() + Duration::from_secs(3600)),
    );
    // The default on_pending_delete = "failover": a switch, counted as pending-delete.
    wait_until(Duration::from_secs(20), "the switch", || {
        !fx.app().audit().is_empty()
    });
    let v = status_of(&address);
    assert_eq!(v["volumes"][0]["state"], "pending-delete", "{v}");
    assert_eq!(v["counters"]["failovers"], 1, "{v}");
    let metrics = parse_metrics(&get_open(&address, "/metrics"));
    for (line, want) in [
        (
            "failoverfs_failovers_total{fleet=\"v0\",reason=\"pending-delete\"}",
            " 1.0",
        ),
        (
            "failoverfs_failovers_total{fleet=\"v0\",reason=\"deleted\"}",
            " 0.0",
        ),
        (
            "failoverfs_volume_health{fleet=\"v0\",state=\"pending-delete\",volume=\"v0\"}",
            " 1.0",
        ),
        (
            "failoverfs_volume_health{fleet=\"v0\",state=\"deleted\",volume=\"v0\"}",
            " 0.0",
        ),
    ] {
        assert!(
            metrics
                .iter()
                .any(|l| l.starts_with(line) && l.ends_with(want)),
            "{line}{want}: {metrics:?}"
        );
    }
}
