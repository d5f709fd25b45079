//! A root daemon on a shared node: what another user (`nobody`) can and cannot make it do, and
//! permissions exactly as the volume's own filesystem gives them (POSIX ACLs, umask, default
//! ACLs). Real mounts with `allow_other`; `nobody` acts through `sh -c` run as uid 65534.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Fixture, Layout, sh_as, wait_until};

const NOBODY: u32 = 65534;

/// Long kernel caches: the cases below are about what the kernel still believes about a name
/// that changed on the volume, so the belief must outlast a busy machine's delays.
const LONG_TTL: &str = "allow_other = true\nattr_ttl = \"60s\"\nentry_ttl = \"60s\"";

/// A mount `nobody` can reach (the test directory is made traversable).
fn shared_fixture(mount_extra: &str) -> Fixture {
    let layout = Layout::new(1, mount_extra, "");
    fs::set_permissions(layout.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&layout.vols[0], fs::Permissions::from_mode(0o777)).unwrap();
    Fixture::mount(layout)
}

/// Replace `path` on the volume by a new file of root's with mode 0600 (temporary name, then
/// rename), the way editors and package managers replace files.
fn replace_with_roots_private(path: &Path, body: &[u8]) {
    let tmp = path.with_extension("new");
    fs::write(&tmp, body).unwrap();
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600)).unwrap();
    fs::rename(&tmp, path).unwrap();
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn a_truncating_open_through_a_replaced_name_never_truncates_roots_file() {
    let fx = shared_fixture(LONG_TTL);
    let p = fx.path("p");
    // nobody's own file, known to the kernel with nobody's attributes.
    let (ok, err) = sh_as(NOBODY, &format!("echo mine > {0} && cat {0}", p.display()));
    assert!(ok, "{err}");
    for round in 0..5 {
        replace_with_roots_private(&fx.vol(0, "p"), b"root's secret\n");
        // Within the kernel's entry and attribute lifetimes: it still believes `p` is nobody's.
        let (ok, _) = sh_as(NOBODY, &format!(": > {}", p.display()));
        assert!(!ok, "round {round}: nobody truncated a file of root's");
        assert_eq!(
            fs::read(fx.vol(0, "p")).unwrap(),
            b"root's secret\n",
            "round {round}: root's file was changed"
        );
        // Hand the name back to nobody for the next round.
        fs::remove_file(fx.vol(0, "p")).unwrap();
        let (ok, err) = sh_as(NOBODY, &format!("echo mine > {0} && cat {0}", p.display()));
        assert!(ok, "round {round}: {err}");
    }
}

#[test]
fn a_change_through_a_replaced_name_lands_on_no_other_file() {
    let fx = shared_fixture(LONG_TTL);
    let p = fx.path("q");
    let (ok, err) = sh_as(
        NOBODY,
        &format!("echo mine > {0} && stat {0} >/dev/null", p.display()),
    );
    assert!(ok, "{err}");
    replace_with_roots_private(&fx.vol(0, "q"), b"root's\n");
    // truncate(2), chmod and a user xattr by nobody through the stale name: none may reach
    // root's file.
    let _ = sh_as(NOBODY, &format!("truncate -s 0 {}", p.display()));
    let _ = sh_as(NOBODY, &format!("chmod 0666 {}", p.display()));
    let md = fs::metadata(fx.vol(0, "q")).unwrap();
    assert_eq!(md.mode() & 0o7777, 0o600, "root's file mode changed");
    assert_eq!(md.uid(), 0);
    assert_eq!(fs::read(fx.vol(0, "q")).unwrap(), b"root's\n");
}

