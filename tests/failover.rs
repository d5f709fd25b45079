//! Failover through real FUSE mounts over dir volumes: what an application sees when the primary
//! is deleted (by its CubeFS master, by renaming its root away, by `rm -rf`), writes across the
//! switch, stale handles, the chain down the table, an outage that must not switch, and a stress
//! run of forced switches.

mod common;

use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use common::fake_master::{FakeCluster, Fault, VolState};
use common::*;
use failoverfs::failover::Outcome;
use parking_lot::Mutex;

/// Fast probes, and a drain that fits the tests.
fn fast() -> String {
    format!("{FAST_HEALTH}\n[failover]\ndrain_timeout = \"2s\"\n")
}

const FILES: [&str; 3] = ["both/a", "both/b", "both/deep/c"];

/// Give every volume the same tree with distinguishable content, plus a file only the primary
/// has and a directory for writes.
/// Volume `i` is reported as a configuration error (never seen healthy), not as deleted.
fn assert_never_healthy(fx: &Fixture, i: usize) {
    let state = fx.app().monitor().states()[i].clone();
    assert!(
        matches!(
            state.health,
            failoverfs::monitor::Health::Unreachable {
                kind: failoverfs::probe::TransientKind::NeverHealthy,
                ..
            }
        ),
        "{:?}",
        state.health
    );
}

fn populate(layout: &Layout) {
    for (i, v) in layout.vols.iter().enumerate() {
        fs::create_dir_all(v.join("both/deep")).unwrap();
        fs::create_dir_all(v.join("w")).unwrap();
        for f in FILES {
            fs::write(v.join(f), content(i, f)).unwrap();
        }
    }
    fs::write(layout.vols[0].join("only-primary"), b"primary only").unwrap();
}

fn content(volume: usize, file: &str) -> Vec<u8> {
    format!("volume v{volume} {file}\n").into_bytes()
}

fn which_volume(data: &[u8]) -> Option<usize> {
    let s = std::str::from_utf8(data).ok()?;
    s.strip_prefix("volume v")?.split(' ').next()?.parse().ok()
}

#[derive(Clone, Debug)]
struct Op {
    start: SystemTime,
    end: SystemTime,
    result: Result<usize, i32>,
}

/// An application reading in a loop: long-lived handles (opened before anything happens) and
/// fresh opens, over files present on every volume.
struct Reader {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Op>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Reader {
    fn start(mnt: &Path) -> Reader {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let paths: Vec<PathBuf> = FILES.iter().map(|f| mnt.join(f)).collect();
        let handles: Vec<fs::File> = paths.iter().map(|p| fs::File::open(p).unwrap()).collect();
        let (s, l) = (stop.clone(), log.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                for (i, p) in paths.iter().enumerate() {
                    let start = SystemTime::now();
                    let mut buf = [0u8; 128];
                    let r = handles[i]
                        .read_at(&mut buf, 0)
                        .map(|n| which_volume(&buf[..n]).unwrap_or(usize::MAX))
                        .map_err(|e| e.raw_os_error().unwrap_or(-1));
                    let end = SystemTime::now();
                    l.lock().push(Op {
                        start,
                        end,
                        result: r,
                    });
                    let start = SystemTime::now();
                    let r = fs::read(p)
                        .map(|d| which_volume(&d).unwrap_or(usize::MAX))
                        .map_err(|e| e.raw_os_error().unwrap_or(-1));
                    let end = SystemTime::now();
                    l.lock().push(Op {
                        start,
                        end,
                        result: r,
                    });
                }
            }
        });
        Reader {
            stop,
            log,
            thread: Some(thread),
        }
    }

    fn ops(&self) -> usize {
        self.log.lock().len()
    }

    fn finish(mut self) -> Vec<Op> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.log.lock().clone()
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Wait for switch number `n` and return when it was complete: the new route published and
/// the kernel's caches of the old volume dropped. (Between the publish and the end of the
/// invalidation, a read may still be answered from pages the kernel cached from the old
/// volume; never with an error.)
fn wait_for_switch(fx: &Fixture, n: usize) -> SystemTime {
    wait_until(Duration::from_secs(30), "the switch", || {
        fx.app().audit().len() >= n
    });
    let a = &fx.app().audit()[n - 1];
    assert!(matches!(a.outcome, Outcome::Swapped { .. }), "{a:?}");
    a.completed_at
}

/// Keep the reader going for `more` more operations and at least a second.
fn read_on_after(r: &Reader, more: usize) {
    let base = r.ops();
    let until = SystemTime::now() + Duration::from_secs(1);
    wait_until(Duration::from_secs(20), "reads after the switch", || {
        r.ops() >= base + more && SystemTime::now() >= until
    });
}

