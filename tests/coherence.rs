//! Page-cache coherence through a real mount: what one process writes, another reads back, and
//! nobody ever reads bytes older than a write that already returned.
//!
//! The shape of LTP's `iogen01` (rwtest + doio): several writers, each owning interleaved,
//! unaligned byte ranges near the end of one file (so neighbours share pages), open a descriptor
//! per request, write with `O_SYNC`, and verify what they wrote through a fresh descriptor. A
//! kernel page dropped while a write to it is still in flight and refetched from the daemon
//! before that write lands shows up here as a miscompare.
//!
//! On this machine (kernel 6.18) it failed on main only with the machine busy (about one run in
//! six, one miscompare each, before `crate::writes` made reads wait for overlapping writes in
//! progress): a page the kernel dropped while a write into it was on its way, refetched before
//! that write reached the volume. Descriptors are re-opened every few requests, as doio does:
//! each `open` without `FOPEN_KEEP_CACHE` drops the file's clean pages.
mod common;

use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use common::*;

const SLOT: u64 = 700;
const BASE: u64 = 1 << 20;
const REOPEN_EVERY: u64 = 4;

fn slot_bytes(worker: u64, slot: u64, round: u64) -> Vec<u8> {
    pattern(
        SLOT as usize,
        (worker << 48) ^ (slot << 24) ^ round ^ 0x5eed,
    )
}

/// Run `workers` writer-verifiers for `rounds` each on `file`; returns the miscompares seen, or
/// the first I/O error a worker met (its worker, round and call).
fn writers_and_verifiers(
    file: &std::path::Path,
    workers: u64,
    slots: u64,
    rounds: u64,
) -> Result<u64, String> {
    // A file of BASE bytes; the slots start a little before its end and run past it, so writes
    // both rewrite and extend.
    let f = std::fs::File::create(file).expect("create");
    f.set_len(BASE).expect("size");
    drop(f);
    let start = BASE - slots * SLOT / 2;
    let bad = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..workers)
        .map(|w| {
            let file = file.to_path_buf();
            let bad = bad.clone();
            std::thread::spawn(move || -> Result<(), String> {
                let mut rng = fastrand::Rng::with_seed(w + 1);
                let mine: Vec<u64> = (0..slots).filter(|s| s % workers == w).collect();
                let failed = |round: u64, call: &str, e: std::io::Error| {
                    format!("worker {w}, round {round}: {call}: {e}")
                };
                let open = |round: u64| {
                    let out = std::fs::OpenOptions::new()
                        .write(true)
                        .custom_flags(libc::O_SYNC)
                        .open(&file)
                        .map_err(|e| failed(round, "open for write", e))?;
                    let inp = std::fs::File::open(&file)
                        .map_err(|e| failed(round, "open for read", e))?;
                    Ok::<_, String>((out, inp))
                };
                let (mut out, mut inp) = open(0)?;
                let mut back = vec![0u8; SLOT as usize];
                for round in 0..rounds {
                    // Descriptors are kept for a while and then opened afresh, as doio's
                    // descriptor cache does.
                    if round % REOPEN_EVERY == 0 {
                        (out, inp) = open(round)?;
                    }
                    let slot = mine[rng.usize(..mine.len())];
                    let off = start + slot * SLOT;
                    let data = slot_bytes(w, slot, round);
                    out.write_all_at(&data, off)
                        .map_err(|e| failed(round, "write", e))?;
                    inp.read_exact_at(&mut back, off)
                        .map_err(|e| failed(round, "read back", e))?;
                    if back != data {
                        bad.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(())
            })
        })
        .collect();
    let mut first_error = None;
    for t in threads {
        if let Err(e) = t.join().expect("worker") {
            first_error.get_or_insert(e);
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(bad.load(Ordering::Relaxed)),
    }
}

#[test]
fn concurrent_osync_writers_always_read_their_own_bytes() {
    let fx = Fixture::new(1);
    // Every backend write waits 2 ms: a wide window in which the kernel has the new bytes in its
    // page cache and the volume does not have them yet.
    fx.faults[0].add(
        "",
        failoverfs::backend::faulty::Fault::DelayWrites(std::time::Duration::from_millis(2)),
    );
    let mut fx = fx;
    let bad = match writers_and_verifiers(&fx.path("doio.f1"), 8, 48, 400) {
        Ok(bad) => bad,
        Err(e) => {
            // Say why: is the mount still there, and did the daemon stop (and how)?
            let mounted = mountinfo_line(&fx.layout.mnt);
            let exited = fx.app.as_mut().and_then(|a| a.exited());
            let stats = fx.app().vfs().inodes().stats();
            panic!(
                "{e}\nmount now: {}\ndaemon: {}\ninode table: {stats:?}\n                 (the daemon's log is above; TEST_LOG=debug for more)",
                mounted.as_deref().unwrap_or("gone from mountinfo"),
                match exited {
                    Some(code) => format!("stopped with {code:?}"),
                    None => "still running".into(),
                }
            );
        }
    };
    assert_eq!(bad, 0, "reads returned bytes older than a completed write");
}
