//! Fault injection: a decorator that wraps any backend and makes chosen operations fail, stall, or
//! block until released. For tests and drills; never configured in production.
//!
//! Rules match on the path an operation touches (a prefix, so `"d"` covers `d/f`; the empty
//! path matches everything). Open files inherit the rules of the path they were opened at, so
//! `fail_all(EIO)` makes a volume look dead to open handles too.

use std::any::Any;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use super::{Attr, Backend, Caller, DirEntry, OpenFile, RootMark, SetAttr, StatFs};
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
    fn stat(&self, path: &Path) -> Result<Attr> {
        self.faults.check(path)?;
        self.inner.stat(path)
    }
    fn setattr(&self, path: &Path, set: &SetAttr) -> Result<Attr> {
        self.faults.check(path)?;
        self.inner.setattr(path, set)
    }
    fn readlink(&self, path: &Path) -> Result<Vec<u8>> {
        self.faults.check(path)?;
        self.inner.readlink(path)
    }
    fn mknod(
        &self,
        parent: &Path,
        name: &OsStr,
        mode: u32,
        rdev: u32,
        who: Caller,
    ) -> Result<Attr> {
        self.faults.check(&parent.join(name))?;
        self.inner.mknod(parent, name, mode, rdev, who)
    }
    fn mkdir(&self, parent: &Path, name: &OsStr, mode: u32, who: Caller) -> Result<Attr> {
        self.faults.check(&parent.join(name))?;
        self.inner.mkdir(parent, name, mode, who)
    }
    fn unlink(&self, parent: &Path, name: &OsStr) -> Result<()> {
        self.faults.check(&parent.join(name))?;
        self.inner.unlink(parent, name)
    }
    fn rmdir(&self, parent: &Path, name: &OsStr) -> Result<()> {
        self.faults.check(&parent.join(name))?;
        self.inner.rmdir(parent, name)
    }
    fn symlink(&self, parent: &Path, name: &OsStr, target: &OsStr, who: Caller) -> Result<Attr> {
        self.faults.check(&parent.join(name))?;
        self.inner.symlink(parent, name, target, who)
    }
    fn rename(
        &self,
        parent: &Path,
        name: &OsStr,
        new_parent: &Path,
        new_name: &OsStr,
        flags: u32,
    ) -> Result<()> {
        self.faults.check(&parent.join(name))?;
        self.faults.check(&new_parent.join(new_name))?;
        self.inner.rename(parent, name, new_parent, new_name, flags)
    }
    fn link(&self, path: &Path, new_parent: &Path, new_name: &OsStr) -> Result<Attr> {
        self.faults.check(path)?;
        self.inner.link(path, new_parent, new_name)
    }
    fn open(&self, path: &Path, flags: i32, who: Caller) -> Result<Arc<dyn OpenFile>> {
        self.faults.check(path)?;
        let f = self.inner.open(path, flags, who)?;
        Ok(FaultyFile::wrap(f, path, &self.faults))
    }
    fn create(
        &self,
        parent: &Path,
        name: &OsStr,
        mode: u32,
        flags: i32,
        who: Caller,
    ) -> Result<(Arc<dyn OpenFile>, Attr)> {
        let path = parent.join(name);
        self.faults.check(&path)?;
        let (f, attr) = self.inner.create(parent, name, mode, flags, who)?;
        Ok((FaultyFile::wrap(f, &path, &self.faults), attr))
    }
    fn read_dir(&self, path: &Path) -> Result<Vec<DirEntry>> {
        self.faults.check(path)?;
        self.inner.read_dir(path)
    }
    fn statfs(&self) -> Result<StatFs> {
        self.faults.check(Path::new(""))?;
        self.inner.statfs()
    }
    fn getxattr(&self, path: &Path, name: &OsStr) -> Result<Vec<u8>> {
        self.faults.check(path)?;
        self.inner.getxattr(path, name)
    }
    fn setxattr(&self, path: &Path, name: &OsStr, value: &[u8], flags: i32) -> Result<()> {
        self.faults.check(path)?;
        self.inner.setxattr(path, name, value, flags)
    }
    fn listxattr(&self, path: &Path) -> Result<Vec<u8>> {
        self.faults.check(path)?;
        self.inner.listxattr(path)
    }
    fn removexattr(&self, path: &Path, name: &OsStr) -> Result<()> {
        self.faults.check(path)?;
        self.inner.removexattr(path, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        assert_eq!(b.stat(Path::new("d/f")).unwrap_err().errno(), libc::EIO);
        assert!(b.stat(Path::new("")).is_ok());
        faults.clear();
        assert!(b.stat(Path::new("d/f")).is_ok());
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
        let t = std::thread::spawn(move || b2.stat(Path::new("")).is_ok());
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while faults.blocked() == 0 {
            assert!(std::time::Instant::now() < deadline);
            std::thread::yield_now();
        }
        faults.clear();
        assert!(t.join().unwrap());
    }
}
