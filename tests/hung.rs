//! A hung or dead volume is bounded: an operation that waits longer than `mount.op_timeout` is
//! answered with `op_timeout_errno` while its call finishes on its own worker, other files keep
//! being served, a hung volume never holds every worker, and a dead FUSE filesystem under a `dir`
//! volume answers errors (never a hang) and is reported to the monitor.
mod common;

use std::fs;
use std::time::{Duration, Instant};

use common::*;
use failoverfs::backend::faulty::Fault;

const OP_TIMEOUT_MS: u64 = 500;

/// One volume, 8 workers (the test layout's), `op_timeout` of [`OP_TIMEOUT_MS`].
fn mount_with_timeout() -> Fixture {
    let fx = Fixture::with(
        1,
        &format!("op_timeout = \"{OP_TIMEOUT_MS}ms\"\n"),
        FAST_HEALTH,
    );
    for i in 0..12 {
        fs::write(fx.vol(0, &format!("f{i}")), format!("file {i}")).unwrap();
    }
    fs::write(fx.vol(0, "hangs"), b"hangs").unwrap();
    fx
}

/// Run `f` on its own thread; its result and how long it took.
fn timed<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<(T, Duration)> {
    std::thread::spawn(move || {
        let t0 = Instant::now();
        let r = f();
        (r, t0.elapsed())
    })
}

