//! The directory a `dir` volume serves is checked against its configured path on every probe
//! round: a root moved away, replaced or unmounted is never served as if nothing happened, a
//! remounted root (a client restart) is re-opened, and a volume switched away from is let go of,
//! so that its mount can be unmounted.
mod common;

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use failoverfs::failover::Outcome;
use nix::mount::{MntFlags, MsFlags};

/// Fast probes; weak evidence (a detached root) confirmed in `weak_window`.
fn health(weak_window: &str) -> String {
    format!(
        "{FAST_HEALTH}weak_confirmations = 3\nweak_confirm_window = \"{weak_window}\"\n\n\
         [failover]\ndrain_timeout = \"2s\"\n"
    )
}

/// Every volume gets `f` holding its own name.
fn populate(layout: &Layout) {
    for (i, v) in layout.vols.iter().enumerate() {
        fs::write(v.join("f"), format!("v{i}")).unwrap();
    }
}

/// The first switch, once it is recorded.
fn first_switch(fx: &Fixture) -> failoverfs::failover::AuditEntry {
    wait_until(Duration::from_secs(30), "a switch", || {
        !fx.app().audit().is_empty()
    });
    fx.app().audit().remove(0)
}

/// Descriptors of this process (the daemon runs in it) on files below `dir`.
fn descriptors_below(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.filter_map(|e| fs::read_link(e.ok()?.path()).ok())
                .filter(|target| target.starts_with(dir))
                .collect()
        })
        .unwrap_or_default()
}

/// A tmpfs mounted for a test; lazily unmounted when dropped if still there.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path) -> Tmpfs {
        nix::mount::mount(
            Some("tmpfs"),
            at,
            Some("tmpfs"),
            MsFlags::empty(),
            Some("size=16m"),
        )
        .expect("mount tmpfs");
        Tmpfs(at.to_path_buf())
    }

    fn mounted(&self) -> bool {
        mountinfo_line(&self.0).is_some()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        while self.mounted() {
            if nix::mount::umount2(&self.0, MntFlags::MNT_DETACH).is_err() {
                break;
            }
        }
    }
}

#[test]
fn a_root_replaced_on_its_path_is_never_served() {
    let layout = Layout::new(2, "", &health("300ms"));
    populate(&layout);
    let fx = Fixture::mount(layout);
    let held = fs::File::open(fx.path("f")).unwrap();
    let mut buf = [0u8; 2];
    held.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"v0");

    // The volume is moved away and an empty directory takes its place.
    let old = fx.layout.dir.path().join("v0.old");
    fs::rename(&fx.layout.vols[0], &old).unwrap();
    fs::create_dir(&fx.layout.vols[0]).unwrap();

    let a = first_switch(&fx);
    assert!(matches!(a.outcome, Outcome::Swapped { .. }), "{a:?}");
    assert_eq!(a.to.as_deref(), Some("v1"));
    assert!(a.evidence.contains("no longer at"), "{}", a.evidence);
    // Nothing lands in the detached root or in the empty directory.
    fs::write(fx.path("new"), b"after").unwrap();
    assert_eq!(fs::read(fx.vol(1, "new")).unwrap(), b"after");
    assert!(!old.join("new").exists());
    assert!(!fx.vol(0, "new").exists());
    // The open handle continues on the standby, and nothing holds the old root any more.
    held.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"v1");
    wait_until(Duration::from_secs(10), "the old root let go of", || {
        descriptors_below(&old).is_empty()
    });
}

#[test]
fn a_lazily_unmounted_volume_is_not_served() {
    let layout = Layout::new(2, "", &health("300ms"));
    let tmpfs = Tmpfs::mount(&layout.vols[0]);
    populate(&layout);
    let fx = Fixture::mount(layout);
    assert_eq!(fs::read(fx.path("f")).unwrap(), b"v0");

    nix::mount::umount2(&tmpfs.0, MntFlags::MNT_DETACH).unwrap();

    let a = first_switch(&fx);
    assert_eq!(a.to.as_deref(), Some("v1"), "{a:?}");
    fs::write(fx.path("after"), b"kept").unwrap();
    assert_eq!(fs::read(fx.vol(1, "after")).unwrap(), b"kept");
    assert!(!fx.vol(0, "after").exists());
}

