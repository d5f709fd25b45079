//! Fault injection: a decorator that wraps any backend and makes chosen operations fail, stall, or
//! block until released. For tests and drills; never configured in production.
//!
//! Rules match on the path an operation touches (a prefix, so `"d"` covers `d/f`; the empty
//! path matches everything). Pins of the wrapped backend are passed through, labelled with the
//! path they were made at, which is what rules see for operations in that directory. Open files inherit the rules of the path they were opened at, so
//! `fail_all(EIO)` makes a volume look dead to open handles too.

use std::any::Any;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use super::{At, Attr, Backend, Caller, Dir, Listing, OpenFile, Pin, RootMark, SetAttr, StatFs};
use crate::error::{Error, Result};

/// What happens to a matching operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Fail with this errno.
    Fail(i32),
    /// Sleep this long, then run normally.
    Delay(Duration),
    /// Wait until [`Faults::release`] (or [`Faults::clear`]), then apply the rules again.
    Block,
    /// Sleep this long before each write to an open file; every other operation runs normally.
    /// Widens the window in which a write is acknowledged by nobody yet.
    DelayWrites(Duration),
}

#[derive(Clone, Debug)]
struct Rule {
    prefix: PathBuf,
    fault: Fault,
}

/// The control handle shared by a [`FaultyBackend`] and the test that drives it.
#[derive(Default)]
pub struct Faults {
    rules: Mutex<Vec<Rule>>,
    released: Mutex<u64>,
    wake: Condvar,
    blocked: AtomicU64,
    hits: AtomicU64,
}

impl Faults {
    /// A handle with no rules.
    pub fn new() -> Arc<Faults> {
        Arc::new(Faults::default())
    }

    /// Add a rule for paths under `prefix`.
    pub fn add(&self, prefix: impl Into<PathBuf>, fault: Fault) {
        self.rules.lock().push(Rule {
            prefix: prefix.into(),
            fault,
        });
    }

    /// Make every operation fail with `errno`.
    pub fn fail_all(&self, errno: i32) {
        self.add("", Fault::Fail(errno));
    }

    /// Remove every rule and release blocked operations.
    pub fn clear(&self) {
        self.rules.lock().clear();
        self.release();
    }

    /// Let currently blocked operations go on (rules stay: new operations block again).
    pub fn release(&self) {
        *self.released.lock() += 1;
        self.wake.notify_all();
    }

    /// Operations blocked right now.
    pub fn blocked(&self) -> u64 {
        self.blocked.load(Ordering::Acquire)
    }

    /// Operations a rule matched so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Replace every rule with one, and release blocked operations (which then see the new
    /// rule): "hang, then fail" in one step.
    pub fn replace(&self, prefix: impl Into<PathBuf>, fault: Fault) {
        {
            let mut rules = self.rules.lock();
            rules.clear();
            rules.push(Rule {
                prefix: prefix.into(),
                fault,
            });
        }
        self.release();
    }

    fn check(&self, path: &Path) -> Result<()> {
        self.check_op(path, false)
    }

    fn check_op(&self, path: &Path, write: bool) -> Result<()> {
        loop {
            let fault = {
                let rules = self.rules.lock();
                if rules.is_empty() {
                    return Ok(());
                }
                rules
                    .iter()
                    .rev()
                    .find(|r| path.starts_with(&r.prefix))
                    .map(|r| r.fault)
            };
            let Some(fault) = fault else { return Ok(()) };
            if matches!(fault, Fault::DelayWrites(_)) && !write {
                return Ok(());
            }
            self.hits.fetch_add(1, Ordering::Relaxed);
            match fault {
                Fault::Fail(errno) => return Err(Error::from_errno(errno)),
                Fault::Delay(d) | Fault::DelayWrites(d) => {
                    std::thread::sleep(d);
                    return Ok(());
                }
                Fault::Block => {
                    let mut released = self.released.lock();
                    let at = *released;
                    self.blocked.fetch_add(1, Ordering::AcqRel);
                    while *released == at {
                        self.wake.wait(&mut released);
                    }
                    self.blocked.fetch_sub(1, Ordering::AcqRel);
                    // Released: look at the rules again (they may say to fail now).
                }
            }
        }
    }
}

/// A backend with injected faults.
pub struct FaultyBackend {
    inner: Arc<dyn Backend>,
    faults: Arc<Faults>,
}

impl FaultyBackend {
    /// Wrap `inner`; `faults` drives it.
    pub fn new(inner: Arc<dyn Backend>, faults: Arc<Faults>) -> FaultyBackend {
        FaultyBackend { inner, faults }
    }
}

struct FaultyFile {
    inner: Arc<dyn OpenFile>,
    path: PathBuf,
    faults: Arc<Faults>,
}

impl FaultyFile {
    fn wrap(inner: Arc<dyn OpenFile>, path: &Path, faults: &Arc<Faults>) -> Arc<dyn OpenFile> {
        Arc::new(FaultyFile {
            inner,
            path: path.to_path_buf(),
            faults: faults.clone(),
        })
    }
}

