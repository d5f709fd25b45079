//! A volume is shared: other clients create, delete, rename and re-create files on it while we
//! serve it. These tests change the volume directly (as another client would) between operations
//! through the mount, and check that the mount never hands out another file's bytes and that
//! inode numbers mean one file.
mod common;

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use common::*;

fn drop_kernel_caches(fx: &Fixture, below: usize) {
    let inodes = fx.app().vfs().inodes();
    wait_until(Duration::from_secs(30), "the kernel forgets", || {
        fs::write("/proc/sys/vm/drop_caches", b"2").expect("drop_caches");
        inodes.stats().nodes < below
    });
}

#[test]
fn a_reused_inode_number_never_serves_another_files_bytes() {
    let fx = Fixture::new(1);
    fs::write(fx.vol(0, "p"), b"a\n").unwrap();
    fs::metadata(fx.path("p")).unwrap();
    // On the volume: p goes, its inode number is reused at once (ext4 does), p comes back.
    fs::remove_file(fx.vol(0, "p")).unwrap();
    fs::write(fx.vol(0, "newfile2"), b"I am newfile2\n").unwrap();
    fs::write(fx.vol(0, "p"), b"secret\n").unwrap();
    fs::set_permissions(
        fx.vol(0, "p"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    assert_eq!(fs::read(fx.path("newfile2")).unwrap(), b"I am newfile2\n");
    assert_eq!(fs::read(fx.path("p")).unwrap(), b"secret\n");
    let a = fs::metadata(fx.path("newfile2")).unwrap().ino();
    let b = fs::metadata(fx.path("p")).unwrap().ino();
    assert_ne!(a, b);
}

#[test]
fn a_name_replaced_on_the_volume_reads_the_new_file_at_once() {
    let fx = Fixture::new(1);
    fs::write(fx.vol(0, "f"), b"old").unwrap();
    assert_eq!(fs::read(fx.path("f")).unwrap(), b"old");
    let old_ino = fs::metadata(fx.path("f")).unwrap().ino();
    // Replaced by a rename, the way editors and replication jobs write files.
    fs::write(fx.vol(0, "f.tmp"), b"new content").unwrap();
    fs::rename(fx.vol(0, "f.tmp"), fx.vol(0, "f")).unwrap();
    // No waiting for the entry TTL: the open finds the name holds another file.
    assert_eq!(fs::read(fx.path("f")).unwrap(), b"new content");
    assert_ne!(fs::metadata(fx.path("f")).unwrap().ino(), old_ino);
}

#[test]
fn hard_links_survive_the_removal_of_one_name_on_the_volume() {
    let fx = Fixture::new(1);
    fs::write(fx.vol(0, "x"), b"linked").unwrap();
    fs::hard_link(fx.vol(0, "x"), fx.vol(0, "y")).unwrap();
    let x = fs::metadata(fx.path("x")).unwrap();
    let y = fs::metadata(fx.path("y")).unwrap();
    assert_eq!(x.ino(), y.ino(), "two names of one file share an inode");
    fs::remove_file(fx.vol(0, "x")).unwrap();
    assert_eq!(fs::read(fx.path("y")).unwrap(), b"linked");
    // The kernel may keep its entry for `x` until the entry TTL passes (it then names the same,
    // still existing file); after that, `x` is gone.
    wait_until(Duration::from_secs(10), "x disappears", || {
        fs::read(fx.path("x")).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
    });
    assert_eq!(fs::read(fx.path("y")).unwrap(), b"linked");
}

#[test]
fn a_file_renamed_away_and_back_by_another_client_stays_readable() {
    let fx = Fixture::new(1);
    fs::create_dir(fx.vol(0, "A")).unwrap();
    fs::create_dir(fx.vol(0, "B")).unwrap();
    fs::write(fx.vol(0, "A/f"), b"content").unwrap();
    assert_eq!(fs::read(fx.path("A/f")).unwrap(), b"content");
    for _ in 0..3 {
        fs::rename(fx.vol(0, "A/f"), fx.vol(0, "B/f")).unwrap();
        assert_eq!(fs::read(fx.path("B/f")).unwrap(), b"content");
        fs::rename(fx.vol(0, "B/f"), fx.vol(0, "A/f")).unwrap();
        assert_eq!(fs::read(fx.path("A/f")).unwrap(), b"content");
    }
}

#[test]
fn inode_numbers_survive_the_kernel_forgetting_and_match_readdir() {
    let fx = Fixture::new(1);
    fs::create_dir(fx.vol(0, "d")).unwrap();
    for i in 0..300 {
        fs::write(fx.vol(0, &format!("d/f{i}")), b"x").unwrap();
    }
    let before: HashMap<String, u64> = (0..300)
        .map(|i| {
            let name = format!("f{i}");
            let ino = fs::metadata(fx.path(&format!("d/{name}"))).unwrap().ino();
            (name, ino)
        })
        .collect();
    drop_kernel_caches(&fx, 10);
    for (name, ino) in &before {
        let now = fs::metadata(fx.path(&format!("d/{name}"))).unwrap().ino();
        assert_eq!(now, *ino, "st_ino of {name} changed after a forget");
    }
    // Every listing entry's d_ino equals st_ino: after a forget (plain READDIR of names the
    // table does not know) and while they are known.
    for round in 0..2 {
        if round == 0 {
            drop_kernel_caches(&fx, 10);
        }
        let mut seen = 0;
        for e in fs::read_dir(fx.path("d")).unwrap() {
            let e = e.unwrap();
            let d_ino = std::os::unix::fs::DirEntryExt::ino(&e);
            let st_ino = fs::symlink_metadata(e.path()).unwrap().ino();
            assert_eq!(d_ino, st_ino, "{:?}", e.file_name());
            seen += 1;
        }
        assert_eq!(seen, 300);
    }
}

#[test]
fn create_unlink_loops_never_reuse_a_held_number() {
    let fx = Fixture::new(1);
    // Hold every file open: the kernel holds each inode, so each number must stay unique even
    // though the volume reuses its inode numbers as soon as a file is gone.
    let mut held = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for i in 0..2000 {
        let p = fx.path(&format!("c{}", i % 7));
        let f = fs::File::create(&p).unwrap();
        let ino = f.metadata().unwrap().ino();
        assert!(
            seen.insert(ino),
            "inode number {ino} handed out twice while held"
        );
        fs::remove_file(&p).unwrap();
        held.push(f);
        if held.len() > 200 {
            held.remove(0);
            seen.clear();
            seen.extend(held.iter().map(|f| f.metadata().unwrap().ino()));
        }
    }
}

const NOBODY: failoverfs::backend::Caller = failoverfs::backend::Caller {
    uid: 65534,
    gid: 65534,
    pid: 0,
};

#[test]
fn create_meeting_an_existing_file_checks_the_callers_rights() {
    let fx = Fixture::new(1);
    // A racing creator outside the kernel made root's private file between the kernel's lookup
    // and its create: the create must not open it for `nobody`.
    fs::write(fx.vol(0, "private"), b"root only").unwrap();
    fs::set_permissions(
        fx.vol(0, "private"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let vfs = fx.app().vfs();
    let root = failoverfs::inode::ROOT;
    let e = vfs
        .create(root, os("private"), 0o644, libc::O_RDWR, NOBODY)
        .expect_err("nobody must not open root's 0600 file");
    assert_eq!(e.errno(), libc::EACCES);
    assert_eq!(fs::read(fx.vol(0, "private")).unwrap(), b"root only");
}

#[test]
fn files_are_created_as_the_caller_with_their_mode_bits() {
    let fx = Fixture::new(1);
    fs::create_dir(fx.vol(0, "pub")).unwrap();
    fs::set_permissions(
        fx.vol(0, "pub"),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .unwrap();
    let vfs = fx.app().vfs();
    let dir = vfs.lookup(failoverfs::inode::ROOT, os("pub")).unwrap().ino;
    let (entry, fh) = vfs
        .create(
            dir,
            os("suid"),
            libc::S_IFREG | 0o4755,
            libc::O_RDWR,
            NOBODY,
        )
        .unwrap();
    vfs.release(fh);
    let md = fs::metadata(fx.vol(0, "pub/suid")).unwrap();
    assert_eq!((md.uid(), md.gid()), (65534, 65534));
    assert_eq!(
        md.mode() & 0o7777,
        0o4755,
        "the setuid bit is kept, as on ext4"
    );
    assert_eq!(entry.attr.uid, 65534);
    let d = vfs.mkdir(dir, os("sub"), 0o2750, NOBODY).unwrap();
    assert_eq!((d.attr.uid, d.attr.gid), (65534, 65534));
    // Nobody may not create in root's private directory, whatever the daemon may do.
    fs::create_dir(fx.vol(0, "closed")).unwrap();
    fs::set_permissions(
        fx.vol(0, "closed"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let closed = vfs
        .lookup(failoverfs::inode::ROOT, os("closed"))
        .unwrap()
        .ino;
    let e = vfs.mkdir(closed, os("x"), 0o755, NOBODY).unwrap_err();
    assert_eq!(e.errno(), libc::EACCES);
}