fn errno_of<T>(r: std::io::Result<T>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

#[test]
fn a_hung_file_times_out_and_the_other_files_are_served() {
    let fx = mount_with_timeout();
    fx.faults[0].add("hangs", Fault::Block);
    let path = fx.path("hangs");
    let first = timed(move || fs::read(path));
    // Meanwhile another file is served.
    assert_eq!(fs::read(fx.path("f1")).unwrap(), b"file 1");
    let (r, took) = first.join().unwrap();
    eprintln!("the hung read was answered after {took:?} (op_timeout {OP_TIMEOUT_MS} ms)");
    assert_eq!(errno_of(r), Some(libc::ETIMEDOUT));
    assert!(took >= Duration::from_millis(OP_TIMEOUT_MS), "{took:?}");
    // The call is still stuck in the volume: trying the same file again is refused at once
    // instead of taking a second worker.
    let again = timed({
        let path = fx.path("hangs");
        move || fs::read(path)
    });
    let (r, _) = again.join().unwrap();
    assert_eq!(errno_of(r), Some(libc::ETIMEDOUT));
    assert!(fx.app().deadlines().timeouts_total() >= 1);
    assert!(fx.app().vfs().alarms_total() >= 1, "the volume was probed");
    assert_eq!(fs::read(fx.path("f2")).unwrap(), b"file 2");
    // Once the volume answers again, so does the file.
    fx.faults[0].clear();
    wait_until(
        Duration::from_secs(10),
        "the file to be served again",
        || fs::read(fx.path("hangs")).is_ok_and(|d| d == b"hangs"),
    );
}

#[test]
fn a_hung_volume_never_holds_every_worker() {
    let fx = mount_with_timeout();
    // Warm the kernel's name cache, so that every reader reaches its own file's open.
    for i in 0..12 {
        fs::metadata(fx.path(&format!("f{i}"))).unwrap();
    }
    fx.faults[0].add("", Fault::Block);
    let readers: Vec<_> = (0..12)
        .map(|i| {
            let path = fx.path(&format!("f{i}"));
            timed(move || fs::read(path))
        })
        .collect();
    for r in readers {
        let (r, took) = r.join().unwrap();
        assert_eq!(errno_of(r), Some(libc::ETIMEDOUT), "after {took:?}");
    }
    // Workers were kept free: the mount still answers (with the timeout errno while the volume
    // hangs), so it can be watched and unmounted.
    let probe = timed({
        let path = fx.path("f0");
        move || fs::read(path)
    });
    let (r, _) = probe.join().unwrap();
    assert_eq!(errno_of(r), Some(libc::ETIMEDOUT));
    assert!(
        fx.app().deadlines().refused_total() >= 1,
        "no operation was refused: every worker may have been taken"
    );
    fx.faults[0].clear();
    wait_until(
        Duration::from_secs(10),
        "the volume to be served again",
        || fs::read(fx.path("f3")).is_ok_and(|d| d == b"file 3"),
    );
}

/// A FUSE filesystem (another failoverfs, standing in for cfs-client) serving a directory with
/// `f` = "data", mounted without the auto-unmount helper, so that killing its daemon leaves a
/// dead mount ("Transport endpoint is not connected"), as a crashed cfs-client does.
fn killable_fuse_volume() -> BinMount {
    let layout = Layout::new(1, "", "");
    fs::write(layout.vols[0].join("f"), b"data").unwrap();
    let mnt = layout.mnt.clone();
    BinMount::start_with_env(
        layout,
        &[],
        &[("FUSERMOUNT_PATH", "/nonexistent/fusermount3")],
        &mnt,
    )
}

/// A failoverfs over `inner` (volume v0) and, with `standby`, a plain directory holding
/// `f` = "standby" (volume v1).
fn over(inner: &BinMount, standby: bool, mount_extra: &str, tail: &str) -> Fixture {
    let layout = Layout::over_mount(&inner.mnt, 1 + standby as usize, mount_extra, tail);
    if standby {
        fs::write(layout.vols[1].join("f"), b"standby").unwrap();
    }
    let fx = Fixture::mount(layout);
    assert_eq!(fs::read(fx.path("f")).unwrap(), b"data");
    fx
}

fn kill(inner: &mut BinMount) {
    inner.signal(nix::sys::signal::Signal::SIGKILL);
    inner.wait(Duration::from_secs(10));
}

#[test]
fn a_dead_fuse_filesystem_under_a_volume_answers_errors_and_is_reported() {
    let mut inner = killable_fuse_volume();
    let inner_mnt = inner.mnt.clone();
    let fx = over(&inner, false, "op_timeout = \"2s\"\n", FAST_HEALTH);
    kill(&mut inner);
    // Through failoverfs: an error, never a hang (the kernel answers a dead connection at once;
    // op_timeout would bound it otherwise).
    let read = timed({
        let path = fx.path("f");
        move || fs::read(path)
    });
    wait_until(Duration::from_secs(10), "the read to return", || {
        read.is_finished()
    });
    let (r, took) = read.join().unwrap();
    let errno = errno_of(r);
    assert!(
        matches!(
            errno,
            Some(libc::ENOTCONN) | Some(libc::ECONNABORTED) | Some(libc::ETIMEDOUT)
        ),
        "{errno:?} after {took:?}"
    );
    // The monitor sees the volume unreachable (logged once, shown by `check` and the state).
    wait_unreachable(&fx);
    assert!(fx.app().vfs().alarms_total() >= 1);
    // The mount itself stays responsive: it answers (the root is on the dead volume, so with an
    // error), it does not hang.
    let answered = timed({
        let mnt = fx.layout.mnt.clone();
        move || fs::metadata(mnt).map(|_| ())
    });
    wait_until(Duration::from_secs(10), "the mount to answer", || {
        answered.is_finished()
    });
    drop(fx);
    // With failoverfs gone, the dead mount unmounts with a plain umount.
    nix::mount::umount2(&inner_mnt, nix::mount::MntFlags::empty()).unwrap();
    assert!(!is_mounted(&inner_mnt));
}

/// Wait for a switch to v1 for unavailability; `f` then reads the standby's bytes.
fn switched_for_unavailability(fx: &Fixture) {
    wait_until(Duration::from_secs(30), "the switch", || {
        !fx.app().audit().is_empty()
    });
    let a = &fx.app().audit()[0];
    assert!(a.reason.contains("unavailable"), "{a:?}");
    assert_eq!(a.to.as_deref(), Some("v1"), "{a:?}");
    assert_eq!(fs::read(fx.path("f")).unwrap(), b"standby");
}

/// Wait until the monitor reports the primary unreachable.
fn wait_unreachable(fx: &Fixture) {
    wait_until(
        Duration::from_secs(10),
        "the volume reported unreachable",
        || {
            matches!(
                fx.app().monitor().states()[0].health,
                failoverfs::monitor::Health::Unreachable { .. }
            )
        },
    );
}

fn on_unavailable(after: &str, action: &str) -> String {
    format!(
        "{FAST_HEALTH}\n[failover]\non_unavailable = {{ after = \"{after}\", action = \"{action}\" }}\n"
    )
}

#[test]
fn on_unavailable_failover_switches_after_a_long_outage() {
    let mut inner = killable_fuse_volume();
    let fx = over(&inner, true, "", &on_unavailable("1s", "failover"));
    kill(&mut inner);
    switched_for_unavailability(&fx);
}

#[test]
fn on_unavailable_wait_never_switches_for_an_outage() {
    let mut inner = killable_fuse_volume();
    let fx = over(&inner, true, "", &on_unavailable("1s", "wait"));
    kill(&mut inner);
    wait_until(Duration::from_secs(10), "an outage of 2 s", || {
        let s = fx.app().monitor().state(0).unwrap();
        matches!(s.health, failoverfs::monitor::Health::Unreachable { .. })
            && s.since.elapsed() > Duration::from_secs(2)
    });
    assert!(fx.app().audit().is_empty(), "{:?}", fx.app().audit());
    let e = fs::read(fx.path("f")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOTCONN));
}

