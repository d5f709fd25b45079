//! What a mount remembers across restarts: which volume of its table serves.
//!
//! Without it, every start would serve the first volume of the table again. After a switch that
//! is wrong twice over: a primary that was deleted makes the start fail ("not there according to
//! its probes", exit 2) until an operator edits the table, and a primary that came back (restored,
//! or a false alarm seen by other nodes) would be served by this node while the rest of its fleet
//! serves the standby: two volumes written at once.
//!
//! Invariants:
//! - The file is written after every completed switch (by the switch controller only), naming the
//!   volume that now serves, and only then; writing is atomic (temporary file, `fsync`, rename),
//!   so a crash leaves the old or the new record, never half of one. It is written and read only
//!   as [`crate::ownfiles`] allows: in a directory no other user can write, never through a
//!   planted name, and read back only when no other user could have written it.
//! - At start a record that names a volume of the table other than the first makes that volume
//!   the one served first; a record naming the first volume, or no volume of the table, changes
//!   nothing. A record that cannot be read or parsed is ignored with a warning: it can only ever
//!   choose among the configured volumes, never invent one.
//! - Going back to the primary is an operator's decision: `failoverfs switch <primary>` (which
//!   records it), or removing the file before a start.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::Mutex;

use serde::{Deserialize, Serialize};

/// The record kept in the state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Name of the volume serving since the last switch.
    pub active: String,
    /// When that switch completed (seconds since the epoch).
    pub since: u64,
    /// Why it happened (the switch's reason, as in the audit).
    pub reason: String,
}

/// The state file of one mount (`None` path: remembering is off). Clones share one writer.
#[derive(Debug, Clone)]
pub struct StateFile {
    path: Option<PathBuf>,
    /// Held while writing: the route generation last written. A save for an older generation
    /// (a slow write overtaken by a later switch) is dropped, never written over a newer one.
    written: Arc<Mutex<u64>>,
}

impl StateFile {
    /// The state file at `path`, or none.
    pub fn new(path: Option<PathBuf>) -> StateFile {
        StateFile {
            path,
            written: Arc::new(Mutex::new(0)),
        }
    }

    /// Where it is, if anywhere.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The record, if there is a readable one. A missing file is `None` quietly; anything else
    /// that fails is `None` with a warning naming the file.
    pub fn load(&self) -> Option<Record> {
        let path = self.path.as_deref()?;
        let text = match crate::ownfiles::read_trusted(path, MAX_RECORD) {
            Ok(Some(t)) => t,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot use the state file; starting on the first volume");
                return None;
            }
        };
        match serde_json::from_slice(&text) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "the state file is not a record failoverfs wrote; ignoring it");
                None
            }
        }
    }

    /// Check that the state file's directory can be trusted (see [`crate::ownfiles`]), making
    /// it if it is missing.
    pub fn check(&self) -> Result<(), crate::ownfiles::Unsafe> {
        match self.path.as_deref() {
            Some(path) => {
                let dir = crate::ownfiles::parent_of(path);
                crate::ownfiles::tighten_default(dir);
                crate::ownfiles::ensure_dir(dir, 0o755)
            }
            None => Ok(()),
        }
    }

    /// Record that `active` serves from route `generation` on. Failing to write is a warning,
    /// never a failure of the switch: the volume serves either way.
    pub fn save(&self, generation: u64, active: &str, reason: &str) {
        let Some(path) = self.path.as_deref() else {
            return;
        };
        let mut written = self.written.lock();
        if *written > generation {
            return;
        }
        let record = Record {
            active: active.to_string(),
            since: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            reason: reason.to_string(),
        };
        if let Err(e) = write_atomically(path, &record) {
            tracing::warn!(
                file = %path.display(),
                volume = active,
                error = %e,
                "cannot record the serving volume; a restart would start on the first volume of the table"
            );
            return;
        }
        *written = generation;
    }
}

/// The largest record read back (a record is well under 1 KiB).
const MAX_RECORD: u64 = 64 * 1024;

fn write_atomically(path: &Path, record: &Record) -> Result<(), crate::ownfiles::Unsafe> {
    let mut body = serde_json::to_vec(record).map_err(|e| crate::ownfiles::Unsafe::Io {
        path: path.to_path_buf(),
        error: std::io::Error::other(e),
    })?;
    body.push(b'\n');
    crate::ownfiles::write_atomically(path, &body)
}

/// The default state file of a mount at `mount`: `/var/lib/failoverfs/<mount path with / as
/// ->.state` (`/mnt/data` → `/var/lib/failoverfs/mnt-data.state`), kept across reboots.
pub fn default_path(mount: &Path) -> PathBuf {
    let name = mount.to_string_lossy().trim_matches('/').replace('/', "-");
    let name = if name.is_empty() { "-".into() } else { name };
    Path::new("/var/lib/failoverfs").join(format!("{name}.state"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_records_load_and_bad_ones_are_ignored() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateFile::new(Some(tmp.path().join("sub/m.state")));
        assert_eq!(state.load(), None);
        state.save(2, "v1", "volume v0 deleted");
        let r = state.load().unwrap();
        assert_eq!(
            (r.active.as_str(), r.reason.as_str()),
            ("v1", "volume v0 deleted")
        );
        assert_eq!(
            std::fs::read_dir(tmp.path().join("sub")).unwrap().count(),
            1
        );
        // A late save of an older switch never overwrites a newer record.
        state.clone().save(3, "v0", "manual");
        state.save(2, "v1", "late");
        assert_eq!(state.load().unwrap().active, "v0");
        std::fs::write(tmp.path().join("sub/m.state"), b"{not json").unwrap();
        assert_eq!(state.load(), None);
        let off = StateFile::new(None);
        off.save(1, "v1", "x");
        assert_eq!(off.load(), None);
        assert_eq!(
            default_path(Path::new("/mnt/data")),
            PathBuf::from("/var/lib/failoverfs/mnt-data.state")
        );
    }
}
