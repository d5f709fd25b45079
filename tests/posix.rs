//! Every operation of the directory backend through a real FUSE mount, with its errors.

mod common;

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirEntryExt, FileExt, MetadataExt, PermissionsExt};
use std::time::Duration;

use common::*;

fn errno_of<T: std::fmt::Debug>(r: std::io::Result<T>) -> i32 {
    r.expect_err("expected an error")
        .raw_os_error()
        .unwrap_or(0)
}

#[test]
fn files_read_write_stat_and_persist_on_the_volume() {
    let fx = Fixture::new(1);
    let p = fx.path("hello.txt");
    fs::write(&p, b"hello world").unwrap();
    assert_eq!(fs::read(&p).unwrap(), b"hello world");
    assert_eq!(fs::read(fx.vol(0, "hello.txt")).unwrap(), b"hello world");
    let md = fs::metadata(&p).unwrap();
    assert!(md.is_file());
    assert_eq!(md.len(), 11);
    // Inode numbers are stable for the same file: the volume's own number while it is free.
    assert_eq!(md.ino(), fs::metadata(&p).unwrap().ino());
    assert_eq!(
        md.ino(),
        fs::metadata(fx.vol(0, "hello.txt")).unwrap().ino()
    );

    // Positional I/O, append, truncate.
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&p)
        .unwrap();
    f.write_all_at(b"HELLO", 0).unwrap();
    let mut buf = [0u8; 5];
    f.read_exact_at(&mut buf, 6).unwrap();
    assert_eq!(&buf, b"world");
    f.set_len(5).unwrap();
    drop(f);
    let mut f = fs::OpenOptions::new().append(true).open(&p).unwrap();
    f.write_all(b"!!").unwrap();
    drop(f);
    assert_eq!(fs::read(&p).unwrap(), b"HELLO!!");

    // O_TRUNC on open.
    fs::write(&p, b"x").unwrap();
    assert_eq!(fs::read(&p).unwrap(), b"x");
}

#[test]
fn big_file_roundtrip_with_checksum() {
    let fx = Fixture::new(1);
    let p = fx.path("big.bin");
    let size = 64 << 20;
    let data = pattern(size, 42);
    let sum = checksum(&data);
    {
        let mut f = fs::File::create(&p).unwrap();
        for chunk in data.chunks(1 << 20) {
            f.write_all(chunk).unwrap();
        }
        f.sync_all().unwrap();
    }
    drop(data);
    let mut back = Vec::with_capacity(size);
    fs::File::open(&p).unwrap().read_to_end(&mut back).unwrap();
    assert_eq!(back.len(), size);
    assert_eq!(checksum(&back), sum, "read back through the mount");
    let raw = fs::read(fx.vol(0, "big.bin")).unwrap();
    assert_eq!(checksum(&raw), sum, "what reached the volume");
}

#[test]
fn sparse_files_holes_and_seek_data() {
    let fx = Fixture::new(1);
    let p = fx.path("sparse");
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&p)
        .unwrap();
    let far = 16u64 << 20;
    f.write_all_at(b"tail", far).unwrap();
    f.sync_all().unwrap();
    let md = f.metadata().unwrap();
    assert_eq!(md.len(), far + 4);
    assert!(md.blocks() * 512 < far, "the hole takes no space");
    let mut buf = vec![1u8; 4096];
    f.read_exact_at(&mut buf, 4096).unwrap();
    assert!(buf.iter().all(|&b| b == 0), "holes read as zeros");
    use std::os::fd::AsRawFd;
    // SAFETY: plain lseek on an open descriptor.
    let data = unsafe { libc::lseek(f.as_raw_fd(), 0, libc::SEEK_DATA) };
    assert!(
        data >= far as i64 - 4096 && data <= far as i64,
        "SEEK_DATA found {data}"
    );
    // SAFETY: as above.
    let hole = unsafe { libc::lseek(f.as_raw_fd(), 0, libc::SEEK_HOLE) };
    assert_eq!(hole, 0, "the file starts with a hole");
    // fallocate: reserve space, size unchanged with KEEP_SIZE.
    // SAFETY: plain fallocate on an open descriptor.
    let rc = unsafe { libc::fallocate(f.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, 0, 1 << 20) };
    assert_eq!(rc, 0, "fallocate: errno {}", last_errno());
    assert_eq!(f.metadata().unwrap().len(), far + 4);
    // SAFETY: as above.
    let rc = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, (far + 8192) as i64) };
    assert_eq!(rc, 0);
    assert_eq!(f.metadata().unwrap().len(), far + 8192);
}

