//! Nothing under the mount reaches outside the volume root through the daemon.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use common::*;

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
    // Long cache lifetimes: the kernel keeps trusting its dentry for `sub` (a directory) and
    // sends every operation below straight to the daemon, which must do the resolving. (With
    // short ones the kernel would look `sub` up again, see a symlink, and follow it itself, like
    // any symlink on any filesystem.)
    let fx = Fixture::with(1, "attr_ttl = \"1h\"\nentry_ttl = \"1h\"", "");
    let outside = fx.layout.dir.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("secret"), b"top secret").unwrap();
    fs::create_dir(fx.path("sub")).unwrap();
    fs::write(fx.path("sub/secret"), b"inside").unwrap();
    // Creating `secret` made the kernel drop `sub`'s attributes; cache them again.
    assert!(fs::metadata(fx.path("sub")).unwrap().is_dir());
    assert_eq!(fs::read(fx.path("sub/secret")).unwrap(), b"inside");
    // The kernel now caches `sub` as a directory. Swap it for a symlink behind our back.
    fs::remove_file(fx.vol(0, "sub/secret")).unwrap();
    fs::remove_dir(fx.vol(0, "sub")).unwrap();
    std::os::unix::fs::symlink(&outside, fx.vol(0, "sub")).unwrap();
    // Through the cached dentry, the daemon resolves `sub/secret` beneath the root with no
    // symlink allowed: the outside file is never read, written, created or changed.
    let refused = |r: std::io::Result<()>, what: &str| {
        let e = r.expect_err(what);
        assert!(
            matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR)),
            "{what}: {e}"
        );
    };
    refused(
        fs::read(fx.path("sub/secret")).map(drop),
        "read through the swapped symlink",
    );
    refused(
        fs::write(fx.path("sub/new"), b"x"),
        "create through the swapped symlink",
    );
    assert!(
        !outside.join("new").exists(),
        "created a file outside the volume"
    );
    refused(
        fs::set_permissions(fx.path("sub/secret"), fs::Permissions::from_mode(0o777)),
        "chmod through the swapped symlink",
    );
    assert_ne!(
        fs::metadata(outside.join("secret")).unwrap().mode() & 0o777,
        0o777,
        "changed a file outside the volume"
    );
    refused(
        fs::remove_file(fx.path("sub/secret")),
        "unlink through the swapped symlink",
    );
    assert_eq!(fs::read(outside.join("secret")).unwrap(), b"top secret");
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
