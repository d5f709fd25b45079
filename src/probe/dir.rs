//! The `dir` probe: the volume root itself, on a mounted filesystem.
//!
//! - root missing, or not a directory: deleted;
//! - `require_mountpoint` and the root is on the same device as its parent (the empty directory
//!   left behind when a network volume is unmounted): deleted;
//! - `marker` given and missing: deleted;
//! - `stat` not back within the timeout (a hung mount), `ENOTCONN`, `EIO` or any other error:
//!   transient.
//!
//! The `stat` calls run on a thread of their own, never on the async runtime: a hung filesystem
//! blocks that thread only. While one is still hung, the next probe does not start another one.
//!
//! **The served root is checked, not assumed.** A `dir` backend holds its root open, so the
//! directory it serves and the directory at the configured path can part: the volume moved away
//! (`mv vol vol.old && mkdir vol`), its filesystem unmounted (lazily, or by a client that
//! stopped) or remounted (a client restart). Every round compares the path's [`RootMark`]
//! (directory identity and mount id) with the served one, kept in the volume's [`RootWatch`]:
//! - the same: the checks above apply;
//! - another directory that is the same volume (the `marker` is there; without a marker, the
//!   same inode number and birth time, as after a remount): the root is re-opened, through the
//!   switch controller (drain, swap to the fresh root, re-open handles), and the round answers
//!   Healthy;
//! - another directory: the served root is detached, which is weak deletion evidence (a client
//!   may be restarting): confirmed only over the weak window, and cleared as soon as the volume
//!   is back at its path.
//!
//! A `dir` volume probed only by other probes (a CubeFS master) still gets the root comparison,
//! as a probe that only ever answers Healthy or Transient: re-opening a remounted root must not
//! depend on which probes an operator chose, but existence is then the master's call.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::{Authority, BoxFuture, Evidence, Probe, Strength, TransientKind, Verdict};
use crate::backend::RootMark;
use crate::backend::dir::mark_of;
use crate::config::{BackendSettings, DirProbeSettings};

/// The root a `dir` volume's backend serves, shared by the volume's probes (which compare it with
/// the path) and whoever opens the backend (which records it). See the module docs.
#[derive(Debug)]
pub struct RootWatch {
    index: usize,
    path: PathBuf,
    served: Mutex<Option<RootMark>>,
    asked: AtomicBool,
    reopen: mpsc::UnboundedSender<usize>,
}

impl RootWatch {
    /// The watch of volume `index`, whose backend serves the directory at `path`; a root found
    /// remounted is reported on `reopen` (once, until [`RootWatch::serve`] records a new root).
    pub fn new(index: usize, path: PathBuf, reopen: mpsc::UnboundedSender<usize>) -> Arc<Self> {
        Arc::new(RootWatch {
            index,
            path,
            served: Mutex::new(None),
            asked: AtomicBool::new(false),
            reopen,
        })
    }

    /// The backend now serves `mark` (`None`: nothing is served, nothing to compare).
    pub fn serve(&self, mark: Option<RootMark>) {
        *self.served.lock() = mark;
        self.asked.store(false, Ordering::Release);
    }

    /// What is served now.
    pub fn served(&self) -> Option<RootMark> {
        *self.served.lock()
    }

    /// Let the next round ask again (re-opening failed).
    pub fn retry(&self) {
        self.asked.store(false, Ordering::Release);
    }

    fn ask_reopen(&self) {
        if !self.asked.swap(true, Ordering::AcqRel) {
            let _ = self.reopen.send(self.index);
        }
    }
}

/// How the configured path relates to the served root.
#[derive(Debug, PartialEq, Eq)]
pub enum RootCheck {
    /// Nothing to compare (no served root).
    Unknown,
    /// The path cannot be read (a dead or failing client under it: `ENOTCONN`, `EIO`; or gone).
    Unreadable(String),
    /// The path is the served root.
    Same,
    /// The path holds the same volume through another directory or mount: re-open it.
    Remounted,
    /// The path holds something else: the served root is detached.
    Detached(String),
}

