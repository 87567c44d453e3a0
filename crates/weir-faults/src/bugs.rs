//! Planted bugs for the fault-injection suite's self-test: each switch breaks one safety rule
//! so the suite can prove it notices.

/// A rule that can be broken on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    /// Broker: answer `acks=all` as soon as the leader has the batch, before the in-sync
    /// replicas do.
    AckBeforeReplication,
    /// Storage and broker: fsync lazily (a second after a write) and count written but not
    /// fsynced data as durable — appends return before their fsync, and the leader's high
    /// watermark and the followers' reported fetch offsets use the log end.
    AckBeforeFsync,
    /// Broker: accept `acks=all` writes while the ISR is smaller than `min.insync.replicas`.
    SkipMinIsr,
    /// Broker: a follower whose log diverged truncates to its own high watermark instead of
    /// the epoch boundary the leader named.
    TruncateToHighWatermark,
    /// Broker: a produce waiting for replication counts the high watermark passing its batch
    /// as success even when the leader epoch it was appended under is gone (the batch may
    /// have been truncated and the offsets reused).
    StaleLeaderEpoch,
    /// Storage: do not deduplicate retried idempotent batches.
    NoDedup,
    /// Controller: elect partition leaders among every live replica, in or out of the ISR
    /// (and move leadership back to a preferred replica that has not caught up).
    UncleanElection,
    /// Controller: accept offset commits from unknown members and stale member epochs.
    StaleMemberCommit,
}

impl Bug {
    pub const ALL: &'static [Bug] = &[
        Bug::AckBeforeReplication,
        Bug::AckBeforeFsync,
        Bug::SkipMinIsr,
        Bug::TruncateToHighWatermark,
        Bug::StaleLeaderEpoch,
        Bug::NoDedup,
        Bug::UncleanElection,
        Bug::StaleMemberCommit,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Bug::AckBeforeReplication => "ack-before-replication",
            Bug::AckBeforeFsync => "ack-before-fsync",
            Bug::SkipMinIsr => "skip-min-isr",
            Bug::TruncateToHighWatermark => "truncate-to-hw",
            Bug::StaleLeaderEpoch => "stale-leader-epoch",
            Bug::NoDedup => "no-dedup",
            Bug::UncleanElection => "unclean-election",
            Bug::StaleMemberCommit => "stale-member-commit",
        }
    }

    pub fn parse(raw: &str) -> Option<Bug> {
        Bug::ALL.iter().copied().find(|b| b.name() == raw)
    }
}

/// Parses `WEIR_JEPSEN_BUGS`-style text (`name,name,...`); the error names the unknown bug
/// and lists the known ones.
pub fn parse_list(raw: &str) -> Result<Vec<Bug>, String> {
    raw.split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(|name| {
            Bug::parse(name).ok_or_else(|| {
                let known: Vec<&str> = Bug::ALL.iter().map(|b| b.name()).collect();
                format!("{name:?} is not one of {}", known.join(", "))
            })
        })
        .collect()
}

#[cfg(feature = "enabled")]
static ACTIVE: std::sync::OnceLock<Vec<Bug>> = std::sync::OnceLock::new();

/// Turns the given bugs on for this process (once; later calls change nothing). Returns
/// false when built without the `enabled` feature.
pub fn enable(bugs: Vec<Bug>) -> bool {
    #[cfg(feature = "enabled")]
    {
        let _ = ACTIVE.set(bugs);
        true
    }
    #[cfg(not(feature = "enabled"))]
    {
        let _ = bugs;
        false
    }
}

/// Whether `bug` is switched on.
#[inline]
pub fn active(bug: Bug) -> bool {
    #[cfg(feature = "enabled")]
    {
        ACTIVE.get().is_some_and(|b| b.contains(&bug))
    }
    #[cfg(not(feature = "enabled"))]
    {
        let _ = bug;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        for bug in Bug::ALL {
            assert_eq!(Bug::parse(bug.name()), Some(*bug));
        }
        assert_eq!(
            parse_list(" no-dedup,,skip-min-isr "),
            Ok(vec![Bug::NoDedup, Bug::SkipMinIsr])
        );
        let err = parse_list("no-dedup,bogus").expect_err("bogus is no bug");
        assert!(
            err.contains("\"bogus\"") && err.contains("ack-before-fsync"),
            "{err}"
        );
    }
}
