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
    wait_until(Duration::from_secs(30), "the switch", || {
        !fx.app().audit().is_empty()
    });
    let a = &fx.app().audit()[0];
    assert!(a.reason.contains("unavailable"), "{a:?}");
    assert_eq!(a.to.as_deref(), Some("v1"), "{a:?}");
    assert_eq!(fs::read(fx.path("f")).unwrap(), b"standby");
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
