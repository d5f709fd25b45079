//! See failover work in one command: two directory volumes, one mount, a reader, and the primary
//! deleted under it.
//!
//! `cargo run --example failover_demo` (root and /dev/fuse needed). With `--rm-rf` the primary's
//! files are destroyed instead of its root vanishing at once: reads then fail between the
//! destruction and the confirmed deletion, and never after the switch.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use failoverfs::app::App;
use failoverfs::config::{Overrides, load_and_prepare};
use parking_lot::Mutex;

const FILES: [&str; 4] = [
    "docs/readme.txt",
    "docs/notes.txt",
    "data/a.bin",
    "data/b.bin",
];

struct Read {
    at: SystemTime,
    served_by: Result<String, String>,
}

fn main() -> anyhow::Result<()> {
    let rm_rf = std::env::args().any(|a| a == "--rm-rf");
    if !nix::unistd::geteuid().is_root() || !Path::new("/dev/fuse").exists() {
        anyhow::bail!("the demo mounts FUSE: run it as root on a machine with /dev/fuse");
    }
    let dir = tempfile::Builder::new()
        .prefix("failoverfs-demo-")
        .tempdir()?;
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt)?;
    let vols: Vec<(String, PathBuf)> = ["primary", "standby"]
        .iter()
        .map(|n| (n.to_string(), dir.path().join(n)))
        .collect();
    for (name, path) in &vols {
        for f in FILES {
            let p = path.join(f);
            fs::create_dir_all(p.parent().unwrap_or(path))?;
            fs::write(&p, format!("{name}\n"))?;
        }
    }
    // Fast probes, so the demo is short; a real config keeps the defaults.
    let mut toml = format!(
        "[mount]\npath = \"{}\"\nstate_file = \"off\"\n\n[log]\nlevel = \"error\"\n\n\
         [health]\ninterval = \"200ms\"\nconfirm_interval = \"100ms\"\nconfirm_window = \"200ms\"\n\n",
        mnt.display()
    );
    for (name, path) in &vols {
        toml.push_str(&format!(
            "[[volumes]]\nname = \"{name}\"\nbackend = {{ kind = \"dir\", path = \"{}\" }}\n\n",
            path.display()
        ));
    }
    let config = dir.path().join("demo.toml");
    fs::write(&config, &toml)?;
    let settings = load_and_prepare(&config, &Overrides::default())?;
    tracing_subscriber::fmt()
        .with_env_filter("error")
        .with_writer(std::io::stderr)
        .init();
    let app = App::start(&settings)?;
    println!("mount    {}", mnt.display());
    for (name, path) in &vols {
        println!("{name:8} {}  (every file says {name:?})", path.display());
    }

    // The application: long-lived handles and fresh opens, in a loop.
    let reads: Arc<Mutex<Vec<Read>>> = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (reads, stop, mnt) = (reads.clone(), stop.clone(), mnt.clone());
        std::thread::spawn(move || {
            let held: Vec<fs::File> = FILES
                .iter()
                .filter_map(|f| fs::File::open(mnt.join(f)).ok())
                .collect();
            while !stop.load(Ordering::Relaxed) {
                for (i, f) in FILES.iter().enumerate() {
                    let fresh = fs::read_to_string(mnt.join(f));
                    let long = held.get(i).map(|h| {
                        let mut buf = [0u8; 64];
                        std::os::unix::fs::FileExt::read_at(h, &mut buf, 0)
                            .map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
                    });
                    let mut r = reads.lock();
                    for res in [Some(fresh), long].into_iter().flatten() {
                        r.push(Read {
                            at: SystemTime::now(),
                            served_by: res.map(|s| s.trim().to_string()).map_err(|e| e.to_string()),
                        });
                    }
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    let start = Instant::now();
    let deleted_at = SystemTime::now();
    let primary = &vols[0].1;
    if rm_rf {
        println!("\ndestroying the primary: rm -rf {}", primary.display());
        fs::remove_dir_all(primary)?;
    } else {
        let gone = dir.path().join("primary.deleted");
        println!(
            "\ndeleting the primary: its root vanishes ({} moved away)",
            primary.display()
        );
        fs::rename(primary, gone)?;
    }
    while app.audit().is_empty() && start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let _ = reader.join();

    let Some(a) = app.audit().first().cloned() else {
        anyhow::bail!("no switch happened within 30 s");
    };
    let since = |t: SystemTime| t.duration_since(deleted_at).unwrap_or_default();
    println!(
        "switch   {} → {} ({}; {}), {:.0} ms after the deletion",
        a.from,
        a.to.as_deref().unwrap_or("-"),
        a.reason,
        a.evidence,
        since(a.started_at).as_secs_f64() * 1000.0
    );
    println!(
        "         drained {} in-flight operations, {} waited, {} retried, {} stale handles; \
         gate closed → new route: {:.2} ms; caches invalidated in {:.2} ms",
        a.in_flight.saturating_sub(a.still_running),
        a.queued,
        a.retried,
        a.stale_handles,
        a.swap.as_secs_f64() * 1000.0,
        a.invalidate.as_secs_f64() * 1000.0,
    );
    let reads = reads.lock();
    let first_standby = reads
        .iter()
        .find(|r| r.at > a.started_at && r.served_by.as_deref() == Ok("standby"))
        .map(|r| r.at.duration_since(a.started_at).unwrap_or_default());
    if let Some(d) = first_standby {
        println!(
            "         first read served by the standby: {:.2} ms after the confirmed deletion",
            d.as_secs_f64() * 1000.0
        );
    }
    let count = |pred: &dyn Fn(&Read) -> bool| reads.iter().filter(|r| pred(r)).count();
    println!("\nthe reader made {} reads:", reads.len());
    println!(
        "  served by primary  {}",
        count(&|r| r.served_by.as_deref() == Ok("primary"))
    );
    println!(
        "  served by standby  {}",
        count(&|r| r.served_by.as_deref() == Ok("standby"))
    );
    let errors: Vec<&Read> = reads.iter().filter(|r| r.served_by.is_err()).collect();
    println!("  errors             {}", errors.len());
    let after = errors.iter().filter(|r| r.at > a.completed_at).count();
    println!("  errors after the switch: {after}");
    for e in errors.iter().take(3) {
        if let Err(msg) = &e.served_by {
            println!(
                "    {:.0} ms after the deletion: {msg}",
                since(e.at).as_secs_f64() * 1000.0
            );
        }
    }
    drop(reads);
    let exit = app.shutdown();
    println!("\nunmounted {} ({exit:?})", mnt.display());
    Ok(())
}
