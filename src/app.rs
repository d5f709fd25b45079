//! The running process: open the volumes, mount, then a supervisor task that owns the mount and
//! the switch controller and reacts to confirmed deletions, signals and commands.
//!
//! Invariants:
//! - [`App::start`] returns only with the mount live and serving the primary (route generation 1).
//! - The supervisor does one thing at a time: a switch, a stop, or waiting. It is the only
//!   writer of the route after startup (through [`Controller`]).
//! - On a confirmed deletion of the active volume: switch to the next healthy standby, or (none,
//!   or `on_delete = "exit"`) fence the route, unmount (or keep the mount fenced until an
//!   operator unmounts it) and end with [`Exit::VolumeDeleted`] after one final log line.
//! - SIGINT/SIGTERM: finish what is in flight (a switch included), then stop: close the gate,
//!   drain, fence, unmount (lazily if files are open), [`Exit::Clean`]. A second signal skips
//!   the waiting, still unmounting. Nothing stays mounted after the process ends.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminState, SwitchRequest};
use crate::backend::Backend;
use crate::config::AdminAddress;
use crate::config::{
    BackendSettings, FailoverSettings, HoldWrites, LeaveMount, ReopenVerify, Settings,
    UnavailableAction,
};
use crate::events::Events;
use crate::exit::Exit;
use crate::failover::{
    AuditEntry, Controller, KernelCache, Opener, Outcome, SwitchTotals, Trigger,
};
use crate::fuse::deadline::Deadlines;
use crate::fuse::session::{MountOptions, Mounted, Unmounted};
use crate::fuse::{FuseFs, NotifierCache, Ttls};
use crate::monitor::{Health, Monitor, Watched, probe_once};
use crate::namespace::Stale;
use crate::probe::dir::RootWatch;
use crate::probe::{Strength, TransientKind, Verdict};
use crate::routing::{Changes, Route, Router, Volume, WaitPolicy};
use crate::state::StateFile;
use crate::vfs::{Vfs, VfsOptions};

/// How long the start waits for the kernel's FUSE handshake before it says so.
const READY_WAIT: Duration = Duration::from_secs(10);

/// Tell systemd (`Type=notify`) that the mount serves: `READY=1` on `$NOTIFY_SOCKET`, a path or an
/// abstract name (`@…`). Without the variable, nothing to do.
fn notify_systemd_ready() {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let target = target.as_encoded_bytes();
    let addr = match target.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name),
        None => {
            SocketAddr::from_pathname(std::path::Path::new(std::ffi::OsStr::from_bytes(target)))
        }
    };
    let sent = UnixDatagram::unbound()
        .and_then(|sock| addr.and_then(|a| sock.send_to_addr(b"READY=1\n", &a)));
    if let Err(e) = sent {
        tracing::warn!(error = %e, "cannot notify systemd (NOTIFY_SOCKET)");
    }
}

/// How long an unmount waits for open files before aborting the connection.
const UNMOUNT_GRACE: Duration = Duration::from_secs(2);

/// A stop ends within `drain_timeout` plus this, whatever the volume does.
const STOP_SLACK: Duration = Duration::from_secs(1);

/// Kept from a stop's bound for what follows the unmount (the last log lines, the exit).
const UNMOUNT_RESERVE: Duration = Duration::from_millis(300);

/// Why the process could not start.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct StartError {
    /// What went wrong, for the one log line.
    pub message: String,
    /// How the process ends: [`Exit::Usage`] when the configuration cannot work (a primary its
    /// own probes say does not exist), [`Exit::Failure`] otherwise.
    pub exit: Exit,
}

impl StartError {
    /// A runtime failure (exit 1: a supervisor may retry).
    pub fn failure(message: impl Into<String>) -> StartError {
        StartError {
            message: message.into(),
            exit: Exit::Failure,
        }
    }

    /// The configuration cannot work (exit 2).
    pub fn usage(message: impl Into<String>) -> StartError {
        StartError {
            message: message.into(),
            exit: Exit::Usage,
        }
    }
}

/// Wraps a volume's backend as it is opened (index in the table, backend): the seam tests and
/// drills use to inject faults ([`crate::backend::faulty`]).
pub type WrapBackend = dyn Fn(usize, Arc<dyn Backend>) -> Arc<dyn Backend> + Send + Sync;

/// Optional seams into [`App::start_with`].
#[derive(Default)]
pub struct Hooks {
    /// Applied to every backend when it is opened.
    pub wrap_backend: Option<Box<WrapBackend>>,
}

enum Command {
    Stop,
    Switch {
        target: Option<usize>,
        reason: String,
        reply: oneshot::Sender<Outcome>,
    },
}

/// A mounted, serving failoverfs; see the module docs.
pub struct App {
    /// Taken only by `Drop`, to shut down with a time limit.
    runtime: Option<tokio::runtime::Runtime>,
    vfs: Arc<Vfs>,
    deadlines: Arc<Deadlines>,
    monitor: Arc<Monitor>,
    audit: Arc<Mutex<Vec<AuditEntry>>>,
    totals: Arc<SwitchTotals>,
    commands: mpsc::UnboundedSender<Command>,
    done: Option<tokio::task::JoinHandle<Exit>>,
    mount_path: PathBuf,
    admin_stop: CancellationToken,
    /// The admin server's Unix socket, removed on the way out.
    admin_socket: Option<PathBuf>,
    events: Events,
}