#[test]
fn a_volume_switched_away_from_can_be_unmounted() {
    let layout = Layout::with_volumes(2, "", &health("300ms"), |i| {
        if i == 0 {
            "probe = { kind = \"dir\", marker = \".volume\" }".into()
        } else {
            String::new()
        }
    });
    let tmpfs = Tmpfs::mount(&layout.vols[0]);
    populate(&layout);
    fs::write(layout.vols[0].join(".volume"), b"").unwrap();
    for v in &layout.vols {
        fs::create_dir(v.join("d")).unwrap();
        fs::write(v.join("d/g"), b"in d").unwrap();
    }
    let fx = Fixture::mount(layout);
    // An application keeps files open, one of them written, and works in a directory (which
    // the daemon pins on the volume).
    let reader = fs::File::open(fx.path("f")).unwrap();
    let in_dir = fs::File::open(fx.path("d/g")).unwrap();
    let dir = fs::File::open(fx.path("d")).unwrap();
    assert!(fx.app().vfs().inodes().pins() >= 1);
    let writer = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(fx.path("w"))
        .unwrap();
    writer.write_all_at(b"x", 0).unwrap();

    fs::remove_file(fx.vol(0, ".volume")).unwrap();
    let a = first_switch(&fx);
    assert_eq!(a.to.as_deref(), Some("v1"), "{a:?}");
    // The operator can now unmount the old volume's filesystem: a plain unmount, which fails
    // with EBUSY while anything holds a file or directory on it.
    wait_until(Duration::from_secs(10), "a plain unmount succeeds", || {
        nix::mount::umount2(&tmpfs.0, MntFlags::empty()).is_ok()
    });
    assert!(!tmpfs.mounted());
    let mut buf = [0u8; 2];
    reader.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"v1");
    in_dir.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"in");
    drop((writer, dir));
}

#[test]
fn a_client_restart_under_a_dir_volume_is_followed() {
    // The volume is itself a FUSE mount (another failoverfs standing in for cfs-client).
    let inner_layout = Layout::new(1, "", "");
    fs::write(inner_layout.vols[0].join("f"), b"data").unwrap();
    let mut inner = BinMount::start(inner_layout, &[]);
    let store = inner.layout.vols[0].clone();

    let layout = Layout::over_mount(&inner.mnt, 1, "", &health("60s"));
    let fx = Fixture::mount(layout);
    let held = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(fx.path("f"))
        .unwrap();
    let mut buf = [0u8; 4];
    held.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"data");

    inner.restart(&[]);

    wait_until(Duration::from_secs(30), "the root re-opened", || {
        fx.app()
            .audit()
            .iter()
            .any(|a| a.reason.contains("remounted") && matches!(a.outcome, Outcome::Swapped { .. }))
    });
    // The open file goes on, on the new mount; nothing was switched or confirmed deleted.
    held.write_all_at(b"DATA", 0).unwrap();
    held.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"DATA");
    assert_eq!(fs::read(store.join("f")).unwrap(), b"DATA");
    assert_eq!(fs::read(fx.path("f")).unwrap(), b"DATA");
    assert!(
        fx.app().monitor().states()[0].health.usable(),
        "{:?}",
        fx.app().monitor().states()[0].health
    );
    drop(held);
    drop(fx);
}