#[test]
fn a_failing_volume_is_named_in_the_warning_with_the_route_generation() {
    let mut inner = killable_fuse_volume();
    let layout = Layout::over_mount(&inner.mnt, 1, "", FAST_HEALTH);
    let m = BinMount::start(layout, &["--log-format", "json"]);
    assert_eq!(fs::read(m.mnt.join("f")).unwrap(), b"data");
    kill(&mut inner);
    let e = fs::read(m.mnt.join("f")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOTCONN));
    wait_until(Duration::from_secs(10), "the warning", || {
        m.stderr().lines().any(|l| {
            serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| {
                v["message"] == "operation failed"
                    && v["level"] == "WARN"
                    && v["volume"] == "v0"
                    && v["generation"] == 1
            })
        })
    });
}

/// Volume v0 watched through a fake CubeFS master (`vol-a`), v1 a plain standby; `f` on both,
/// "v0" and "v1". `mount_extra` goes to `[mount]`.
fn deletable_primary(c: &common::fake_master::FakeCluster, mount_extra: &str) -> Fixture {
    let masters = format!("{:?}", c.addrs());
    let layout = Layout::with_volumes(
        2,
        mount_extra,
        &format!("{FAST_HEALTH}\n[failover]\ndrain_timeout = \"{DRAIN_S}s\"\n"),
        |i| {
            if i == 0 {
                format!(
                    "probe = {{ kind = \"cubefs\", masters = {masters}, volume = \"vol-a\", timeout = \"200ms\" }}"
                )
            } else {
                String::new()
            }
        },
    );
    for (i, v) in layout.vols.iter().enumerate() {
        fs::write(v.join("f"), format!("v{i}")).unwrap();
        fs::write(v.join("g"), format!("v{i}")).unwrap();
    }
    let fx = Fixture::mount(layout);
    wait_until(Duration::from_secs(10), "the primary seen healthy", || {
        fx.app().monitor().state(0).unwrap().health.usable()
    });
    assert_eq!(fs::read(fx.path("f")).unwrap(), b"v0");
    assert_eq!(fs::read(fx.path("g")).unwrap(), b"v0");
    fx
}

const DRAIN_S: u64 = 5;

/// Wait for `hung` (a read that was stuck in the old volume) to be answered, and check how: an
/// open stuck there is answered `ESTALE`, looked up again by the kernel and reaches the standby
/// (`standby` bytes); a read gets the `ESTALE`. How long it waited.
fn answered_at_the_switch(
    hung: std::thread::JoinHandle<(std::io::Result<Vec<u8>>, Duration)>,
    standby: &[u8],
) -> Duration {
    wait_until(Duration::from_secs(10), "the hung read answered", || {
        hung.is_finished()
    });
    let (r, took) = hung.join().unwrap();
    match r {
        Ok(data) => assert_eq!(data, standby, "after {took:?}"),
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::ESTALE), "after {took:?}"),
    }
    took
}