impl App {
    /// Open the volumes, build the first route, mount, and start supervising.
    pub fn start(settings: &Settings) -> Result<App, StartError> {
        Self::start_with(settings, Hooks::default())
    }

    /// [`App::start`] with test seams.
    pub fn start_with(settings: &Settings, hooks: Hooks) -> Result<App, StartError> {
        // Group and other write off when creates carry the caller's umask per worker thread (no
        // file of the daemon's own starts writable by others), else 0 (modes from the kernel
        // are final): see `backend::identity`.
        crate::backend::identity::set_process_umask();
        raise_open_file_limit();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("failoverfs-rt")
            .enable_all()
            .build()
            .map_err(|e| StartError::failure(format!("cannot start the async runtime: {e}")))?;
        // Listen for stop signals before the mount exists, so a signal never finds the default
        // action (terminate without unmounting) in place.
        let signals = {
            let _rt = runtime.enter();
            Signals::new()?
        };

        // Opening a volume, at start and again later (a remounted root, a switch back to a volume
        // that was closed).
        let opener: Arc<Opener> = {
            let table: Vec<(String, BackendSettings)> = settings
                .volumes
                .iter()
                .map(|v| (v.name.clone(), v.backend.clone()))
                .collect();
            let wrap: Option<Arc<WrapBackend>> = hooks.wrap_backend.map(Arc::from);
            Arc::new(move |index: usize| {
                let (name, backend) = table
                    .get(index)
                    .ok_or_else(|| format!("no volume {index} in the table"))?;
                let opened = crate::backend::open(backend).map_err(|e| e.to_string())?;
                let opened = match &wrap {
                    Some(wrap) => wrap(index, opened),
                    None => opened,
                };
                Ok(Arc::new(Volume::new(index, name.clone(), opened)))
            })
        };
        let (reopen_tx, reopen_rx) = mpsc::unbounded_channel();
        let watches: Vec<Option<Arc<RootWatch>>> = settings
            .volumes
            .iter()
            .enumerate()
            .map(|(index, v)| match &v.backend {
                BackendSettings::Dir { path } => {
                    Some(RootWatch::new(index, path.clone(), reopen_tx.clone()))
                }
            })
            .collect();
        // The volume to serve first: the one the last switch moved to, if the state file says so
        // (see `crate::state`), else the first of the table.
        let state = StateFile::new(settings.state_path());
        if let Err(e) = state.check() {
            return Err(StartError::usage(format!("mount.state_file: {e}")));
        }
        let start = start_index(settings, &state);
        let mut volumes = Vec::with_capacity(settings.volumes.len());
        for (index, v) in settings.volumes.iter().enumerate() {
            // Bounded: a root on a hung client is a volume unavailable at start, not a start
            // that hangs (the thread opening it is left behind).
            let BackendSettings::Dir { path } = &v.backend;
            let opened = {
                let opener = opener.clone();
                crate::config::bounded_at(path, move |_| opener(index)).unwrap_or_else(|| {
                    Err(format!(
                        "{} does not answer within {:?} (a hung client?)",
                        path.display(),
                        crate::config::ROOT_STAT_LIMIT
                    ))
                })
            };
            match opened {
                Ok(volume) => {
                    if let Some(Some(w)) = watches.get(index) {
                        w.serve(volume.backend.root_mark());
                    }
                    volumes.push(Some(volume))
                }
                Err(e) if index == start && start == 0 => {
                    return Err(StartError::failure(format!(
                        "cannot open the primary volume {:?} ({}): {e}",
                        v.name, v.backend
                    )));
                }
                Err(e) if index == start => {
                    return Err(StartError::failure(format!(
                        "cannot open the volume {:?} ({}), serving since the last switch: {e}; \
                         to start on the first volume of the table instead, remove {}",
                        v.name,
                        v.backend,
                        state
                            .path()
                            .map_or("the state file".into(), |p| p.display().to_string())
                    )));
                }
                Err(e) => {
                    tracing::warn!(volume = %v.name, backend = %v.backend, error = %e, "standby volume cannot be opened; it will not be switched to");
                    volumes.push(None);
                }
            }
        }
        let Some(Some(first)) = volumes.get(start).cloned() else {
            return Err(StartError::failure("the volume table is empty"));
        };

        // Probe every volume, the primary as the active one.
        let client = crate::probe::http_client().map_err(StartError::failure)?;
        let watched = settings
            .volumes
            .iter()
            .enumerate()
            .map(|(index, v)| {
                let policy = settings.health.with(&v.health);
                Watched {
                    index,
                    name: v.name.clone(),
                    probes: crate::probe::build(
                        v,
                        &policy,
                        &client,
                        watches.get(index).cloned().flatten(),
                    ),
                    policy,
                }
            })
            .collect::<Vec<_>>();
        // Evidence before belief: the first served volume's probes answer once before anything is
        // served.
        if let Some(w) = watched.get(start) {
            let (verdict, answers) = runtime.block_on(probe_once(&w.probes, w.policy.timeout));
            match verdict {
                Verdict::Deleted(e) | Verdict::PendingDelete(e) if start == 0 => {
                    return Err(StartError::usage(format!(
                        "the primary volume {:?} is not there according to its probes ({e}): \
                         check its name, marker and path (`failoverfs check` shows every answer)",
                        w.name
                    )));
                }
                Verdict::Deleted(e) | Verdict::PendingDelete(e) => {
                    return Err(StartError::usage(format!(
                        "the volume {:?}, serving since the last switch, is not there according \
                         to its probes ({e}); to start on the first volume of the table again, \
                         remove {}",
                        w.name,
                        state
                            .path()
                            .map_or("the state file".into(), |p| p.display().to_string())
                    )));
                }
                Verdict::Transient { kind, detail } => tracing::warn!(
                    volume = %w.name,
                    kind = kind.label(),
                    detail,
                    probes = answers.len(),
                    "no probe of the volume to serve answered with authority; mounting, watching it"
                ),
                Verdict::Healthy { .. } => {}
            }
        }
        let monitor = Arc::new(Monitor::spawn(runtime.handle(), watched, start));

        let failover = effective_failover(settings.failover);
        let router = Arc::new(Router::new(
            Route::serving(1, first.clone()),
            WaitPolicy {
                queue: failover.queue,
                max_wait: failover.drain_timeout,
                errno: failover.errno.0,
            },
        ));
        let vfs = Arc::new(Vfs::new(
            router.clone(),
            VfsOptions {
                read_only: settings.mount.read_only,
                stale_errno: failover.stale_errno.0,
                verify_reopen: failover.reopen_verify == ReopenVerify::SizeMtime,
            },
        ));
        // The data path's alarm makes the active volume's probe run now (see `crate::monitor`).
        {
            let (alarm, monitor) = (vfs.alarm().clone(), monitor.clone());
            runtime.spawn(async move {
                loop {
                    alarm.notified().await;
                    monitor.probe_active_now();
                }
            });
        }
        let ended = Arc::new(Notify::new());
        let ready = Arc::new(Notify::new());
        let deadlines = {
            let vfs = vfs.clone();
            Deadlines::new(
                effective_op_timeout(settings.mount.op_timeout),
                settings.mount.op_timeout_errno.0,
                settings.mount.threads,
                Box::new(move || vfs.raise_alarm()),
            )
        };
        let fs = FuseFs::new(
            ready.clone(),
            vfs.clone(),
            deadlines.clone(),
            Ttls {
                attr: settings.mount.attr_ttl,
                entry: settings.mount.entry_ttl,
            },
            ended.clone(),
        )
        .with_passthrough(settings.mount.passthrough);
        let mount_path = settings.mount_path().to_path_buf();
        let opts = MountOptions {
            path: mount_path.clone(),
            read_only: settings.mount.read_only,
            allow_other: settings.mount.allow_other,
            threads: settings.mount.threads,
            // The whole table, in order: the mount's source names no single volume, because the
            // one serving changes with every switch (`status` and the log say which serves).
            fsname: format!(
                "failoverfs:{}",
                settings
                    .volumes
                    .iter()
                    // A comma would end the mount option; keep the name readable and inert.
                    .map(|v| v.name.replace(|c: char| c == ',' || c.is_whitespace(), "_"))
                    .collect::<Vec<_>>()
                    .join("+")
            ),
            suid: settings.mount.suid,
            dev: settings.mount.dev,
        };
        // A dead mount of a failoverfs killed before it could unmount is taken away; stacking on
        // a live FUSE mount (another failoverfs, or any FUSE client) would hide it, and
        // stopping one would unmount the other's path.
        match crate::fuse::session::detach_dead_mount(&mount_path) {
            Ok(true) => tracing::warn!(
                mount = %mount_path.display(),
                "detached a dead failoverfs mount left at the mount point (its daemon was killed \
                 before it could unmount)"
            ),
            Ok(false) => {}
            Err(e) => tracing::warn!(
                mount = %mount_path.display(),
                error = %e,
                "a dead failoverfs mount is at the mount point and could not be detached"
            ),
        }
        if crate::fuse::session::is_mounted(&mount_path) {
            return Err(StartError::failure(format!(
                "cannot mount at {}: a FUSE filesystem (another failoverfs?) is already mounted \
                 there; unmount it first",
                mount_path.display()
            )));
        }
        // The admin server's socket is bound before the mount: once the mount answers, so does
        // it (what comes first waits in the backlog until it is served below).
        let admin_address = settings.admin.address(&mount_path);
        let admin_token = settings.admin.token().map_err(StartError::usage)?;
        let admin_bound = {
            let _rt = runtime.enter();
            match (admin::bind(&admin_address), settings.admin.listen.is_some()) {
                (Ok(bound), _) => bound,
                // A directory others can write: the configuration must change (exit 2).
                (Err(e), true) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                    return Err(StartError::usage(format!("admin.listen: {e}")));
                }
                (Err(e), true) => {
                    return Err(StartError::failure(format!(
                        "admin.listen: cannot listen on {admin_address:?}: {e}"
                    )));
                }
                (Err(e), false) => {
                    tracing::warn!(address = ?admin_address, error = %e, "no admin server (the default socket cannot be used)");
                    None
                }
            }
        };
        let mounted = Mounted::mount(fs, &opts).map_err(|e| {
            StartError::failure(format!("cannot mount at {}: {e}", mount_path.display()))
        })?;
        tracing::info!(
            mount = %mount_path.display(),
            volume = %first.name,
            backend = %first.backend.describe(),
            standbys = volumes.len() - 1,
            auto_unmount = mounted.auto_unmount(),
            "mounted"
        );
        // Ready once the kernel's INIT was answered (the daemon never looks at its own mount
        // point to find out: see `fuse::session`).
        let handshake = async { tokio::time::timeout(READY_WAIT, ready.notified()).await };
        match runtime.block_on(handshake) {
            Ok(()) => {
                tracing::info!(mount = %mount_path.display(), volume = %first.name, "ready");
                notify_systemd_ready();
            }
            Err(_) => tracing::warn!(
                mount = %mount_path.display(),
                waited = ?READY_WAIT,
                "the kernel has not started the FUSE session yet; serving when it does"
            ),
        }
        let cache: Arc<dyn KernelCache> = Arc::new(NotifierCache::new(mounted.notifier()));
        drop_stale_names(runtime.handle(), vfs.clone(), cache.clone());
        let events = Events::start(runtime.handle(), &settings.events, &settings.fleet());
        watch_volume_states(runtime.handle(), &monitor, &events);
        give_memory_back(runtime.handle(), vfs.clone());
        let controller =
            Controller::new(router.clone(), vfs.clone(), volumes, failover, Some(cache))
                .with_reopening(opener, watches)
                .with_calls(deadlines.clone())
                .with_events(events.clone())
                .with_state(state);
        let audit = controller.audit();
        let totals = controller.totals();
        let (commands, command_rx) = mpsc::unbounded_channel();
        let supervisor = Supervisor {
            mounted: Some(mounted),
            controller,
            monitor: monitor.clone(),
            router,
            signals,
            signals_seen: 0,
            stop_requested: false,
            commands: command_rx,
            remounted: reopen_rx,
            ended,
            settings: failover,
            mount_path: mount_path.clone(),
            active: start,
        };
        let done = runtime.spawn(supervisor.run());
        let admin_stop = CancellationToken::new();
        let mut app = App {
            runtime: Some(runtime),
            vfs,
            deadlines,
            monitor,
            audit,
            totals,
            commands,
            done: Some(done),
            mount_path,
            admin_stop,
            admin_socket: None,
            events,
        };
        if let Some(bound) = admin_bound {
            app.start_admin(settings, bound, admin_address, admin_token);
        }
        Ok(app)
    }

    /// Serve the admin API (see [`crate::admin`]) on the socket bound before the mount (a
    /// configured address that cannot be bound stops the start; the default socket is best
    /// effort, a warning).
    fn start_admin(
        &mut self,
        settings: &Settings,
        bound: admin::Bound,
        address: AdminAddress,
        token: Option<String>,
    ) {
        let (switches, mut asked) = mpsc::unbounded_channel::<SwitchRequest>();
        let commands = self.commands.clone();
        let state = Arc::new(AdminState {
            mount: self.mount_path.clone(),
            fleet: settings.fleet(),
            vfs: self.vfs.clone(),
            monitor: self.monitor.clone(),
            audit: self.audit.clone(),
            totals: self.totals.clone(),
            deadlines: self.deadlines.clone(),
            switches,
            token,
        });
        let Some(rt) = self.runtime.as_ref() else {
            return;
        };
        // Manual switches from the admin server go to the supervisor like any other command.
        rt.spawn(async move {
            while let Some(r) = asked.recv().await {
                let _ = commands.send(Command::Switch {
                    target: Some(r.target),
                    reason: r.reason,
                    reply: r.reply,
                });
            }
        });
        let _rt = rt.enter();
        admin::serve(bound, state, self.admin_stop.clone());
        if let AdminAddress::Unix(p) = address {
            self.admin_socket = Some(p);
        }
    }

    /// The operations' deadline keeper (`mount.op_timeout`).
    pub fn deadlines(&self) -> &Arc<Deadlines> {
        &self.deadlines
    }

    /// The logical volume.
    pub fn vfs(&self) -> &Arc<Vfs> {
        &self.vfs
    }

    /// The volume monitor.
    pub fn monitor(&self) -> &Monitor {
        &self.monitor
    }

    /// Every switch so far.
    pub fn audit(&self) -> Vec<AuditEntry> {
        self.audit.lock().clone()
    }

    /// The mount point.
    pub fn mount_path(&self) -> &Path {
        &self.mount_path
    }

    /// Switch now, to `target` or to the next healthy volume (drills, tests, and later the admin
    /// API). Goes through the same steps as a switch on a confirmed deletion.
    pub fn switch_to(&self, target: Option<usize>, reason: &str) -> Option<Outcome> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Switch {
                target,
                reason: reason.to_string(),
                reply,
            })
            .ok()?;
        self.runtime.as_ref()?.block_on(rx).ok()
    }

    /// How the process ended, if it has (without waiting).
    pub fn exited(&mut self) -> Option<Exit> {
        if self.done.as_ref().is_some_and(|d| d.is_finished()) {
            return Some(self.wait());
        }
        None
    }

    /// Serve until the supervisor ends (signal, deletion, outside unmount).
    pub fn run(mut self) -> Exit {
        self.wait()
    }

    /// Stop now: drain, fence, unmount.
    pub fn shutdown(mut self) -> Exit {
        let _ = self.commands.send(Command::Stop);
        self.wait()
    }

    fn wait(&mut self) -> Exit {
        let (Some(done), Some(rt)) = (self.done.take(), self.runtime.as_ref()) else {
            return Exit::Clean;
        };
        let exit = match rt.block_on(done) {
            Ok(exit) => exit,
            Err(e) => {
                tracing::error!(error = %e, "the supervisor failed");
                Exit::Failure
            }
        };
        self.events.emit(
            "exiting",
            serde_json::json!({ "code": exit as u8, "mount": self.mount_path.display().to_string() }),
        );
        rt.block_on(self.events.flush(EVENTS_FLUSH));
        exit
    }
}