#[test]
fn directories_and_their_errors() {
    let fx = Fixture::new(1);
    let d = fx.path("d");
    fs::create_dir(&d).unwrap();
    assert_eq!(errno_of(fs::create_dir(&d)), libc::EEXIST);
    fs::write(d.join("f"), b"x").unwrap();
    assert_eq!(errno_of(fs::remove_dir(&d)), libc::ENOTEMPTY);
    assert_eq!(errno_of(fs::remove_dir(d.join("f"))), libc::ENOTDIR);
    assert_eq!(errno_of(fs::remove_file(&d)), libc::EISDIR);
    assert_eq!(errno_of(fs::read_dir(d.join("f"))), libc::ENOTDIR);
    assert_eq!(errno_of(fs::metadata(d.join("missing"))), libc::ENOENT);
    assert_eq!(errno_of(fs::read(fx.path("nope/deeper"))), libc::ENOENT);
    assert_eq!(
        errno_of(fs::write(d.join("f/under-a-file"), b"")),
        libc::ENOTDIR
    );
    assert_eq!(
        errno_of(fs::File::open(&d).and_then(|mut f| f.write_all(b"x"))),
        libc::EBADF
    );
    assert_eq!(
        errno_of(fs::OpenOptions::new().write(true).open(&d)),
        libc::EISDIR
    );
    fs::remove_file(d.join("f")).unwrap();
    fs::remove_dir(&d).unwrap();
    assert!(!fx.vol(0, "d").exists());
    // Nested trees.
    fs::create_dir_all(fx.path("a/b/c/d")).unwrap();
    fs::write(fx.path("a/b/c/d/e"), b"deep").unwrap();
    assert_eq!(fs::read(fx.vol(0, "a/b/c/d/e")).unwrap(), b"deep");
    fs::remove_dir_all(fx.path("a")).unwrap();
    assert!(!fx.vol(0, "a").exists());
}

#[test]
fn readdir_lists_everything_once_across_many_calls() {
    let fx = Fixture::new(1);
    let d = fx.path("many");
    fs::create_dir(&d).unwrap();
    let n = 2000;
    for i in 0..n {
        fs::write(d.join(format!("file-with-a-longish-name-{i:05}")), b"").unwrap();
    }
    fs::create_dir(d.join("sub")).unwrap();
    let mut names: Vec<String> = fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let before = names.len();
    names.dedup();
    assert_eq!(before, names.len(), "no duplicates");
    assert_eq!(names.len(), n + 1);
    // Types come through the listing.
    let sub = fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap())
        .find(|e| e.file_name() == "sub")
        .unwrap();
    assert!(sub.file_type().unwrap().is_dir());
    // Entries' inode numbers match stat's.
    for e in fs::read_dir(&d).unwrap().take(50) {
        let e = e.unwrap();
        assert_eq!(e.ino(), fs::symlink_metadata(e.path()).unwrap().ino());
    }
    // Plain readdir (getdents) sees . and .. too.
    let out = std::process::Command::new("ls")
        .arg("-a")
        .arg(&d)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(listing.lines().any(|l| l == "."), "{listing}");
    assert!(listing.lines().any(|l| l == ".."));
}

