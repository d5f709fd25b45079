//! A volume is shared: other clients create, delete, rename and re-create files on it while we
//! serve it. These tests change the volume directly (as another client would) between operations
//! through the mount, and check that the mount never hands out another file's bytes and that
//! inode numbers mean one file.
mod common;

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
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
fn a_number_the_kernel_holds_is_never_given_to_another_file() {
    let fx = Fixture::new(1);
    // Each round: a file appears on the volume, the kernel looks it up and keeps holding it (an
    // O_PATH descriptor pins the kernel's inode without opening the file on the volume, and
    // survives cache drops by other tests), then the file is removed on the volume, whose inode
    // number the volume hands to the next file at once.
    let mut held: Vec<(fs::File, u64)> = Vec::new();
    let mut reused = 0;
    for i in 0..2000 {
        let name = format!("x{i}");
        fs::write(fx.vol(0, &name), b"x").unwrap();
        let fd = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH)
            .open(fx.path(&name))
            .unwrap();
        let ino = fd.metadata().unwrap().ino();
        assert!(
            held.iter().all(|(_, h)| *h != ino),
            "round {i}: inode number {ino} handed out again while the kernel holds it"
        );
        let backend_ino = fs::metadata(fx.vol(0, &name)).unwrap().ino();
        reused += held.iter().any(|(_, h)| *h == backend_ino) as u32;
        fs::remove_file(fx.vol(0, &name)).unwrap();
        held.push((fd, ino));
        if held.len() > 200 {
            held.remove(0);
        }
    }
    // The case is real only if the volume did reuse numbers of held files.
    assert!(
        reused > 100,
        "the volume reused a held file's number only {reused} times"
    );
}

const NOBODY: failoverfs::backend::Caller = failoverfs::backend::Caller {
    uid: 65534,
    gid: 65534,
    pid: 0,
    umask: None,
};