/// Stop the fixture's daemon; how long it took. A thread releases the volume's blocked calls
/// after `DRAIN_S + 4` s, so a stop that waits for them ends (and fails the caller's bound)
/// instead of hanging the suite.
fn timed_stop(mut fx: Fixture) -> Duration {
    let faults = fx.faults[0].clone();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let d2 = done.clone();
    let rescue = std::thread::spawn(move || {
        let until = Instant::now() + Duration::from_secs(DRAIN_S + 4);
        while Instant::now() < until && !d2.load(std::sync::atomic::Ordering::Relaxed) {
            std::thread::park_timeout(Duration::from_millis(50));
        }
        faults.clear();
    });
    let t0 = Instant::now();
    fx.app.take().unwrap().shutdown();
    let took = t0.elapsed();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    rescue.thread().unpark();
    rescue.join().unwrap();
    drop(fx);
    took
}

#[test]
fn a_call_hung_in_a_deleted_volume_is_answered_at_the_switch_and_does_not_hold_it() {
    let c = common::fake_master::FakeCluster::start(1);
    c.create("vol-a");
    let fx = deletable_primary(&c, "");
    fx.faults[0].add("f", Fault::Block);
    let hung = timed({
        let path = fx.path("f");
        move || fs::read(path)
    });
    wait_until(Duration::from_secs(10), "the read to hang in v0", || {
        fx.faults[0].blocked() >= 1
    });
    c.set("vol-a", common::fake_master::VolState::Gone);
    wait_until(Duration::from_secs(20), "the switch", || {
        fx.app()
            .audit()
            .iter()
            .any(|a| a.to.as_deref() == Some("v1"))
    });
    let a = fx.app().audit()[0].clone();
    eprintln!(
        "drain {:?}, swap {:?}, still running {}",
        a.drain, a.swap, a.still_running
    );
    // The drain did not wait for a call that can only fail: cut well before its budget.
    assert!(a.drain < Duration::from_secs(DRAIN_S / 2), "{a:?}");
    assert_eq!(a.still_running, 1, "{a:?}");
    // The hung caller is answered at the switch with stale_errno, not at op_timeout (30 s).
    let took = answered_at_the_switch(hung, b"v1");
    eprintln!("the hung call was answered after {took:?}");
    // The same name answers from the standby, while the old call still hangs in v0.
    assert_eq!(fx.faults[0].blocked(), 1);
    assert_eq!(fs::read(fx.path("f")).unwrap(), b"v1");
    assert_eq!(fs::read(fx.path("g")).unwrap(), b"v1");
    let took = timed_stop(fx);
    assert!(
        took < Duration::from_secs(DRAIN_S + 1),
        "the stop took {took:?} with a call hung in the old volume"
    );
}

#[test]
fn a_name_overrunning_in_the_old_volume_is_served_by_the_standby() {
    let c = common::fake_master::FakeCluster::start(1);
    c.create("vol-a");
    let fx = deletable_primary(&c, "op_timeout = \"500ms\"\n");
    fx.faults[0].add("f", Fault::Block);
    // Both calls on the hung file end in an error: the first at op_timeout, the second at once
    // (refused: a call on that file hangs).
    let (r, _) = timed({
        let path = fx.path("f");
        move || fs::read(path)
    })
    .join()
    .unwrap();
    assert_eq!(errno_of(r), Some(libc::ETIMEDOUT));
    assert_eq!(errno_of(fs::read(fx.path("f"))), Some(libc::ETIMEDOUT));
    c.set("vol-a", common::fake_master::VolState::Gone);
    wait_until(Duration::from_secs(20), "the switch", || {
        fx.app()
            .audit()
            .iter()
            .any(|a| a.to.as_deref() == Some("v1"))
    });
    // The call still hangs in v0; on v1 the name is free.
    assert_eq!(fx.faults[0].blocked(), 1);
    for _ in 0..20 {
        assert_eq!(fs::read(fx.path("f")).unwrap(), b"v1");
    }
    let took = timed_stop(fx);
    assert!(took < Duration::from_secs(DRAIN_S + 1), "{took:?}");
}

