//! FUSE passthrough, the opt-in (`mount.passthrough`): the bytes of open files go to the
//! volume's file directly and never reach the daemon; a file open across a switch stays on the
//! old volume and cannot be opened again until it is closed (the documented price); then it is
//! the new volume's.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use common::*;
use failoverfs::backend::faulty::Fault;
use failoverfs::failover::Outcome;

/// FUSE passthrough came with Linux 6.9; on an older kernel the tests say so and pass.
fn kernel_has_passthrough() -> bool {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    let has = (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (6, 9);
    if !has {
        eprintln!(
            "skipped: FUSE passthrough needs Linux 6.9 or later ({})",
            release.trim()
        );
    }
    has
}

fn read_all(f: &fs::File) -> String {
    let mut buf = vec![0u8; 64];
    let n = f.read_at(&mut buf, 0).expect("read");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn open_files_are_passed_through_and_after_a_switch_reopen_on_the_standby_once_closed() {
    if !kernel_has_passthrough() {
        return;
    }
    let fx = Fixture::with(2, "passthrough = true", "");
    write_file(&fx.vol(0, "f"), b"volume zero");
    write_file(&fx.vol(1, "f"), b"volume one!");
    write_file(&fx.vol(0, "w"), b"");
    write_file(&fx.vol(1, "w"), b"");
    // Two opens of one file share its backing file; then every call of the daemon on these files
    // fails, so only passed-through reads and writes can succeed.
    let a = fs::File::open(fx.path("f")).unwrap();
    let b = fs::File::open(fx.path("f")).unwrap();
    let mut w = fs::OpenOptions::new()
        .write(true)
        .open(fx.path("w"))
        .unwrap();
    fx.faults[0].add("f", Fault::Fail(libc::EIO));
    fx.faults[0].add("w", Fault::Fail(libc::EIO));
    assert_eq!(read_all(&a), "volume zero");
    assert_eq!(read_all(&b), "volume zero");
    w.write_all(b"passed through").unwrap();
    assert_eq!(fs::read(fx.vol(0, "w")).unwrap(), b"passed through");
    fx.faults[0].clear();

    assert_eq!(
        fx.app().switch_to(Some(1), "test"),
        Some(Outcome::Swapped {
            to: 1,
            generation: 2
        })
    );
    // The price: a file open across the switch still reads the old volume, and while it stays
    // open the file cannot be opened again (the kernel takes one backing file per inode).
    assert_eq!(read_all(&a), "volume zero");
    let busy = fs::File::open(fx.path("f")).unwrap_err();
    assert_eq!(busy.raw_os_error(), Some(libc::EBUSY));
    let w_again = fs::File::open(fx.path("w")).map(drop);
    assert_eq!(w_again.unwrap_err().raw_os_error(), Some(libc::EBUSY));
    drop((a, b, w));
    // Once the kernel's releases of the old opens reached the daemon, the standby's file is
    // opened and passed through.
    let mut d = None;
    wait_until(
        Duration::from_secs(10),
        "an open after the old ones closed",
        || {
            d = fs::File::open(fx.path("f")).ok();
            d.is_some()
        },
    );
    let d = d.unwrap();
    fx.faults[1].add("f", Fault::Fail(libc::EIO));
    assert_eq!(read_all(&d), "volume one!");
    fx.faults[1].clear();
}

#[test]
fn a_created_file_is_passed_through() {
    if !kernel_has_passthrough() {
        return;
    }
    let fx = Fixture::with(1, "passthrough = true", "");
    let mut f = fs::OpenOptions::new()
        .create_new(true)
        .read(true)
        .write(true)
        .open(fx.path("new"))
        .unwrap();
    fx.faults[0].add("new", Fault::Fail(libc::EIO));
    f.write_all(b"made here").unwrap();
    assert_eq!(read_all(&f), "made here");
    assert_eq!(fs::read(fx.vol(0, "new")).unwrap(), b"made here");
    fx.faults[0].clear();
}