fn inodes(mnt: &Path) -> Vec<u64> {
    FILES
        .iter()
        .map(|f| fs::metadata(mnt.join(f)).unwrap().ino())
        .collect()
}

/// Two volumes; the primary is the CubeFS volume `vol-a` of cluster `c`, watched through its
/// masters.
fn cubefs_primary(c: &FakeCluster) -> Layout {
    let masters = format!("{:?}", c.addrs());
    Layout::with_volumes(2, "", &fast(), |i| {
        if i == 0 {
            format!(
                "probe = {{ kind = \"cubefs\", masters = {masters}, volume = \"vol-a\", timeout = \"200ms\" }}"
            )
        } else {
            String::new()
        }
    })
}

#[test]
fn master_deletes_the_primary_readers_see_a_pause_not_an_error() {
    let c = FakeCluster::start(2);
    c.create("vol-a");
    let layout = cubefs_primary(&c);
    populate(&layout);
    let fx = Fixture::mount(layout);
    let before = inodes(&fx.layout.mnt);
    let reader = Reader::start(&fx.layout.mnt);
    read_on_after(&reader, 30);
    c.set("vol-a", VolState::Gone);
    let switched = wait_for_switch(&fx, 1);
    read_on_after(&reader, 60);
    let ops = reader.finish();
    let errors: Vec<&Op> = ops.iter().filter(|o| o.result.is_err()).collect();
    assert!(errors.is_empty(), "read errors: {errors:?}");
    let late: Vec<&Op> = ops.iter().filter(|o| o.start > switched).collect();
    assert!(!late.is_empty());
    assert!(
        late.iter().all(|o| o.result == Ok(1)),
        "after the switch every read is served by the standby: {:?}",
        late.iter()
            .filter(|o| o.result != Ok(1))
            .take(5)
            .collect::<Vec<_>>()
    );
    assert!(
        ops.iter().any(|o| o.result == Ok(0)),
        "the primary served before"
    );
    assert_eq!(
        inodes(&fx.layout.mnt),
        before,
        "inode numbers survive the switch"
    );
    let a = &fx.app().audit()[0];
    assert!(a.evidence.contains("code 7"), "{a:?}");
    assert_eq!(a.to.as_deref(), Some("v1"));
}

#[test]
fn primary_root_renamed_away_fails_over_without_errors() {
    let layout = Layout::new(2, "", &fast());
    populate(&layout);
    let fx = Fixture::mount(layout);
    let before = inodes(&fx.layout.mnt);
    let reader = Reader::start(&fx.layout.mnt);
    read_on_after(&reader, 30);
    let moved = fx.layout.dir.path().join("v0.moved");
    fs::rename(&fx.layout.vols[0], &moved).unwrap();
    let switched = wait_for_switch(&fx, 1);
    read_on_after(&reader, 60);
    let ops = reader.finish();
    let errors: Vec<&Op> = ops.iter().filter(|o| o.result.is_err()).collect();
    assert!(errors.is_empty(), "read errors: {errors:?}");
    assert!(
        ops.iter()
            .filter(|o| o.start > switched)
            .all(|o| o.result == Ok(1))
    );
    assert_eq!(inodes(&fx.layout.mnt), before);
}

#[test]
fn rm_rf_of_the_primary_errors_only_until_the_switch() {
    let layout = Layout::new(2, "", &fast());
    populate(&layout);
    let fx = Fixture::mount(layout);
    let reader = Reader::start(&fx.layout.mnt);
    read_on_after(&reader, 30);
    let destroyed = SystemTime::now();
    fs::remove_dir_all(&fx.layout.vols[0]).unwrap();
    let switched = wait_for_switch(&fx, 1);
    read_on_after(&reader, 60);
    let ops = reader.finish();
    for o in &ops {
        if o.result.is_err() {
            // The operation overlapped the window (it may have started just before the
            // destruction and met it half-way).
            assert!(
                o.end >= destroyed && o.start <= switched,
                "an error outside the window between destruction and the switch: {o:?}"
            );
        }
        if o.start > switched {
            assert_eq!(o.result, Ok(1), "after the switch: {o:?}");
        }
    }
    let errors = ops.iter().filter(|o| o.result.is_err()).count();
    println!("{errors} errors while the primary was destroyed but not yet confirmed deleted");
}