#[test]
fn a_name_recreated_beside_a_hard_link_never_serves_the_links_file() {
    let fx = shared_fixture(LONG_TTL);
    fs::write(fx.vol(0, "y"), b"y's bytes\n").unwrap();
    fs::hard_link(fx.vol(0, "y"), fx.vol(0, "x")).unwrap();
    for round in 0..5 {
        // Both names known to the kernel, as one node.
        let (a, b) = (
            fs::metadata(fx.path("x")).unwrap(),
            fs::metadata(fx.path("y")).unwrap(),
        );
        assert_eq!(a.ino(), b.ino(), "round {round}: one file, one number");
        // On the volume: x removed and made anew as another file.
        fs::remove_file(fx.vol(0, "x")).unwrap();
        fs::write(fx.vol(0, "x"), format!("new x {round}\n")).unwrap();
        assert_eq!(
            fs::read_to_string(fx.path("x")).unwrap(),
            format!("new x {round}\n"),
            "round {round}: x read y's bytes"
        );
        assert!(
            fx.app().vfs().stale_answers_total() > 0,
            "round {round}: the kernel was sent back to look x up (ESTALE, counted)"
        );
        fs::write(fx.path("x"), b"written to x\n").unwrap();
        assert_eq!(fs::read(fx.vol(0, "x")).unwrap(), b"written to x\n");
        assert_eq!(
            fs::read(fx.vol(0, "y")).unwrap(),
            b"y's bytes\n",
            "round {round}: a write to x landed on y"
        );
        // Link them again for the next round.
        fs::remove_file(fx.vol(0, "x")).unwrap();
        fs::hard_link(fx.vol(0, "y"), fx.vol(0, "x")).unwrap();
        wait_until(Duration::from_secs(30), "x is y again", || {
            fs::read(fx.path("x")).is_ok_and(|b| b == b"y's bytes\n")
        });
    }
}

#[test]
fn posix_acls_are_enforced_as_on_the_volume() {
    if !have("setfacl") {
        panic!("setfacl is missing: .ci/install-test-tools installs the acl package");
    }
    let fx = shared_fixture("allow_other = true");
    let acl = |args: &str, rel: &str| {
        let out = Command::new("setfacl")
            .args(args.split(' '))
            .arg(fx.vol(0, rel))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "setfacl {args} {rel}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // A file the mode lets nobody read, its ACL does not.
    fs::write(fx.vol(0, "denied"), b"no\n").unwrap();
    fs::set_permissions(fx.vol(0, "denied"), fs::Permissions::from_mode(0o644)).unwrap();
    acl("-m u:nobody:---", "denied");
    // A 0600 file of root's that the ACL lets nobody read and write.
    fs::write(fx.vol(0, "granted"), b"yes\n").unwrap();
    fs::set_permissions(fx.vol(0, "granted"), fs::Permissions::from_mode(0o600)).unwrap();
    acl("-m u:nobody:rw", "granted");
    // A 0700 directory of root's that the ACL opens to nobody.
    fs::create_dir(fx.vol(0, "d")).unwrap();
    fs::set_permissions(fx.vol(0, "d"), fs::Permissions::from_mode(0o700)).unwrap();
    acl("-m u:nobody:rwx", "d");

    let (ok, _) = sh_as(NOBODY, &format!("cat {}", fx.path("denied").display()));
    assert!(!ok, "the ACL denies nobody, as on the volume");
    let (ok, err) = sh_as(
        NOBODY,
        &format!("cat {0} && echo more >> {0}", fx.path("granted").display()),
    );
    assert!(ok, "the ACL grants nobody read and write: {err}");
    assert_eq!(fs::read(fx.vol(0, "granted")).unwrap(), b"yes\nmore\n");
    let (ok, err) = sh_as(
        NOBODY,
        &format!("ls {0} && touch {0}/mine", fx.path("d").display()),
    );
    assert!(ok, "the ACL opens the directory to nobody: {err}");
    assert_eq!(fs::metadata(fx.vol(0, "d/mine")).unwrap().uid(), NOBODY);
}

#[test]
fn new_files_get_the_umask_or_the_default_acl_as_on_the_volume() {
    if !have("setfacl") {
        panic!("setfacl is missing: .ci/install-test-tools installs the acl package");
    }
    let fx = shared_fixture("allow_other = true");
    fs::create_dir(fx.vol(0, "plain")).unwrap();
    fs::create_dir(fx.vol(0, "inherit")).unwrap();
    for d in ["plain", "inherit"] {
        fs::set_permissions(fx.vol(0, d), fs::Permissions::from_mode(0o777)).unwrap();
    }
    let out = Command::new("setfacl")
        .args(["-d", "-m", "u::rwx,g::rwx,o::rwx,u:nobody:rwx,m::rwx"])
        .arg(fx.vol(0, "inherit"))
        .output()
        .unwrap();
    assert!(out.status.success());
    // The same creations by nobody through the mount and directly on the volume.
    let make = |root: &Path, tag: &str| {
        let (ok, err) = sh_as(
            NOBODY,
            &format!(
                "umask 027 && cd {r} && touch plain/{t}f inherit/{t}f && mkdir plain/{t}d inherit/{t}d",
                r = root.display(),
                t = tag
            ),
        );
        assert!(ok, "{err}");
    };
    make(&fx.layout.mnt, "m");
    make(&fx.layout.vols[0], "v");
    for rel in ["plain/", "inherit/"] {
        for kind in ["f", "d"] {
            let through = fs::metadata(fx.vol(0, &format!("{rel}m{kind}"))).unwrap();
            let direct = fs::metadata(fx.vol(0, &format!("{rel}v{kind}"))).unwrap();
            assert_eq!(
                through.mode(),
                direct.mode(),
                "{rel}{kind}: mode {:o} through the mount, {:o} on the volume",
                through.mode(),
                direct.mode()
            );
            let acl = |p: &Path| {
                let out = Command::new("getfacl")
                    .args(["-c", "-n"])
                    .arg(p)
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&out.stdout).into_owned()
            };
            assert_eq!(
                acl(&fx.vol(0, &format!("{rel}m{kind}"))),
                acl(&fx.vol(0, &format!("{rel}v{kind}"))),
                "{rel}{kind}: ACLs differ"
            );
        }
    }
    // The plain directory applied the umask (027): 0640 and 0750.
    assert_eq!(
        fs::metadata(fx.vol(0, "plain/mf")).unwrap().mode() & 0o777,
        0o640
    );
}

