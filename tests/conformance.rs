//! POSIX conformance (pjdfstest) and data integrity (fsx) through a real mount.
//!
//! Both tools are installed by `.ci/install-test-tools` (run by `.ci/run`).

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use common::*;

/// Tests that pass on the raw directory but cannot pass through any FUSE mount, with the reason
/// (also listed in the README).
const FUSE_EXCEPTIONS: &[(&str, &str)] = &[(
    "link::link_count_max",
    "skipped: glibc's pathconf(_PC_LINK_MAX) knows limits only by filesystem magic, and answers \
     the 'unknown' 127 for every FUSE mount, so pjdfstest cannot learn LINK_MAX",
)];

struct PjdRun {
    passed: BTreeSet<String>,
    failed: BTreeSet<String>,
    summary: String,
}

/// Run pjdfstest in `dir`: every test, or those whose names contain one of `only` (callers
/// look for the exact name in the result).
fn pjdfstest(dir: &Path, only: &[&str]) -> PjdRun {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/pjdfstest.toml");
    let out = Command::new(tool("pjdfstest"))
        .arg("-c")
        .arg(&config)
        .arg("-p")
        .arg(dir)
        .args(only)
        .current_dir(dir)
        .output()
        .expect("run pjdfstest");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut run = PjdRun {
        passed: BTreeSet::new(),
        failed: BTreeSet::new(),
        summary: String::new(),
    };
    for line in stdout.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.last()) {
            (Some(name), Some("ok")) => {
                run.passed.insert(name.to_string());
            }
            (Some(name), Some("FAILED")) => {
                run.failed.insert(name.to_string());
            }
            (Some("Summary:"), _) => run.summary = line.to_string(),
            _ => {}
        }
    }
    assert!(
        !run.summary.is_empty(),
        "pjdfstest printed no summary: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    run
}

#[test]
fn pjdfstest_passes_through_the_mount_as_on_the_raw_directory() {
    let fx = Fixture::with(1, "allow_other = true", "");
    let raw_dir = fx.layout.dir.path().join("raw");
    std::fs::create_dir(&raw_dir).unwrap();
    let raw = pjdfstest(&raw_dir, &[]);
    let mut mounted = pjdfstest(&fx.layout.mnt, &[]);
    println!("raw directory: {}", raw.summary);
    println!("failoverfs:    {}", mounted.summary);
    assert!(
        raw.passed.len() > 300,
        "pjdfstest ran too few tests: {}",
        raw.summary
    );
    // A few pjdfstest cases race with the suite's own threads (`open::etxtbsy` execs a file
    // that a concurrently forked child may still hold open for writing: "text file busy").
    // A case that passed on the raw directory gets two more tries through the mount, alone; a
    // real difference fails all three.
    let lost: Vec<String> = raw
        .passed
        .difference(&mounted.passed)
        .filter(|t| !FUSE_EXCEPTIONS.iter().any(|(name, _)| name == t))
        .cloned()
        .collect();
    for t in lost {
        for attempt in 2..=3 {
            if pjdfstest(&fx.layout.mnt, &[t.as_str()]).passed.contains(&t) {
                println!("{t}: passed through failoverfs on attempt {attempt}");
                mounted.failed.remove(&t);
                mounted.passed.insert(t.clone());
                break;
            }
        }
    }
    let lost: Vec<&String> = raw
        .passed
        .difference(&mounted.passed)
        .filter(|t| !FUSE_EXCEPTIONS.iter().any(|(name, _)| name == t))
        .collect();
    assert!(
        lost.is_empty(),
        "pass on the raw directory, not through failoverfs (three tries): {lost:?}"
    );
    let new_failures: Vec<&String> = mounted.failed.difference(&raw.failed).collect();
    assert!(
        new_failures.is_empty(),
        "fail only through failoverfs: {new_failures:?}"
    );
    let expected = raw.passed.len()
        - FUSE_EXCEPTIONS
            .iter()
            .filter(|(t, _)| raw.passed.contains(*t) && !mounted.passed.contains(*t))
            .count();
    assert_eq!(mounted.passed.len(), expected);
}

#[test]
fn fsx_100k_operations_without_miscompare() {
    let fx = Fixture::new(1);
    let out = Command::new(tool("fsx"))
        .args(["-N", "100000", "-S", "20261125", "-P"])
        .arg(fx.layout.dir.path())
        .arg(fx.path("fsx.data"))
        .output()
        .expect("run fsx");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "fsx failed: {text}");
    assert!(text.contains("All operations completed A-OK"), "{text}");
}
