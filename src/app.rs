//! The running process: open the volumes, mount, serve until told to stop, stop cleanly.
//!
//! Invariants:
//! - [`App::start`] returns only with the mount live and serving the primary (route generation 1).
//! - Stopping (signal, [`App::shutdown`], or drop) closes the route's gate, lets in-flight
//!   operations finish (at most the drain timeout), fences the route so nothing new starts, then
//!   unmounts (lazily if files are open). Nothing stays mounted after the process ends.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::backend::Backend;
use crate::config::Settings;
use crate::exit::Exit;
use crate::fuse::session::{MountOptions, Mounted, Unmounted};
use crate::fuse::{FuseFs, Ttls};
use crate::monitor::{Monitor, Watched};
use crate::routing::{Route, Router, Volume, WaitPolicy};
use crate::vfs::{Vfs, VfsOptions};

/// How long a stop waits for in-flight operations.
const STOP_DRAIN: Duration = Duration::from_secs(5);
/// How long an unmount waits for open files before aborting the connection.
const UNMOUNT_GRACE: Duration = Duration::from_secs(2);

struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

/// Why the process could not start.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartError(pub String);

/// Wraps a volume's backend as it is opened (index in the table, backend): the seam tests and
/// drills use to inject faults ([`crate::backend::faulty`]).
pub type WrapBackend = dyn Fn(usize, Arc<dyn Backend>) -> Arc<dyn Backend> + Send + Sync;

/// Optional seams into [`App::start_with`].
#[derive(Default)]
pub struct Hooks {
    /// Applied to every backend when it is opened.
    pub wrap_backend: Option<Box<WrapBackend>>,
}

/// A mounted, serving failoverfs; see the module docs.
pub struct App {
    runtime: tokio::runtime::Runtime,
    monitor: Monitor,
    signals: Option<Signals>,
    vfs: Arc<Vfs>,
    volumes: Vec<Option<Arc<Volume>>>,
    mounted: Option<Mounted>,
    ended: Arc<Notify>,
    mount_path: PathBuf,
}

impl App {
    /// Open the volumes, build the first route and mount.
    pub fn start(settings: &Settings) -> Result<App, StartError> {
        Self::start_with(settings, Hooks::default())
    }

    /// [`App::start`] with test seams.
    pub fn start_with(settings: &Settings, hooks: Hooks) -> Result<App, StartError> {
        // Modes from the kernel are final (it applied the caller's umask already).
        nix::sys::stat::umask(nix::sys::stat::Mode::empty());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("failoverfs-rt")
            .enable_all()
            .build()
            .map_err(|e| StartError(format!("cannot start the async runtime: {e}")))?;
        // Listen for stop signals before the mount exists, so a signal never finds the default
        // action (terminate without unmounting) in place.
        let signals = {
            use tokio::signal::unix::{SignalKind, signal};
            let _rt = runtime.enter();
            match (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) {
                (Ok(int), Ok(term)) => Signals { int, term },
                (Err(e), _) | (_, Err(e)) => {
                    return Err(StartError(format!("cannot listen for signals: {e}")));
                }
            }
        };

        let mut volumes = Vec::with_capacity(settings.volumes.len());
        for (index, v) in settings.volumes.iter().enumerate() {
            match crate::backend::open(&v.backend) {
                Ok(backend) => {
                    let backend = match &hooks.wrap_backend {
                        Some(wrap) => wrap(index, backend),
                        None => backend,
                    };
                    volumes.push(Some(Arc::new(Volume {
                        index,
                        name: v.name.clone(),
                        backend,
                    })))
                }
                Err(e) if index == 0 => {
                    return Err(StartError(format!(
                        "cannot open the primary volume {:?} ({}): {e}",
                        v.name, v.backend
                    )));
                }
                Err(e) => {
                    tracing::warn!(volume = %v.name, backend = %v.backend, error = %e, "standby volume not usable");
                    volumes.push(None);
                }
            }
        }
        let Some(Some(primary)) = volumes.first().cloned() else {
            return Err(StartError("the volume table is empty".into()));
        };

        // Probe every volume, the primary as the active one.
        let client = crate::probe::http_client().map_err(StartError)?;
        let watched = settings
            .volumes
            .iter()
            .enumerate()
            .map(|(index, v)| {
                let policy = settings.health.with(&v.health);
                Watched {
                    index,
                    name: v.name.clone(),
                    probes: crate::probe::build(v, &policy, &client),
                    policy,
                }
            })
            .collect();
        let monitor = Monitor::spawn(runtime.handle(), watched, 0);

        let router = Arc::new(Router::new(
            Route::serving(1, primary.clone()),
            WaitPolicy::default(),
        ));
        let vfs = Arc::new(Vfs::new(
            router,
            VfsOptions {
                read_only: settings.mount.read_only,
                ..Default::default()
            },
        ));
        let ended = Arc::new(Notify::new());
        let fs = FuseFs::new(
            vfs.clone(),
            Ttls {
                attr: settings.mount.attr_ttl,
                entry: settings.mount.entry_ttl,
            },
            ended.clone(),
        );
        let mount_path = settings.mount_path().to_path_buf();
        let opts = MountOptions {
            path: mount_path.clone(),
            read_only: settings.mount.read_only,
            allow_other: settings.mount.allow_other,
            threads: settings.mount.threads,
            fsname: format!("failoverfs:{}", primary.name),
        };
        let mounted = Mounted::mount(fs, &opts)
            .map_err(|e| StartError(format!("cannot mount at {}: {e}", mount_path.display())))?;
        tracing::info!(
            mount = %mount_path.display(),
            volume = %primary.name,
            backend = %primary.backend.describe(),
            standbys = volumes.len() - 1,
            auto_unmount = mounted.auto_unmount(),
            "mounted"
        );
        Ok(App {
            runtime,
            monitor,
            signals: Some(signals),
            vfs,
            volumes,
            mounted: Some(mounted),
            ended,
            mount_path,
        })
    }

