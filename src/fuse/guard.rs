//! The mount guard: a small process that detaches the mount when the daemon dies without
//! unmounting (`kill -9`, the OOM killer, a crash).
//!
//! `fusermount3 -o auto_unmount` alone does not always do this. Its helper wakes when the daemon's
//! end of a socket closes, and unmounts only if opening the mount point then fails with
//! `ENOTCONN`. A dying process releases its files one by one, in no order the helper can rely on:
//! when the socket goes before the last `/dev/fuse` descriptor, the helper's `open` reaches the
//! still-connected mount, is failed with `ECONNABORTED` a moment later, and the helper leaves the
//! dead mount in place ("Transport endpoint is not connected"). On a loaded machine this happened
//! in about one `kill -9` in three.
//!
//! The guard waits for the daemon to have *exited* (a pidfd turns readable only after every file
//! of the process was released, so the connection is already gone) and then detaches the mount
//! if it is still the daemon's and dead: the same mount point and FUSE connection number in
//! `/proc/self/mountinfo`, and a `statfs` answered at once with `ENOTCONN`
//! ([`super::session::detach_dead_mount`]). Connection numbers are reused (the lowest free one),
//! so a daemon restarted on the same mount point may get the old number: its mount answers, or
//! (still in its handshake) does not answer within a second, and is left alone either way.
//!
//! Invariants:
//! - Only the `failoverfs mount` binary starts a guard ([`set_program`]), and only with
//!   `auto_unmount` (so the mount is one the system lets us take down).
//! - The guard never holds a descriptor of the connection (fuser's are close-on-exec), so the
//!   connection dies with the daemon.
//! - The guard ignores terminal, hang-up and stop signals and exits as soon as the daemon is
//!   gone: it never outlives the daemon by more than one look at the mount.

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

static PROGRAM: OnceLock<PathBuf> = OnceLock::new();

/// The program to run as the guard (the `failoverfs` binary itself). Not set in tests that
/// mount inside the test process: they get no guard.
pub fn set_program(program: PathBuf) {
    let _ = PROGRAM.set(program);
}

/// The hidden command line the guard runs with (see `main.rs`).
pub const COMMAND: &str = "__guard";

/// Start a guard for the mount at `path` with FUSE connection `connection`, watching this
/// process. `None` when no guard program is set or it could not start (logged).
pub fn spawn(path: &Path, connection: u64) -> Option<std::process::Child> {
    let program = PROGRAM.get()?;
    let spawned = Command::new(program)
        .arg(COMMAND)
        .arg("--pid")
        .arg(std::process::id().to_string())
        .arg("--connection")
        .arg(connection.to_string())
        .arg("--path")
        .arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        // Its one line goes where ours go (the journal, the container log).
        .stderr(Stdio::inherit())
        // Out of our process group: a Ctrl-C meant for the daemon does not end the guard.
        .process_group(0)
        .current_dir("/")
        .spawn();
    match spawned {
        Ok(child) => Some(child),
        Err(e) => {
            tracing::warn!(error = %e, program = %program.display(), "no mount guard: a crash may leave a dead mount");
            None
        }
    }
}

/// The guard's whole life: wait for process `pid` (our parent) to exit, then detach the mount at
/// `path` if it is still its connection `connection`. Returns the exit code.
pub fn run(pid: i32, connection: u64, path: &Path) -> u8 {
    block_signals();
    wait_for_exit(pid);
    if super::session::fuse_mount_at(path) != Some(connection) {
        // Unmounted by the daemon on its way out, or by fusermount3's helper.
        return 0;
    }
    match super::session::detach_dead_mount(path) {
        // Alive: another daemon's mount that got the same connection number.
        Ok(false) => 0,
        Ok(true) => {
            eprintln!(
                "failoverfs guard: the daemon (pid {pid}) ended without unmounting; detached {}",
                path.display()
            );
            0
        }
        // Gone in the meantime (fusermount3's helper was quicker).
        Err(_) if super::session::fuse_mount_at(path) != Some(connection) => 0,
        Err(e) => {
            eprintln!(
                "failoverfs guard: the daemon (pid {pid}) ended without unmounting, and {} \
                 could not be detached: {e}",
                path.display()
            );
            1
        }
    }
}

/// Block what a terminal, a shell or a service manager sends: the guard ends when the daemon
/// does, not before (SIGKILL still ends it).
fn block_signals() {
    use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGPIPE,
        Signal::SIGTSTP,
    ] {
        set.add(s);
    }
    let _ = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None);
}

/// Return once process `pid` has exited: by its pidfd, or, where there is none (kernels before
/// 5.3), by noticing we were handed to another parent.
fn wait_for_exit(pid: i32) {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    // Our parent may have died before the pidfd was made (and the pid be reused): only a pidfd
    // made while `pid` is still our parent names it.
    let parent_alive = nix::unistd::getppid().as_raw() == pid;
    if fd >= 0 {
        // SAFETY: a descriptor just returned by the kernel, owned by nobody else.
        let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        if !parent_alive {
            return;
        }
        loop {
            let mut fds = [nix::poll::PollFd::new(
                std::os::fd::AsFd::as_fd(&pidfd),
                nix::poll::PollFlags::POLLIN,
            )];
            match nix::poll::poll(&mut fds, nix::poll::PollTimeout::NONE) {
                Ok(n) if n > 0 => return,
                Err(nix::errno::Errno::EINTR) | Ok(_) => continue,
                Err(_) => break,
            }
        }
    }
    while nix::unistd::getppid().as_raw() == pid {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