#[test]
fn rename_plain_noreplace_and_exchange() {
    let fx = Fixture::new(1);
    fs::write(fx.path("a"), b"A").unwrap();
    fs::write(fx.path("b"), b"B").unwrap();
    let ino_a = fs::metadata(fx.path("a")).unwrap().ino();
    fs::rename(fx.path("a"), fx.path("c")).unwrap();
    assert_eq!(
        fs::metadata(fx.path("c")).unwrap().ino(),
        ino_a,
        "a rename keeps the inode"
    );
    assert_eq!(errno_of(fs::metadata(fx.path("a"))), libc::ENOENT);

    let renameat2 = |from: &str, to: &str, flags: u32| -> i32 {
        let (f, t) = (cpath(&fx.path(from)), cpath(&fx.path(to)));
        // SAFETY: valid NUL-terminated paths.
        let rc = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                f.as_ptr(),
                libc::AT_FDCWD,
                t.as_ptr(),
                flags,
            )
        };
        if rc == 0 { 0 } else { last_errno() }
    };
    assert_eq!(renameat2("c", "b", libc::RENAME_NOREPLACE), libc::EEXIST);
    assert_eq!(fs::read(fx.path("b")).unwrap(), b"B");
    assert_eq!(renameat2("c", "b", libc::RENAME_EXCHANGE), 0);
    assert_eq!(fs::read(fx.path("b")).unwrap(), b"A");
    assert_eq!(fs::read(fx.path("c")).unwrap(), b"B");
    assert_eq!(fs::read(fx.vol(0, "b")).unwrap(), b"A");
    assert_eq!(
        renameat2("missing", "x", libc::RENAME_EXCHANGE),
        libc::ENOENT
    );
    // Replacing rename.
    fs::rename(fx.path("b"), fx.path("c")).unwrap();
    assert_eq!(fs::read(fx.path("c")).unwrap(), b"A");
    assert_eq!(errno_of(fs::metadata(fx.path("b"))), libc::ENOENT);
    // Directory renames carry their contents.
    fs::create_dir_all(fx.path("d1/inner")).unwrap();
    fs::write(fx.path("d1/inner/f"), b"F").unwrap();
    fs::rename(fx.path("d1"), fx.path("d2")).unwrap();
    assert_eq!(fs::read(fx.path("d2/inner/f")).unwrap(), b"F");
    fs::create_dir(fx.path("full")).unwrap();
    fs::write(fx.path("full/x"), b"").unwrap();
    assert_eq!(
        errno_of(fs::rename(fx.path("d2"), fx.path("full"))),
        libc::ENOTEMPTY
    );
    assert_eq!(
        errno_of(fs::rename(fx.path("c"), fx.path("full"))),
        libc::EISDIR
    );
    assert_eq!(
        errno_of(fs::rename(fx.path("d2"), fx.path("c"))),
        libc::ENOTDIR
    );
}

#[test]
fn symlinks_and_hard_links() {
    let fx = Fixture::new(1);
    fs::write(fx.path("target"), b"T").unwrap();
    std::os::unix::fs::symlink("target", fx.path("sym")).unwrap();
    assert_eq!(
        fs::read_link(fx.path("sym")).unwrap().to_str(),
        Some("target")
    );
    assert!(
        fs::symlink_metadata(fx.path("sym"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(
        fs::read(fx.path("sym")).unwrap(),
        b"T",
        "the kernel follows it"
    );
    assert_eq!(
        errno_of(std::os::unix::fs::symlink("x", fx.path("sym"))),
        libc::EEXIST
    );
    assert_eq!(errno_of(fs::read_link(fx.path("target"))), libc::EINVAL);

    fs::hard_link(fx.path("target"), fx.path("hard")).unwrap();
    let a = fs::metadata(fx.path("target")).unwrap();
    let b = fs::metadata(fx.path("hard")).unwrap();
    assert_eq!(a.ino(), b.ino(), "two names, one inode");
    assert_eq!(b.nlink(), 2);
    fs::write(fx.path("hard"), b"changed").unwrap();
    assert_eq!(fs::read(fx.path("target")).unwrap(), b"changed");
    fs::remove_file(fx.path("target")).unwrap();
    assert_eq!(fs::metadata(fx.path("hard")).unwrap().nlink(), 1);
    assert_eq!(
        errno_of(fs::hard_link(fx.path("missing"), fx.path("h2"))),
        libc::ENOENT
    );
    fs::create_dir(fx.path("dir")).unwrap();
    assert_eq!(
        errno_of(fs::hard_link(fx.path("dir"), fx.path("h3"))),
        libc::EPERM
    );
}

#[test]
fn attributes_mode_owner_size_times() {
    let fx = Fixture::new(1);
    let p = fx.path("f");
    fs::write(&p, b"0123456789").unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o4711)).unwrap();
    assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o4711);
    assert_eq!(
        fs::metadata(fx.vol(0, "f")).unwrap().mode() & 0o7777,
        0o4711
    );
    std::os::unix::fs::chown(&p, Some(1234), Some(5678)).unwrap();
    let md = fs::metadata(&p).unwrap();
    assert_eq!((md.uid(), md.gid()), (1234, 5678));
    let f = fs::OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(3).unwrap();
    drop(f);
    assert_eq!(fs::metadata(&p).unwrap().len(), 3);
    let c = cpath(&p);
    let times = [
        libc::timespec {
            tv_sec: 1_000_000,
            tv_nsec: 5,
        },
        libc::timespec {
            tv_sec: 2_000_000,
            tv_nsec: 7,
        },
    ];
    // SAFETY: valid path and two timespecs.
    assert_eq!(
        unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), 0) },
        0
    );
    let md = fs::metadata(&p).unwrap();
    assert_eq!((md.atime(), md.atime_nsec()), (1_000_000, 5));
    assert_eq!((md.mtime(), md.mtime_nsec()), (2_000_000, 7));
    // Truncate by path.
    // SAFETY: valid path.
    assert_eq!(unsafe { libc::truncate(c.as_ptr(), 100) }, 0);
    assert_eq!(fs::metadata(&p).unwrap().len(), 100);
    // New files belong to their creator (root here).
    fs::write(fx.path("mine"), b"").unwrap();
    assert_eq!(fs::metadata(fx.path("mine")).unwrap().uid(), 0);
}