#[test]
fn writes_issued_after_confirmation_land_on_the_standby() {
    let layout = Layout::new(2, "", &fast());
    populate(&layout);
    let fx = Fixture::mount(layout);
    let stop = Arc::new(AtomicBool::new(false));
    /// (started, record number, outcome) of every write.
    type Written = Vec<(SystemTime, u32, Result<(), i32>)>;
    let written: Arc<Mutex<Written>> = Arc::new(Mutex::new(Vec::new()));
    let writer = {
        let (stop, written, dir) = (stop.clone(), written.clone(), fx.path("w"));
        std::thread::spawn(move || {
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let start = SystemTime::now();
                let r = fs::write(dir.join(format!("{n}")), format!("record {n}"))
                    .map_err(|e| e.raw_os_error().unwrap_or(-1));
                written.lock().push((start, n, r));
                n += 1;
            }
        })
    };
    wait_until(Duration::from_secs(10), "writes before", || {
        written.lock().len() > 50
    });
    let moved = fx.layout.dir.path().join("v0.moved");
    fs::rename(&fx.layout.vols[0], &moved).unwrap();
    wait_for_switch(&fx, 1);
    let confirmed = fx.app().audit()[0].started_at;
    let base = written.lock().len();
    wait_until(Duration::from_secs(10), "writes after", || {
        written.lock().len() > base + 50
    });
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let written = written.lock().clone();
    let after: Vec<_> = written.iter().filter(|(t, _, _)| *t >= confirmed).collect();
    assert!(after.len() > 50);
    for (_, n, r) in &after {
        assert_eq!(*r, Ok(()), "write {n} after confirmation failed");
        let on_standby = fs::read(fx.vol(1, &format!("w/{n}"))).unwrap_or_default();
        assert_eq!(
            on_standby,
            format!("record {n}").into_bytes(),
            "write {n} lost"
        );
        assert!(
            !moved.join(format!("w/{n}")).exists(),
            "write {n} reached the old primary"
        );
    }
}

#[test]
fn a_handle_on_a_file_only_the_primary_has_turns_stale() {
    let layout = Layout::new(2, "", &fast());
    populate(&layout);
    let fx = Fixture::mount(layout);
    let only = fs::File::open(fx.path("only-primary")).unwrap();
    let both = fs::File::open(fx.path("both/a")).unwrap();
    let mut buf = [0u8; 64];
    assert!(only.read_at(&mut buf, 0).is_ok());
    assert_eq!(
        fx.app().switch_to(Some(1), "test"),
        Some(Outcome::Swapped {
            to: 1,
            generation: 2
        })
    );
    let e = only.read_at(&mut buf, 0).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ESTALE));
    // Every later use of that handle says the same.
    let e = only.read_at(&mut buf, 0).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ESTALE));
    let n = both.read_at(&mut buf, 0).unwrap();
    assert_eq!(which_volume(&buf[..n]), Some(1));
    assert_eq!(fx.app().audit()[0].stale_handles, 1);
}

#[test]
fn chain_skips_a_dead_standby() {
    let layout = Layout::new(3, "", &fast());
    populate(&layout);
    let fx = Fixture::mount(layout);
    // Standby 1 dies first; the monitor notices (it is probed too).
    fs::rename(&fx.layout.vols[1], fx.layout.dir.path().join("v1.gone")).unwrap();
    wait_until(
        Duration::from_secs(10),
        "standby 1 confirmed deleted",
        || fx.app().monitor().state(1).unwrap().health.is_deleted(),
    );
    fs::rename(&fx.layout.vols[0], fx.layout.dir.path().join("v0.gone")).unwrap();
    wait_for_switch(&fx, 1);
    assert_eq!(fx.app().audit()[0].to.as_deref(), Some("v2"));
    assert_eq!(which_volume(&fs::read(fx.path("both/a")).unwrap()), Some(2));
    // And the chain continues: v2 is now watched as the active volume.
    assert!(fx.app().monitor().state(2).unwrap().health.usable());
}

#[test]
fn a_master_outage_longer_than_the_window_does_not_switch() {
    let c = FakeCluster::start(1);
    c.create("vol-a");
    let layout = cubefs_primary(&c);
    populate(&layout);
    let fx = Fixture::mount(layout);
    wait_until(Duration::from_secs(10), "primary healthy", || {
        fx.app().monitor().state(0).unwrap().health.usable()
    });
    c.fault(0, Fault::Refuse);
    std::thread::sleep(Duration::from_secs(1));
    c.fault(0, Fault::NoLeader);
    std::thread::sleep(Duration::from_secs(1));
    c.fault(0, Fault::None);
    wait_until(Duration::from_secs(10), "primary healthy again", || {
        fx.app().monitor().state(0).unwrap().health.usable()
    });
    assert!(
        fx.app().audit().is_empty(),
        "switched on an outage: {:?}",
        fx.app().audit()
    );
    assert_eq!(which_volume(&fs::read(fx.path("both/a")).unwrap()), Some(0));
}

