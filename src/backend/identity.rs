//! Acting as the caller: creations on a `dir` volume run with the calling process's filesystem
//! identity, on the calling worker thread only.
//!
//! The daemon usually runs as root. Creating a file as root and handing it to the caller
//! afterwards leaves a window where the file is root's, loses what the kernel does for the owner
//! (a setgid bit kept only when the creator is in the group, a setuid bit kept on create), and
//! makes `create` without `O_EXCL` open an existing file with root's rights. Running the call
//! with the caller's fsuid, fsgid and supplementary groups gives the volume's own permission
//! check and ownership, atomically.
//!
//! Invariants:
//! - The identity is per thread: `setfsuid(2)`, `setfsgid(2)` and the raw `setgroups` system call
//!   change the calling thread only (glibc's `setgroups` wrapper would change every thread).
//! - It is always restored before the thread serves anything else, on every path (a guard).
//! - Only a root daemon switches identity; an unprivileged daemon creates as itself.

use std::sync::OnceLock;

use crate::backend::Caller;
use crate::error::{Error, Result};

/// The daemon's own supplementary groups, restored after each switch.
fn own_groups() -> &'static [libc::gid_t] {
    static GROUPS: OnceLock<Vec<libc::gid_t>> = OnceLock::new();
    GROUPS.get_or_init(|| {
        nix::unistd::getgroups().map_or_else(
            |_| Vec::new(),
            |g| g.into_iter().map(|g| g.as_raw()).collect(),
        )
    })
}

fn is_root() -> bool {
    static ROOT: OnceLock<bool> = OnceLock::new();
    *ROOT.get_or_init(|| nix::unistd::geteuid().is_root())
}

/// Whether calls made for `who` run under `who`'s identity (see [`as_caller`]).
pub fn switches_for(who: Caller) -> bool {
    is_root() && !(who.uid == 0 && who.gid == 0)
}

/// The supplementary groups of process `pid`, from `/proc/PID/status`; just `gid` when they
/// cannot be read (the process exited, or lives in a pid namespace we cannot see).
fn groups_of(pid: u32, gid: u32) -> Vec<libc::gid_t> {
    let mut groups = vec![gid];
    if pid == 0 {
        return groups;
    }
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return groups;
    };
    if let Some(line) = status.lines().find_map(|l| l.strip_prefix("Groups:")) {
        groups.extend(
            line.split_whitespace()
                .filter_map(|g| g.parse::<u32>().ok()),
        );
    }
    groups.sort_unstable();
    groups.dedup();
    groups
}

fn set_groups(groups: &[libc::gid_t]) -> Result<()> {
    // SAFETY: the raw system call changes this thread's groups only; `groups` is valid for its
    // length.
    let rc = unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) };
    if rc < 0 {
        return Err(Error::from_errno(nix::errno::Errno::last_raw()));
    }
    Ok(())
}

/// Restores the daemon's identity on this thread when dropped.
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        // SAFETY: plain per-thread system calls with no memory arguments.
        unsafe {
            libc::setfsuid(0);
            libc::setfsgid(0);
        }
        if let Err(e) = set_groups(own_groups()) {
            tracing::error!(error = %e, "cannot restore the daemon's groups");
        }
    }
}

/// Run `f` with `who`'s filesystem identity on this thread (when [`switches_for`] says so),
/// then restore the daemon's.
pub fn as_caller<T>(who: Caller, f: impl FnOnce() -> Result<T>) -> Result<T> {
    if !switches_for(who) {
        return f();
    }
    own_groups();
    let groups = groups_of(who.pid, who.gid);
    let restore = Restore;
    set_groups(&groups)?;
    // SAFETY: plain per-thread system calls with no memory arguments. setfsuid/setfsgid report
    // the previous value, not failure: read the value back to check.
    let ok = unsafe {
        libc::setfsgid(who.gid);
        libc::setfsuid(who.uid);
        libc::setfsgid(u32::MAX) as u32 == who.gid && libc::setfsuid(u32::MAX) as u32 == who.uid
    };
    if !ok {
        return Err(Error::posix(libc::EPERM));
    }
    let r = f();
    drop(restore);
    r
}