#[test]
fn fifo_xattrs_statfs_access() {
    let fx = Fixture::new(1);
    let fifo = cpath(&fx.path("fifo"));
    // SAFETY: valid path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o640) }, 0);
    let md = fs::symlink_metadata(fx.path("fifo")).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(&md.file_type()));
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(
        &fs::symlink_metadata(fx.vol(0, "fifo")).unwrap().file_type()
    ));
    // SAFETY: valid path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o640) }, -1);
    assert_eq!(last_errno(), libc::EEXIST);

    let p = fx.path("x");
    fs::write(&p, b"").unwrap();
    let c = cpath(&p);
    let name = c"user.colour";
    let value = b"blue";
    // SAFETY: valid strings and buffer.
    let rc = unsafe { libc::setxattr(c.as_ptr(), name.as_ptr(), value.as_ptr().cast(), 4, 0) };
    assert_eq!(rc, 0, "setxattr errno {}", last_errno());
    let mut buf = [0u8; 64];
    // SAFETY: valid strings and buffer.
    let n = unsafe { libc::getxattr(c.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), 64) };
    assert_eq!(&buf[..n as usize], b"blue");
    // SAFETY: size query.
    let n = unsafe { libc::getxattr(c.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
    assert_eq!(n, 4);
    // SAFETY: too small a buffer.
    let n = unsafe { libc::getxattr(c.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), 2) };
    assert_eq!((n, last_errno()), (-1, libc::ERANGE));
    // SAFETY: valid buffer.
    let n = unsafe { libc::listxattr(c.as_ptr(), buf.as_mut_ptr().cast(), 64) };
    assert!(
        buf[..n as usize]
            .split(|&b| b == 0)
            .any(|s| s == b"user.colour")
    );
    // SAFETY: XATTR_CREATE on an existing attribute.
    let rc = unsafe {
        libc::setxattr(
            c.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            4,
            libc::XATTR_CREATE,
        )
    };
    assert_eq!((rc, last_errno()), (-1, libc::EEXIST));
    // SAFETY: valid strings.
    assert_eq!(unsafe { libc::removexattr(c.as_ptr(), name.as_ptr()) }, 0);
    // SAFETY: valid strings and buffer.
    let n = unsafe { libc::getxattr(c.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), 64) };
    assert_eq!((n, last_errno()), (-1, libc::ENODATA));

    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let root = cpath(&fx.layout.mnt);
    // SAFETY: valid path and out pointer.
    assert_eq!(unsafe { libc::statvfs(root.as_ptr(), &mut st) }, 0);
    assert!(st.f_blocks > 0 && st.f_bsize > 0);

    // SAFETY: valid path.
    assert_eq!(
        unsafe { libc::access(c.as_ptr(), libc::R_OK | libc::W_OK) },
        0
    );
    let missing = cpath(&fx.path("missing"));
    // SAFETY: valid path.
    assert_eq!(unsafe { libc::access(missing.as_ptr(), libc::F_OK) }, -1);
    assert_eq!(last_errno(), libc::ENOENT);
}