impl OpenFile for FaultyFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        self.faults.check(&self.path)?;
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, data: &[u8], offset: u64) -> Result<usize> {
        self.faults.check_op(&self.path, true)?;
        self.inner.write_at(data, offset)
    }
    fn write_as(&self, data: &[u8], offset: u64, who: Caller) -> Result<usize> {
        self.faults.check_op(&self.path, true)?;
        self.inner.write_as(data, offset, who)
    }
    fn flush(&self) -> Result<()> {
        self.faults.check(&self.path)?;
        self.inner.flush()
    }
    fn fsync(&self, datasync: bool) -> Result<()> {
        self.faults.check(&self.path)?;
        self.inner.fsync(datasync)
    }
    fn passthrough_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        // Passed-through I/O never reaches the injector: only tests of passthrough opt in.
        self.inner.passthrough_fd()
    }
    fn stat(&self) -> Result<Attr> {
        self.faults.check(&self.path)?;
        self.inner.stat()
    }
    fn setattr(&self, set: &SetAttr) -> Result<Attr> {
        self.faults.check(&self.path)?;
        self.inner.setattr(set)
    }
    fn allocate(&self, offset: u64, len: u64, mode: i32, who: Caller) -> Result<()> {
        self.faults.check(&self.path)?;
        self.inner.allocate(offset, len, mode, who)
    }
    fn seek(&self, offset: i64, whence: i32) -> Result<i64> {
        self.faults.check(&self.path)?;
        self.inner.seek(offset, whence)
    }
    fn copy_range(
        &self,
        off_in: u64,
        dst: &dyn OpenFile,
        off_out: u64,
        len: u64,
        who: Caller,
    ) -> Result<usize> {
        self.faults.check(&self.path)?;
        let dst = match dst.as_any().downcast_ref::<FaultyFile>() {
            Some(f) => f.inner.as_ref(),
            None => dst,
        };
        self.inner.copy_range(off_in, dst, off_out, len, who)
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl Backend for FaultyBackend {
    fn describe(&self) -> String {
        format!("faulty({})", self.inner.describe())
    }
    fn root_mark(&self) -> Option<RootMark> {
        self.inner.root_mark()
    }
    fn pin(&self, at: At<'_>) -> Result<Option<(Pin, Attr)>> {
        let path = path_of(at);
        self.faults.check(&path)?;
        let dir = inner(at.dir);
        Ok(self.inner.pin(at.with(&dir))?.map(|(pin, attr)| {
            let pin: Pin = Arc::new(FaultyPin { inner: pin, path });
            (pin, attr)
        }))
    }
    fn hold(&self, at: At<'_>) -> Result<Option<(Pin, Attr)>> {
        let path = path_of(at);
        self.faults.check(&path)?;
        let dir = inner(at.dir);
        Ok(self.inner.hold(at.with(&dir))?.map(|(pin, attr)| {
            let pin: Pin = Arc::new(FaultyPin { inner: pin, path });
            (pin, attr)
        }))
    }
    fn stat(&self, at: At<'_>) -> Result<Attr> {
        self.faults.check(&path_of(at))?;
        self.inner.stat(at.with(&inner(at.dir)))
    }
    fn setattr(&self, at: At<'_>, set: &SetAttr) -> Result<Attr> {
        self.faults.check(&path_of(at))?;
        self.inner.setattr(at.with(&inner(at.dir)), set)
    }
    fn readlink(&self, at: At<'_>) -> Result<Vec<u8>> {
        self.faults.check(&path_of(at))?;
        self.inner.readlink(at.with(&inner(at.dir)))
    }
    fn mknod(&self, dir: &Dir, name: &OsStr, mode: u32, rdev: u32, who: Caller) -> Result<Attr> {
        self.faults.check(&path_of(At { dir, name }))?;
        self.inner.mknod(&inner(dir), name, mode, rdev, who)
    }
    fn mkdir(&self, dir: &Dir, name: &OsStr, mode: u32, who: Caller) -> Result<Attr> {
        self.faults.check(&path_of(At { dir, name }))?;
        self.inner.mkdir(&inner(dir), name, mode, who)
    }
    fn unlink(&self, dir: &Dir, name: &OsStr) -> Result<()> {
        self.faults.check(&path_of(At { dir, name }))?;
        self.inner.unlink(&inner(dir), name)
    }
    fn rmdir(&self, dir: &Dir, name: &OsStr) -> Result<()> {
        self.faults.check(&path_of(At { dir, name }))?;
        self.inner.rmdir(&inner(dir), name)
    }
    fn symlink(&self, dir: &Dir, name: &OsStr, target: &OsStr, who: Caller) -> Result<Attr> {
        self.faults.check(&path_of(At { dir, name }))?;
        self.inner.symlink(&inner(dir), name, target, who)
    }
    fn rename(
        &self,
        dir: &Dir,
        name: &OsStr,
        new_dir: &Dir,
        new_name: &OsStr,
        flags: u32,
    ) -> Result<()> {
        self.faults.check(&path_of(At { dir, name }))?;
        self.faults.check(&path_of(At {
            dir: new_dir,
            name: new_name,
        }))?;
        self.inner
            .rename(&inner(dir), name, &inner(new_dir), new_name, flags)
    }
    fn link(&self, at: At<'_>, new_dir: &Dir, new_name: &OsStr) -> Result<Attr> {
        self.faults.check(&path_of(at))?;
        self.inner
            .link(at.with(&inner(at.dir)), &inner(new_dir), new_name)
    }
    fn open(&self, at: At<'_>, flags: i32, who: Caller) -> Result<(Arc<dyn OpenFile>, Attr)> {
        let path = path_of(at);
        self.faults.check(&path)?;
        let (f, attr) = self.inner.open(at.with(&inner(at.dir)), flags, who)?;
        Ok((FaultyFile::wrap(f, &path, &self.faults), attr))
    }
    fn create(
        &self,
        dir: &Dir,
        name: &OsStr,
        mode: u32,
        flags: i32,
        who: Caller,
    ) -> Result<(Arc<dyn OpenFile>, Attr)> {
        let path = path_of(At { dir, name });
        self.faults.check(&path)?;
        let (f, attr) = self.inner.create(&inner(dir), name, mode, flags, who)?;
        Ok((FaultyFile::wrap(f, &path, &self.faults), attr))
    }
    fn read_dir(&self, at: At<'_>, out: &mut Listing) -> Result<()> {
        self.faults.check(&path_of(at))?;
        self.inner.read_dir(at.with(&inner(at.dir)), out)
    }
    fn statfs(&self) -> Result<StatFs> {
        self.faults.check(Path::new(""))?;
        self.inner.statfs()
    }
    fn getxattr(&self, at: At<'_>, name: &OsStr) -> Result<Vec<u8>> {
        self.faults.check(&path_of(at))?;
        self.inner.getxattr(at.with(&inner(at.dir)), name)
    }
    fn setxattr(&self, at: At<'_>, name: &OsStr, value: &[u8], flags: i32) -> Result<()> {
        self.faults.check(&path_of(at))?;
        self.inner
            .setxattr(at.with(&inner(at.dir)), name, value, flags)
    }
    fn listxattr(&self, at: At<'_>) -> Result<Vec<u8>> {
        self.faults.check(&path_of(at))?;
        self.inner.listxattr(at.with(&inner(at.dir)))
    }
    fn removexattr(&self, at: At<'_>, name: &OsStr) -> Result<()> {
        self.faults.check(&path_of(at))?;
        self.inner.removexattr(at.with(&inner(at.dir)), name)
    }
}

/// A pin of the wrapped backend, with the path it was made at: what rules match on for
/// operations in that directory (rules are for tests; a directory moved since keeps its old
/// path here).
struct FaultyPin {
    inner: Pin,
    path: PathBuf,
}

/// The directory to hand the wrapped backend.
fn inner(dir: &Dir) -> Dir {
    match dir {
        Dir::Pinned(pin) => match pin.downcast_ref::<FaultyPin>() {
            Some(p) => Dir::Pinned(p.inner.clone()),
            None => dir.clone(),
        },
        _ => dir.clone(),
    }
}

/// The path rules match on.
fn path_of(at: At<'_>) -> PathBuf {
    if let Dir::Pinned(pin) = at.dir
        && let Some(p) = pin.downcast_ref::<FaultyPin>()
    {
        return if at.name.is_empty() {
            p.path.clone()
        } else {
            p.path.join(at.name)
        };
    }
    at.path().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Place;
    use crate::backend::dir::DirBackend;

    #[test]
    fn rules_match_by_prefix_and_clear() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("d")).unwrap();
        std::fs::write(tmp.path().join("d/f"), b"x").unwrap();
        let faults = Faults::new();
        let b = FaultyBackend::new(
            Arc::new(DirBackend::open(tmp.path()).unwrap()),
            faults.clone(),
        );
        faults.add("d", Fault::Fail(libc::EIO));
        assert_eq!(
            b.stat(Place::of_path(Path::new("d/f")).at())
                .unwrap_err()
                .errno(),
            libc::EIO
        );
        assert!(b.stat(At::root()).is_ok());
        faults.clear();
        assert!(b.stat(Place::of_path(Path::new("d/f")).at()).is_ok());
        assert_eq!(faults.hits(), 1);
    }

    #[test]
    fn block_waits_for_release() {
        let tmp = tempfile::tempdir().unwrap();
        let faults = Faults::new();
        let b = Arc::new(FaultyBackend::new(
            Arc::new(DirBackend::open(tmp.path()).unwrap()),
            faults.clone(),
        ));
        faults.add("", Fault::Block);
        let b2 = b.clone();
        let t = std::thread::spawn(move || b2.stat(At::root()).is_ok());
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while faults.blocked() == 0 {
            assert!(std::time::Instant::now() < deadline);
            std::thread::yield_now();
        }
        faults.clear();
        assert!(t.join().unwrap());
    }
}
