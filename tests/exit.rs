//! The binary when nothing is left to fail over to (exit 3, or a fenced mount), and signals
//! arriving in the middle of a switch.

mod common;

use std::fs;
use std::time::{Duration, Instant};

use common::fake_master::{FakeCluster, VolState};
use common::*;
use nix::sys::signal::Signal;

const FAST: &str = FAST_HEALTH;

const FINAL_LINE: &str = "volume deleted, no usable standby: do not restart";

/// JSON log lines of a run.
fn log_lines(m: &BinMount) -> Vec<serde_json::Value> {
    m.stderr()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn final_lines(m: &BinMount) -> Vec<serde_json::Value> {
    log_lines(m)
        .into_iter()
        .filter(|v| v["message"] == FINAL_LINE)
        .collect()
}

/// Start the binary and wait until its monitor saw every volume of `layout` healthy: a volume is
/// deleted only after it was seen healthy, and on a loaded machine the round before the mount
/// may have timed out.
fn start_judged(layout: Layout, names: &[&str]) -> BinMount {
    let m = BinMount::start(layout, &["--log-format", "json"]);
    wait_until(Duration::from_secs(30), "every volume seen healthy", || {
        let lines = log_lines(&m);
        names.iter().all(|n| {
            lines.iter().any(|v| {
                v["message"] == "volume health changed"
                    && v["volume"] == *n
                    && v["to"].as_str().is_some_and(|t| t.starts_with("healthy"))
            })
        })
    });
    m
}

fn populate(vols: &[std::path::PathBuf]) {
    for (i, v) in vols.iter().enumerate() {
        fs::create_dir_all(v.join("both")).unwrap();
        fs::write(v.join("both/a"), format!("volume v{i}")).unwrap();
    }
}

#[test]
fn no_usable_standby_exits_3_and_unmounts() {
    let tail = format!("{FAST}\n[failover]\ndrain_timeout = \"1s\"\n");
    let layout = Layout::new(2, "", &tail);
    populate(&layout.vols);
    let mut m = start_judged(layout, &["v0", "v1"]);
    let mnt = m.mnt.clone();
    // The standby goes first, then the primary: nothing is left.
    fs::rename(&m.layout.vols[1], m.layout.dir.path().join("v1.gone")).unwrap();
    wait_until(
        Duration::from_secs(10),
        "the standby's deletion is confirmed",
        || {
            log_lines(&m)
                .iter()
                .any(|v| v["message"] == "volume deletion confirmed" && v["volume"] == "v1")
        },
    );
    let t = Instant::now();
    fs::remove_dir_all(&m.layout.vols[0]).unwrap();
    let code = m.wait(Duration::from_secs(20));
    let took = t.elapsed();
    assert_eq!(code, Some(3), "{}", m.stderr());
    assert!(!is_mounted(&mnt), "mount left behind");
    let lines = final_lines(&m);
    assert_eq!(lines.len(), 1, "exactly one final line: {}", m.stderr());
    let line = &lines[0];
    assert_eq!(line["volume"], "v0");
    assert!(
        line["evidence"].as_str().unwrap().contains("missing"),
        "{line}"
    );
    assert_eq!(line["mount_left"], "unmounted");
    let took_ms = line["took_ms"].as_f64().unwrap();
    assert!(
        took_ms <= 2000.0,
        "confirmation to exit took {took_ms} ms (drain 1 s + 1 s)"
    );
    println!("deletion to exit: {took:?}; confirmation to unmounted: {took_ms:.0} ms");
}

#[test]
fn on_delete_exit_does_not_try_the_standby() {
    let tail = format!("{FAST}\n[failover]\non_delete = \"exit\"\ndrain_timeout = \"500ms\"\n");
    let layout = Layout::new(2, "", &tail);
    populate(&layout.vols);
    let mut m = start_judged(layout, &["v0", "v1"]);
    fs::rename(&m.layout.vols[0], m.layout.dir.path().join("v0.gone")).unwrap();
    assert_eq!(m.wait(Duration::from_secs(20)), Some(3), "{}", m.stderr());
    assert_eq!(final_lines(&m).len(), 1);
    assert!(!is_mounted(&m.mnt));
}

#[test]
fn fenced_mount_answers_every_operation_until_an_operator_unmounts() {
    let tail = format!(
        "{FAST}\n[failover]\nleave_mount = \"fenced\"\nfence_errno = \"ENODEV\"\ndrain_timeout = \"500ms\"\n"
    );
    let layout = Layout::new(1, "", &tail);
    populate(&layout.vols);
    let mut m = start_judged(layout, &["v0"]);
    let mnt = m.mnt.clone();
    fs::rename(&m.layout.vols[0], m.layout.dir.path().join("v0.gone")).unwrap();
    wait_until(Duration::from_secs(20), "the final line", || {
        !final_lines(&m).is_empty()
    });
    assert_eq!(final_lines(&m)[0]["mount_left"], "fenced");
    // Still mounted, still answering: every operation fails clearly, nothing falls through to
    // the directory under the mount point.
    assert!(is_mounted(&mnt));
    assert!(m.try_wait().is_none(), "the process must stay to answer");
    let errno = |r: std::io::Result<()>| r.unwrap_err().raw_os_error();
    assert_eq!(
        errno(fs::metadata(mnt.join("both/a")).map(drop)),
        Some(libc::ENODEV)
    );
    assert_eq!(errno(fs::write(mnt.join("new"), b"x")), Some(libc::ENODEV));
    assert_eq!(errno(fs::read_dir(&mnt).map(drop)), Some(libc::ENODEV));
    // The operator unmounts: the process ends with 3.
    nix::mount::umount2(&mnt, nix::mount::MntFlags::MNT_DETACH).unwrap();
    assert_eq!(m.wait(Duration::from_secs(20)), Some(3), "{}", m.stderr());
    assert!(!mnt.join("new").exists());
}

/// A primary whose reads hang (it lives on an in-process FUSE mount with a blocking fault),
/// marked for delayed deletion through its CubeFS master while a read is stuck in it: the switch
/// is then draining for as long as `drain_timeout` allows.
struct SwitchInProgress {
    m: BinMount,
    fx: Fixture,
    _cluster: FakeCluster,
    reader: Option<std::thread::JoinHandle<()>>,
    draining_since: Instant,
}

impl SwitchInProgress {
    fn start() -> SwitchInProgress {
        let fx = Fixture::new(1);
        fs::create_dir_all(fx.path("vol0/both")).unwrap();
        fs::write(fx.path("vol0/both/a"), b"volume v0").unwrap();
        let cluster = FakeCluster::start(1);
        cluster.create("vol-a");
        let layout = Layout::new(0, "", "");
        let standby = layout.dir.path().join("v1");
        fs::create_dir_all(standby.join("both")).unwrap();
        fs::write(standby.join("both/a"), b"volume v1").unwrap();
        let config = format!(
            "[mount]\npath = \"{mnt}\"\nstate_file = \"off\"\n\n{FAST}\n[failover]\ndrain_timeout = \"8s\"\n\n\
             [[volumes]]\nname = \"v0\"\nbackend = {{ kind = \"dir\", path = \"{v0}\" }}\n\
             probe = {{ kind = \"cubefs\", masters = {masters:?}, volume = \"vol-a\", timeout = \"200ms\" }}\n\n\
             [[volumes]]\nname = \"v1\"\nbackend = {{ kind = \"dir\", path = \"{v1}\" }}\n",
            mnt = layout.mnt.display(),
            v0 = fx.path("vol0").display(),
            v1 = standby.display(),
            masters = cluster.addrs(),
        );
        fs::write(&layout.config, config).unwrap();
        let m = start_judged(layout, &["v0", "v1"]);
        // A read that hangs inside the primary.
        fx.faults[0].add("vol0/both/a", failoverfs::backend::faulty::Fault::Block);
        let path = m.mnt.join("both/a");
        let reader = std::thread::spawn(move || {
            let _ = fs::read(path);
        });
        wait_until(
            Duration::from_secs(10),
            "the read hangs in the primary",
            || fx.faults[0].blocked() > 0,
        );
        // A pending (delayed-mode) deletion: the volume still holds its data, so the switch
        // waits for its calls (a confirmed one would cut the drain short).
        cluster.set(
            "vol-a",
            VolState::PendingDelayed(cluster.now() + Duration::from_secs(3600)),
        );
        wait_until(
            Duration::from_secs(10),
            "the switch starts draining",
            || m.stderr().contains("switching volumes: draining"),
        );
        SwitchInProgress {
            m,
            fx,
            _cluster: cluster,
            reader: Some(reader),
            draining_since: Instant::now(),
        }
    }
}

impl SwitchInProgress {
    /// Wait until the supervisor is done (its last line says the mount is gone), then let the
    /// hung primary answer: a thread stuck in a FUSE request of another filesystem cannot die
    /// before that filesystem answers, not even on SIGKILL, so the process cannot end before.
    fn finish(&mut self) -> (Duration, Option<i32>) {
        wait_until(Duration::from_secs(30), "the stop is complete", || {
            messages(&self.m).iter().any(|m| m.starts_with("unmounted"))
        });
        let took = self.draining_since.elapsed();
        self.release();
        (took, self.m.wait(Duration::from_secs(30)))
    }

    fn release(&mut self) {
        self.fx.faults[0].clear();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

impl Drop for SwitchInProgress {
    fn drop(&mut self) {
        self.release();
    }
}

fn messages(m: &BinMount) -> Vec<String> {
    log_lines(m)
        .iter()
        .filter_map(|v| v["message"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn a_signal_during_a_switch_lets_the_drain_finish_then_stops() {
    let mut s = SwitchInProgress::start();
    s.m.signal(Signal::SIGTERM);
    let (took, code) = s.finish();
    assert_eq!(code, Some(0), "{}", s.m.stderr());
    let msgs = messages(&s.m);
    let switched = msgs.iter().position(|m| m == "switched volumes");
    let unmounted = msgs.iter().position(|m| m.starts_with("unmounted"));
    assert!(
        switched.is_some() && unmounted > switched,
        "drain, switch, then stop: {msgs:?}"
    );
    // The drain ran to its deadline (the stuck read never finished): 7.5 s of the 8 s timeout,
    // as the daemon itself measured it (a busy machine can see its log lines late).
    let drain_ms = log_lines(&s.m)
        .iter()
        .find(|v| v["message"] == "switched volumes")
        .and_then(|v| v["drain_ms"].as_f64())
        .unwrap_or_default();
    assert!(
        drain_ms >= 6000.0,
        "the drain was cut short: {drain_ms} ms (seen from outside: {took:?})"
    );
    assert!(!is_mounted(&s.m.mnt));
}

#[test]
fn a_second_signal_forces_an_immediate_stop() {
    let mut s = SwitchInProgress::start();
    s.m.signal(Signal::SIGTERM);
    wait_until(Duration::from_secs(10), "the first signal is seen", || {
        s.m.stderr().contains("finishing the switch first")
    });
    s.m.signal(Signal::SIGTERM);
    let (took, code) = s.finish();
    assert_eq!(code, Some(0), "{}", s.m.stderr());
    // Well before the drain deadline (7.5 s): the stop did not wait for the stuck read. Timed
    // by the daemon's own log timestamps: from the start of the drain to the unmount.
    let at = |prefix: &str| -> jiff::Timestamp {
        log_lines(&s.m)
            .iter()
            .find(|v| v["message"].as_str().is_some_and(|m| m.starts_with(prefix)))
            .and_then(|v| v["timestamp"].as_str()?.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix:?} line: {}", s.m.stderr()))
    };
    let logged = at("unmounted").duration_since(at("switching volumes: draining"));
    assert!(
        logged < jiff::SignedDuration::from_secs(5),
        "forced stop took {logged:?} (seen from outside: {took:?})"
    );
    let msgs = messages(&s.m);
    assert!(!msgs.iter().any(|m| m == "switched volumes"), "{msgs:?}");
    assert!(
        msgs.iter()
            .any(|m| m == "switch interrupted by a forced stop"),
        "{msgs:?}"
    );
    assert!(!is_mounted(&s.m.mnt));
}
