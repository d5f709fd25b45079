//! Process exit codes: an interface for supervisors (systemd, Kubernetes), documented in the
//! README. Never renumber them.

/// How the process ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// Stopped on request (SIGINT/SIGTERM) or unmounted from outside; nothing is wrong.
    Clean = 0,
    /// Something failed at run time (mount failed, the primary could not be opened). A supervisor
    /// may restart the process.
    Failure = 1,
    /// Bad command line or configuration. Restarting will not help until it is fixed.
    Usage = 2,
    /// The active volume was deleted and no standby was usable: do not restart.
    VolumeDeleted = 3,
    /// `check` only: every volume opens and none is deleted, but some volume's probes reached
    /// nothing authoritative (masters down, wrong endpoint): deletion detection would be blind.
    Inconclusive = 4,
}

impl From<Exit> for std::process::ExitCode {
    fn from(e: Exit) -> Self {
        std::process::ExitCode::from(e as u8)
    }
}
