//! The binary as a user runs it: bad configurations, `check`, signals, crashes, exit codes.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;

/// Run `failoverfs <args>`; returns (exit code, stdout, stderr).
fn run(args: &[&str], envs: &[(&str, &str)]) -> (i32, String, String) {
    let out = bin()
        .args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run failoverfs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A config error: exit 2, one line on stderr naming `key` and where it came from, no panic.
fn assert_config_error(
    config: &Path,
    extra: &[&str],
    envs: &[(&str, &str)],
    key: &str,
    origin: &str,
) {
    let mut args = vec!["check", "--config", config.to_str().unwrap()];
    args.extend_from_slice(extra);
    let (code, _out, err) = run(&args, envs);
    assert_eq!(code, 2, "exit code for {key}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.contains(key), "names the key {key}: {err}");
    assert!(err.contains(origin), "names the origin {origin}: {err}");
}

/// A config error in the file itself.
fn assert_file_error(l: &Layout, key: &str) {
    assert_config_error(&l.config, &[], &[], key, &l.config.display().to_string());
}

fn edit(layout: &Layout, from: &str, to: &str) {
    let text = std::fs::read_to_string(&layout.config).unwrap();
    assert!(text.contains(from), "config has {from:?}");
    std::fs::write(&layout.config, text.replacen(from, to, 1)).unwrap();
}

#[test]
fn bad_configs_exit_2_with_one_clear_line() {
    // Missing file.
    let l = Layout::new(2, "", "");
    let missing = l.dir.path().join("nope.toml");
    assert_config_error(&missing, &[], &[], "nope.toml", "not found");

    // Unknown key, in a section and inside a volume's backend.
    let l = Layout::new(2, "atr_ttl = \"1s\"", "");
    assert_file_error(&l, "mount.atr_ttl");
    let l = Layout::new(2, "", "");
    edit(&l, "kind = \"dir\", path", "kind = \"dir\", pth");
    assert_file_error(&l, "volumes[0].backend");

    // Wrong type; duration without a unit.
    let l = Layout::new(2, "", "");
    edit(&l, "threads = 8", "threads = \"eight\"");
    assert_file_error(&l, "mount.threads");
    let l = Layout::new(2, "attr_ttl = 3", "");
    assert_file_error(&l, "mount.attr_ttl");

    // A state file the mount would hide, or not an absolute path.
    let l = Layout::new(2, "", "");
    let inside = format!("state_file = \"{}/s.json\"\n# ", l.mnt.display());
    edit(&l, "state_file = ", &inside);
    assert_file_error(&l, "mount.state_file");
    let l = Layout::new(2, "", "");
    edit(&l, "state_file = ", "state_file = \"rel/s.json\"\n# ");
    assert_file_error(&l, "mount.state_file");

    // Broken TOML.
    let l = Layout::new(2, "read_only = ", "");
    assert_file_error(&l, "-");

    // Empty volume table.
    let l = Layout::new(0, "", "");
    assert_file_error(&l, "volumes");

    // Relative volume paths, and a volume path that is not a directory. (A missing one is an
    // unavailable volume, not a configuration error: see
    // `a_restart_after_a_failover_serves_when_the_primary_root_is_gone`.)
    let l = Layout::new(2, "", "");
    let v1 = l.vols[1].display().to_string();
    edit(&l, &v1, "relative/path");
    assert_file_error(&l, "volumes[1].backend.path");
    let l = Layout::new(2, "", "");
    std::fs::remove_dir(&l.vols[1]).unwrap();
    std::fs::write(&l.vols[1], b"a file").unwrap();
    assert_file_error(&l, "volumes[1].backend.path");

    // Mount point missing, or not a directory.
    let l = Layout::new(1, "", "");
    std::fs::remove_dir(&l.mnt).unwrap();
    assert_file_error(&l, "mount.path");
    std::fs::write(&l.mnt, b"a file").unwrap();
    assert_file_error(&l, "mount.path");

    // Environment and command line are checked the same way, and named as the origin.
    let l = Layout::new(1, "", "");
    assert_config_error(
        &l.config,
        &[],
        &[("FAILOVERFS_MOUNT__TREADS", "4")],
        "mount.treads",
        "environment",
    );
    assert_config_error(
        &l.config,
        &[],
        &[("FAILOVERFS_MOUNT__THREADS", "0")],
        "mount.threads",
        "environment",
    );
    let (code, _, err) = run(
        &[
            "mount",
            "--config",
            l.config.to_str().unwrap(),
            "--threads",
            "0",
        ],
        &[],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("mount.threads") && err.contains("command line"),
        "{err}"
    );
}

#[test]
fn settings_that_would_turn_detection_off_are_refused() {
    // Durations without a ceiling: a deleted primary would never be noticed.
    for key in ["interval", "confirm_interval", "timeout", "max_backoff"] {
        let l = Layout::new(1, "", &format!("[health]\n{key} = \"500000000y\"\n"));
        assert_file_error(&l, &format!("health.{key}"));
    }
    // A master given as a URL is "host:port" only in appearance.
    let l = Layout::with_volumes(1, "", "", |_| {
        "probe = { kind = \"cubefs\", masters = [\"http://h:17010\"], volume = \"vol1\" }".into()
    });
    assert_file_error(&l, "masters");
    // The volume table never comes from the environment.
    let l = Layout::new(1, "", "");
    assert_config_error(
        &l.config,
        &[],
        &[("FAILOVERFS_VOLUMES", "[]")],
        "volumes",
        "FAILOVERFS_VOLUMES",
    );
    // The prefix is matched exactly, like any environment variable name.
    let (code, _, err) = run(
        &["check", "--config", l.config.to_str().unwrap()],
        &[("failoverfs_mount__threads", "0")],
    );
    assert_ne!(code, 2, "{err}");
    // A config path that is a symlink loop says so.
    let looped = l.dir.path().join("loop.toml");
    std::os::unix::fs::symlink(&looped, &looped).unwrap();
    assert_config_error(&looped, &[], &[], "loop.toml", "symbolic links");
}

#[test]
fn check_prints_the_volume_table() {
    let l = Layout::new(2, "", "");
    let (code, out, err) = run(&["check", "--config", l.config.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("USABLE"),
        "{out}"
    );
    assert!(
        lines[1].starts_with("v0") && lines[1].contains("primary") && lines[1].contains(" yes"),
        "{out}"
    );
    assert!(
        lines[2].starts_with("v1") && lines[2].contains("standby 1"),
        "{out}"
    );
}

#[test]
fn check_runs_the_probes_once_and_reports_their_answers() {
    use common::fake_master::{FakeCluster, VolState};
    let c = FakeCluster::start(1);
    c.create("vol1");
    let masters = format!("{:?}", c.addrs());
    let l = Layout::new(2, "", "");
    // The primary is the CubeFS volume `vol1` (its probe also watches the dir root).
    let probe = format!(
        "probes = [{{ kind = \"cubefs\", masters = {masters}, volume = \"vol1\" }}, {{ kind = \"dir\" }}]\n"
    );
    let text = std::fs::read_to_string(&l.config).unwrap();
    let text = text.replacen("name = \"v0\"\n", &format!("name = \"v0\"\n{probe}"), 1);
    std::fs::write(&l.config, text).unwrap();
    let cfg = l.config.to_str().unwrap();
    let (code, out, err) = run(&["check", "--config", cfg], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("v0  cubefs: healthy"), "{out}");
    assert!(out.contains("v0  dir: healthy"), "{out}");
    c.set("vol1", VolState::Gone);
    let (code, out, _) = run(&["check", "--config", cfg], &[]);
    assert_eq!(code, 1, "a deleted primary is not usable: {out}");
    assert!(out.contains("v0  cubefs: deleted"), "{out}");
    assert!(out.lines().nth(1).unwrap().contains(" no "), "{out}");
}

#[test]
fn check_is_strict_about_answers_without_authority() {
    use common::fake_master::FakeCluster;
    let c = FakeCluster::start(1);
    c.create("vol1");
    c.set_cluster_name("prod");
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .to_string();
    let with_probe = |probe: String| {
        let l = Layout::new(1, "", "");
        let text = std::fs::read_to_string(&l.config).unwrap();
        let text = text.replacen("name = \"v0\"\n", &format!("name = \"v0\"\n{probe}\n"), 1);
        std::fs::write(&l.config, text).unwrap();
        l
    };
    // Masters on a closed port: nothing authoritative answered. Not "all is well".
    let l = with_probe(format!(
        "probe = {{ kind = \"cubefs\", masters = [\"{closed}\"], volume = \"vol1\", timeout = \"300ms\" }}"
    ));
    let (code, out, err) = run(&["check", "--config", l.config.to_str().unwrap()], &[]);
    assert_eq!(code, 4, "{out}{err}");
    assert!(out.contains("inconclusive"), "{out}");
    // A wrong `cluster` on a healthy volume is found at once, not at the first deletion.
    let masters = format!("{:?}", c.addrs());
    let l = with_probe(format!(
        "probe = {{ kind = \"cubefs\", masters = {masters}, volume = \"vol1\", cluster = \"staging\" }}"
    ));
    let (code, out, err) = run(&["check", "--config", l.config.to_str().unwrap()], &[]);
    assert_eq!(code, 4, "{out}{err}");
    assert!(out.contains("wrong-cluster"), "{out}");
    // The right one: exit 0.
    let l = with_probe(format!(
        "probe = {{ kind = \"cubefs\", masters = {masters}, volume = \"vol1\", cluster = \"prod\" }}"
    ));
    let (code, out, err) = run(&["check", "--config", l.config.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn help_explains_every_flag() {
    for (cmd, flags) in [
        (
            "mount",
            &[
                "--config",
                "--mountpoint",
                "--read-only",
                "--allow-other",
                "--threads",
                "--log-level",
                "--log-format",
            ][..],
        ),
        ("check", &["--config", "--log-level", "--log-format"][..]),
    ] {
        let (code, out, _) = run(&[cmd, "--help"], &[]);
        assert_eq!(code, 0);
        for f in flags {
            assert!(out.contains(f), "{cmd} --help mentions {f}: {out}");
        }
    }
    let (code, _, err) = run(&["mount"], &[]);
    assert_eq!(code, 2, "a missing --config is a usage error: {err}");
}

fn stops_cleanly_on(sig: Signal) {
    let mut m = BinMount::start(Layout::new(2, "", ""), &[]);
    std::fs::write(m.layout.mnt.join("f"), b"data").unwrap();
    m.signal(sig);
    assert_eq!(m.wait(Duration::from_secs(20)), Some(0), "{}", m.stderr());
    assert!(!is_mounted(&m.layout.mnt), "still mounted after {sig}");
    assert_eq!(std::fs::read(m.layout.vols[0].join("f")).unwrap(), b"data");
    let log = m.stderr();
    assert!(log.contains("unmounted"), "{log}");
}

#[test]
fn sigterm_stops_cleanly() {
    stops_cleanly_on(Signal::SIGTERM);
}

#[test]
fn sigint_stops_cleanly() {
    stops_cleanly_on(Signal::SIGINT);
}

#[test]
fn stop_with_open_files_detaches_lazily_and_leaves_no_mount() {
    let mut m = BinMount::start(Layout::new(1, "", ""), &[]);
    let f = m.layout.mnt.join("held");
    std::fs::write(&f, b"x").unwrap();
    // Another process keeps a descriptor open and its working directory inside the mount.
    let mut holder = Command::new("sh")
        .arg("-c")
        .arg("exec 3<held; sleep 60")
        .current_dir(&m.layout.mnt)
        .spawn()
        .unwrap();
    wait_until(
        Duration::from_secs(10),
        "the holder opened the file",
        || std::fs::read_link(format!("/proc/{}/fd/3", holder.id())).is_ok(),
    );
    m.signal(Signal::SIGTERM);
    let code = m.wait(Duration::from_secs(20));
    let _ = holder.kill();
    let _ = holder.wait();
    assert_eq!(code, Some(0), "{}", m.stderr());
    assert!(!is_mounted(&m.layout.mnt), "a busy mount was left behind");
    assert!(m.stderr().contains("lazily"), "{}", m.stderr());
}

#[test]
fn kill_9_leaves_no_dead_mount() {
    // fusermount3's helper alone left the dead mount in about one kill in three on a loaded
    // machine (it looks before the connection is gone); the mount guard does not. A few rounds,
    // so that a regression shows.
    let mut m = BinMount::start(Layout::new(1, "", ""), &[]);
    for round in 0..3 {
        if round > 0 {
            m.start_again();
        }
        m.signal(Signal::SIGKILL);
        assert!(
            m.wait(Duration::from_secs(10)).is_none(),
            "killed, not exited"
        );
        wait_until(
            Duration::from_secs(30),
            "the dead mount to be detached",
            || !is_mounted(&m.layout.mnt),
        );
        // An ordinary directory again, not "Transport endpoint is not connected".
        std::fs::read_dir(&m.layout.mnt).expect("mount point readable");
        // And the guard is gone with its daemon.
        wait_until(Duration::from_secs(30), "the mount guard to exit", || {
            guards_of(&m.layout.mnt) == 0
        });
    }
}

#[test]
fn a_dead_mount_left_by_a_killed_daemon_is_detached_at_the_next_start() {
    // Without fusermount3 there is neither auto_unmount nor a mount guard: a SIGKILL leaves the
    // mount dead, as for a container's PID 1, whose helpers die with it.
    let layout = Layout::new(1, "", "");
    let mnt = layout.mnt.clone();
    let mut m = BinMount::start_with_env(
        layout,
        &[],
        &[("FUSERMOUNT_PATH", "/nonexistent/fusermount3")],
        &mnt,
    );
    m.signal(Signal::SIGKILL);
    assert!(m.wait(Duration::from_secs(10)).is_none(), "killed");
    assert!(is_mounted(&mnt), "the dead mount stays");
    assert_eq!(
        std::fs::metadata(&mnt).unwrap_err().raw_os_error(),
        Some(libc::ENOTCONN)
    );
    // The next start takes it away and serves (start_again waits for the mount to answer).
    m.start_again();
    std::fs::write(mnt.join("f"), b"after").unwrap();
    assert_eq!(std::fs::read(m.layout.vols[0].join("f")).unwrap(), b"after");
    assert!(
        m.stderr().contains("detached a dead failoverfs mount"),
        "{}",
        m.stderr()
    );
}

/// Mount guards (`failoverfs __guard`) running for mount point `mnt`.
fn guards_of(mnt: &std::path::Path) -> usize {
    let want = mnt.as_os_str().as_encoded_bytes();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .filter(|c| {
            let args: Vec<&[u8]> = c.split(|&b| b == 0).collect();
            args.contains(&&b"__guard"[..]) && args.contains(&want)
        })
        .count()
}

#[test]
fn a_clean_stop_leaves_no_guard() {
    let mut m = BinMount::start(Layout::new(1, "", ""), &[]);
    assert_eq!(guards_of(&m.layout.mnt), 1, "one guard per mount");
    m.signal(Signal::SIGTERM);
    assert_eq!(m.wait(Duration::from_secs(20)), Some(0), "{}", m.stderr());
    wait_until(Duration::from_secs(30), "the mount guard to exit", || {
        guards_of(&m.layout.mnt) == 0
    });
    assert!(!is_mounted(&m.layout.mnt));
    assert!(
        !m.stderr().contains("failoverfs guard"),
        "the guard acted after a clean stop: {}",
        m.stderr()
    );
}

#[test]
fn a_second_mount_on_a_served_mount_point_is_refused() {
    let first = BinMount::start(Layout::new(1, "", ""), &[]);
    let out = bin()
        .arg("mount")
        .arg("--config")
        .arg(&first.layout.config)
        .output()
        .expect("run a second failoverfs");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("already mounted"), "{stderr}");
    assert!(
        !stderr.contains("detached"),
        "a live mount is never taken away: {stderr}"
    );
    // The first mount is untouched and still serves.
    std::fs::write(first.layout.mnt.join("f"), b"x").unwrap();
    assert_eq!(std::fs::read(first.layout.vols[0].join("f")).unwrap(), b"x");
}

#[test]
fn unmounted_from_outside_exits_0() {
    let mut m = BinMount::start(Layout::new(1, "", ""), &[]);
    nix::mount::umount2(&m.layout.mnt, nix::mount::MntFlags::empty()).unwrap();
    assert_eq!(m.wait(Duration::from_secs(20)), Some(0), "{}", m.stderr());
    assert!(
        m.stderr().contains("unmounted from outside"),
        "{}",
        m.stderr()
    );
}

#[test]
fn environment_and_flags_override_the_file() {
    let l = Layout::new(1, "", "");
    let other = l.dir.path().join("elsewhere");
    std::fs::create_dir(&other).unwrap();
    let mut m = BinMount::start_with_env(
        l,
        &[
            "--mountpoint",
            other.to_str().unwrap(),
            "--log-format",
            "json",
        ],
        &[("FAILOVERFS_LOG__LEVEL", "debug")],
        &other,
    );
    std::fs::write(other.join("f"), b"x").unwrap();
    assert_eq!(std::fs::read(m.layout.vols[0].join("f")).unwrap(), b"x");
    m.signal(Signal::SIGTERM);
    assert_eq!(m.wait(Duration::from_secs(20)), Some(0));
    let log = m.stderr();
    assert!(
        log.lines()
            .any(|l| l.starts_with('{') && l.contains("\"level\":\"DEBUG\"")),
        "{log}"
    );
}

#[test]
fn the_open_file_limit_is_raised_to_the_hard_limit() {
    let l = Layout::new(1, "", "");
    let mut m = BinMount::start_wrapped(l, &["prlimit", "--nofile=256:4096"]);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", m.pid())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .to_string();
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(&fields[3..5], ["4096", "4096"], "{line}");
    assert!(
        m.stderr().contains("raised the open file limit"),
        "{}",
        m.stderr()
    );
    m.signal(Signal::SIGTERM);
    assert_eq!(m.wait(Duration::from_secs(20)), Some(0));
}

#[test]
fn a_primary_its_probes_say_is_not_there_is_not_mounted() {
    // The volume carries `.volume`; the configuration names `.volumes`.
    let l = Layout::with_volumes(2, "", "", |i| {
        if i == 0 {
            "probe = { kind = \"dir\", marker = \".volumes\" }".into()
        } else {
            String::new()
        }
    });
    std::fs::write(l.vols[0].join(".volume"), b"").unwrap();
    let (code, _, err) = run(&["mount", "--config", l.config.to_str().unwrap()], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("\"v0\"") && err.contains(".volumes"), "{err}");
    assert!(!is_mounted(&l.mnt));
}

#[test]
fn readiness_is_logged_and_told_to_systemd() {
    let l = Layout::new(1, "", "");
    let socket = l.dir.path().join("notify.sock");
    let listener = std::os::unix::net::UnixDatagram::bind(&socket).unwrap();
    listener
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mnt = l.mnt.clone();
    let mut m =
        BinMount::start_with_env(l, &[], &[("NOTIFY_SOCKET", socket.to_str().unwrap())], &mnt);
    let mut buf = [0u8; 64];
    let n = listener.recv(&mut buf).expect("a notification");
    assert_eq!(&buf[..n], b"READY=1\n");
    assert!(m.stderr().contains("ready"), "{}", m.stderr());
    m.signal(Signal::SIGTERM);
    assert_eq!(m.wait(Duration::from_secs(20)), Some(0));
}

#[test]
fn a_restart_after_a_switch_serves_the_volume_switched_to() {
    let l = Layout::with_volumes(2, "", FAST_HEALTH, |i| {
        if i == 0 {
            "probe = { kind = \"dir\", marker = \".volume\" }".into()
        } else {
            String::new()
        }
    });
    for (i, v) in l.vols.iter().enumerate() {
        std::fs::write(v.join("f"), format!("v{i}")).unwrap();
    }
    std::fs::write(l.vols[0].join(".volume"), b"").unwrap();
    let state = l.dir.path().join("state.json");
    let config = l.config.clone();
    let mut m = BinMount::start(l, &[]);
    let f = m.mnt.join("f");
    let serving = |want: &str| std::fs::read_to_string(&f).is_ok_and(|s| s == want);
    let recorded = |want: &str| {
        std::fs::read_to_string(&state).is_ok_and(|s| s.contains(&format!("\"active\":\"{want}\"")))
    };
    assert!(serving("v0"));
    // The primary is deleted: the switch moves to v1 and records it.
    std::fs::remove_file(m.layout.vols[0].join(".volume")).unwrap();
    wait_until(Duration::from_secs(30), "the switch to v1", || {
        serving("v1")
    });
    wait_until(Duration::from_secs(10), "v1 recorded", || recorded("v1"));
    // A restart serves v1. Without the record it would refuse to start (exit 2: the first
    // volume of the table is not there).
    m.restart(&[]);
    assert!(serving("v1"));
    assert!(
        m.stderr()
            .contains("serving the volume the last switch moved to"),
        "{}",
        m.stderr()
    );
    // The primary comes back: a restart still serves v1, as the rest of the fleet does.
    std::fs::write(m.layout.vols[0].join(".volume"), b"").unwrap();
    m.restart(&[]);
    assert!(serving("v1"));
    // Going back is the operator's call, and is recorded too.
    // (Right after the restart, v0 may not have been probed healthy yet: asked until it has.)
    switch_to(&config, "v0");
    wait_until(Duration::from_secs(10), "v0 serving", || serving("v0"));
    wait_until(Duration::from_secs(10), "v0 recorded", || recorded("v0"));
    m.restart(&[]);
    assert!(serving("v0"));
}

/// A daemon over v0 (with a marker) and v1 that failed over to v1 (the marker removed) and
/// recorded it in its state file.
fn failed_over_to_the_standby() -> BinMount {
    let l = Layout::with_volumes(2, "", FAST_HEALTH, |i| {
        if i == 0 {
            "probe = { kind = \"dir\", marker = \".volume\" }".into()
        } else {
            String::new()
        }
    });
    for (i, v) in l.vols.iter().enumerate() {
        std::fs::write(v.join("f"), format!("v{i}")).unwrap();
    }
    std::fs::write(l.vols[0].join(".volume"), b"").unwrap();
    let state = l.dir.path().join("state.json");
    let m = BinMount::start(l, &[]);
    std::fs::remove_file(m.layout.vols[0].join(".volume")).unwrap();
    wait_until(Duration::from_secs(30), "the switch to v1", || {
        serves(&m, "v1")
    });
    wait_until(Duration::from_secs(10), "v1 recorded", || {
        std::fs::read_to_string(&state).is_ok_and(|s| s.contains("\"active\":\"v1\""))
    });
    m
}

fn serves(m: &BinMount, want: &str) -> bool {
    std::fs::read_to_string(m.mnt.join("f")).is_ok_and(|s| s == want)
}

/// A FUSE filesystem of its own (another failoverfs, without fusermount3 so that a SIGKILL
/// leaves its mount dead) mounted on `at`, standing in for a volume's client.
fn client_on(at: &std::path::Path) -> BinMount {
    let helper_layout = Layout::new(1, "", "");
    let helper_config = std::fs::read_to_string(&helper_layout.config)
        .unwrap()
        .replace(
            &format!("\"{}\"", helper_layout.mnt.display()),
            &format!("\"{}\"", at.display()),
        );
    std::fs::write(&helper_layout.config, helper_config).unwrap();
    BinMount::start_with_env(
        helper_layout,
        &[],
        &[("FUSERMOUNT_PATH", "/nonexistent/fusermount3")],
        at,
    )
}

#[test]
fn a_restart_after_a_failover_serves_when_the_primary_root_is_gone() {
    let mut m = failed_over_to_the_standby();
    // What a deleted volume leaves: its root moved away, then removed altogether.
    let primary = m.layout.vols[0].clone();
    std::fs::rename(&primary, primary.with_extension("old")).unwrap();
    m.restart(&[]);
    assert!(serves(&m, "v1"), "{}", m.stderr());
    std::fs::remove_dir_all(primary.with_extension("old")).unwrap();
    m.restart(&[]);
    assert!(serves(&m, "v1"), "{}", m.stderr());
    // A dead FUSE mount where the primary's root was (its client killed): another failoverfs,
    // without fusermount3, so that a SIGKILL leaves its mount dead.
    std::fs::create_dir(&primary).unwrap();
    let mut helper = client_on(&primary);
    helper.signal(Signal::SIGKILL);
    assert!(helper.wait(Duration::from_secs(10)).is_none(), "killed");
    assert_eq!(
        std::fs::metadata(&primary).unwrap_err().raw_os_error(),
        Some(libc::ENOTCONN)
    );
    m.restart(&[]);
    assert!(serves(&m, "v1"), "{}", m.stderr());
    // `check` reports the unusable primary with its documented code (1), not as a
    // configuration error (2).
    let out = bin()
        .args(["check", "--config"])
        .arg(&m.layout.config)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    m.signal(Signal::SIGTERM);
    assert_eq!(m.wait(Duration::from_secs(20)), Some(0));
    // The dead mount goes with `helper` (its drop detaches what is left).
    drop(helper);
    assert!(!is_mounted(&primary));
}

#[test]
fn a_restart_after_a_failover_serves_when_the_primary_root_hangs() {
    let mut m = failed_over_to_the_standby();
    // The primary's client hangs (stopped): every call into its root waits.
    let primary = m.layout.vols[0].clone();
    std::fs::rename(&primary, primary.with_extension("old")).unwrap();
    std::fs::create_dir(&primary).unwrap();
    let helper = client_on(&primary);
    helper.signal(Signal::SIGSTOP);
    m.restart(&[]);
    assert!(serves(&m, "v1"), "{}", m.stderr());
    assert!(
        m.stderr().contains("does not answer"),
        "the hung root is named: {}",
        m.stderr()
    );
    m.signal(Signal::SIGTERM);
    let code = m.wait(Duration::from_secs(20));
    helper.signal(Signal::SIGCONT);
    assert_eq!(code, Some(0), "{}", m.stderr());
}