#[test]
fn the_daemons_own_files_are_private_and_untrusted_directories_are_refused() {
    // State file and admin socket in a directory the daemon makes.
    let layout = Layout::new(2, "", "");
    let private = layout.dir.path().join("run/deep");
    let config = fs::read_to_string(&layout.config).unwrap();
    let config = config
        .replace(
            &format!("\"{}\"", layout.dir.path().join("state.json").display()),
            &format!("\"{}\"", private.join("m.state").display()),
        )
        .replace(
            &format!("\"{}\"", layout.dir.path().join("admin.sock").display()),
            &format!("\"{}\"", private.join("admin.sock").display()),
        );
    fs::write(&layout.config, &config).unwrap();
    let cfg = layout.config.clone();
    let fx = Fixture::mount(layout);
    let mode = |p: &Path| fs::symlink_metadata(p).unwrap().mode() & 0o7777;
    assert_eq!(mode(&private) & 0o022, 0, "{:o}", mode(&private));
    assert_eq!(mode(&private.join("admin.sock")), 0o600);
    common::switch_to(&cfg, "v1");
    wait_until(Duration::from_secs(30), "the state file", || {
        private.join("m.state").exists()
    });
    assert_eq!(mode(&private.join("m.state")), 0o600);
    assert_eq!(
        fs::read_dir(&private).unwrap().count(),
        2,
        "nothing but the socket and the state file"
    );
    drop(fx);

    // An existing directory anyone can write: the start is refused, naming the key.
    let layout = Layout::new(1, "", "");
    let open = layout.dir.path().join("open");
    fs::create_dir(&open).unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
    let config = fs::read_to_string(&layout.config).unwrap().replace(
        &format!("\"{}\"", layout.dir.path().join("state.json").display()),
        &format!("\"{}\"", open.join("m.state").display()),
    );
    fs::write(&layout.config, config).unwrap();
    let settings = failoverfs::config::load_and_prepare(
        &layout.config,
        &failoverfs::config::Overrides::default(),
    )
    .unwrap();
    let e = match failoverfs::app::App::start(&settings) {
        Ok(app) => {
            app.shutdown();
            panic!("a state file in a world-writable directory was accepted");
        }
        Err(e) => e,
    };
    assert_eq!(e.exit, failoverfs::exit::Exit::Usage);
    let msg = e.to_string();
    assert!(
        msg.contains("mount.state_file") && msg.contains(&open.display().to_string()),
        "{msg}"
    );
    assert!(!common::is_mounted(&layout.mnt));
}