#[test]
fn copy_file_range_inside_the_mount() {
    let fx = Fixture::new(1);
    let data = pattern(3 << 20, 7);
    fs::write(fx.path("src"), &data).unwrap();
    // std::fs::copy uses copy_file_range on Linux.
    fs::copy(fx.path("src"), fx.path("dst")).unwrap();
    assert_eq!(
        checksum(&fs::read(fx.path("dst")).unwrap()),
        checksum(&data)
    );
    use std::os::fd::AsRawFd;
    let src = fs::File::open(fx.path("src")).unwrap();
    let dst = fs::OpenOptions::new()
        .write(true)
        .open(fx.path("dst"))
        .unwrap();
    let (mut off_in, mut off_out) = (100i64, 0i64);
    // SAFETY: valid descriptors and offsets.
    let n = unsafe {
        libc::copy_file_range(
            src.as_raw_fd(),
            &mut off_in,
            dst.as_raw_fd(),
            &mut off_out,
            1000,
            0,
        )
    };
    assert_eq!(n, 1000, "errno {}", last_errno());
    let back = fs::read(fx.path("dst")).unwrap();
    assert_eq!(&back[..1000], &data[100..1100]);
}

#[test]
fn unlinked_open_file_keeps_working() {
    let fx = Fixture::new(1);
    let p = fx.path("tmp");
    let mut f = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&p)
        .unwrap();
    f.write_all(b"still here").unwrap();
    fs::remove_file(&p).unwrap();
    assert_eq!(errno_of(fs::metadata(&p)), libc::ENOENT);
    f.seek(SeekFrom::Start(0)).unwrap();
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "still here");
    let md = f.metadata().unwrap();
    assert_eq!(md.nlink(), 0);
    assert_eq!(md.len(), 10);
}

#[test]
fn cross_mount_rename_and_link_get_exdev() {
    let fx = Fixture::new(1);
    fs::write(fx.path("inside"), b"x").unwrap();
    let outside = fx.layout.dir.path().join("outside");
    assert_eq!(
        errno_of(fs::rename(fx.path("inside"), &outside)),
        libc::EXDEV
    );
    assert_eq!(
        errno_of(fs::hard_link(fx.path("inside"), &outside)),
        libc::EXDEV
    );
    assert!(!outside.exists());
}