/// Compare the directory at `path` with `served` (blocking). `marker` (absolute) vouches for a
/// replacement being the same volume.
pub fn compare_root(path: &Path, served: Option<RootMark>, marker: Option<&Path>) -> RootCheck {
    let Some(served) = served else {
        return RootCheck::Unknown;
    };
    let now = match mark_of(path) {
        Ok(now) => now,
        Err(e) => return RootCheck::Unreadable(e.to_string()),
    };
    if now == served {
        return RootCheck::Same;
    }
    let same_volume = match marker {
        Some(m) => std::fs::symlink_metadata(m).is_ok(),
        None => now.id.ino == served.id.ino && now.id.birth == served.id.birth,
    };
    if same_volume {
        RootCheck::Remounted
    } else {
        RootCheck::Detached(format!(
            "the root served (device {}, inode {}, mount {}) is no longer at {} (moved, replaced \
             or unmounted; it holds device {}, inode {}, mount {})",
            served.id.dev,
            served.id.ino,
            served.mount,
            path.display(),
            now.id.dev,
            now.id.ino,
            now.mount
        ))
    }
}

/// See the module docs.
#[derive(Clone)]
pub struct DirProbe {
    path: PathBuf,
    marker: Option<PathBuf>,
    require_mountpoint: bool,
    timeout: Duration,
    busy: Arc<AtomicBool>,
    watch: Option<Arc<RootWatch>>,
    /// Only the root comparison, never deletion evidence (other probes decide existence).
    root_only: bool,
}

impl DirProbe {
    /// A probe of `settings.path`, or of the `dir` backend's root. `watch` is the backend's
    /// served root; it is compared only when the probe watches the backend's own path.
    pub fn new(
        settings: &DirProbeSettings,
        backend: &BackendSettings,
        watch: Option<Arc<RootWatch>>,
    ) -> DirProbe {
        let path = settings.path.clone().unwrap_or_else(|| match backend {
            BackendSettings::Dir { path } => path.clone(),
        });
        DirProbe {
            marker: settings.marker.as_ref().map(|m| path.join(m)),
            watch: watch.filter(|w| w.path == path),
            path,
            require_mountpoint: settings.require_mountpoint,
            timeout: settings.timeout,
            busy: Arc::new(AtomicBool::new(false)),
            root_only: false,
        }
    }

    /// Only the root comparison of `watch`: Healthy or Transient, never a deletion.
    pub fn root_only(watch: Arc<RootWatch>) -> DirProbe {
        DirProbe {
            path: watch.path.clone(),
            marker: None,
            require_mountpoint: false,
            timeout: DirProbeSettings::default().timeout,
            busy: Arc::new(AtomicBool::new(false)),
            watch: Some(watch),
            root_only: true,
        }
    }

    /// One round (blocking).
    fn round(&self) -> Verdict {
        let served = self.watch.as_ref().and_then(|w| w.served());
        match compare_root(&self.path, served, self.marker.as_deref()) {
            RootCheck::Detached(detail) if self.root_only => {
                Verdict::transient(TransientKind::Detached, detail)
            }
            RootCheck::Detached(detail) => {
                // What the path holds now may be strong evidence itself (no marker there).
                match inspect(&self.path, self.marker.as_deref(), self.require_mountpoint) {
                    deleted @ Verdict::Deleted(_) => deleted,
                    _ => Verdict::Deleted(Evidence {
                        source: format!("dir {}", self.path.display()),
                        detail,
                        strength: Strength::Weak,
                        detached: true,
                    }),
                }
            }
            RootCheck::Remounted => {
                if let Some(w) = &self.watch {
                    w.ask_reopen();
                }
                if self.root_only {
                    Verdict::healthy()
                } else {
                    inspect(&self.path, self.marker.as_deref(), self.require_mountpoint)
                }
            }
            // The master (or the bucket) knows the volume; this node reaches it through the
            // client mounted here, and a dead or failing client makes the volume unavailable
            // here whatever the master says. Never deletion evidence.
            RootCheck::Unreadable(e) if self.root_only => Verdict::transient(
                TransientKind::Io,
                format!(
                    "{}: {e} (the volume's client on this node does not answer)",
                    self.path.display()
                ),
            ),
            RootCheck::Unreadable(_) => {
                inspect(&self.path, self.marker.as_deref(), self.require_mountpoint)
            }
            RootCheck::Same | RootCheck::Unknown if self.root_only => Verdict::healthy(),
            RootCheck::Same | RootCheck::Unknown => {
                inspect(&self.path, self.marker.as_deref(), self.require_mountpoint)
            }
        }
    }
}