/// A listener run as `nobody` on a Unix socket; killed when dropped.
struct NobodyListener(std::process::Child);

impl Drop for NobodyListener {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_admin_commands_send_nothing_to_a_socket_another_user_serves() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let socket = dir.path().join("planted.sock");
    let got = dir.path().join("got");
    let script = format!(
        "import socket\ns=socket.socket(socket.AF_UNIX)\ns.bind({sock:?})\ns.listen(1)\n\
         c,_=s.accept()\nopen({got:?},'wb').write(c.recv(4096))\n\
         c.sendall(b'HTTP/1.1 200 OK\\r\\ncontent-length: 2\\r\\n\\r\\n{{}}')\n",
        sock = socket.display().to_string(),
        got = got.display().to_string()
    );
    let _listener = NobodyListener(
        Command::new("python3")
            .arg("-c")
            .arg(script)
            .uid(NOBODY)
            .gid(NOBODY)
            .spawn()
            .unwrap(),
    );
    wait_until(Duration::from_secs(30), "nobody's listener", || {
        socket.exists()
    });
    let out = common::bin()
        .args(["status", "--socket"])
        .arg(&socket)
        .env("FAILOVERFS_ADMIN__TOKEN", "secret")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("uid 65534"), "{err}");
    // Nothing was sent: the listener wrote no request.
    assert!(fs::read(&got).map_or(true, |b| b.is_empty()));
}

/// A bind mount of `from` at `to`, detached when dropped.
struct Bind(std::path::PathBuf);