#[test]
fn stress_mixed_operations_while_switches_are_forced() {
    let layout = Layout::new(2, "", &fast());
    populate(&layout);
    for v in &layout.vols {
        for t in 0..4 {
            fs::create_dir_all(v.join(format!("t{t}"))).unwrap();
        }
    }
    let fx = Fixture::mount(layout);
    let stop = Arc::new(AtomicBool::new(false));
    let unexpected: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let counts: Arc<Mutex<u64>> = Arc::new(Mutex::new(0));
    let workers: Vec<_> = (0..4)
        .map(|t| {
            let (stop, unexpected, counts) = (stop.clone(), unexpected.clone(), counts.clone());
            let dir = fx.path(&format!("t{t}"));
            let both = fx.path("both/a");
            std::thread::spawn(move || {
                // Races with the switch may legitimately find a file missing or present on the
                // other volume; a dropped or doubled reply would show as EIO or a hang.
                let ok = |r: std::io::Result<()>, what: &str, u: &Mutex<Vec<String>>| {
                    if let Err(e) = r {
                        let errno = e.raw_os_error().unwrap_or(-1);
                        if !matches!(
                            errno,
                            libc::ENOENT | libc::EEXIST | libc::ENOTEMPTY | libc::ESTALE
                        ) {
                            u.lock().push(format!("{what}: {e}"));
                        }
                    }
                };
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let f = dir.join(format!("f{}", i % 16));
                    ok(
                        fs::write(&f, vec![b'x'; (i % 8192) as usize]),
                        "write",
                        &unexpected,
                    );
                    ok(fs::read(&f).map(drop), "read", &unexpected);
                    ok(fs::metadata(&f).map(drop), "stat", &unexpected);
                    ok(fs::rename(&f, dir.join("renamed")), "rename", &unexpected);
                    ok(fs::remove_file(dir.join("renamed")), "unlink", &unexpected);
                    ok(
                        fs::create_dir(dir.join("d")).and_then(|_| fs::remove_dir(dir.join("d"))),
                        "mkdir",
                        &unexpected,
                    );
                    ok(
                        fs::read_dir(&dir).map(|d| d.count()).map(drop),
                        "readdir",
                        &unexpected,
                    );
                    ok(fs::read(&both).map(drop), "read both", &unexpected);
                    i += 1;
                    *counts.lock() += 8;
                }
            })
        })
        .collect();
    let mut switches = 0;
    for k in 0..40 {
        let target = (k + 1) % 2;
        let out = fx.app().switch_to(Some(target), "stress");
        assert!(
            matches!(out, Some(Outcome::Swapped { to, .. }) if to == target),
            "{out:?}"
        );
        switches += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    for w in workers {
        while !w.is_finished() {
            assert!(
                std::time::Instant::now() < deadline,
                "a worker hangs (deadlock?)"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        w.join().expect("worker panicked");
    }
    let unexpected = unexpected.lock().clone();
    assert!(
        unexpected.is_empty(),
        "unexpected errors: {:?}",
        &unexpected[..unexpected.len().min(10)]
    );
    println!(
        "{switches} forced switches under {} operations",
        counts.lock()
    );
    assert_eq!(fx.app().audit().len(), switches);
}

#[test]
fn without_queueing_operations_fail_at_once_during_a_switch() {
    let tail = format!(
        "{FAST_HEALTH}\n[failover]\ndrain_timeout = \"3s\"\nqueue = false\nerrno = \"EAGAIN\"\n"
    );
    let layout = Layout::new(2, "", &tail);
    populate(&layout);
    let fx = Fixture::mount(layout);
    // An operation hangs in the primary, so the switch drains for a while.
    fx.faults[0].add("both/a", failoverfs::backend::faulty::Fault::Block);
    let hung_path = fx.path("both/a");
    let hung = std::thread::spawn(move || fs::read(hung_path).map(drop));
    wait_until(Duration::from_secs(10), "the read hangs", || {
        fx.faults[0].blocked() > 0
    });
    std::thread::scope(|s| {
        let switch = s.spawn(|| fx.app().switch_to(Some(1), "test"));
        wait_until(Duration::from_secs(10), "the gate is closed", || {
            fx.app().vfs().router().current().gate().is_closed()
        });
        // A new operation (a lookup the kernel cannot answer from its cache) fails at once.
        let t = std::time::Instant::now();
        let e = fs::metadata(fx.path("both/new-name")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EAGAIN));
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "it waited {:?}",
            t.elapsed()
        );
        let out = switch.join().unwrap();
        assert!(
            matches!(out, Some(Outcome::Swapped { to: 1, .. })),
            "{out:?}"
        );
    });
    // After the switch, everything is served again.
    assert_eq!(which_volume(&fs::read(fx.path("both/b")).unwrap()), Some(1));
    fx.faults[0].clear();
    let _ = hung.join();
}

