//! A model test of a shared volume: two threads change one small tree at the same time, one
//! through the mount and one directly on the volume (another client), with short kernel caches
//! (`attr_ttl = entry_ttl = 100ms`). Creates, writes, unlinks, renames and moves of files and
//! directories, `RENAME_EXCHANGE` of files and of directories, hard links, mkdir and rmdir.
//!
//! The invariant is eventual agreement: after each burst both threads stop, and once the
//! kernel's caches have expired, what the mount shows (every name, kind, bytes, mode, link count,
//! found by walking it and by listing every directory) must equal what the volume has, and inode
//! numbers must map files one to one (two names of one file share a number, two files never do).
//! The interleaving differs between runs; the invariant holds for every interleaving, so a
//! failure is a defect, reported with the seed, the round and each thread's last operations.
//!
//! `MODEL_SEED`, `MODEL_ROUNDS`, `MODEL_BURST` and `MODEL_SETTLE_EVERY` choose another run
//! (defaults: a fixed seed, 40 rounds of 60 steps per thread, the tree left to settle for 2.2 s
//! after every 8th round so that the kernel keeps cached listings).
mod common;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

const DIRS: [&str; 6] = ["d0", "d1", "d0/s", "d1/s", "d0/t", "d1/t"];
const NAMES: [&str; 3] = ["a", "b", "c"];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn dir(&mut self) -> &'static str {
        DIRS[self.below(DIRS.len())]
    }

    fn file(&mut self) -> String {
        format!("{}/{}", self.dir(), NAMES[self.below(NAMES.len())])
    }
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    nix::fcntl::renameat2(
        nix::fcntl::AT_FDCWD,
        a,
        nix::fcntl::AT_FDCWD,
        b,
        nix::fcntl::RenameFlags::RENAME_EXCHANGE,
    )
    .map_err(std::io::Error::from)
}

/// One step on the tree under `root`; what it did, for the report.
fn step(rng: &mut Rng, root: &Path, tag: u64) -> String {
    let at = |rel: &str| root.join(rel);
    let body = || format!("{tag}:{}", "q".repeat((tag % 200) as usize));
    let (what, r) = match rng.below(12) {
        0 | 1 => {
            let f = rng.file();
            (format!("write {f}"), fs::write(at(&f), body()))
        }
        2 => {
            let f = rng.file();
            (format!("unlink {f}"), fs::remove_file(at(&f)))
        }
        3 | 4 => {
            let (a, b) = (rng.file(), rng.file());
            (format!("rename {a} {b}"), fs::rename(at(&a), at(&b)))
        }
        5 => {
            let (a, b) = (rng.file(), rng.file());
            (format!("link {a} {b}"), fs::hard_link(at(&a), at(&b)))
        }
        6 => {
            let (a, b) = (rng.file(), rng.file());
            (format!("exchange {a} {b}"), exchange(&at(&a), &at(&b)))
        }
        7 => {
            // Directories swap places, or one moves into the other's place.
            let (a, b) = (rng.dir(), rng.dir());
            (format!("exchange dir {a} {b}"), exchange(&at(a), &at(b)))
        }
        8 => {
            let (a, b) = (rng.dir(), rng.dir());
            (format!("rename dir {a} {b}"), fs::rename(at(a), at(b)))
        }
        9 => {
            let d = rng.dir();
            (format!("mkdir {d}"), fs::create_dir(at(d)))
        }
        10 => {
            let d = rng.dir();
            (format!("rmdir {d}"), fs::remove_dir(at(d)))
        }
        _ => {
            // Replace by rename over the name.
            let f = rng.file();
            let tmp = at(&format!("{f}.new"));
            (
                format!("replace {f}"),
                fs::write(&tmp, body()).and_then(|()| fs::rename(&tmp, at(&f))),
            )
        }
    };
    match r {
        Ok(()) => what,
        Err(e) => format!("{what}: {}", e.raw_os_error().unwrap_or(0)),
    }
}

/// What a tree holds: relative path -> (kind, bytes or listing, mode, link count, inode).
#[derive(Debug, PartialEq, Eq, Clone)]
struct Node {
    kind: char,
    content: String,
    mode: u32,
    nlink: u64,
}

/// Every path of a tree with what it holds, and every path's inode number.
type Tree = (BTreeMap<String, Node>, HashMap<String, u64>);

