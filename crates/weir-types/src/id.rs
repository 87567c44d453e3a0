//! Newtypes for ids, offsets and epochs, so that an offset can never be passed where an epoch
//! was meant.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! newtype {
    ($(#[$meta:meta])* $name:ident($inner:ty)) => {
        $(#[$meta])*
        #[derive(
            Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub $inner);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl From<$inner> for $name {
            fn from(value: $inner) -> Self {
                Self(value)
            }
        }
    };
}

newtype!(
    /// The position of a record in a partition's log. Offsets start at 0 and are dense.
    Offset(i64)
);
newtype!(
    /// Bumped on every leader change of a partition; stamped into every batch its leader appends.
    LeaderEpoch(i32)
);
newtype!(
    /// Identifies an idempotent producer; allocated by the controller.
    ProducerId(i64)
);
newtype!(
    /// Fences older incarnations of the same producer id.
    ProducerEpoch(i16)
);
newtype!(
    /// Per-partition sequence number of an idempotent producer's first record in a batch.
    Sequence(i32)
);
newtype!(
    /// Index of a partition within its topic.
    PartitionId(i32)
);
newtype!(
    /// A broker's node id.
    BrokerId(u32)
);

impl Offset {
    pub const ZERO: Offset = Offset(0);

    /// The offset `n` records after this one.
    pub fn plus(self, n: i64) -> Offset {
        Offset(self.0 + n)
    }
}

impl LeaderEpoch {
    /// The epoch producers put in batches they send: "not stamped by a leader yet".
    pub const NONE: LeaderEpoch = LeaderEpoch(-1);
}

impl ProducerId {
    /// A batch from a non-idempotent producer carries this id.
    pub const NONE: ProducerId = ProducerId(-1);
}

impl ProducerEpoch {
    pub const NONE: ProducerEpoch = ProducerEpoch(-1);
}

impl Sequence {
    pub const NONE: Sequence = Sequence(-1);
}
