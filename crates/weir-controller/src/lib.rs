//! Weir's controller: the Raft-replicated source of truth for cluster metadata.
//!
//! - [`metadata`]: the pure state machine (brokers, topics, partitions) — commands in,
//!   outcomes out, no I/O.
//! - [`store`]: openraft's log and state-machine storage in sled; flushes before it
//!   acknowledges appends, votes, truncations and purges.
//! - [`raft`]: the openraft type configuration and the gRPC transport between controllers.
//! - [`admin`]: the `Admin` and `BrokerRegistry` gRPC services; writes go through Raft on the
//!   active controller, followers redirect with NOT_CONTROLLER and the leader's address.
//! - [`group`]: consumer groups as a pure state machine — membership, assignors,
//!   incremental reconciliation, fencing, committed offsets.
//! - [`coordinator`]: the `GroupCoordinator` gRPC service — heartbeats written to Raft only
//!   when they change something, coalesced offset commits, session expiry.
//! - [`subscription`]: subscriptions, snapshots and the cursors partition leaders commit
//!   (fenced by leader epoch), as a pure state machine; [`subscriptions`] serves them
//!   (`Subscriptions`, and the internal `SubscriptionCursors` for partition leaders).
//! - [`node`]: a running controller — bootstrap, server, broker lease task, shutdown.

pub mod admin;
pub mod coordinator;
pub mod group;
pub mod metadata;
pub mod node;
pub mod raft;
pub mod store;
pub mod subscription;
pub mod subscriptions;

pub use node::{Controller, ControllerConfig, StartError};
pub use raft::ControllerNode;