#[test]
fn hard_links_of_the_primary_are_looked_up_again_on_the_standby() {
    let layout = Layout::new(2, "", &fast());
    populate(&layout);
    // On the primary `l1` and `l2` are one file; the standby kept them as two files.
    fs::write(layout.vols[0].join("l1"), b"volume v0 linked").unwrap();
    fs::hard_link(layout.vols[0].join("l1"), layout.vols[0].join("l2")).unwrap();
    fs::write(layout.vols[1].join("l1"), b"volume v1 l1").unwrap();
    fs::write(layout.vols[1].join("l2"), b"volume v1 l2").unwrap();
    let fx = Fixture::mount(layout);
    let (i1, i2) = (
        fs::metadata(fx.path("l1")).unwrap().ino(),
        fs::metadata(fx.path("l2")).unwrap().ino(),
    );
    assert_eq!(i1, i2, "one file, one inode");
    assert!(matches!(
        fx.app().switch_to(Some(1), "test"),
        Some(Outcome::Swapped { .. })
    ));
    assert_eq!(fs::read(fx.path("l1")).unwrap(), b"volume v1 l1");
    assert_eq!(fs::read(fx.path("l2")).unwrap(), b"volume v1 l2");
    assert_eq!(
        fs::metadata(fx.path("l1")).unwrap().ino(),
        i1,
        "the first name keeps its inode"
    );
    assert_ne!(fs::metadata(fx.path("l2")).unwrap().ino(), i1);
}

#[test]
fn inode_numbers_survive_a_switch_without_open_files() {
    let layout = Layout::new(2, "", &fast());
    populate(&layout);
    let fx = Fixture::mount(layout);
    // Nothing is held open: only the kernel's cache remembers these inodes.
    let before = inodes(&fx.layout.mnt);
    let dir_before = fs::metadata(fx.path("both/deep")).unwrap().ino();
    assert!(matches!(
        fx.app().switch_to(Some(1), "test"),
        Some(Outcome::Swapped { .. })
    ));
    assert_eq!(inodes(&fx.layout.mnt), before);
    assert_eq!(
        fs::metadata(fx.path("both/deep")).unwrap().ino(),
        dir_before
    );
    assert_eq!(which_volume(&fs::read(fx.path("both/a")).unwrap()), Some(1));
}

#[test]
fn a_manual_switch_with_no_target_keeps_serving_the_same_files() {
    let layout = Layout::new(2, "", &fast());
    populate(&layout);
    let fx = Fixture::mount(layout);
    // The standby is gone: nothing to switch to.
    fs::rename(&fx.layout.vols[1], fx.layout.dir.path().join("v1.gone")).unwrap();
    wait_until(Duration::from_secs(10), "the standby is not usable", || {
        !fx.app().monitor().state(1).unwrap().health.usable()
    });
    // A file deleted while open is still open on this very volume.
    let mut f = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(fx.path("scratch"))
        .unwrap();
    std::io::Write::write_all(&mut f, b"still mine").unwrap();
    fs::remove_file(fx.path("scratch")).unwrap();
    assert_eq!(fx.app().switch_to(None, "test"), Some(Outcome::NoTarget));
    // The gate reopened on the same volume: everything keeps working, that handle included
    // (its cached pages dropped, so the read reaches the daemon).
    fs::write("/proc/sys/vm/drop_caches", b"1").unwrap();
    let mut buf = [0u8; 16];
    let n = f.read_at(&mut buf, 0).unwrap();
    assert_eq!(&buf[..n], b"still mine");
    assert_eq!(f.metadata().unwrap().len(), 10);
    assert_eq!(which_volume(&fs::read(fx.path("both/a")).unwrap()), Some(0));
    assert_eq!(
        fx.app().switch_to(Some(0), "test"),
        Some(Outcome::Refused),
        "switching to the active volume changes nothing"
    );
}

#[test]
fn a_misspelt_standby_marker_is_a_configuration_error_not_a_deletion() {
    let layout = Layout::with_volumes(2, "", &fast(), |i| {
        if i == 1 {
            // The volume has `.volume`; the configuration names `.volumes`.
            "probe = { kind = \"dir\", marker = \".volumes\" }".into()
        } else {
            String::new()
        }
    });
    populate(&layout);
    fs::write(layout.vols[1].join(".volume"), b"").unwrap();
    let fx = Fixture::mount(layout);
    // Many rounds, each a "deletion" answer, far more than confirmation needs (3 in 100 ms).
    let rounds0 = fx.app().monitor().states()[1].rounds;
    wait_until(Duration::from_secs(30), "15 probe rounds", || {
        fx.app().monitor().states()[1].rounds >= rounds0 + 15
    });
    assert_never_healthy(&fx, 1);
    // It is no switch target either: the primary's deletion finds nothing to switch to.
    fs::rename(&fx.layout.vols[0], fx.layout.dir.path().join("v0.gone")).unwrap();
    wait_until(Duration::from_secs(30), "the switch attempt", || {
        !fx.app().audit().is_empty()
    });
    assert_eq!(fx.app().audit()[0].outcome, Outcome::NoTarget);
}