#[test]
fn no_change_is_acknowledged_on_a_detached_root() {
    // A long weak window, as by default: the switch comes late, the refusal at once.
    let layout = Layout::new(2, "", &health("3s"));
    populate(&layout);
    let fx = Fixture::mount(layout);
    let old = fx.layout.dir.path().join("v0.old");
    fs::rename(&fx.layout.vols[0], &old).unwrap();
    fs::create_dir(&fx.layout.vols[0]).unwrap();
    wait_until(Duration::from_secs(10), "changes refused", || {
        fx.app().vfs().router().current().changes() == failoverfs::routing::Changes::Refuse
    });
    // From now until the switch, every change fails at once and lands nowhere; reads go on.
    let generation = || fx.app().vfs().router().current().generation();
    let mut refused = 0;
    let mut i = 0;
    while generation() == 1 {
        let name = format!("late{i}");
        i += 1;
        let r = fs::write(fx.path(&name), b"x");
        if generation() == 1 {
            let e = r.expect_err("a change acknowledged on the detached root");
            assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
            refused += 1;
        }
        assert_eq!(fs::read(fx.path("f")).unwrap_or_default().len(), 2);
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(refused > 0);
    eprintln!("{refused} changes refused before the switch");
    let a = first_switch(&fx);
    assert_eq!(a.to.as_deref(), Some("v1"), "{a:?}");
    fs::write(fx.path("after"), b"kept").unwrap();
    assert_eq!(fs::read(fx.vol(1, "after")).unwrap(), b"kept");
    for j in 0..i {
        assert!(!old.join(format!("late{j}")).exists());
    }
}

#[test]
fn a_client_killed_and_restarted_is_a_pause_for_readers_and_loses_no_acknowledged_write() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    // The volume is a FUSE mount of its own (standing in for cfs-client), mounted without the
    // auto-unmount helper: killing it leaves a dead mount, as a crashed client does.
    let inner_layout = Layout::new(1, "", "");
    fs::write(inner_layout.vols[0].join("f"), b"data").unwrap();
    let store = inner_layout.vols[0].clone();
    let inner_mnt = inner_layout.mnt.clone();
    let mut inner = BinMount::start_with_env(
        inner_layout,
        &[],
        &[("FUSERMOUNT_PATH", "/nonexistent/fusermount3")],
        &inner_mnt,
    );
    // Operations wait for the client's restart up to drain_timeout: room for a busy machine.
    let tail = health("60s").replace("drain_timeout = \"2s\"", "drain_timeout = \"15s\"");
    let layout = Layout::over_mount(&inner.mnt, 1, "", &tail);
    let fx = Fixture::mount(layout);
    fs::create_dir(fx.path("w")).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let read_errors = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let (stop, reads, errors, path) = (
            stop.clone(),
            reads.clone(),
            read_errors.clone(),
            fx.path("f"),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match fs::read(&path) {
                    Ok(d) => assert_eq!(d, b"data"),
                    Err(e) => errors.lock().unwrap().push(e.to_string()),
                }
                reads.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let writer = {
        let (stop, dir) = (stop.clone(), fx.path("w"));
        std::thread::spawn(move || {
            let mut acked = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("r{i}");
                let written = fs::File::create(dir.join(&name)).and_then(|mut f| {
                    std::io::Write::write_all(&mut f, name.as_bytes())?;
                    f.sync_all()
                });
                if written.is_ok() {
                    acked.push(name);
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            acked
        })
    };
    wait_until(Duration::from_secs(10), "reads before the kill", || {
        reads.load(Ordering::Relaxed) > 20
    });
    inner.signal(nix::sys::signal::Signal::SIGKILL);
    inner.wait(Duration::from_secs(10));
    // The client comes back on the same path (its start detaches the dead mount).
    inner.start_again();
    wait_until(Duration::from_secs(30), "the root re-opened", || {
        fx.app()
            .audit()
            .iter()
            .any(|a| a.reason.contains("remounted") && matches!(a.outcome, Outcome::Swapped { .. }))
    });
    let after = reads.load(Ordering::Relaxed);
    wait_until(Duration::from_secs(10), "reads after the restart", || {
        reads.load(Ordering::Relaxed) > after + 20
    });
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    let acked = writer.join().unwrap();
    let errors = read_errors.lock().unwrap().clone();
    assert!(
        errors.is_empty(),
        "{} read errors: {errors:?}",
        errors.len()
    );
    assert!(!acked.is_empty());
    for name in &acked {
        assert_eq!(
            fs::read(store.join("w").join(name)).ok().as_deref(),
            Some(name.as_bytes()),
            "acknowledged write {name} missing"
        );
    }
    eprintln!(
        "{} reads, 0 errors; {} acknowledged writes, all present",
        reads.load(Ordering::Relaxed),
        acked.len()
    );
}

#[test]
fn a_detached_root_under_a_master_refuses_changes_until_it_is_back() {
    let c = common::fake_master::FakeCluster::start(1);
    c.create("vol-a");
    let masters = format!("{:?}", c.addrs());
    let layout = Layout::with_volumes(2, "", &health("3s"), |i| {
        if i == 0 {
            format!(
                "probe = {{ kind = \"cubefs\", masters = {masters}, volume = \"vol-a\", timeout = \"200ms\" }}"
            )
        } else {
            String::new()
        }
    });
    populate(&layout);
    let fx = Fixture::mount(layout);
    wait_until(Duration::from_secs(10), "the primary seen healthy", || {
        fx.app().monitor().state(0).unwrap().health.usable()
    });
    let changes = || fx.app().vfs().router().current().changes();
    // The master still says the volume exists; this node's root is no longer at its path.
    let old = fx.layout.dir.path().join("v0.old");
    fs::rename(&fx.layout.vols[0], &old).unwrap();
    fs::create_dir(&fx.layout.vols[0]).unwrap();
    wait_until(Duration::from_secs(10), "changes refused", || {
        changes() == failoverfs::routing::Changes::Refuse
    });
    let e = fs::write(fx.path("late"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    assert!(!old.join("late").exists());
    assert_eq!(fs::read(fx.path("f")).unwrap(), b"v0");
    // Back at its path: changes run again, on the volume; nothing was switched.
    fs::remove_dir(&fx.layout.vols[0]).unwrap();
    fs::rename(&old, &fx.layout.vols[0]).unwrap();
    wait_until(Duration::from_secs(10), "changes running again", || {
        changes() == failoverfs::routing::Changes::Run
    });
    fs::write(fx.path("late"), b"x").unwrap();
    assert_eq!(fs::read(fx.vol(0, "late")).unwrap(), b"x");
    assert!(fx.app().audit().is_empty(), "{:?}", fx.app().audit());
}
