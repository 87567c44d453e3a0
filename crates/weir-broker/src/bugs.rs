//! Planted bugs for the fault-injection suite's self-test (`jepsen/`): each switch breaks one
//! safety rule so the suite can prove it notices. Compiled in only with the `jepsen-bugs`
//! feature; without it every switch is off and costs nothing.

/// A rule that can be broken on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    /// Answer `acks=all` as soon as the leader has the batch, before the in-sync replicas do.
    AckBeforeReplication,
}

impl Bug {
    pub const ALL: &'static [Bug] = &[Bug::AckBeforeReplication];

    pub fn name(self) -> &'static str {
        match self {
            Bug::AckBeforeReplication => "ack-before-replication",
        }
    }

    pub fn parse(raw: &str) -> Option<Bug> {
        Bug::ALL.iter().copied().find(|b| b.name() == raw)
    }
}

#[cfg(feature = "jepsen-bugs")]
static ACTIVE: std::sync::OnceLock<Vec<Bug>> = std::sync::OnceLock::new();

/// Turns the given bugs on for this process (once; later calls change nothing). Returns
/// false when the binary was built without the `jepsen-bugs` feature.
pub fn enable(bugs: Vec<Bug>) -> bool {
    #[cfg(feature = "jepsen-bugs")]
    {
        let _ = ACTIVE.set(bugs);
        true
    }
    #[cfg(not(feature = "jepsen-bugs"))]
    {
        let _ = bugs;
        false
    }
}

/// Whether `bug` is switched on.
#[inline]
pub fn active(bug: Bug) -> bool {
    #[cfg(feature = "jepsen-bugs")]
    {
        ACTIVE.get().is_some_and(|b| b.contains(&bug))
    }
    #[cfg(not(feature = "jepsen-bugs"))]
    {
        let _ = bug;
        false
    }
}