#[test]
fn permissions_are_enforced_for_other_users() {
    let fx = Fixture::with(1, "allow_other = true", "");
    let d = fx.path("d");
    fs::create_dir(&d).unwrap();
    fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(d.join("public"), b"ok").unwrap();
    fs::write(d.join("secret"), b"no").unwrap();
    fs::set_permissions(d.join("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    let dir = d.display();
    // The other user reaches the mount at all (so EACCES below is the permission check).
    let (ok, err) = sh_as(65534, &format!("cat {dir}/public"));
    assert!(ok, "reading a public file: {err}");
    let (ok, err) = sh_as(65534, &format!("cat {dir}/secret"));
    assert!(!ok && err.contains("Permission denied"), "{err}");
    let (ok, err) = sh_as(65534, &format!("touch {dir}/new"));
    assert!(!ok && err.contains("Permission denied"), "{err}");
    assert!(!fx.vol(0, "d/new").exists());
    // A directory the user owns works, and new files belong to the user.
    fs::create_dir(fx.path("home")).unwrap();
    std::os::unix::fs::chown(fx.path("home"), Some(65534), Some(65534)).unwrap();
    let (ok, err) = sh_as(
        65534,
        &format!("echo hi > {}/mine", fx.path("home").display()),
    );
    assert!(ok, "{err}");
    let md = fs::metadata(fx.vol(0, "home/mine")).unwrap();
    assert_eq!((md.uid(), md.gid()), (65534, 65534));
}

#[test]
fn read_only_mount_refuses_writes() {
    let fx = Fixture::with(1, "read_only = true", "");
    assert_eq!(errno_of(fs::write(fx.path("f"), b"x")), libc::EROFS);
    assert_eq!(errno_of(fs::create_dir(fx.path("d"))), libc::EROFS);
    assert!(fs::read_dir(&fx.layout.mnt).unwrap().next().is_none());
}

#[test]
fn forget_frees_the_inode_table() {
    let fx = Fixture::new(1);
    let d = fx.vol(0, "walk");
    fs::create_dir(&d).unwrap();
    let n = 5000;
    for i in 0..n {
        fs::write(d.join(format!("f{i}")), b"").unwrap();
    }
    for e in fs::read_dir(fx.path("walk")).unwrap() {
        fs::metadata(e.unwrap().path()).unwrap();
    }
    let inodes = fx.app().vfs().inodes();
    let grown = inodes.stats().nodes;
    assert!(grown > n, "the walk made {grown} nodes");
    // Make the kernel drop its dentries and inodes: it sends FORGET for each.
    wait_until(
        Duration::from_secs(30),
        "the kernel forgets the walked files",
        || {
            fs::write("/proc/sys/vm/drop_caches", b"2").unwrap();
            inodes.stats().nodes < 100
        },
    );
}

#[test]
fn four_threads_read_and_write_different_files() {
    let fx = Fixture::new(1);
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let p = fx.path(&format!("t{t}"));
            std::thread::spawn(move || {
                let data = pattern(4 << 20, t + 1);
                for round in 0..5 {
                    let mut f = fs::File::create(&p).unwrap();
                    for chunk in data.chunks(64 << 10) {
                        f.write_all(chunk).unwrap();
                    }
                    drop(f);
                    let back = fs::read(&p).unwrap();
                    assert_eq!(checksum(&back), checksum(&data), "thread {t} round {round}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn one_stuck_file_does_not_stall_the_others() {
    let fx = Fixture::new(1);
    fs::write(fx.path("stuck"), b"s").unwrap();
    fs::write(fx.path("fine"), b"f").unwrap();
    let faults = fx.faults[0].clone();
    faults.add("stuck", failoverfs::backend::faulty::Fault::Block);
    let stuck = fx.path("stuck");
    let reader = std::thread::spawn(move || fs::read(stuck));
    wait_until(
        Duration::from_secs(10),
        "the read is stuck in the backend",
        || faults.blocked() > 0,
    );
    // Other files keep being served while the stuck one hangs.
    for _ in 0..100 {
        assert_eq!(fs::read(fx.path("fine")).unwrap(), b"f");
        fs::metadata(fx.path("fine")).unwrap();
    }
    assert!(!reader.is_finished());
    faults.clear();
    assert_eq!(reader.join().unwrap().unwrap(), b"s");
}

fn mount_options(mnt: &std::path::Path) -> String {
    mountinfo_line(mnt)
        .and_then(|l| l.split(' ').nth(5).map(str::to_string))
        .unwrap_or_default()
}

#[test]
fn the_mount_source_names_the_volume_table_not_one_volume() {
    let fx = Fixture::new(2);
    let line = mountinfo_line(&fx.layout.mnt).unwrap();
    // After the optional fields: " - fstype source super-options".
    let source = line.split(" - ").nth(1).and_then(|t| t.split(' ').nth(1));
    assert_eq!(source, Some("failoverfs:v0+v1"), "{line}");
}

#[test]
fn nosuid_nodev_by_default_and_opt_ins() {
    let fx = Fixture::new(1);
    let opts = mount_options(&fx.layout.mnt);
    assert!(opts.contains("nosuid") && opts.contains("nodev"), "{opts}");
    drop(fx);
    let fx = Fixture::with(1, "suid = true\ndev = true", "");
    let opts = mount_options(&fx.layout.mnt);
    assert!(
        !opts.contains("nosuid") && !opts.contains("nodev"),
        "{opts}"
    );
}

#[test]
fn unprivileged_changes_drop_set_id_bits_as_the_volume_does() {
    let fx = Fixture::with(1, "allow_other = true", "");
    // The reference: the same calls on a plain directory of the same machine.
    let raw = fx.layout.dir.path().join("raw");
    let here = fx.path("m");
    for d in [&raw, &here] {
        fs::create_dir(d).unwrap();
        fs::set_permissions(d, fs::Permissions::from_mode(0o777)).unwrap();
    }
    let calls = [
        ("write", "printf x >> F"),
        ("truncate", "truncate -s 1 F"),
        ("fallocate", "fallocate -l 65536 F"),
        ("open-trunc", ": > F"),
    ];
    let mut differ = Vec::new();
    for mode in [0o6666, 0o6676, 0o4666, 0o2666] {
        for (name, script) in calls {
            let mut got = Vec::new();
            for d in [&raw, &here] {
                let f = d.join(format!("{name}-{mode:o}"));
                fs::write(&f, b"data").unwrap();
                fs::set_permissions(&f, fs::Permissions::from_mode(mode)).unwrap();
                let (ok, err) = sh_as(65534, &script.replace('F', &f.display().to_string()));
                assert!(ok, "{name} on {}: {err}", f.display());
                got.push(fs::metadata(&f).unwrap().permissions().mode() & 0o7777);
            }
            if got[0] != got[1] {
                differ.push(format!(
                    "{name} of {mode:o}: raw {:o}, mount {:o}",
                    got[0], got[1]
                ));
            }
        }
    }
    assert!(differ.is_empty(), "{differ:#?}");
    // The case the kernel's own fallback got wrong is a real case here.
    assert_eq!(
        fs::metadata(raw.join("write-6666"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o666
    );
}

/// `openat`-style descent: open `name` (a directory) beneath `dir`.
fn open_dir_at(dir: &std::os::fd::OwnedFd, name: &str) -> std::os::fd::OwnedFd {
    use std::os::fd::AsFd;
    nix::fcntl::openat(
        dir.as_fd(),
        name,
        nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_RDONLY,
        nix::sys::stat::Mode::empty(),
    )
    .unwrap_or_else(|e| panic!("open {name}: {e}"))
}

#[test]
fn a_tree_deeper_than_path_max_works() {
    use std::os::fd::AsFd;
    let fx = Fixture::new(1);
    // 200 levels of 40-byte names: about 8,200 bytes below the root, twice PATH_MAX.
    let name = |i: usize| format!("{i:03}-{}", "d".repeat(36));
    let open_root = |p: &std::path::Path| {
        nix::fcntl::open(
            p,
            nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_RDONLY,
            nix::sys::stat::Mode::empty(),
        )
        .unwrap()
    };
    let mut dir = open_root(&fx.layout.mnt);
    for i in 0..200 {
        nix::sys::stat::mkdirat(
            dir.as_fd(),
            name(i).as_str(),
            nix::sys::stat::Mode::from_bits_truncate(0o755),
        )
        .unwrap_or_else(|e| panic!("mkdir at level {i}: {e}"));
        dir = open_dir_at(&dir, &name(i));
    }
    // Through the mount at the bottom: create, write, read, rename, stat, list, unlink.
    let file = |flags| {
        nix::fcntl::openat(
            dir.as_fd(),
            "f",
            flags,
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .unwrap()
    };
    let f = std::fs::File::from(file(nix::fcntl::OFlag::O_CREAT | nix::fcntl::OFlag::O_RDWR));
    f.write_all_at(b"deep", 0).unwrap();
    drop(f);
    nix::fcntl::renameat(dir.as_fd(), "f", dir.as_fd(), "g").unwrap();
    let st = nix::sys::stat::fstatat(dir.as_fd(), "g", nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
        .unwrap();
    assert_eq!(st.st_size, 4);
    // On the volume, by the same descent: the file is there; a file made there is seen here.
    let mut vdir = open_root(&fx.layout.vols[0]);
    for i in 0..200 {
        vdir = open_dir_at(&vdir, &name(i));
    }
    let g = nix::fcntl::openat(
        vdir.as_fd(),
        "g",
        nix::fcntl::OFlag::O_RDONLY,
        nix::sys::stat::Mode::empty(),
    )
    .unwrap();
    let mut buf = [0u8; 4];
    std::fs::File::from(g).read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"deep");
    let h = nix::fcntl::openat(
        vdir.as_fd(),
        "h",
        nix::fcntl::OFlag::O_CREAT | nix::fcntl::OFlag::O_WRONLY,
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    std::fs::File::from(h)
        .write_all_at(b"from the volume", 0)
        .unwrap();
    let listed: Vec<String> = nix::dir::Dir::openat(
        dir.as_fd(),
        ".",
        nix::fcntl::OFlag::O_RDONLY,
        nix::sys::stat::Mode::empty(),
    )
    .unwrap()
    .iter()
    .filter_map(|e| e.ok())
    .map(|e| e.file_name().to_string_lossy().into_owned())
    .filter(|n| n != "." && n != "..")
    .collect::<std::collections::BTreeSet<_>>()
    .into_iter()
    .collect();
    assert_eq!(listed, ["g", "h"]);
    let h = nix::fcntl::openat(
        dir.as_fd(),
        "h",
        nix::fcntl::OFlag::O_RDONLY,
        nix::sys::stat::Mode::empty(),
    )
    .unwrap();
    let mut buf = [0u8; 15];
    std::fs::File::from(h).read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"from the volume");
    nix::unistd::unlinkat(dir.as_fd(), "g", nix::unistd::UnlinkatFlags::NoRemoveDir).unwrap();
    nix::unistd::unlinkat(dir.as_fd(), "h", nix::unistd::UnlinkatFlags::NoRemoveDir).unwrap();
    assert!(
        nix::sys::stat::fstatat(vdir.as_fd(), "g", nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
            .is_err()
    );
}