impl Probe for DirProbe {
    fn kind(&self) -> &'static str {
        "dir"
    }

    fn authority(&self) -> Authority {
        if self.root_only {
            Authority::Root
        } else {
            Authority::Service
        }
    }

    fn check(&self) -> BoxFuture<'_, Verdict> {
        Box::pin(async move {
            if self.busy.swap(true, Ordering::AcqRel) {
                return Verdict::transient(
                    TransientKind::Io,
                    format!("{}: the previous stat is still hung", self.path.display()),
                );
            }
            let (tx, rx) = tokio::sync::oneshot::channel();
            let me = self.clone();
            let spawned = std::thread::Builder::new()
                .name("dir-probe".into())
                .spawn(move || {
                    let v = me.round();
                    me.busy.store(false, Ordering::Release);
                    let _ = tx.send(v);
                });
            if let Err(e) = spawned {
                self.busy.store(false, Ordering::Release);
                return Verdict::transient(
                    TransientKind::Io,
                    format!("cannot start a probe thread: {e}"),
                );
            }
            match tokio::time::timeout(self.timeout, rx).await {
                Ok(Ok(v)) => v,
                Ok(Err(_)) => Verdict::transient(TransientKind::Io, "probe thread vanished"),
                Err(_) => Verdict::transient(
                    TransientKind::Timeout,
                    format!(
                        "{}: stat not back within {} (hung filesystem?)",
                        self.path.display(),
                        humantime::format_duration(self.timeout)
                    ),
                ),
            }
        })
    }
}

/// Look at the volume root (blocking).
pub fn inspect(path: &Path, marker: Option<&Path>, require_mountpoint: bool) -> Verdict {
    let deleted = |detail: String| {
        Verdict::Deleted(Evidence {
            source: format!("dir {}", path.display()),
            detail,
            strength: Strength::Strong,
            detached: false,
        })
    };
    let io = |what: &str, e: std::io::Error| {
        Verdict::transient(TransientKind::Io, format!("{what}: {e}"))
    };
    let md = match std::fs::metadata(path) {
        Ok(md) => md,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)) => {
            return deleted(format!("volume root missing ({e})"));
        }
        Err(e) => return io(&path.display().to_string(), e),
    };
    if !md.is_dir() {
        return deleted("volume root is not a directory".into());
    }
    if require_mountpoint && let Some(parent) = path.parent() {
        use std::os::unix::fs::MetadataExt;
        match std::fs::metadata(parent) {
            Ok(p) if p.dev() == md.dev() && p.ino() != md.ino() => {
                // Weak: a client restarting (cfs-client, an NFS remount) leaves this for a while.
                return Verdict::Deleted(Evidence {
                    source: format!("dir {}", path.display()),
                    detail: "not a mount point (is the volume unmounted?)".into(),
                    strength: Strength::Weak,
                    detached: false,
                });
            }
            Ok(_) => {}
            Err(e) => return io(&parent.display().to_string(), e),
        }
    }
    if let Some(m) = marker {
        match std::fs::symlink_metadata(m) {
            Ok(_) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)) => {
                return deleted(format!("marker {} missing", m.display()));
            }
            Err(e) => return io(&m.display().to_string(), e),
        }
    }
    Verdict::healthy()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_root_marker_and_file_root() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("vol");
        assert!(matches!(inspect(&root, None, false), Verdict::Deleted(_)));
        std::fs::create_dir(&root).unwrap();
        assert_eq!(inspect(&root, None, false), Verdict::healthy());
        let marker = root.join(".failoverfs");
        assert!(matches!(
            inspect(&root, Some(&marker), false),
            Verdict::Deleted(_)
        ));
        std::fs::write(&marker, b"").unwrap();
        assert_eq!(inspect(&root, Some(&marker), false), Verdict::healthy());
        // A plain directory is not a mount point.
        assert!(matches!(inspect(&root, None, true), Verdict::Deleted(_)));
        let file = tmp.path().join("file");
        std::fs::write(&file, b"").unwrap();
        assert!(matches!(inspect(&file, None, false), Verdict::Deleted(_)));
        assert!(matches!(
            inspect(&file.join("x"), None, false),
            Verdict::Deleted(_)
        ));
    }

    #[test]
    fn the_root_filesystem_is_a_mount_point() {
        assert_eq!(inspect(Path::new("/"), None, true), Verdict::healthy());
    }
}
