//! Newtypes for the numbers the WAL deals in. Index, count and size are different words; so are these.

use std::fmt;

/// The position of a record in the one global history: 1-based and gap-free. `CommitId(0)` means "none yet".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CommitId(pub u64);

/// A primary's term. Every frame carries the epoch of the primary that wrote it; epochs never decrease in a log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Epoch(pub u64);

/// The number of a segment file. Segment ids are consecutive from 1 in a healthy log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentId(pub u64);

impl CommitId {
    /// The id that follows this one.
    ///
    /// # Panics
    /// On overflow of `u64`, which would take longer than the age of the universe at any real append rate: a bug.
    #[must_use]
    pub fn next(self) -> CommitId {
        CommitId(self.0.checked_add(1).expect("CommitId overflow"))
    }
}

impl SegmentId {
    /// The id that follows this one.
    #[must_use]
    pub fn next(self) -> SegmentId {
        SegmentId(self.0.checked_add(1).expect("SegmentId overflow"))
    }
}

impl fmt::Display for CommitId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for SegmentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
