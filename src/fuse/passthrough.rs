//! FUSE passthrough, an explicit opt-in (`mount.passthrough`, Linux 6.9+, root): the kernel
//! reads and writes an open file's bytes directly on the volume's file, without a round trip to
//! the daemon, at the speed of the volume itself.
//!
//! What it gives up, and why it is off by default: passthrough I/O never reaches the daemon, so
//! for a file opened this way
//! - a switch cannot drain, hold or redirect its reads and writes: until the application closes
//!   it, the file keeps reading and writing the *old* volume's file (on a deleted volume, that
//!   means errors or writes that are lost), and the old volume stays busy;
//! - while it stays open after a switch, opening it again fails with `EBUSY`: the kernel takes
//!   one backing file per inode, and that one is on the old volume;
//! - writes are not held while the serving volume is suspected, and a handle that wrote is not
//!   turned stale at a switch (see [`crate::handles`]);
//! - `mount.op_timeout` does not bound its reads and writes;
//! - access hints (`posix_fadvise`) stay with the mount's file and do not reach the volume's.
//!
//! Opens, creates, attributes, names and directories are served as always, and files opened
//! after a switch are the new volume's.
//!
//! Invariants:
//! - The kernel requires every open of an inode that has a passthrough open to be a passthrough
//!   open of the same backing file (anything else fails with `EIO`): a backing id is kept per
//!   inode while any passthrough open of it lasts and handed to every open of that inode on the
//!   same volume opening; an open of it on another one (after a switch) is refused with `EBUSY`.
//! - Once the kernel refused a backing file, no new one is registered (a cached open of an inode
//!   and a later passthrough open of it would collide): files without one are served by the
//!   daemon as without passthrough.
//! - The table is locked only by opens, creates and releases of a mount that opted in; reads and
//!   writes never touch it.

use std::collections::HashMap;
use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use fuser::BackingId;
use parking_lot::Mutex;

/// The backing ids of the passthrough opens in flight.
#[derive(Default)]
pub struct Passthrough {
    table: Mutex<Table>,
    /// The kernel refused a backing file once: register no more.
    refused: AtomicBool,
    /// An open was refused with `EBUSY` (warned once; later ones at debug level).
    busy_warned: AtomicBool,
}

#[derive(Default)]
struct Table {
    /// Per inode: the volume opening its backing file is on, the id, and its opens.
    by_ino: HashMap<u64, Shared>,
    /// Per passthrough handle: its inode.
    by_fh: HashMap<u64, u64>,
}

struct Shared {
    volume: u64,
    id: Arc<BackingId>,
    opens: usize,
}

/// How an open is answered.
pub enum Open {
    /// Passed through with this backing id.
    Pass(Arc<BackingId>),
    /// Served by the daemon, as without passthrough.
    Daemon,
    /// Refused with `EBUSY`: the inode is passed through to the file of the volume before a
    /// switch.
    Busy,
}

impl Passthrough {
    /// How to answer the open of inode `ino` as handle `fh`, whose file `fd` is on volume opening
    /// `volume` (`None`: a file that cannot be passed through). `register` makes a backing id of
    /// a descriptor (`ReplyOpen::open_backing`).
    pub fn open(
        &self,
        ino: u64,
        fh: u64,
        fd: Option<BorrowedFd<'_>>,
        volume: u64,
        register: impl FnOnce(BorrowedFd<'_>) -> std::io::Result<BackingId>,
    ) -> Open {
        let mut table = self.table.lock();
        let id = match (table.by_ino.get_mut(&ino), fd) {
            (Some(shared), _) if shared.volume != volume => {
                if self.busy_warned.swap(true, Ordering::Relaxed) {
                    tracing::debug!(ino, "mount.passthrough: open refused (EBUSY)");
                } else {
                    tracing::warn!(
                        ino,
                        "mount.passthrough: refusing an open (EBUSY): the file is still open, \
                         passed through to the volume before the switch (further refusals at \
                         debug level)"
                    );
                }
                return Open::Busy;
            }
            (Some(shared), _) => {
                shared.opens += 1;
                shared.id.clone()
            }
            (None, None) => return Open::Daemon,
            (None, Some(_)) if self.refused.load(Ordering::Relaxed) => return Open::Daemon,
            (None, Some(fd)) => match register(fd) {
                Ok(id) => {
                    let id = Arc::new(id);
                    table.by_ino.insert(
                        ino,
                        Shared {
                            volume,
                            id: id.clone(),
                            opens: 1,
                        },
                    );
                    id
                }
                Err(e) => {
                    if !self.refused.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            ino,
                            error = %e,
                            "mount.passthrough: the kernel refused a backing file; files opened \
                             from now on are served through the daemon"
                        );
                    }
                    return Open::Daemon;
                }
            },
        };
        table.by_fh.insert(fh, ino);
        Open::Pass(id)
    }

    /// Handle `fh` was released: its inode's backing id goes with its last passthrough open.
    pub fn release(&self, fh: u64) {
        let mut table = self.table.lock();
        let Some(ino) = table.by_fh.remove(&fh) else {
            return;
        };
        let last = match table.by_ino.get_mut(&ino) {
            Some(shared) => {
                shared.opens -= 1;
                shared.opens == 0
            }
            None => false,
        };
        // The id is closed (an ioctl) after the lock.
        let gone = if last {
            table.by_ino.remove(&ino)
        } else {
            None
        };
        drop(table);
        drop(gone);
    }
}
