//! failoverfs: one FUSE mount backed by an ordered table of volumes, a primary and standbys.
//!
//! The layers, from the kernel down:
//! - [`fuse`]: the only module that knows fuser. It turns each request into one call on the
//!   logical volume and each result into one reply, and owns mounting and unmounting.
//! - [`vfs`]: the logical volume. Plain functions that return values; each operation takes one
//!   route snapshot from the [`routing`] handle, maps inode numbers to paths through the
//!   [`inode`] table, and calls the route's [`backend`].
//! - [`routing`]: which volume serves operations now (an `ArcSwap` of an immutable route with a
//!   generation number and an in-flight gate), and how a switch drains the old route.
//! - [`backend`]: storage behind one trait, addressed by paths relative to the volume root.
//!
//! Beside the op path:
//! - [`probe`]: asks the system that owns each volume whether it still exists (CubeFS master,
//!   S3, HTTP, the directory itself); only authoritative answers are evidence of deletion.
//! - [`monitor`]: probes every volume on an interval and turns answers into a *confirmed* state,
//!   published per volume.
//! - [`failover`]: the switch controller, the only writer of the route after startup: drain,
//!   pick the next healthy standby, swap, invalidate the kernel's caches, record.
//!
//! [`config`] loads the settings, [`app`] runs the process (its supervisor reacts to confirmed
//! deletions and signals), [`exit`] names the exit codes.
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

pub mod admin;
pub mod app;
pub mod backend;
pub mod check;
pub mod config;
pub mod error;
pub mod events;
pub mod exit;
pub mod failover;
pub mod fuse;
pub mod handles;
pub mod inode;
pub mod metrics;
pub mod monitor;
pub mod namespace;
pub mod ownfiles;
pub mod probe;
pub mod routing;
pub mod state;
pub mod vfs;
pub mod writes;
