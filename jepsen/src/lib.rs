//! Fault-injection testing for Weir, faithful to Jepsen's Kafka workload.
//!
//! - [`history`]: operations as the clients saw them (send, poll, assign, subscribe,
//!   commit), each completing ok, fail (definitely did not happen) or info (unknown), stored
//!   as JSON lines.
//! - [`checker`]: Jepsen's Kafka anomaly definitions over a history — inconsistent offsets,
//!   duplicates, aborted reads, lost and unseen writes, poll skips and non-monotonic polls
//!   (across and within operations), non-monotonic sends, committed offsets moving backwards.
//!   Pure: a history in, a report out.

pub mod checker;
pub mod history;