impl Drop for App {
    fn drop(&mut self) {
        if self.done.is_some() {
            let _ = self.commands.send(Command::Stop);
            self.wait();
        }
        self.admin_stop.cancel();
        if let Some(p) = self.admin_socket.take() {
            let _ = std::fs::remove_file(p);
        }
        self.monitor.shutdown();
        // A blocking task stuck in a hung filesystem must not keep the process from ending.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

/// How long the way out waits for the event hooks to hear `exiting`.
const EVENTS_FLUSH: Duration = Duration::from_secs(5);

/// Emit `volume_state_changed` whenever a volume's confirmed state changes kind.
fn watch_volume_states(rt: &tokio::runtime::Handle, monitor: &Monitor, events: &Events) {
    for i in 0.. {
        let Some(mut rx) = monitor.subscribe(i) else {
            break;
        };
        let events = events.clone();
        rt.spawn(async move {
            let mut last = rx.borrow_and_update().health.name();
            while rx.changed().await.is_ok() {
                let (name, to, detail) = {
                    let s = rx.borrow_and_update();
                    (s.name.clone(), s.health.name(), s.health.to_string())
                };
                if to != last {
                    events.emit(
                        "volume_state_changed",
                        serde_json::json!({ "volume": name, "from": last, "to": to, "detail": detail }),
                    );
                    last = to;
                }
            }
        });
    }
}

/// How often [`give_memory_back`] looks, and by how many nodes the inode table must have grown
/// or shrunk since it last gave memory back.
const TRIM_EVERY: Duration = Duration::from_secs(10);
const TRIM_AFTER_NODES: usize = 10_000;

/// Hand the allocator's free pages back to the system after the inode table grew or shrank a
/// lot. The allocator keeps what the table's maps left behind when they grew, and what forgotten
/// nodes and finished listings freed, until asked: after `ls -l` of 200,000 files that is about
/// 40 bytes per inode (measured: 250 resident against 208 after a trim). A trim walks the free
/// lists (under a millisecond with 200,000 nodes); it runs on a blocking thread, never in a FUSE
/// worker.
/// Drop what the kernel cached and the daemon found no longer holds (names holding another file
/// than the kernel's node, see `Namespace::check_other_names`; attributes the volume changed
/// beyond a request), from a blocking thread: never from a FUSE worker, which the
/// kernel may need to answer meanwhile.
fn drop_stale_names(rt: &tokio::runtime::Handle, vfs: Arc<Vfs>, cache: Arc<dyn KernelCache>) {
    let wake = vfs.stale_names_wake();
    rt.spawn(async move {
        loop {
            wake.notified().await;
            let names = vfs.take_stale_names();
            if names.is_empty() {
                continue;
            }
            let cache = cache.clone();
            let _ = tokio::task::spawn_blocking(move || {
                for stale in names {
                    let r = match &stale {
                        Stale::Entry(parent, name) => cache.invalidate_entry(*parent, name),
                        Stale::Attributes(ino) => cache.invalidate_attributes(*ino),
                    };
                    if let Err(e) = r {
                        tracing::debug!(?stale, error = %e, "cannot drop a stale kernel cache entry");
                    }
                }
            })
            .await;
        }
    });
}

fn give_memory_back(rt: &tokio::runtime::Handle, vfs: Arc<Vfs>) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    rt.spawn(async move {
        let mut last = vfs.inodes().stats().nodes;
        let mut tick = tokio::time::interval(TRIM_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = vfs.inodes().stats().nodes;
            if now.abs_diff(last) < TRIM_AFTER_NODES {
                continue;
            }
            last = now;
            let trim = tokio::task::spawn_blocking(|| {
                let began = std::time::Instant::now();
                // SAFETY: malloc_trim takes no pointers; glibc locks each arena while it trims
                // it (an allocation in a worker waits that long: under a millisecond with
                // 200,000 nodes, measured).
                unsafe { libc::malloc_trim(0) };
                began.elapsed()
            });
            if let Ok(took) = trim.await {
                tracing::debug!(
                    nodes = now,
                    took_ms = took.as_millis() as u64,
                    "gave free memory back"
                );
            }
        }
    });
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = (rt, vfs);
}

/// Which volume of the table to serve first: the one the state file names, when it names one
/// other than the first (a switch happened before this start), else the first.
fn start_index(settings: &Settings, state: &StateFile) -> usize {
    let Some(record) = state.load() else {
        return 0;
    };
    match settings
        .volumes
        .iter()
        .position(|v| v.name == record.active)
    {
        Some(0) => 0,
        Some(index) => {
            tracing::warn!(
                volume = %record.active,
                since = record.since,
                reason = %record.reason,
                first = %settings.volumes[0].name,
                file = %state.path().map(|p| p.display().to_string()).unwrap_or_default(),
                "serving the volume the last switch moved to, not the first of the table; the \
                 first serves again after `failoverfs switch` to it, or once the state file is \
                 removed before a start"
            );
            index
        }
        None => {
            tracing::warn!(
                volume = %record.active,
                file = %state.path().map(|p| p.display().to_string()).unwrap_or_default(),
                "the state file names a volume that is not in the table; starting on the first"
            );
            0
        }
    }
}

/// Every open file of every application holds a descriptor of ours (and directories during a
/// listing): take the hard limit of open files, and say so.
fn raise_open_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::info!(
                from = soft,
                to = hard,
                directory_pins = crate::namespace::pin_limit(),
                "raised the open file limit"
            ),
            Err(e) => tracing::warn!(soft, hard, error = %e, "cannot raise the open file limit"),
        },
        Ok((soft, _)) => tracing::info!(
            limit = soft,
            directory_pins = crate::namespace::pin_limit(),
            "open file limit"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot read the open file limit"),
    }
}