/// SIGTERM `m` and measure until the daemon is done: exited, or its main thread ended while a
/// worker still waits in the kernel for a FUSE request the stopped client under the volume had
/// already taken (an uninterruptible wait nothing in user space can end; the process entry goes
/// when that client answers or dies). Then let `inner` go on and collect the exit code.
fn stop_measured(m: &mut BinMount, inner: &BinMount) -> (Duration, Option<i32>) {
    let t0 = Instant::now();
    m.signal(nix::sys::signal::Signal::SIGTERM);
    let status = format!("/proc/{}/status", m.pid());
    wait_until(Duration::from_secs(30), "the daemon to finish", || {
        fs::read_to_string(&status).map_or(true, |s| {
            s.lines()
                .any(|l| l.starts_with("State:") && l.contains('Z'))
        })
    });
    let stop = t0.elapsed();
    inner.signal(nix::sys::signal::Signal::SIGCONT);
    (stop, m.wait(Duration::from_secs(20)))
}

/// How long the daemon itself says its stop took: from its `stopping` line to its `unmounted`
/// line (the bound applies to its own work; a busy machine can start or reap it late).
fn logged_stop(m: &BinMount) -> Duration {
    let log = m.stderr();
    let at = |what: &str| -> jiff::Timestamp {
        log.lines()
            .find(|l| l.contains(what))
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {what:?} line: {log}"))
    };
    let took = at("failoverfs::app: unmounted").duration_since(at("failoverfs::app: stopping"));
    Duration::try_from(took).unwrap_or_default()
}

/// A failoverfs daemon over a killable FUSE client holding `g` = "data" (volume v0) and, with
/// `n` = 2, a standby holding `g` = "standby".
fn daemon_over_a_client(n: usize, tail: &str) -> (BinMount, BinMount) {
    let inner = killable_fuse_volume();
    fs::write(inner.layout.vols[0].join("g"), b"data").unwrap();
    let layout = Layout::over_mount(&inner.mnt, n, "", tail);
    if n > 1 {
        fs::write(layout.vols[1].join("g"), b"standby").unwrap();
    }
    let outer = BinMount::start(layout, &[]);
    assert_eq!(fs::read(outer.mnt.join("f")).unwrap(), b"data");
    (inner, outer)
}

/// Stop the client (SIGSTOP) and start a read of `g` through the daemon, which hangs in it.
fn stop_client_under_a_read(
    inner: &BinMount,
    outer: &BinMount,
) -> std::thread::JoinHandle<(std::io::Result<Vec<u8>>, Duration)> {
    inner.signal(nix::sys::signal::Signal::SIGSTOP);
    let path = outer.mnt.join("g");
    timed(move || fs::read(path))
}