/// Two volumes; the primary carries a marker its probe requires, and a deletion needs strong
/// answers over 3 s, so a suspicion lasts that long (time for a held change to be seen waiting,
/// even on a busy machine).
/// Two volumes, the primary probed by its marker; a deletion of the marker is confirmed after
/// `confirm_window`.
fn marked_primary(confirm_window: &str) -> Fixture {
    let layout = Layout::with_volumes(
        2,
        "",
        // Waits long enough for a suspicion interrupted by slow probes on a busy machine.
        &format!("{FAST_HEALTH}\n[failover]\ndrain_timeout = \"20s\"\n"),
        |i| {
            if i == 0 {
                format!(
                    "probe = {{ kind = \"dir\", marker = \".volume\" }}\n\
                     health = {{ confirm_window = \"{confirm_window}\" }}"
                )
            } else {
                String::new()
            }
        },
    );
    populate(&layout);
    fs::write(layout.vols[0].join(".volume"), b"").unwrap();
    Fixture::mount(layout)
}

fn wait_held(fx: &Fixture, held: bool) {
    wait_until(Duration::from_secs(20), "the hold to change", || {
        fx.app().vfs().router().current().is_held() == held
    });
}

#[test]
fn changes_wait_while_the_primary_is_suspected_and_land_on_the_standby() {
    let fx = marked_primary("3s");
    fs::remove_file(fx.vol(0, ".volume")).unwrap();
    wait_held(&fx, true);
    // Reads go on meanwhile.
    assert_eq!(fs::read(fx.path("both/a")).unwrap(), content(0, "both/a"));
    let path = fx.path("w/held");
    let issued = SystemTime::now();
    let writer = std::thread::spawn(move || {
        let r = fs::write(&path, b"written while suspected");
        (r.map_err(|e| e.raw_os_error()), SystemTime::now())
    });
    wait_for_switch(&fx, 1);
    // The switch's start, not its end: a held write is let go at the publish, and the switch
    // still has work after that (a loaded run saw its completion more than 50 ms later).
    let started = fx.app().audit()[0].started_at;
    let (result, done) = writer.join().unwrap();
    assert_eq!(result, Ok(()));
    // Issued during the suspicion (the switch had not begun) and done only after it began.
    assert!(
        issued < started,
        "the suspicion ended before the write was issued"
    );
    assert!(done >= started, "the write did not wait for the switch");
    assert_eq!(
        fs::read(fx.vol(1, "w/held")).unwrap(),
        b"written while suspected"
    );
    assert!(
        !fx.vol(0, "w/held").exists(),
        "a change ran on the suspected volume"
    );
}

#[test]
fn a_false_alarm_only_delays_changes() {
    // The test ends the suspicion itself: a window it never reaches, however slow the machine
    // (a loaded run took more than 3 s to get the held write to the router, and the deletion
    // was confirmed first).
    let fx = marked_primary("30s");
    fs::remove_file(fx.vol(0, ".volume")).unwrap();
    wait_held(&fx, true);
    let path = fx.path("w/later");
    let writer = std::thread::spawn(move || {
        let t0 = std::time::Instant::now();
        let r = fs::write(&path, b"after the alarm");
        (r.map_err(|e| e.raw_os_error()), t0.elapsed())
    });
    // The change is really held: waiting in the router, not yet on the volume.
    wait_until(Duration::from_secs(10), "the change to wait", || {
        fx.app().vfs().router().waiting() >= 1
    });
    assert!(!fx.vol(0, "w/later").exists(), "ran while suspected");
    fs::write(fx.vol(0, ".volume"), b"").unwrap();
    wait_held(&fx, false);
    let (result, waited) = writer.join().unwrap();
    assert_eq!(result, Ok(()));
    eprintln!("a change waited {waited:?} through a false alarm");
    assert_eq!(fs::read(fx.vol(0, "w/later")).unwrap(), b"after the alarm");
    assert!(fx.app().audit().is_empty());
}

/// What one writer saw: records acknowledged (written and fsynced) at their offsets, and the
/// first error it got, with what the handle answered after it.
struct Written {
    acked: Vec<(u64, Vec<u8>)>,
    error: Option<i32>,
    /// pread, fsync and close after the first error.
    after: [Option<i32>; 3],
}

fn record(n: u64) -> Vec<u8> {
    format!("ACKED record {n:08}\n").into_bytes()
}