    /// The logical volume.
    pub fn vfs(&self) -> &Arc<Vfs> {
        &self.vfs
    }

    /// The mount point.
    pub fn mount_path(&self) -> &Path {
        &self.mount_path
    }

    /// The volume monitor.
    pub fn monitor(&self) -> &Monitor {
        &self.monitor
    }

    /// The opened volumes, in table order (`None` where a volume could not be opened).
    pub fn volumes(&self) -> &[Option<Arc<Volume>>] {
        &self.volumes
    }

    /// Serve until SIGINT/SIGTERM or until the mount goes away, then stop.
    pub fn run(mut self) -> Exit {
        let ended = self.ended.clone();
        let Some(mut signals) = self.signals.take() else {
            return self.stop();
        };
        let why = self.runtime.block_on(async move {
            tokio::select! {
                _ = signals.int.recv() => "SIGINT",
                _ = signals.term.recv() => "SIGTERM",
                _ = ended.notified() => "unmounted from outside",
            }
        });
        tracing::info!(reason = why, "stopping");
        self.stop()
    }

    /// Stop now: drain, fence, unmount.
    pub fn shutdown(mut self) -> Exit {
        self.stop()
    }

    fn stop(&mut self) -> Exit {
        let Some(mounted) = self.mounted.take() else {
            return Exit::Clean;
        };
        self.monitor.shutdown();
        let router = self.vfs.router().clone();
        let route = router.current();
        route.gate().close();
        let drained = self.runtime.block_on(route.gate().wait_drained(STOP_DRAIN));
        if !drained {
            tracing::warn!(
                in_flight = route.gate().in_flight(),
                "operations still running after the drain timeout; unmounting anyway"
            );
        }
        router.publish(Route::fenced(
            route.generation() + 1,
            route.volume().clone(),
            libc::ENOTCONN,
        ));
        match mounted.unmount(UNMOUNT_GRACE) {
            Ok(Unmounted::Clean) | Ok(Unmounted::Gone) => {
                tracing::info!(mount = %self.mount_path.display(), "unmounted");
                Exit::Clean
            }
            Ok(Unmounted::Detached) => {
                tracing::info!(mount = %self.mount_path.display(), "unmounted (lazily: files were open)");
                Exit::Clean
            }
            Err(e) => {
                tracing::error!(mount = %self.mount_path.display(), error = %e, "unmount failed");
                Exit::Failure
            }
        }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        if self.mounted.is_some() {
            self.stop();
        }
    }
}