fn walk(root: &Path) -> Result<Tree, String> {
    let mut out = BTreeMap::new();
    let mut inos = HashMap::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        let dir = root.join(&rel);
        let mut names: Vec<String> = fs::read_dir(&dir)
            .map_err(|e| format!("list {}: {e}", rel.display()))?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()
            .map_err(|e| format!("list {}: {e}", rel.display()))?;
        names.sort();
        for name in &names {
            let r = rel.join(name);
            let p = root.join(&r);
            let md = fs::symlink_metadata(&p).map_err(|e| format!("stat {}: {e}", r.display()))?;
            let key = r.display().to_string();
            inos.insert(key.clone(), md.ino());
            let (kind, content) = if md.is_dir() {
                todo.push(r);
                ('d', String::new())
            } else {
                let bytes = fs::read(&p).map_err(|e| format!("read {key}: {e}"))?;
                ('f', String::from_utf8_lossy(&bytes).into_owned())
            };
            out.insert(
                key,
                Node {
                    kind,
                    content,
                    mode: md.mode() & 0o7777,
                    nlink: if md.is_dir() { 0 } else { md.nlink() },
                },
            );
        }
    }
    Ok((out, inos))
}

/// Compare the mount with the volume after quiescence; `Err` names the first difference.
fn compare(mnt: &Path, vol: &Path) -> Result<(), String> {
    let (m, m_inos) = walk(mnt)?;
    let (v, v_inos) = walk(vol)?;
    for (k, vn) in &v {
        match m.get(k) {
            None => {
                return Err(format!(
                    "{k}: on the volume ({vn:?}), missing through the mount"
                ));
            }
            Some(mn) if mn != vn => {
                return Err(format!("{k}: mount {mn:?}, volume {vn:?}"));
            }
            _ => {}
        }
    }
    if let Some(k) = m.keys().find(|k| !v.contains_key(*k)) {
        return Err(format!("{k}: shown through the mount, not on the volume"));
    }
    // One file, one number; one number, one file.
    let mut by_file: HashMap<u64, u64> = HashMap::new();
    let mut by_number: HashMap<u64, u64> = HashMap::new();
    for (k, vino) in &v_inos {
        let mino = m_inos[k];
        if let Some(n) = by_file.insert(*vino, mino)
            && n != mino
        {
            return Err(format!("{k}: one file, two inode numbers {n} and {mino}"));
        }
        if let Some(f) = by_number.insert(mino, *vino)
            && f != *vino
        {
            return Err(format!("{k}: inode number {mino} stands for two files"));
        }
    }
    Ok(())
}

#[test]
fn the_mount_agrees_with_a_volume_changed_beside_it() {
    let seed = env_or("MODEL_SEED", 0x5ead_beef);
    let rounds = env_or("MODEL_ROUNDS", 40);
    let burst = env_or("MODEL_BURST", 60);
    let settle_every = env_or("MODEL_SETTLE_EVERY", 8).max(1);
    let layout = Layout::new(1, "attr_ttl = \"100ms\"\nentry_ttl = \"100ms\"", "");
    for d in ["d0", "d1", "d0/s", "d1/s"] {
        fs::create_dir(layout.vols[0].join(d)).unwrap();
    }
    let fx = Fixture::mount(layout);
    let mnt = fx.layout.mnt.clone();
    let vol = fx.layout.vols[0].clone();
    let logs: Arc<Mutex<[Vec<String>; 2]>> = Arc::default();
    let mut rngs = [Rng(seed | 1), Rng((seed ^ 0x9e37_79b9_7f4a_7c15) | 1)];
    for round in 0..rounds {
        std::thread::scope(|s| {
            for (who, rng) in rngs.iter_mut().enumerate() {
                let root = if who == 0 { mnt.clone() } else { vol.clone() };
                let logs = logs.clone();
                s.spawn(move || {
                    for i in 0..burst {
                        let what = step(rng, &root, round * 1000 + i);
                        let mut l = logs.lock().unwrap();
                        l[who].push(what);
                        let n = l[who].len();
                        if n > 40 {
                            l[who].drain(..n - 40);
                        }
                    }
                });
            }
        });
        // Both stopped: once the kernel's caches expire the mount must show the volume. A
        // listing or an entry may lag behind a change by up to the TTL; poll a little past it.
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        let last = loop {
            std::thread::sleep(Duration::from_millis(150));
            let r = compare(&mnt, &vol);
            if r.is_ok() || std::time::Instant::now() > deadline {
                break r;
            }
        };
        // Now and then the tree settles (its times older than the 2 s after which the kernel
        // may keep a directory's cached listing across opens), and is listed again, so that the
        // next burst meets listings the kernel kept.
        let last = match last {
            Ok(()) if round % settle_every == settle_every - 1 => {
                std::thread::sleep(Duration::from_millis(2200));
                compare(&mnt, &vol).and_then(|()| compare(&mnt, &vol))
            }
            other => other,
        };
        if let Err(e) = last {
            let l = logs.lock().unwrap();
            panic!(
                "seed {seed:#x}, round {round}: {e}\nstill different 3 s after both threads \
                 stopped\nlast steps through the mount:\n  {}\nlast steps on the volume:\n  {}",
                l[0].join("\n  "),
                l[1].join("\n  ")
            );
        }
    }
}
