//! Shared helpers for the integration tests: real mounts in temporary directories, torn down by
//! guards even when a test fails, and the `failoverfs` binary run as a child process.
#![allow(dead_code)]

pub mod fake_master;
pub mod s3_server;

use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use failoverfs::app::{App, Hooks};
use failoverfs::backend::faulty::{Faults, FaultyBackend};
use failoverfs::config::{self, Overrides};

/// A fast `[health]` policy (the default one scaled down) so failover tests stay short.
pub const FAST_HEALTH: &str = r#"
[health]
interval = "100ms"
standby_interval = "200ms"
confirm_interval = "50ms"
confirm_window = "100ms"
confirmations = 3
timeout = "500ms"
max_backoff = "300ms"
"#;

/// Poll `cond` until it holds or `timeout` passes; panics with `what` on timeout.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// This process's `/proc/self/mountinfo` line of the mount at `path` (any filesystem type).
pub fn mountinfo_line(path: &Path) -> Option<String> {
    let want = path.to_str()?;
    std::fs::read_to_string("/proc/self/mountinfo")
        .ok()?
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(want))
        .map(str::to_string)
}

/// Whether `path` is a mount point right now.
pub fn is_mounted(path: &Path) -> bool {
    failoverfs::fuse::session::is_mounted(path)
}

/// Temporary directories for a mount and its volumes, plus the config file describing them.
pub struct Layout {
    pub dir: tempfile::TempDir,
    pub mnt: PathBuf,
    pub vols: Vec<PathBuf>,
    pub config: PathBuf,
}

impl Layout {
    /// `n` dir volumes named `v0`, `v1`, ... and a mount point; `mount_extra` is appended to
    /// `[mount]`, `tail` to the file.
    pub fn new(n: usize, mount_extra: &str, tail: &str) -> Layout {
        Layout::with_volumes(n, mount_extra, tail, |_| String::new())
    }

    /// Like [`Layout::new`], with volume 0 served from `mount` (a FUSE mount standing in for
    /// cfs-client) instead of its own directory.
    pub fn over_mount(mount: &Path, n: usize, mount_extra: &str, tail: &str) -> Layout {
        Layout::new(n, mount_extra, tail).primary_at(mount)
    }

    /// This layout with volume 0 served from `mount` instead of its own directory.
    pub fn primary_at(mut self, mount: &Path) -> Layout {
        let config = std::fs::read_to_string(&self.config).expect("read config");
        let config = config.replace(
            &format!("\"{}\"", self.vols[0].display()),
            &format!("\"{}\"", mount.display()),
        );
        std::fs::write(&self.config, config).expect("write config");
        self.vols[0] = mount.to_path_buf();
        self
    }

    /// Like [`Layout::new`], with `volume_extra(i)` added to volume `i`'s table.
    pub fn with_volumes(
        n: usize,
        mount_extra: &str,
        tail: &str,
        volume_extra: impl Fn(usize) -> String,
    ) -> Layout {
        let dir = tempfile::Builder::new()
            .prefix("failoverfs-test-")
            .tempdir()
            .expect("tempdir");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).expect("mkdir mnt");
        let mut vols = Vec::new();
        // The state file lives with the test, never in /var/lib.
        let mut toml = format!(
            "[mount]\npath = \"{}\"\nthreads = 8\nstate_file = \"{}\"\n{mount_extra}\n\n\
             [log]\nlevel = \"info\"\n\n",
            mnt.display(),
            dir.path().join("state.json").display()
        );
        for i in 0..n {
            let v = dir.path().join(format!("v{i}"));
            std::fs::create_dir(&v).expect("mkdir volume");
            toml.push_str(&format!(
                "[[volumes]]\nname = \"v{i}\"\nbackend = {{ kind = \"dir\", path = \"{}\" }}\n{}\n\n",
                v.display(),
                volume_extra(i)
            ));
            vols.push(v);
        }
        toml.push_str(tail);
        if !tail.contains("[admin]") {
            // The admin socket lives with the test too, never in /run/failoverfs (a daemon killed
            // with SIGKILL leaves its socket file behind).
            toml.push_str(&format!(
                "\n[admin]\nlisten = \"{}\"\n",
                dir.path().join("admin.sock").display()
            ));
        }
        let config = dir.path().join("failoverfs.toml");
        std::fs::write(&config, toml).expect("write config");
        Layout {
            dir,
            mnt,
            vols,
            config,
        }
    }
}

