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

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::{Authority, BoxFuture, Evidence, Probe, Strength, TransientKind, Verdict};
use crate::config::{BackendSettings, DirProbeSettings};

/// See the module docs.
pub struct DirProbe {
    path: PathBuf,
    marker: Option<PathBuf>,
    require_mountpoint: bool,
    timeout: Duration,
    busy: Arc<AtomicBool>,
}

impl DirProbe {
    /// A probe of `settings.path`, or of the `dir` backend's root.
    pub fn new(settings: &DirProbeSettings, backend: &BackendSettings) -> DirProbe {
        let path = settings.path.clone().unwrap_or_else(|| match backend {
            BackendSettings::Dir { path } => path.clone(),
        });
        DirProbe {
            marker: settings.marker.as_ref().map(|m| path.join(m)),
            path,
            require_mountpoint: settings.require_mountpoint,
            timeout: settings.timeout,
            busy: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl Probe for DirProbe {
    fn kind(&self) -> &'static str {
        "dir"
    }

    fn authority(&self) -> Authority {
        Authority::Service
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
            let (path, marker, mountpoint) = (
                self.path.clone(),
                self.marker.clone(),
                self.require_mountpoint,
            );
            let busy = self.busy.clone();
            let spawned = std::thread::Builder::new()
                .name("dir-probe".into())
                .spawn(move || {
                    let v = inspect(&path, marker.as_deref(), mountpoint);
                    busy.store(false, Ordering::Release);
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
                return deleted("not a mount point (is the volume unmounted?)".into());
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