/// Keep every waiting operation well inside the kernel's own FUSE request timeout, when the
/// kernel has one: past it, the kernel aborts the whole connection.
fn effective_failover(mut f: FailoverSettings) -> FailoverSettings {
    if let Some(limit) = kernel_request_timeout()
        && f.drain_timeout + Duration::from_secs(1) >= limit
    {
        let clamped = limit / 2;
        tracing::warn!(
            drain_timeout = ?f.drain_timeout,
            kernel_timeout = ?limit,
            using = ?clamped,
            "failover.drain_timeout is too close to the kernel's FUSE request timeout; lowering it"
        );
        f.drain_timeout = clamped;
    }
    f
}

/// `op_timeout`, lowered to half the kernel's FUSE request timeout when it comes too close to
/// it: past that timeout the kernel aborts the whole connection (a dead mount), where ours only
/// fails one operation.
fn effective_op_timeout(op_timeout: Duration) -> Duration {
    match kernel_request_timeout() {
        Some(limit) if op_timeout + Duration::from_secs(1) >= limit => {
            let clamped = limit / 2;
            tracing::warn!(
                op_timeout = ?op_timeout,
                kernel_timeout = ?limit,
                using = ?clamped,
                "mount.op_timeout is too close to the kernel's FUSE request timeout; lowering it"
            );
            clamped
        }
        _ => op_timeout,
    }
}