/// An in-process mount; unmounted when dropped.
pub struct Fixture {
    pub app: Option<App>,
    pub faults: Vec<Arc<Faults>>,
    pub layout: Layout,
}

impl Fixture {
    /// Mount `n` dir volumes with default settings.
    pub fn new(n: usize) -> Fixture {
        Fixture::with(n, "", "")
    }

    /// Mount with extra `[mount]` lines and extra TOML at the end. Every backend is wrapped in a
    /// fault injector (no rules by default).
    pub fn with(n: usize, mount_extra: &str, tail: &str) -> Fixture {
        Fixture::mount(Layout::new(n, mount_extra, tail))
    }

    /// Mount a prepared layout.
    pub fn mount(layout: Layout) -> Fixture {
        init_logging();
        let n = layout.vols.len();
        let settings =
            config::load_and_prepare(&layout.config, &Overrides::default()).expect("config");
        let faults: Vec<Arc<Faults>> = (0..n).map(|_| Faults::new()).collect();
        let f2 = faults.clone();
        let hooks = Hooks {
            wrap_backend: Some(Box::new(move |i, b| {
                Arc::new(FaultyBackend::new(b, f2[i].clone()))
            })),
        };
        let app = App::start_with(&settings, hooks).expect("mount");
        wait_judged(&app);
        Fixture {
            app: Some(app),
            faults,
            layout,
        }
    }

    pub fn app(&self) -> &App {
        self.app.as_ref().expect("mounted")
    }

    /// A path under the mount.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.layout.mnt.join(rel)
    }

    /// A path under volume `i`'s root.
    pub fn vol(&self, i: usize, rel: &str) -> PathBuf {
        self.layout.vols[i].join(rel)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(app) = self.app.take() {
            app.shutdown();
        }
        assert!(
            !is_mounted(&self.layout.mnt) || std::thread::panicking(),
            "mount left behind"
        );
    }
}

fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TEST_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// The `failoverfs` binary.
pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_failoverfs"))
}

/// A `failoverfs mount` child process; killed and unmounted when dropped.
pub struct BinMount {
    pub child: Option<Child>,
    pub layout: Layout,
    pub stderr_path: PathBuf,
    /// Where it is mounted (the layout's mount point unless overridden).
    pub mnt: PathBuf,
    /// A command the binary runs under (`prlimit …`), empty for none.
    pub wrapper: Vec<String>,
}

impl BinMount {
    /// Start `failoverfs mount` on `layout` and wait until the mount is up.
    pub fn start(layout: Layout, extra_args: &[&str]) -> BinMount {
        let mnt = layout.mnt.clone();
        BinMount::start_with_env(layout, extra_args, &[], &mnt)
    }

    /// Like [`BinMount::start`], with environment variables, expecting the mount at `mnt`.
    pub fn start_with_env(
        layout: Layout,
        extra_args: &[&str],
        envs: &[(&str, &str)],
        mnt: &Path,
    ) -> BinMount {
        let stderr_path = layout.dir.path().join("stderr.log");
        let mut m = BinMount {
            child: None,
            layout,
            stderr_path,
            mnt: mnt.to_path_buf(),
            wrapper: Vec::new(),
        };
        m.spawn(extra_args, envs);
        m
    }

    /// Like [`BinMount::start`], the binary run by `wrapper` (a command and its arguments, which
    /// must exec the binary in the same process, as `prlimit` does).
    pub fn start_wrapped(layout: Layout, wrapper: &[&str]) -> BinMount {
        let stderr_path = layout.dir.path().join("stderr.log");
        let mut m = BinMount {
            child: None,
            mnt: layout.mnt.clone(),
            layout,
            stderr_path,
            wrapper: wrapper.iter().map(|s| s.to_string()).collect(),
        };
        m.spawn(&[], &[]);
        m
    }

