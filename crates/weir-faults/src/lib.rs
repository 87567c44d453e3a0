//! Test-only fault hooks for the fault-injection suite (`jepsen/`), compiled in only with the
//! `enabled` feature (the `weir` binary's `jepsen-bugs` feature turns it on).
//!
//! - [`bugs`]: planted bugs. Each switch breaks one safety rule so the suite can prove its
//!   checker notices; `WEIR_JEPSEN_BUGS=name,...` switches them on in a node.
//! - [`journal`]: the fsync journal. The storage engine reports every file length it fsynced;
//!   after a `kill -9` the suite truncates each file to its last fsynced length, which is
//!   what a power loss leaves behind.
//!
//! Without the feature [`bugs::active`] is a constant `false` and [`journal::synced`] does
//! nothing, so the hooks can sit on hot paths.

pub mod bugs;
pub mod journal;