/// The kernel's FUSE request timeout, if one is configured (Linux 6.14+).
fn kernel_request_timeout() -> Option<Duration> {
    let read = |name: &str| -> Option<u64> {
        std::fs::read_to_string(format!("/proc/sys/fs/fuse/{name}"))
            .ok()?
            .trim()
            .parse()
            .ok()
            .filter(|v| *v > 0)
    };
    match (read("default_request_timeout"), read("max_request_timeout")) {
        (Some(d), Some(m)) => Some(Duration::from_secs(d.min(m))),
        (Some(d), None) => Some(Duration::from_secs(d)),
        _ => None,
    }
}

struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Signals, StartError> {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(int), Ok(term)) => Ok(Signals { int, term }),
            (Err(e), _) | (_, Err(e)) => Err(StartError::failure(format!(
                "cannot listen for signals: {e}"
            ))),
        }
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
        }
    }
}

/// What the active volume's state asks of the change hold.
enum Hold {
    /// Suspected deleted (strong evidence): hold changes.
    Set(String),
    /// The served root is detached from the volume's path: refuse changes (nothing written
    /// through it would be found at the volume again), whatever `hold_writes` says.
    Refuse(String),
    /// Healthy again (or nothing known yet): release them.
    Release,
    /// Transient or confirmed: leave the hold as it is (the switch replaces the route).
    Keep,
}