/// A writer on one long-lived handle of `path`: a record per 4 KiB block, each fsynced, until an
/// error or `stop`.
fn fsyncing_writer(path: PathBuf, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Written> {
    use std::os::fd::IntoRawFd;
    std::thread::spawn(move || {
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut w = Written {
            acked: Vec::new(),
            error: None,
            after: [None; 3],
        };
        let errno = |e: std::io::Error| e.raw_os_error().unwrap_or(-1);
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let data = record(n);
            let at = n * 4096;
            match f.write_all_at(&data, at).and_then(|()| f.sync_all()) {
                Ok(()) => w.acked.push((at, data)),
                Err(e) => {
                    w.error = Some(errno(e));
                    break;
                }
            }
            n += 1;
        }
        if w.error.is_some() {
            let mut buf = [0u8; 32];
            w.after[0] = f.read_at(&mut buf, 0).err().map(errno);
            w.after[1] = f.sync_all().err().map(errno);
            let fd = f.into_raw_fd();
            // SAFETY: fd is ours, taken from the File, and closed once.
            let r = unsafe { libc::close(fd) };
            w.after[2] = (r != 0).then(last_errno);
        }
        w
    })
}

/// The sequence of the "no silent loss" issue: a file present on both volumes, a writer that
/// fsyncs every record on one handle, the primary destroyed by `destroy`. After the switch every
/// acknowledged record is on the standby, or the writer got an error on that handle (and every
/// later use of the handle, fsync and close included, fails too: never older content).
fn acknowledged_writes_are_never_lost_silently(destroy: impl FnOnce(&Fixture)) {
    let layout = Layout::new(2, "", &fast());
    populate(&layout);
    let base = pattern(1 << 20, 7);
    for v in &layout.vols {
        fs::write(v.join("w/big"), &base).unwrap();
    }
    let fx = Fixture::mount(layout);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = fsyncing_writer(fx.path("w/big"), stop.clone());
    let started = std::time::Instant::now();
    wait_until(Duration::from_secs(10), "the writer to start", || {
        writer.is_finished() || started.elapsed() > Duration::from_millis(300)
    });
    destroy(&fx);
    wait_for_switch(&fx, 1);
    // The handle wrote on the old volume: its next use after the switch fails.
    wait_until(Duration::from_secs(10), "the writer's error", || {
        writer.is_finished()
    });
    stop.store(true, Ordering::Relaxed);
    let w = writer.join().unwrap();
    let standby = fs::read(fx.vol(1, "w/big")).unwrap();
    let missing = w
        .acked
        .iter()
        .filter(|(at, data)| {
            let at = *at as usize;
            standby.get(at..at + data.len()) != Some(data.as_slice())
        })
        .count();
    eprintln!(
        "{} records acknowledged, {missing} of them not on the standby; the writer got {:?}",
        w.acked.len(),
        w.error
    );
    assert_eq!(
        w.error,
        Some(libc::ESTALE),
        "no error on the handle that wrote"
    );
    assert_eq!(w.after, [Some(libc::ESTALE); 3], "pread, fsync, close");
    let audit = &fx.app().audit()[0];
    assert_eq!(audit.writes_left_total, 1);
    assert_eq!(audit.writes_left, vec!["w/big".to_string()]);
    // A handle that only read follows the switch.
    let mut buf = vec![0u8; 64];
    let reader = fs::File::open(fx.path("w/big")).unwrap();
    reader.read_exact_at(&mut buf, 1 << 19).unwrap();
    assert_eq!(buf, base[1 << 19..(1 << 19) + 64]);
}

#[test]
fn acknowledged_writes_are_never_lost_silently_when_the_primary_is_moved_away() {
    acknowledged_writes_are_never_lost_silently(|fx| {
        fs::rename(&fx.layout.vols[0], fx.layout.dir.path().join("v0.moved")).unwrap();
    });
}

#[test]
fn acknowledged_writes_are_never_lost_silently_when_the_primary_is_removed() {
    acknowledged_writes_are_never_lost_silently(|fx| {
        fs::remove_dir_all(&fx.layout.vols[0]).unwrap();
    });
}

#[test]
fn with_reopen_verify_a_reader_follows_only_a_file_that_looks_the_same() {
    let layout = Layout::new(
        2,
        "",
        &format!("{}reopen_verify = \"size-mtime\"\n", fast()),
    );
    populate(&layout);
    // both/a: same size and mtime on both volumes (a replica made with `rsync -a`); both/b:
    // same size, another mtime.
    let when = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let touch = |path: PathBuf, t: SystemTime| {
        fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(t)
            .unwrap()
    };
    for v in &layout.vols {
        touch(v.join("both/a"), when);
    }
    touch(layout.vols[0].join("both/b"), when);
    touch(layout.vols[1].join("both/b"), when + Duration::from_secs(1));
    let fx = Fixture::mount(layout);
    let same = fs::File::open(fx.path("both/a")).unwrap();
    let differs = fs::File::open(fx.path("both/b")).unwrap();
    assert!(matches!(
        fx.app().switch_to(Some(1), "test"),
        Some(Outcome::Swapped { .. })
    ));
    let mut buf = [0u8; 64];
    let n = same.read_at(&mut buf, 0).unwrap();
    assert_eq!(which_volume(&buf[..n]), Some(1));
    let e = differs.read_at(&mut buf, 0).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ESTALE));
}

