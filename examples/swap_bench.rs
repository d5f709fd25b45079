//! Swap time through a real FUSE mount: from the moment a switch is decided (what a confirmed
//! deletion triggers) to the first operation an application sees served by the new volume.
//! Idle, then under a 2-thread read load. Target: p99 at most 100 ms.
//!
//! With `known`, each volume also holds a directory of that many empty files, all looked up
//! through the mount first, so the kernel knows that many inodes when the switches run (the
//! switch invalidates the kernel's caches inode by inode, after the new route is published).
//!
//! Needs root and /dev/fuse: `cargo run --release --example swap_bench [switches] [known]`

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use failoverfs::app::App;
use failoverfs::config::{Overrides, load_and_prepare};
use failoverfs::failover::Outcome;

fn main() -> anyhow::Result<()> {
    let switches: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let known: usize = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let dir = tempfile::tempdir()?;
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt)?;
    let mut toml = format!(
        "[mount]\npath = \"{}\"\nstate_file = \"off\"\n\n[log]\nlevel = \"error\"\n\n[failover]\ndrain_timeout = \"2s\"\n\n",
        mnt.display()
    );
    for i in 0..2 {
        let v = dir.path().join(format!("v{i}"));
        fs::create_dir(&v)?;
        fs::write(v.join("probe"), format!("{i}"))?;
        for f in 0..2 {
            fs::write(v.join(format!("load{f}")), vec![b'a' + i as u8; 256 << 10])?;
        }
        if known > 0 {
            fs::create_dir(v.join("many"))?;
            for f in 0..known {
                fs::File::create(v.join(format!("many/{f}")))?;
            }
        }
        toml.push_str(&format!(
            "[[volumes]]\nname = \"v{i}\"\nbackend = {{ kind = \"dir\", path = \"{}\" }}\n\n",
            v.display()
        ));
    }
    let config = dir.path().join("bench.toml");
    fs::write(&config, toml)?;
    let settings = load_and_prepare(&config, &Overrides::default())?;
    let app = App::start(&settings)?;
    if known > 0 {
        let t = Instant::now();
        for f in 0..known {
            fs::symlink_metadata(mnt.join(format!("many/{f}")))?;
        }
        println!(
            "{known} files looked up through the mount in {:?}; the inode table holds {}",
            t.elapsed(),
            app.vfs().inodes().stats().nodes
        );
    }

    let idle = measure(&app, &mnt, switches, 0);
    report("idle", &idle);
    let loaded = measure(&app, &mnt, switches, 2);
    report("2-thread read load", &loaded);
    app.shutdown();
    Ok(())
}

struct Sample {
    /// Decision → first operation served by the new volume, as the application sees it.
    first_op: Duration,
    /// Gate closed → new route published (from the audit).
    swap: Duration,
    /// Publish → kernel caches invalidated, and how many inodes and names (from the audit).
    invalidate: Duration,
    invalidated: u64,
}

fn measure(app: &App, mnt: &Path, switches: usize, load_threads: usize) -> Vec<Sample> {
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let loaders: Vec<_> = (0..load_threads)
        .map(|t| {
            let (stop, reads) = (stop.clone(), reads.clone());
            let path: PathBuf = mnt.join(format!("load{t}"));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if fs::read(&path).is_ok() {
                        reads.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let probe = mnt.join("probe");
    let mut samples = Vec::with_capacity(switches);
    let mut active = 0usize;
    for _ in 0..switches {
        let target = 1 - active;
        let t0 = Instant::now();
        let audit_before = app.audit().len();
        // The command is handled like a confirmed deletion: drain, swap, invalidate.
        let (tx, rx) = std::sync::mpsc::channel();
        // Taken when the application sees the new volume, not when the switch returns: the
        // switch goes on invalidating the kernel's caches after the new route serves.
        let first_op = std::thread::scope(|s| {
            s.spawn(|| {
                let out = app.switch_to(Some(target), "bench");
                let _ = tx.send(out);
            });
            // The application: read until the new volume answers.
            loop {
                if fs::read(&probe).is_ok_and(|d| d == format!("{target}").as_bytes()) {
                    break t0.elapsed();
                }
            }
        });
        let out = rx.recv().ok().flatten();
        assert!(
            matches!(out, Some(Outcome::Swapped { to, .. }) if to == target),
            "{out:?}"
        );
        let audit = app.audit();
        let entry = audit.get(audit_before);
        samples.push(Sample {
            first_op,
            swap: entry.map(|a| a.swap).unwrap_or_default(),
            invalidate: entry.map(|a| a.invalidate).unwrap_or_default(),
            invalidated: entry.map(|a| a.invalidated).unwrap_or_default(),
        });
        active = target;
    }
    stop.store(true, Ordering::Relaxed);
    for l in loaders {
        let _ = l.join();
    }
    if load_threads > 0 {
        println!(
            "  (load threads completed {} whole-file reads)",
            reads.load(Ordering::Relaxed)
        );
    }
    samples
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(label: &str, samples: &[Sample]) {
    let mut first: Vec<Duration> = samples.iter().map(|s| s.first_op).collect();
    let mut swap: Vec<Duration> = samples.iter().map(|s| s.swap).collect();
    let mut invalidate: Vec<Duration> = samples.iter().map(|s| s.invalidate).collect();
    first.sort();
    swap.sort();
    invalidate.sort();
    println!(
        "{label}: {} switches; decision → first op on the new volume: p50 {:?} p99 {:?} max {:?}; \
         gate closed → route published: p50 {:?} p99 {:?}",
        samples.len(),
        pct(&first, 0.5),
        pct(&first, 0.99),
        first.last().copied().unwrap_or_default(),
        pct(&swap, 0.5),
        pct(&swap, 0.99),
    );
    println!(
        "  route published → kernel caches invalidated ({} inodes and names): p50 {:?} p99 {:?}",
        samples.iter().map(|s| s.invalidated).max().unwrap_or(0),
        pct(&invalidate, 0.5),
        pct(&invalidate, 0.99),
    );
}