#[test]
fn create_meeting_an_existing_file_checks_the_callers_rights() {
    let fx = Fixture::new(1);
    // A racing creator outside the kernel made root's private file between the kernel's lookup
    // and its create: the create must not open it for `nobody`. That window cannot be timed
    // through the mount, so the CREATE the kernel would send goes to the logical volume
    // directly (the real one, over the real directory).
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
    let fx = Fixture::with(1, "allow_other = true", "");
    fs::create_dir(fx.vol(0, "pub")).unwrap();
    fs::set_permissions(
        fx.vol(0, "pub"),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .unwrap();
    // Through the mount, as `nobody`: create with 04755 and mkdir with 02750 (perl is in every
    // Debian base system).
    let dir = fx.path("pub");
    let (ok, err) = sh_as(
        65534,
        &format!(
            "perl -MFcntl -e 'sysopen(my $f, \"{d}/suid\", O_CREAT|O_WRONLY, 04755) or die $!; \
             mkdir(\"{d}/sub\", 02750) or die $!'",
            d = dir.display()
        ),
    );
    assert!(ok, "{err}");
    let md = fs::metadata(fx.vol(0, "pub/suid")).unwrap();
    assert_eq!((md.uid(), md.gid()), (65534, 65534));
    assert_eq!(
        md.mode() & 0o7777,
        0o4755,
        "the setuid bit is kept, as on ext4"
    );
    let md = fs::metadata(fx.vol(0, "pub/sub")).unwrap();
    assert_eq!((md.uid(), md.gid()), (65534, 65534));
    // Below the kernel's own check: the volume refuses `nobody` in root's 0755 directory even
    // when the request reaches it (a stale permission cache, a racing chmod).
    fs::create_dir(fx.vol(0, "closed")).unwrap();
    fs::set_permissions(
        fx.vol(0, "closed"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let vfs = fx.app().vfs();
    let closed = vfs
        .lookup(failoverfs::inode::ROOT, os("closed"))
        .unwrap()
        .ino;
    let e = vfs.mkdir(closed, os("x"), 0o755, NOBODY).unwrap_err();
    assert_eq!(e.errno(), libc::EACCES);
    assert!(!fx.vol(0, "closed/x").exists());
}

/// Replace `name` under `root` by a new file (temporary name, then rename), the way editors and
/// replication jobs write; the content says which file it is.
fn replace_file(root: &std::path::Path, name: &str, tag: &str) {
    let tmp = root.join(format!(".{tag}.tmp"));
    if fs::write(&tmp, format!("{name}|{tag}")).is_ok() {
        let _ = fs::rename(&tmp, root.join(name));
    }
}

#[test]
fn two_mounts_of_one_volume_see_each_other_and_never_mix_files() {
    let a = Fixture::new(1);
    // The second mount serves the first one's volume.
    let mut layout = common::Layout::new(1, "", "");
    let config = fs::read_to_string(&layout.config).unwrap().replace(
        &format!("\"{}\"", layout.vols[0].display()),
        &format!("\"{}\"", a.layout.vols[0].display()),
    );
    fs::write(&layout.config, config).unwrap();
    layout.vols[0] = a.layout.vols[0].clone();
    let b = Fixture::mount(layout);

    const NAMES: usize = 12;
    let work = |mnt: std::path::PathBuf, who: char| {
        move || {
            let mut seed = (who as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            let mut next = |n: usize| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed % n as u64) as usize
            };
            // Open files this mount holds: (the file's tag, the descriptor).
            let mut held: Vec<(String, fs::File)> = Vec::new();
            let mut problems = Vec::new();
            for step in 0..1500 {
                let name = format!("n{}", next(NAMES));
                match next(4) {
                    0 | 1 => replace_file(&mnt, &name, &format!("{who}{step}")),
                    2 => {
                        let _ = fs::remove_file(mnt.join(&name));
                    }
                    _ => {
                        if let Ok(f) = fs::File::open(mnt.join(&name)) {
                            let mut text = String::new();
                            let _ = std::io::Read::read_to_string(&mut &f, &mut text);
                            match text.split_once('|') {
                                Some((n, tag)) if n == name => {
                                    held.push((tag.to_string(), f));
                                    if held.len() > 6 {
                                        held.remove(0);
                                    }
                                }
                                // Files are never written in place: whatever was opened
                                // under a name must name that very name.
                                _ => problems.push(format!("{name} read {text:?}")),
                            }
                        }
                    }
                }
                // Files held open at once, different files, never share an inode number.
                let mut seen: HashMap<u64, &str> = HashMap::new();
                for (tag, f) in &held {
                    let ino = f.metadata().map(|m| m.ino()).unwrap_or(0);
                    if let Some(other) = seen.insert(ino, tag)
                        && other != tag
                    {
                        problems.push(format!("files {other} and {tag} share number {ino}"));
                    }
                }
            }
            replace_file(&mnt, &format!("done-{who}"), &format!("{who}-final"));
            problems
        }
    };
    let (pa, pb) = std::thread::scope(|s| {
        let ta = s.spawn(work(a.layout.mnt.clone(), 'a'));
        let tb = s.spawn(work(b.layout.mnt.clone(), 'b'));
        (ta.join().unwrap(), tb.join().unwrap())
    });
    assert!(pa.is_empty() && pb.is_empty(), "{pa:#?}\n{pb:#?}");
    // Each mount sees what the other wrote, within the TTLs; both agree with the volume.
    for (mnt, other) in [(&a.layout.mnt, 'b'), (&b.layout.mnt, 'a')] {
        let done = format!("done-{other}");
        wait_until(
            Duration::from_secs(10),
            "the other mount's last file",
            || fs::read_to_string(mnt.join(&done)).ok() == Some(format!("{done}|{other}-final")),
        );
    }
    wait_until(
        Duration::from_secs(10),
        "both mounts agree with the volume",
        || {
            (0..NAMES).all(|i| {
                let name = format!("n{i}");
                let v = fs::read_to_string(a.vol(0, &name)).ok();
                v == fs::read_to_string(a.path(&name)).ok()
                    && v == fs::read_to_string(b.path(&name)).ok()
            })
        },
    );
}

/// `openat`-style calls through a directory descriptor held on the mount.
mod at {
    use std::ffi::CString;
    use std::os::fd::{AsRawFd, OwnedFd};

    pub fn create(dir: &OwnedFd, name: &str, data: &[u8]) -> std::io::Result<()> {
        let fd = nix::fcntl::openat(
            dir,
            name,
            nix::fcntl::OFlag::O_CREAT | nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_EXCL,
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )?;
        nix::unistd::write(&fd, data)?;
        Ok(())
    }

    pub fn unlink(dir: &OwnedFd, name: &str) -> std::io::Result<()> {
        let name = CString::new(name).unwrap();
        // SAFETY: a valid descriptor and a NUL-terminated name.
        let rc = unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    pub fn open_dir(path: &std::path::Path) -> OwnedFd {
        nix::fcntl::open(
            path,
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY,
            nix::sys::stat::Mode::empty(),
        )
        .unwrap()
    }
}

#[test]
fn operations_in_a_directory_follow_it_when_another_client_moves_it() {
    let fx = Fixture::new(1);
    fs::create_dir_all(fx.vol(0, "P/D")).unwrap();
    fs::create_dir(fx.vol(0, "Q")).unwrap();
    let d = at::open_dir(&fx.path("P/D"));
    // Another client moves the directory (and so everything a path through P/D would name).
    fs::rename(fx.vol(0, "P/D"), fx.vol(0, "Q/D")).unwrap();
    // Through the descriptor: the directory the application holds, wherever it is now.
    at::create(&d, "x", b"made after the move").unwrap();
    assert_eq!(
        fs::read(fx.vol(0, "Q/D/x")).unwrap(),
        b"made after the move"
    );
    assert!(!fx.vol(0, "P/D").exists());
    nix::sys::stat::mkdirat(&d, "sub", nix::sys::stat::Mode::from_bits_truncate(0o755)).unwrap();
    assert!(fx.vol(0, "Q/D/sub").is_dir());
    at::unlink(&d, "x").unwrap();
    assert!(!fx.vol(0, "Q/D/x").exists());
}

#[test]
fn an_exchange_by_another_client_never_redirects_an_unlink() {
    let fx = Fixture::new(1);
    for (dir, data) in [("A", "in A"), ("B", "in B")] {
        fs::create_dir(fx.vol(0, dir)).unwrap();
        fs::write(fx.vol(0, &format!("{dir}/f")), data).unwrap();
    }
    let a = at::open_dir(&fx.path("A"));
    assert_eq!(fs::read(fx.path("A/f")).unwrap(), b"in A");
    // Another client swaps the two directories.
    nix::fcntl::renameat2(
        nix::fcntl::AT_FDCWD,
        &fx.vol(0, "A"),
        nix::fcntl::AT_FDCWD,
        &fx.vol(0, "B"),
        nix::fcntl::RenameFlags::RENAME_EXCHANGE,
    )
    .unwrap();
    // The application removes `f` in the directory it holds: the one first named A, now at B.
    at::unlink(&a, "f").unwrap();
    assert!(
        !fx.vol(0, "B/f").exists(),
        "the held directory's file is gone"
    );
    assert_eq!(
        fs::read(fx.vol(0, "A/f")).unwrap(),
        b"in B",
        "the other directory's file is untouched"
    );
}

/// Pages of `file` (its first `len` bytes) in the kernel's page cache.
fn resident_pages(file: &fs::File, len: usize) -> usize {
    use std::os::fd::AsRawFd;
    let page = 4096;
    let pages = len.div_ceil(page);
    // SAFETY: a fresh read-only shared mapping of an open file, unmapped below; mincore writes
    // one byte per page into `vec`, which has one per page.
    unsafe {
        let addr = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        );
        assert_ne!(addr, libc::MAP_FAILED, "mmap: {}", last_errno());
        let mut vec = vec![0u8; pages];
        let rc = libc::mincore(addr, len, vec.as_mut_ptr());
        let errno = last_errno();
        libc::munmap(addr, len);
        assert_eq!(rc, 0, "mincore: {errno}");
        vec.iter().filter(|b| **b & 1 != 0).count()
    }
}

/// The bytes of `path`, read the way `cat` does: no `stat` of the open file, which would
/// refresh its attributes and so let the kernel see a change by itself.
fn read_plain(path: &std::path::Path) -> Vec<u8> {
    let mut f = fs::File::open(path).unwrap();
    let (mut out, mut buf) = (Vec::new(), [0u8; 16384]);
    loop {
        match std::io::Read::read(&mut f, &mut buf).unwrap() {
            0 => return out,
            n => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Wait until `path` was last changed long enough ago to count as settled.
fn wait_settled(path: &std::path::Path) {
    let settle = failoverfs::namespace::SETTLE_TIME + Duration::from_millis(200);
    wait_until(Duration::from_secs(30), "the file settles", || {
        let m = fs::metadata(path).unwrap();
        let changed = std::time::UNIX_EPOCH
            + Duration::new(m.ctime() as u64, m.ctime_nsec() as u32)
                .max(Duration::new(m.mtime() as u64, m.mtime_nsec() as u32));
        changed.elapsed().is_ok_and(|age| age >= settle)
    });
}

#[test]
fn cached_pages_are_kept_across_opens_only_while_the_file_is_unchanged() {
    const LEN: usize = 64 * 1024;
    let fx = Fixture::new(1);
    let (vol, mnt) = (fx.vol(0, "f"), fx.path("f"));
    fs::write(&vol, pattern(LEN, 1)).unwrap();
    wait_settled(&vol);
    assert!(read_plain(&mnt) == pattern(LEN, 1), "first read");
    // Unchanged and settled: the next open keeps what the first one cached.
    let f = fs::File::open(&mnt).unwrap();
    assert_eq!(resident_pages(&f, LEN), LEN / 4096, "pages kept");
    drop(f);

    // Another client rewrites it in place: same size, same inode. The next open reads the new
    // bytes at once (no waiting for the attribute TTL).
    let mut w = fs::OpenOptions::new().write(true).open(&vol).unwrap();
    std::io::Write::write_all(&mut w, &pattern(LEN, 2)).unwrap();
    drop(w);
    assert!(
        read_plain(&mnt) == pattern(LEN, 2),
        "stale bytes after the rewrite"
    );

    // Just changed, so not settled: the next open drops what the kernel cached (a change
    // within the same timestamp tick would not show).
    let f = fs::File::open(&mnt).unwrap();
    assert_eq!(
        resident_pages(&f, LEN),
        0,
        "pages of an unsettled file dropped"
    );
    drop(f);
    assert!(read_plain(&mnt) == pattern(LEN, 2), "last read");
}

#[test]
fn a_cached_listing_is_kept_only_while_the_directory_is_unchanged() {
    // No attribute caching: every look at an entry is a lookup the daemon sees.
    let fx = Fixture::with(1, "attr_ttl = \"0s\"\nentry_ttl = \"0s\"\n", "");
    let dir = fx.vol(0, "d");
    for d in ["d", "e", "g"] {
        fs::create_dir(fx.vol(0, d)).unwrap();
        for i in 0..10 {
            fs::write(fx.vol(0, &format!("{d}/f{i}")), b"x").unwrap();
        }
    }
    // The last one made.
    wait_settled(&fx.vol(0, "g"));
    let names = |d: &str| -> std::collections::BTreeSet<String> {
        fs::read_dir(fx.path(d))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect()
    };
    // Requests the daemon answered; a worker counts its request just after answering it.
    let listings = || -> u64 {
        let ops = fx.app().deadlines().op_summaries();
        ops.iter()
            .filter(|s| s.op.starts_with("readdir"))
            .map(|s| s.count)
            .sum()
    };
    let counted = |n: u64| {
        wait_until(Duration::from_secs(10), "requests counted", || {
            listings() >= n
        })
    };
    // A first listing is two requests: the names, and the end.
    assert_eq!(names("d").len(), 10);
    counted(2);
    let asked = listings();
    // Unchanged and settled: the kernel answers the next listings from its cache.
    assert_eq!(names("d").len(), 10);
    assert_eq!(names("d").len(), 10);
    // Requests answered before those of another directory's first listing are counted by then.
    assert_eq!(names("e").len(), 10);
    counted(asked + 2);
    assert_eq!(
        listings(),
        asked + 2,
        "a listing of an unchanged directory asked the daemon"
    );

    // A listing that looks at each entry as it goes (`ls -l`): the first is still answered from
    // the cache (one lookup per entry follows); the next is asked for again, so the entries come
    // with their attributes in one request instead of a lookup each.
    let with_stats = |d: &str| {
        for e in fs::read_dir(fx.path(d)).unwrap() {
            e.unwrap().metadata().unwrap();
        }
    };
    with_stats("e");
    assert_eq!(names("g").len(), 10);
    counted(asked + 4);
    assert_eq!(
        listings(),
        asked + 4,
        "a listing of an unchanged directory asked the daemon"
    );
    with_stats("e");
    counted(asked + 5);

    // Another client adds a name and puts the directory's modification time back, so only its
    // change time tells: the next listing has the name.
    let modified = fs::metadata(&dir).unwrap().modified().unwrap();
    fs::write(dir.join("new"), b"y").unwrap();
    fs::File::open(&dir)
        .unwrap()
        .set_times(fs::FileTimes::new().set_modified(modified))
        .unwrap();
    assert_eq!(fs::metadata(&dir).unwrap().modified().unwrap(), modified);
    let now = names("d");
    assert!(now.contains("new"), "stale listing: {} names", now.len());
}

#[test]
fn a_create_in_a_directory_removed_on_the_volume_has_the_volume_probed() {
    // Long TTLs: the kernel keeps `d` and sends the create to the daemon.
    let fx = Fixture::with(1, "entry_ttl = \"1h\"\nattr_ttl = \"1h\"\n", "");
    fs::create_dir(fx.path("d")).unwrap();
    assert!(fs::metadata(fx.path("d")).unwrap().is_dir());
    let before = fx.app().vfs().alarms_total();
    fs::remove_dir(fx.vol(0, "d")).unwrap();
    let e = fs::write(fx.path("d/x"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
    // A directory the kernel knows is gone: the volume may be going (an `rm -rf` of its root
    // starts with the children), so it is probed at once.
    assert!(fx.app().vfs().alarms_total() > before);
}
