//! Nothing under the mount reaches outside the volume root through the daemon.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;

use common::*;
use failoverfs::backend::{Caller, SetAttr};
use failoverfs::inode::ROOT;

#[test]
fn symlink_to_etc_is_returned_as_a_symlink() {
    let fx = Fixture::new(1);
    // Made behind the daemon's back, directly in the volume.
    std::os::unix::fs::symlink("/etc", fx.vol(0, "etc")).unwrap();
    let md = fs::symlink_metadata(fx.path("etc")).unwrap();
    assert!(md.file_type().is_symlink());
    assert_eq!(
        fs::read_link(fx.path("etc")).unwrap().to_str(),
        Some("/etc")
    );
    // The daemon described the link itself, never /etc: a symlink's size is its target's
    // length, and its mode is the link's.
    assert_eq!(md.len(), "/etc".len() as u64);
    assert_eq!(md.mode() & 0o777, 0o777);
    assert_ne!(md.ino(), fs::symlink_metadata("/etc").unwrap().ino());
}

#[test]
fn directory_swapped_for_a_symlink_is_refused() {
    // What the kernel sends through the entries it caches for `sub` and `sub/secret` after `sub`
    // was swapped for a symlink behind its back, sent to the daemon directly: through the mount
    // the kernel would (rightly) look `sub` up again on ESTALE and follow the symlink itself,
    // like any symlink on any filesystem, which would hide what the daemon did.
    for pinned in [true, false] {
        let fx = Fixture::new(1);
        let vfs = fx.app().vfs();
        if !pinned {
            // Directories named by path from the root, resolved with no symlink allowed.
            vfs.inodes().set_pin_limit(0);
        }
        let outside = fx.layout.dir.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("secret"), b"top secret").unwrap();
        fs::create_dir(fx.vol(0, "sub")).unwrap();
        fs::write(fx.vol(0, "sub/secret"), b"inside").unwrap();
        let sub = vfs.lookup(ROOT, os("sub")).unwrap().ino;
        let secret = vfs.lookup(sub, os("secret")).unwrap().ino;
        assert_eq!(vfs.inodes().pins(), usize::from(pinned));
        fs::remove_file(fx.vol(0, "sub/secret")).unwrap();
        fs::remove_dir(fx.vol(0, "sub")).unwrap();
        std::os::unix::fs::symlink(&outside, fx.vol(0, "sub")).unwrap();
        // A pinned `sub` is the removed directory (ENOENT, ESTALE); by path, the symlink is
        // refused (ELOOP, ENOTDIR). Never the outside file.
        let refused = |r: Result<(), failoverfs::error::Error>, what: &str| {
            let e = r.expect_err(what);
            assert!(
                matches!(
                    e.errno(),
                    libc::ELOOP | libc::ENOTDIR | libc::ENOENT | libc::ESTALE
                ),
                "{what} (pinned: {pinned}): {e}"
            );
        };
        refused(vfs.lookup(sub, os("secret")).map(drop), "lookup");
        refused(
            vfs.open(secret, libc::O_RDWR, Caller::ROOT).map(drop),
            "open",
        );
        refused(
            vfs.create(sub, os("new"), 0o644, libc::O_RDWR, Caller::ROOT)
                .map(drop),
            "create",
        );
        let chmod = SetAttr {
            mode: Some(0o777),
            ..SetAttr::default()
        };
        refused(vfs.setattr(secret, None, &chmod).map(drop), "chmod");
        refused(vfs.unlink(sub, os("secret")), "unlink");
        refused(vfs.getxattr(secret, os("user.x")).map(drop), "getxattr");
        assert!(!outside.join("new").exists(), "created outside the volume");
        let md = fs::metadata(outside.join("secret")).unwrap();
        assert_ne!(md.mode() & 0o777, 0o777, "changed outside the volume");
        assert_eq!(fs::read(outside.join("secret")).unwrap(), b"top secret");
    }
}

#[test]
fn dotdot_at_the_root_and_renames_out_stay_inside() {
    let fx = Fixture::new(1);
    fs::write(fx.path("f"), b"x").unwrap();
    // `..` of the mount root is the mount point's parent: the kernel resolves it, never the daemon.
    let up = fx.path("..");
    assert_eq!(
        fs::metadata(&up).unwrap().ino(),
        fs::metadata(fx.layout.dir.path()).unwrap().ino()
    );
    // A symlink with `..` components is stored verbatim and resolved by the kernel only.
    std::os::unix::fs::symlink("../../../../etc/passwd", fx.path("up")).unwrap();
    assert_eq!(
        fs::read_link(fx.vol(0, "up")).unwrap().to_str(),
        Some("../../../../etc/passwd")
    );
    // Renames and links out of the mount cross a filesystem boundary.
    let target = fx.layout.dir.path().join("escaped");
    let e = fs::rename(fx.path("f"), &target).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EXDEV));
    let e = fs::hard_link(fx.path("f"), &target).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EXDEV));
    assert!(!target.exists());
}