#[test]
fn a_failing_operation_has_the_active_volume_probed_at_once() {
    let c = FakeCluster::start(1);
    c.create("vol-a");
    let masters = format!("{:?}", c.addrs());
    // The primary's probe would not run again for an hour on its own.
    let layout = Layout::with_volumes(2, "", &fast(), |i| {
        if i == 0 {
            format!(
                "probe = {{ kind = \"cubefs\", masters = {masters}, volume = \"vol-a\", timeout = \"200ms\" }}\nhealth = {{ interval = \"1h\" }}"
            )
        } else {
            String::new()
        }
    });
    populate(&layout);
    let fx = Fixture::mount(layout);
    wait_until(Duration::from_secs(10), "the first probe round", || {
        fx.app().monitor().state(0).is_some_and(|s| s.rounds >= 1)
    });
    c.set("vol-a", VolState::Gone);
    // What a client of a deleted CubeFS volume answers on the data path.
    fx.faults[0].fail_all(libc::EIO);
    let e = fs::read(fx.path("both/a")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO));
    wait_for_switch(&fx, 1);
    assert_eq!(fs::read(fx.path("both/a")).unwrap(), content(1, "both/a"));
    assert!(fx.app().vfs().alarms_total() >= 1);
}

#[test]
fn fio_writing_through_the_switch_gets_an_error_not_older_content() {
    let layout = Layout::new(2, "", &fast());
    populate(&layout);
    let base = pattern(1 << 20, 7);
    for v in &layout.vols {
        fs::write(v.join("w/big"), &base).unwrap();
    }
    let fx = Fixture::mount(layout);
    let out = fx.layout.dir.path().join("fio.out");
    // Random 4 KiB writes, each fsynced, on one file for up to a minute.
    let mut fio = std::process::Command::new(tool("fio"))
        .args([
            "--name=w",
            "--ioengine=psync",
            "--rw=randwrite",
            "--bs=4k",
            "--size=1M",
            "--fsync=1",
            "--time_based",
            "--runtime=60",
            "--output-format=normal",
        ])
        .arg(format!("--filename={}", fx.path("w/big").display()))
        .arg(format!("--output={}", out.display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(20), "fio writing", || {
        fs::read(fx.vol(0, "w/big")).is_ok_and(|d| d != base)
    });
    fs::rename(&fx.layout.vols[0], fx.layout.dir.path().join("v0.moved")).unwrap();
    wait_for_switch(&fx, 1);
    wait_until(Duration::from_secs(20), "fio to stop on an error", || {
        matches!(fio.try_wait(), Ok(Some(_)))
    });
    let status = fio.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(fio.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    let report = fs::read_to_string(&out).unwrap_or_default();
    assert!(!status.success(), "fio went on after the switch: {report}");
    assert!(
        stderr.contains("Stale file handle") || report.contains("Stale file handle"),
        "fio's error: {stderr}\n{report}"
    );
    assert_eq!(fx.app().audit()[0].writes_left, vec!["w/big".to_string()]);
}

#[test]
fn a_misspelt_volume_seen_only_through_its_root_while_the_master_is_down_is_never_deleted() {
    // The master has `vol-a`; the configuration names `vol-a` too, but the master answers "no
    // leader" from the start: only the root's own check answers, and it says healthy. When the
    // master comes back it says the volume the configuration names does not exist (here: it was
    // never created, as for a misspelt name). That must stay a configuration error: the root
    // vouches for a directory, not for the volume the master is asked about.
    let c = FakeCluster::start(1);
    c.fault(0, Fault::NoLeader);
    let layout = cubefs_primary(&c);
    populate(&layout);
    let fx = Fixture::mount(layout);
    let rounds = |fx: &Fixture| fx.app().monitor().states()[0].rounds;
    let r0 = rounds(&fx);
    wait_until(
        Duration::from_secs(30),
        "5 rounds while the master is down",
        || rounds(&fx) >= r0 + 5,
    );
    c.fault(0, Fault::None);
    let r1 = rounds(&fx);
    wait_until(
        Duration::from_secs(30),
        "20 rounds of 'does not exist'",
        || rounds(&fx) >= r1 + 20,
    );
    assert_never_healthy(&fx, 0);
    assert!(
        fx.app().audit().is_empty(),
        "switched away from a volume never seen: {:?}",
        fx.app().audit()
    );
    assert_eq!(which_volume(&fs::read(fx.path("both/a")).unwrap()), Some(0));
}