impl Bind {
    fn new(from: &Path, to: &Path) -> Bind {
        fs::create_dir_all(to).unwrap();
        nix::mount::mount(
            Some(from),
            to,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .expect("bind mount");
        Bind(to.to_path_buf())
    }
}

impl Drop for Bind {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Load `config` (text) from a file in `dir`; the refusal's key and message.
fn refused(dir: &Path, config: &str) -> (String, String) {
    let file = dir.join("c.toml");
    fs::write(&file, config).unwrap();
    match failoverfs::config::load_and_prepare(&file, &failoverfs::config::Overrides::default()) {
        Ok(_) => panic!("accepted:\n{config}"),
        Err(e) => (e.key, e.message),
    }
}

fn two_volumes(mnt: &Path, a: &Path, b: &Path, state: &Path) -> String {
    format!(
        "[mount]\npath = \"{}\"\nstate_file = \"{}\"\n\n\
         [[volumes]]\nname = \"a\"\nbackend = {{ kind = \"dir\", path = \"{}\" }}\n\n\
         [[volumes]]\nname = \"b\"\nbackend = {{ kind = \"dir\", path = \"{}\" }}\n",
        mnt.display(),
        state.display(),
        a.display(),
        b.display()
    )
}

#[test]
fn configurations_are_checked_by_identity_not_by_spelling() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    for sub in ["a", "b", "mnt", "st"] {
        fs::create_dir(d.join(sub)).unwrap();
    }
    let state = d.join("st/m.state");
    // Two volume roots that are one directory through a bind mount.
    let _bind = Bind::new(&d.join("a"), &d.join("a-again"));
    let (key, msg) = refused(
        d,
        &two_volumes(&d.join("mnt"), &d.join("a"), &d.join("a-again"), &state),
    );
    assert_eq!(key, "volumes[1].backend.path", "{msg}");
    assert!(msg.contains("same directory"), "{msg}");
    // A mount point that is a symlink into a volume.
    std::os::unix::fs::symlink(d.join("a"), d.join("mnt-link")).unwrap();
    let (key, msg) = refused(
        d,
        &two_volumes(&d.join("mnt-link"), &d.join("a"), &d.join("b"), &state),
    );
    assert_eq!(key, "mount.path", "{msg}");
    assert!(msg.contains("symlink"), "{msg}");
    // A mount point inside a volume reached through a bind mount of it.
    let _bind_b = Bind::new(&d.join("b"), &d.join("b-view"));
    fs::create_dir(d.join("b/inner")).unwrap();
    let (key, msg) = refused(
        d,
        &two_volumes(&d.join("b-view/inner"), &d.join("a"), &d.join("b"), &state),
    );
    assert_eq!(key, "volumes[1].backend.path", "{msg}");
    assert!(msg.contains("contains the mount point"), "{msg}");
    // A state file whose directory is a symlink into the mount point.
    std::os::unix::fs::symlink(d.join("mnt"), d.join("st-link")).unwrap();
    let (key, msg) = refused(
        d,
        &two_volumes(
            &d.join("mnt"),
            &d.join("a"),
            &d.join("b"),
            &d.join("st-link/m.state"),
        ),
    );
    assert_eq!(key, "mount.state_file", "{msg}");
    assert!(msg.contains("inside the mount point"), "{msg}");
}

#[test]
fn set_id_bits_the_volume_drops_on_a_write_show_through_the_mount() {
    let fx = shared_fixture(LONG_TTL);
    fs::create_dir(fx.vol(0, "s")).unwrap();
    fs::set_permissions(fx.vol(0, "s"), fs::Permissions::from_mode(0o777)).unwrap();
    for (name, script) in [
        ("write", "printf x >> F"),
        ("fallocate", "fallocate -l 65536 F"),
    ] {
        let f = fx.path(&format!("s/{name}"));
        fs::write(&f, b"data").unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o6666)).unwrap();
        // The kernel caches the set-ID mode (a 60 s attribute lifetime).
        assert_eq!(fs::metadata(&f).unwrap().mode() & 0o7777, 0o6666);
        let (ok, err) = sh_as(NOBODY, &script.replace('F', &f.display().to_string()));
        assert!(ok, "{name}: {err}");
        let on_volume = fs::metadata(fx.vol(0, &format!("s/{name}")))
            .unwrap()
            .mode()
            & 0o7777;
        assert_ne!(on_volume, 0o6666, "{name}: the volume dropped nothing");
        wait_until(
            Duration::from_secs(20),
            &format!("{name}: the mount shows the volume's mode {on_volume:o}"),
            || fs::metadata(&f).unwrap().mode() & 0o7777 == on_volume,
        );
    }
}

#[test]
fn an_admin_socket_in_a_directory_others_can_write_is_refused() {
    let layout = Layout::new(1, "", "");
    let open = layout.dir.path().join("open");
    fs::create_dir(&open).unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
    let config = fs::read_to_string(&layout.config).unwrap().replace(
        &format!("\"{}\"", layout.dir.path().join("admin.sock").display()),
        &format!("\"{}\"", open.join("admin.sock").display()),
    );
    fs::write(&layout.config, config).unwrap();
    let settings = failoverfs::config::load_and_prepare(
        &layout.config,
        &failoverfs::config::Overrides::default(),
    )
    .unwrap();
    let e = match failoverfs::app::App::start(&settings) {
        Ok(app) => {
            app.shutdown();
            panic!("an admin socket in a world-writable directory was accepted");
        }
        Err(e) => e,
    };
    assert_eq!(e.exit, failoverfs::exit::Exit::Usage);
    let msg = e.to_string();
    assert!(
        msg.contains("admin.listen") && msg.contains("writable by other users"),
        "{msg}"
    );
    assert!(!open.join("admin.sock").exists());
    assert!(!common::is_mounted(&layout.mnt));
}