struct Supervisor {
    mounted: Option<Mounted>,
    controller: Controller,
    monitor: Arc<Monitor>,
    router: Arc<Router>,
    signals: Signals,
    signals_seen: u32,
    stop_requested: bool,
    commands: mpsc::UnboundedReceiver<Command>,
    /// Volumes whose root was found remounted (from their probes).
    remounted: mpsc::UnboundedReceiver<usize>,
    ended: Arc<Notify>,
    settings: FailoverSettings,
    mount_path: PathBuf,
    active: usize,
}

impl Supervisor {
    async fn run(mut self) -> Exit {
        loop {
            let Some(mut state) = self.monitor.subscribe(self.active) else {
                return self.stop(true).await;
            };
            let (deleted, suspect, outage) = {
                let s = state.borrow_and_update();
                // An outage of the active volume, for `on_unavailable` (never a volume that was
                // never seen healthy: that is a configuration error).
                let outage = match &s.health {
                    Health::Unreachable { kind, detail }
                        if *kind != TransientKind::NeverHealthy =>
                    {
                        Some((s.since, format!("{}: {detail}", kind.label())))
                    }
                    _ => None,
                };
                let deleted = match &s.health {
                    Health::Deleted {
                        evidence, pending, ..
                    } => Some((evidence.to_string(), *pending, s.since)),
                    _ => None,
                };
                // A suspicion holds changes; only a healthy answer clears it. A transient answer
                // in between (a probe timing out under load, a master election) says nothing
                // either way: the hold stays, each waiting change still bounded by
                // `drain_timeout`.
                let suspect = match &s.health {
                    Health::Suspect { evidence, .. } if evidence.detached => {
                        Hold::Refuse(evidence.to_string())
                    }
                    // The same seen by the root check of a volume a master watches.
                    Health::Unreachable {
                        kind: TransientKind::Detached,
                        detail,
                    } => Hold::Refuse(detail.clone()),
                    Health::Suspect { evidence, .. } if evidence.strength == Strength::Strong => {
                        Hold::Set(evidence.to_string())
                    }
                    Health::Unreachable { .. } | Health::Deleted { .. } => Hold::Keep,
                    _ => Hold::Release,
                };
                (deleted, suspect, outage)
            };
            self.hold_changes(suspect);
            let policy = self.settings.on_unavailable;
            let outage = outage.filter(|_| policy.action != UnavailableAction::Wait);
            if let Some((since, detail)) = &outage
                && since.elapsed() >= policy.after
            {
                let trigger = Trigger::Unavailable {
                    detail: format!("unavailable for {}s: {detail}", since.elapsed().as_secs()),
                    exit: policy.action == UnavailableAction::Exit,
                };
                if let (Some(exit), _) = self.switch(trigger, Instant::now()).await {
                    return exit;
                }
                continue;
            }
            let outage_over = async {
                match &outage {
                    Some((since, _)) => tokio::time::sleep_until(*since + policy.after).await,
                    None => std::future::pending().await,
                }
            };
            if let Some((evidence, pending, since)) = deleted {
                let trigger = Trigger::Deleted { evidence, pending };
                if let (Some(exit), _) = self.switch(trigger, since).await {
                    return exit;
                }
                continue;
            }
            tokio::select! {
                sig = self.signals.recv() => {
                    self.signals_seen += 1;
                    tracing::info!(signal = sig, "stopping");
                    return self.stop(false).await;
                }
                _ = self.ended.notified() => {
                    tracing::info!(mount = %self.mount_path.display(), "unmounted from outside; stopping");
                    self.mounted = None;
                    return Exit::Clean;
                }
                cmd = self.commands.recv() => match cmd {
                    None | Some(Command::Stop) => return self.stop(false).await,
                    Some(Command::Switch { target, reason, reply }) => {
                        let trigger = Trigger::Manual { target, reason };
                        let (exit, outcome) = self.switch(trigger, Instant::now()).await;
                        let _ = reply.send(outcome);
                        if let Some(exit) = exit {
                            return exit;
                        }
                    }
                },
                Some(index) = self.remounted.recv() => {
                    if index != self.active {
                        self.controller.refresh_standby(index).await;
                    } else if let (Some(exit), _) =
                        self.switch(Trigger::Remounted { index }, Instant::now()).await
                    {
                        return exit;
                    }
                }
                _ = state.changed() => {}
                _ = outage_over => {}
            }
        }
    }

