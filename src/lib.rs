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
//! [`config`] loads the settings, [`app`] runs the process, [`exit`] names the exit codes.
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

pub mod app;
pub mod backend;
pub mod check;
pub mod config;
pub mod error;
pub mod exit;
pub mod failover;
pub mod fuse;
pub mod handles;
pub mod inode;
pub mod monitor;
pub mod probe;
pub mod routing;
pub mod vfs;
