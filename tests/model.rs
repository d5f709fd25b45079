//! A reference-model test: seeded random operations through the mount, interleaved with changes
//! made directly on the active volume (another client) and forced switches between two volumes.
//! Directories swap places too (`RENAME_EXCHANGE`). After every step, what the mount shows for
//! every path of a small namespace must equal what is
//! at that path on the active volume: existence, kind, bytes, permission bits, link count; and
//! inode numbers must map files one to one (two names of one file share a number, two files never
//! do). The TTLs are 0, so "after the TTLs" is "at once".
//!
//! `MODEL_SEED` and `MODEL_STEPS` choose another run (default: a fixed seed, 3,000 steps), e.g.
//! `MODEL_STEPS=100000 MODEL_SEED=7 cargo test --release --test model` for a long one.
mod common;

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::*;

const DIRS: [&str; 2] = ["a", "b"];
const FILES: [&str; 7] = ["a/x", "a/y", "a/z", "b/x", "b/y", "top1", "top2"];

/// xorshift64*: small, seeded, enough for choosing operations.
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

    fn file(&mut self) -> &'static str {
        FILES[self.below(FILES.len())]
    }
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What one path looks like, as far as the model compares.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    text: String,
    mode: u32,
    nlink: u64,
}

fn look(p: &Path) -> Option<Seen> {
    let md = fs::symlink_metadata(p).ok()?;
    Some(Seen {
        text: String::from_utf8_lossy(&fs::read(p).ok()?).into_owned(),
        mode: md.permissions().mode() & 0o7777,
        nlink: md.nlink(),
    })
}

/// One step: `where_` is the mount or the active volume's root.
fn apply(rng: &mut Rng, where_: &Path, tag: u64) -> String {
    let at = |rel: &str| where_.join(rel);
    let content = || format!("file {tag}\n{}", "z".repeat((tag % 300) as usize)).into_bytes();
    match rng.below(9) {
        0 | 1 => {
            let f = rng.file();
            let _ = fs::write(at(f), content());
            format!("write {f}")
        }
        2 => {
            let f = rng.file();
            let _ = fs::remove_file(at(f));
            format!("unlink {f}")
        }
        3 => {
            let (a, b) = (rng.file(), rng.file());
            let _ = fs::rename(at(a), at(b));
            format!("rename {a} {b}")
        }
        4 => {
            let (a, b) = (rng.file(), rng.file());
            let _ = fs::hard_link(at(a), at(b));
            format!("link {a} {b}")
        }
        5 => {
            let f = rng.file();
            let mode = [0o600, 0o644, 0o640, 0o755][rng.below(4)];
            let _ = fs::set_permissions(at(f), fs::Permissions::from_mode(mode));
            format!("chmod {f} {mode:o}")
        }
        6 => {
            // Replace by rename over the name, as editors and replication jobs do.
            let f = rng.file();
            let tmp = at(&format!("{f}.tmp"));
            let _ = fs::write(&tmp, content()).and_then(|()| fs::rename(&tmp, at(f)));
            format!("replace {f}")
        }
        7 => {
            // Two directories swap places (operations in them follow their directory).
            let _ = nix::fcntl::renameat2(
                nix::fcntl::AT_FDCWD,
                &at(DIRS[0]),
                nix::fcntl::AT_FDCWD,
                &at(DIRS[1]),
                nix::fcntl::RenameFlags::RENAME_EXCHANGE,
            );
            format!("exchange {} {}", DIRS[0], DIRS[1])
        }
        _ => {
            let f = rng.file();
            let _ = fs::OpenOptions::new()
                .append(true)
                .open(at(f))
                .and_then(|mut h| std::io::Write::write_all(&mut h, format!("+{tag}").as_bytes()));
            format!("append {f}")
        }
    }
}

/// Compare the mount with the active volume; `Err` describes the first difference.
fn compare(mnt: &Path, vol: &Path) -> Result<(), String> {
    let mut numbers: HashMap<(u64, u64), u64> = HashMap::new();
    let mut owners: HashMap<u64, (u64, u64)> = HashMap::new();
    for f in FILES {
        let (m, v) = (look(&mnt.join(f)), look(&vol.join(f)));
        if m != v {
            return Err(format!("{f}: mount {m:?}, volume {v:?}"));
        }
        let (Ok(mm), Ok(vm)) = (fs::metadata(mnt.join(f)), fs::metadata(vol.join(f))) else {
            continue;
        };
        let file = (vm.dev(), vm.ino());
        if let Some(n) = numbers.insert(file, mm.ino())
            && n != mm.ino()
        {
            return Err(format!(
                "{f}: one file, two inode numbers {n} and {}",
                mm.ino()
            ));
        }
        if let Some(other) = owners.insert(mm.ino(), file)
            && other != file
        {
            return Err(format!(
                "{f}: inode number {} stands for two files",
                mm.ino()
            ));
        }
    }
    Ok(())
}

#[test]
fn the_mount_agrees_with_the_active_volume_at_every_step() {
    let seed = env_or("MODEL_SEED", 0x5eed_f00d);
    let steps = env_or("MODEL_STEPS", 3000);
    let layout = Layout::new(2, "attr_ttl = \"0s\"\nentry_ttl = \"0s\"", "");
    for v in &layout.vols {
        for d in DIRS {
            fs::create_dir(v.join(d)).unwrap();
        }
    }
    let fx = Fixture::mount(layout);
    let mut rng = Rng(seed | 1);
    let mut active = 0usize;
    let mut log: Vec<String> = Vec::new();
    let vol = |i: usize| -> PathBuf { fx.layout.vols[i].clone() };
    for step in 0..steps {
        let what = match rng.below(100) {
            // A forced switch, now and then.
            0 => {
                let to = 1 - active;
                let out = fx.app().switch_to(Some(to), "model");
                assert!(
                    matches!(out, Some(failoverfs::failover::Outcome::Swapped { .. })),
                    "switch to v{to}: {out:?}"
                );
                active = to;
                format!("switch to v{to}")
            }
            // Another client, directly on the active volume.
            1..=39 => format!("volume: {}", apply(&mut rng, &vol(active), step)),
            _ => format!("mount: {}", apply(&mut rng, &fx.layout.mnt, step)),
        };
        log.push(what);
        if let Err(e) = compare(&fx.layout.mnt, &vol(active)) {
            let tail = &log[log.len().saturating_sub(12)..];
            panic!(
                "seed {seed:#x}, step {step} (active v{active}): {e}\nlast steps:\n{}",
                tail.join("\n")
            );
        }
    }
    let switches = log.iter().filter(|l| l.starts_with("switch")).count();
    eprintln!("model: seed {seed:#x}, {steps} steps, {switches} switches, no difference");
    assert!(switches > 0 || steps < 500);
}