/// The daemon's `/status`, through `failoverfs status --json`.
fn status(m: &BinMount) -> Option<serde_json::Value> {
    let out = bin()
        .args(["status", "--json", "--config"])
        .arg(&m.layout.config)
        .output()
        .ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

#[test]
fn a_stopped_client_under_a_volume_fails_over_and_neither_holds_a_name_nor_the_stop() {
    let tail = format!(
        "{}drain_timeout = \"{DRAIN_S}s\"\n",
        on_unavailable("1s", "failover")
    );
    let (inner, mut outer) = daemon_over_a_client(2, &tail);
    // The standby is judged healthy before the client under the primary stops.
    wait_until(Duration::from_secs(20), "the standby healthy", || {
        status(&outer).is_some_and(|v| v["volumes"][1]["state"] == "healthy")
    });
    // A call into the stopped client hangs (nothing answers it until the switch).
    let hung = stop_client_under_a_read(&inner, &outer);
    wait_until(Duration::from_secs(30), "the switch", || {
        outer.stderr().contains("switched volumes")
    });
    let took = answered_at_the_switch(hung, b"standby");
    for _ in 0..20 {
        assert_eq!(fs::read(outer.mnt.join("g")).unwrap(), b"standby");
    }
    let (stop, code) = stop_measured(&mut outer, &inner);
    let logged = logged_stop(&outer);
    eprintln!("hung read answered after {took:?}; stop took {logged:?} ({stop:?} seen from here)");
    assert_eq!(code, Some(0), "{}", outer.stderr());
    assert!(
        logged < Duration::from_secs(DRAIN_S + 1),
        "the stop took {logged:?} with a call stuck in the stopped client"
    );
}

#[test]
fn a_stop_with_a_call_stuck_in_the_serving_volume_ends_within_the_drain_timeout() {
    let tail = format!("{FAST_HEALTH}\n[failover]\ndrain_timeout = \"2s\"\n");
    let (inner, mut outer) = daemon_over_a_client(1, &tail);
    let hung = stop_client_under_a_read(&inner, &outer);
    // The call is in the volume: the daemon's drain would wait for it.
    wait_until(
        Duration::from_secs(10),
        "the call to reach the volume",
        || {
            status(&outer)
                .is_some_and(|v| v["counters"]["in_flight"].as_u64().is_some_and(|n| n >= 1))
        },
    );
    let (stop, code) = stop_measured(&mut outer, &inner);
    let logged = logged_stop(&outer);
    eprintln!("stop took {logged:?} ({stop:?} seen from here)");
    assert_eq!(code, Some(0), "{}", outer.stderr());
    assert!(
        logged < Duration::from_secs(3),
        "the stop took {logged:?} (drain_timeout 2 s)"
    );
    // The application is answered, not left hanging on the mount that went away.
    wait_until(Duration::from_secs(10), "the stuck read answered", || {
        hung.is_finished()
    });
    assert!(hung.join().unwrap().0.is_err());
}

/// A daemon (in process) over a killable FUSE client (v0, `f` = "data") watched through a fake
/// CubeFS master that keeps saying the volume exists, and a standby (v1, `f` = "standby").
fn dead_client_under_a_healthy_master(
    c: &common::fake_master::FakeCluster,
    tail: &str,
) -> (BinMount, Fixture) {
    let mut inner = killable_fuse_volume();
    let masters = format!("{:?}", c.addrs());
    let layout = Layout::with_volumes(2, "", tail, |i| {
        if i == 0 {
            format!(
                "probe = {{ kind = \"cubefs\", masters = {masters}, volume = \"vol-a\", timeout = \"200ms\" }}"
            )
        } else {
            String::new()
        }
    })
    .primary_at(&inner.mnt.clone());
    fs::write(layout.vols[1].join("f"), b"standby").unwrap();
    let fx = Fixture::mount(layout);
    wait_until(Duration::from_secs(10), "the primary seen healthy", || {
        fx.app().monitor().state(0).unwrap().health.usable()
    });
    assert_eq!(fs::read(fx.path("f")).unwrap(), b"data");
    kill(&mut inner);
    (inner, fx)
}

#[test]
fn a_dead_client_under_a_volume_its_master_calls_healthy_is_unavailable() {
    let c = common::fake_master::FakeCluster::start(1);
    c.create("vol-a");
    let (_inner, fx) = dead_client_under_a_healthy_master(&c, &on_unavailable("1h", "wait"));
    wait_unreachable(&fx);
    // Not ready once the grace is over (30 s): an orchestrator can move the work elsewhere.
    let address = failoverfs::config::AdminAddress::Unix(fx.layout.dir.path().join("admin.sock"));
    wait_until(Duration::from_secs(60), "/readyz 503", || {
        runtime()
            .block_on(failoverfs::admin::request(&address, "GET", "/readyz", None))
            .is_ok_and(|(code, _)| code == 503)
    });
    // `wait`: never a switch, and never a deletion.
    assert!(fx.app().audit().is_empty(), "{:?}", fx.app().audit());
    assert_eq!(
        fs::read(fx.path("f")).unwrap_err().raw_os_error(),
        Some(libc::ENOTCONN)
    );
}

#[test]
fn a_dead_client_under_a_volume_its_master_calls_healthy_fails_over_when_asked_to() {
    let c = common::fake_master::FakeCluster::start(1);
    c.create("vol-a");
    let (_inner, fx) = dead_client_under_a_healthy_master(&c, &on_unavailable("1s", "failover"));
    switched_for_unavailability(&fx);
}