    /// Hold changes on the current route while the active volume is suspected deleted (strong
    /// evidence, `hold_writes = "suspect"`), release them when the suspicion clears. A switch
    /// publishes a route that holds nothing.
    fn hold_changes(&self, wish: Hold) {
        let holds = self.settings.hold_writes == HoldWrites::Suspect;
        let (changes, evidence) = match wish {
            Hold::Set(evidence) if holds => (Changes::Hold, evidence),
            Hold::Set(_) => return,
            Hold::Refuse(evidence) => (Changes::Refuse, evidence),
            Hold::Release => (Changes::Run, String::new()),
            Hold::Keep => return,
        };
        let route = self.router.current();
        if route.changes() == changes {
            return;
        }
        self.router.set_changes(route.generation(), changes);
        let volume = &route.volume().name;
        match changes {
            Changes::Hold => tracing::warn!(
                volume = %volume,
                evidence,
                "holding changes: the active volume is suspected deleted (reads go on)"
            ),
            Changes::Refuse => tracing::warn!(
                volume = %volume,
                evidence,
                errno = crate::error::errno_name(self.router.policy().errno),
                "refusing changes: the served root is no longer at the volume's path, so \
                 nothing written through it would be found there (reads go on)"
            ),
            Changes::Run => tracing::info!(
                volume = %volume,
                "changes released: the suspicion cleared"
            ),
        }
    }

    /// Run a switch, signals counted meanwhile: the first lets it finish, the second forces.
    async fn run_switch(&mut self, trigger: Trigger) -> Outcome {
        let healths: Vec<Health> = self
            .monitor
            .states()
            .into_iter()
            .map(|s| s.health)
            .collect();
        let signals = &mut self.signals;
        let seen = &mut self.signals_seen;
        let stop_requested = &mut self.stop_requested;
        let forced = async move {
            loop {
                let sig = signals.recv().await;
                *seen += 1;
                *stop_requested = true;
                if *seen >= 2 {
                    tracing::warn!(signal = sig, "second signal: forcing the stop");
                    return;
                }
                tracing::info!(signal = sig, "stop requested: finishing the switch first");
            }
        };
        self.controller.switch(trigger, &healths, forced).await
    }

    /// One switch, whatever started it; `Some(exit)` when the process must end. With nothing to
    /// switch to, a confirmed deletion ends the process (exit 3) while a manual switch leaves
    /// the current volume serving.
    async fn switch(&mut self, trigger: Trigger, started: Instant) -> (Option<Exit>, Outcome) {
        let deleted = match &trigger {
            Trigger::Deleted { evidence, .. } => Some(evidence.clone()),
            Trigger::Unavailable { detail, .. } => Some(detail.clone()),
            Trigger::Remounted { .. } | Trigger::Manual { .. } => None,
        };
        let from = self.router.current().volume().name.clone();
        let outcome = self.run_switch(trigger).await;
        let exit = match (outcome, deleted) {
            (Outcome::Swapped { to, .. }, _) => {
                self.active = to;
                self.monitor.set_active(to);
                None
            }
            (Outcome::Interrupted, _) => Some(self.stop(true).await),
            (Outcome::NoTarget | Outcome::Refused, Some(evidence)) => {
                Some(self.volume_deleted(&from, &evidence, started).await)
            }
            (Outcome::NoTarget | Outcome::Refused, None) => {
                // If the gate was closed for nothing, reopen: the same volume, a new generation.
                let old = self.router.current();
                if old.gate().is_closed() {
                    self.controller
                        .reopen(old.generation() + 1, old.volume().clone());
                }
                None
            }
        };
        let exit = match exit {
            None if self.stop_requested => Some(self.stop(self.signals_seen >= 2).await),
            e => e,
        };
        (exit, outcome)
    }