    /// Start the process (again) and wait until the mount answers.
    fn spawn(&mut self, extra_args: &[&str], envs: &[(&str, &str)]) {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr_path)
            .expect("stderr file");
        let mut cmd = match self.wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(env!("CARGO_BIN_EXE_failoverfs"));
                c
            }
            None => bin(),
        };
        let child = cmd
            .arg("mount")
            .arg("--config")
            .arg(&self.layout.config)
            .args(extra_args)
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn failoverfs");
        self.child = Some(child);
        let mnt = self.mnt.clone();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !is_mounted(&mnt) {
            if let Some(status) = self.try_wait() {
                panic!("failoverfs exited early ({status}): {}", self.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "mount never came up: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        // Listed in mountinfo is not yet serving: the FUSE handshake may still be under way.
        // A statfs through the mount is answered by the daemon only after it.
        wait_until(Duration::from_secs(20), "the mount answers", || {
            nix::sys::statfs::statfs(&mnt)
                .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::FUSE_SUPER_MAGIC)
        });
    }

    /// Stop with SIGTERM and start again with `extra_args`, as a client restart does.
    pub fn restart(&mut self, extra_args: &[&str]) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        assert_eq!(
            self.wait(Duration::from_secs(20)),
            Some(0),
            "{}",
            self.stderr()
        );
        self.spawn(extra_args, &[]);
    }

    /// Start again with the same arguments after the process ended (or was killed).
    pub fn start_again(&mut self) {
        self.spawn(&[], &[]);
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).expect("kill");
    }

    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Wait for the process to exit (at most `timeout`) and return its exit code.
    pub fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                self.child = None;
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "failoverfs did not exit: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

impl Drop for BinMount {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let mnt = self.mnt.clone();
        let deadline = Instant::now() + Duration::from_secs(5);
        while is_mounted(&mnt) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if is_mounted(&mnt) {
            let _ = nix::mount::umount2(&mnt, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// Run `script` with `sh -c` as user `uid` (group `uid` too); returns (success, stderr).
pub fn sh_as(uid: u32, script: &str) -> (bool, String) {
    use std::os::unix::process::CommandExt;
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .uid(uid)
        .gid(uid)
        .output()
        .expect("run sh");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Deterministic pseudo-random bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// FNV-1a over bytes: a checksum that needs no dependency.
pub fn checksum(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for &b in data {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// A test tool installed by `.ci/install-test-tools` (on `PATH` or in `~/.cargo/bin`).
pub fn tool(name: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} is not installed: run .ci/install-test-tools"))
}

/// A small multi-thread tokio runtime for tests that drive async code from sync tests.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// GET `url` and return the body (empty on failure).
pub fn http_get(url: &str) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        match reqwest::Client::new().get(url).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    })
}

/// `errno` of the last failed libc call.
pub fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// A NUL-terminated copy of a path for libc calls.
pub fn cpath(p: &Path) -> std::ffi::CString {
    std::ffi::CString::new(p.as_os_str().as_bytes()).expect("no NUL in path")
}

/// Write `data` to a new file at `path` through `std::fs`.
pub fn write_file(path: &Path, data: &[u8]) {
    let mut f = std::fs::File::create(path).expect("create");
    f.write_all(data).expect("write");
}

pub fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// `failoverfs switch --config <config> --to <target>`, asked again until it succeeds (bounded):
/// a standby is a target only once its probes have seen it healthy, which a just-started mount
/// may not have done yet. Returns the command's stdout.
pub fn switch_to(config: &Path, target: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = bin()
            .args(["switch", "--config"])
            .arg(config)
            .args(["--to", target])
            .output()
            .expect("run failoverfs switch");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            return stdout;
        }
        assert!(
            Instant::now() < deadline,
            "switch to {target} refused: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Wait (at most a minute, without failing) until the monitor judged every volume: healthy, or
/// never healthy (a configuration error). A volume is deleted only after it was seen healthy,
/// so a test that removes a volume must not race that first healthy answer: on a loaded machine
/// the round before the mount may have timed out.
fn wait_judged(app: &App) {
    use failoverfs::monitor::Health;
    use failoverfs::probe::TransientKind;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let judged = app.monitor().states().iter().all(|s| {
            matches!(
                s.health,
                Health::Healthy { .. }
                    | Health::Unreachable {
                        kind: TransientKind::NeverHealthy,
                        ..
                    }
            )
        });
        if judged {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Some tests start with a volume that stays unreachable on purpose; say so, do not fail.
    eprintln!("wait_judged: not every volume judged after 60 s; going on");
}
