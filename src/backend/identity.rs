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
//!
//! The caller's umask travels the same way. With `FUSE_DONT_MASK` the kernel leaves the umask to
//! the filesystem, which is what POSIX ACLs need: a directory with a default ACL ignores the
//! umask, any other applies it, and only the volume knows which. So a worker thread that creates
//! gets a filesystem context of its own (`unshare(CLONE_FS)`, once per thread) and runs each
//! create with the caller's umask ([`with_umask`]): the volume then does exactly what it does for
//! a local process. The process's own umask (see [`set_process_umask`]) then keeps at least
//! group and other write off, so no file the daemon makes for itself starts writable by others. Where a thread cannot have its own context
//! (a seccomp filter refusing `unshare`), the process umask is 0, the kernel applies the caller's
//! umask itself, and creates run with the mode as the kernel sent it.

use std::cell::Cell;
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

/// Whether worker threads can have a umask of their own (`unshare(CLONE_FS)`), tried once in a
/// throwaway thread.
pub fn private_umask() -> bool {
    static WORKS: OnceLock<bool> = OnceLock::new();
    *WORKS.get_or_init(|| {
        std::thread::spawn(|| nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS).is_ok())
            .join()
            .unwrap_or(false)
    })
}

/// Set the process's umask at start: the inherited one with group and other write removed when
/// creates carry the caller's umask per thread (the daemon's own files never start writable by
/// others), else 0 (the kernel applied the caller's umask and a create must keep the mode it
/// sent). Returns whether creates carry the caller's umask.
pub fn set_process_umask() -> bool {
    use nix::sys::stat::{Mode, umask};
    let private = private_umask();
    let inherited = umask(Mode::empty());
    let mask = if private {
        inherited | Mode::S_IWGRP | Mode::S_IWOTH
    } else {
        Mode::empty()
    };
    umask(mask);
    private
}

thread_local! {
    /// Whether this thread has its own filesystem context (and so its own umask).
    static OWN_FS: Cell<bool> = const { Cell::new(false) };
}

/// Run `f` (a create) with this thread's umask set to `umask`, then restore it. `None`: the mode
/// is final (the kernel applied the caller's umask): the thread's umask is 0 for the call.
pub fn with_umask<T>(umask: Option<u32>, f: impl FnOnce() -> Result<T>) -> Result<T> {
    if !private_umask() {
        // The process umask is 0 (see `set_process_umask`) and no thread can have another.
        return f();
    }
    if !OWN_FS.get() {
        // Never change the umask shared with other threads: a failure here fails the create.
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS)?;
        OWN_FS.set(true);
    }
    let mask = nix::sys::stat::Mode::from_bits_truncate(umask.unwrap_or(0) & 0o777);
    let old = nix::sys::stat::umask(mask);
    let r = f();
    nix::sys::stat::umask(old);
    r
}