    /// The active volume is gone and nothing can take over: fence, unmount (or stay fenced),
    /// one final line, exit 3.
    async fn volume_deleted(
        &mut self,
        volume: &str,
        evidence: &str,
        confirmed_at: Instant,
    ) -> Exit {
        let old = self.router.current();
        let in_flight = self
            .controller
            .audit()
            .lock()
            .last()
            .map(|a| (a.in_flight, a.still_running))
            .unwrap_or((0, 0));
        self.router.publish(Route::fenced(
            old.generation() + 1,
            old.volume().clone(),
            self.settings.fence_errno.0,
        ));
        let fenced = self.settings.leave_mount == LeaveMount::Fenced;
        if !fenced {
            self.unmount(false, None).await;
        }
        let took_ms = crate::failover::millis(confirmed_at.elapsed());
        tracing::error!(
            volume,
            evidence,
            drained = in_flight.0.saturating_sub(in_flight.1),
            still_running = in_flight.1,
            took_ms,
            mount = %self.mount_path.display(),
            mount_left = if fenced { "fenced" } else { "unmounted" },
            exit_code = Exit::VolumeDeleted as u8,
            "volume deleted, no usable standby: do not restart"
        );
        if fenced && self.stop_requested {
            // A stop was asked for during the switch: honour it, still with exit 3.
            self.unmount(self.signals_seen >= 2, None).await;
        } else if fenced {
            // Answer every operation with the fence errno until an operator unmounts.
            tokio::select! {
                _ = self.ended.notified() => { self.mounted = None; }
                _ = self.signals.recv() => { self.unmount(false, None).await; }
                _ = async { while let Some(c) = self.commands.recv().await {
                    if matches!(c, Command::Stop) { break; }
                } } => { self.unmount(false, None).await; }
            }
        }
        Exit::VolumeDeleted
    }

    /// Stop: close the gate, drain (unless forced; a signal meanwhile forces), fence, unmount.
    /// Bounded by `drain_timeout` + 1 s whatever the volume does: the drain leaves a reserve,
    /// and the unmount waits only for what is left.
    async fn stop(&mut self, force: bool) -> Exit {
        let by = Instant::now() + self.settings.drain_timeout + STOP_SLACK;
        let route = self.router.current();
        route.gate().close();
        // Calls stuck in a volume (this one after its drain, or an earlier one, left at a
        // switch) keep their workers, and so the FUSE session, whatever the unmount waits for:
        // it then waits only briefly.
        let mut stuck = self.controller.calls_stuck() > 0;
        if !force && route.fenced_errno().is_none() {
            let drain = route
                .gate()
                .wait_drained(crate::failover::drain_budget(self.settings.drain_timeout));
            let drained = tokio::select! {
                d = drain => d,
                _ = self.signals.recv() => {
                    tracing::warn!("second signal: not waiting for in-flight operations");
                    false
                }
            };
            if !drained {
                tracing::warn!(
                    in_flight = route.gate().in_flight(),
                    "operations still running; unmounting anyway"
                );
                stuck = true;
            }
        }
        if route.fenced_errno().is_none() {
            self.router.publish(Route::fenced(
                route.generation() + 1,
                route.volume().clone(),
                libc::ENOTCONN,
            ));
        }
        if self.unmount(force || stuck, Some(by)).await {
            Exit::Clean
        } else {
            Exit::Failure
        }
    }

    /// Unmount; a stop passes the time it must be done `by`.
    async fn unmount(&mut self, force: bool, by: Option<Instant>) -> bool {
        let Some(mounted) = self.mounted.take() else {
            return true;
        };
        let grace = if force {
            Duration::from_millis(200)
        } else {
            // Half of what is left of the stop's bound for open files, half for the workers
            // after an abort (see `Mounted::unmount`), keeping a reserve for the exit.
            let left = by
                .map(|by| by.saturating_duration_since(Instant::now()))
                .unwrap_or(UNMOUNT_GRACE * 2 + UNMOUNT_RESERVE);
            (left.saturating_sub(UNMOUNT_RESERVE) / 2)
                .clamp(Duration::from_millis(200), UNMOUNT_GRACE)
        };
        let path = self.mount_path.clone();
        let res = tokio::task::spawn_blocking(move || mounted.unmount(grace)).await;
        match res {
            Ok(Ok(Unmounted::Clean)) | Ok(Ok(Unmounted::Gone)) => {
                tracing::info!(mount = %path.display(), "unmounted");
                true
            }
            Ok(Ok(Unmounted::Detached)) => {
                tracing::info!(mount = %path.display(), "unmounted (lazily: files were open)");
                true
            }
            Ok(Err(e)) => {
                tracing::error!(mount = %path.display(), error = %e, "unmount failed");
                false
            }
            Err(e) => {
                tracing::error!(mount = %path.display(), error = %e, "unmount task failed");
                false
            }
        }
    }
}
