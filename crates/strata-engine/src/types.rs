//! Small shared vocabulary: direction, time, verdicts and drop reasons.

use serde::{Deserialize, Serialize};

/// Time in nanoseconds, supplied by the caller (the engine never reads a
/// clock, so behaviour is deterministic and replayable).
pub type Time = u64;

pub const NANOS_PER_SEC: Time = 1_000_000_000;

/// Seconds to [`Time`].
pub const fn secs(s: u64) -> Time {
    s * NANOS_PER_SEC
}

/// Packet direction relative to the VM: `Out` = VM → switch → network,
/// `In` = network → switch → VM. Outbound packets walk the layers top to
/// bottom, inbound packets bottom to top.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Out,
    In,
}

impl Direction {
    pub fn index(self) -> usize {
        match self {
            Direction::Out => 0,
            Direction::In => 1,
        }
    }

    /// Inverse of [`Direction::index`] (0 = out, anything else = in).
    pub fn from_index(i: usize) -> Direction {
        if i == 0 {
            Direction::Out
        } else {
            Direction::In
        }
    }

    pub fn opposite(self) -> Direction {
        match self {
            Direction::Out => Direction::In,
            Direction::In => Direction::Out,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Direction::Out => "out",
            Direction::In => "in",
        }
    }
}

/// Why a packet was dropped. Every drop is counted under one of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DropReason {
    /// The frame did not parse (the parse error's own reason is counted too).
    Malformed,
    /// A rule with a block action matched.
    RuleBlock,
    /// No rule matched and the layer's default action for the direction is block.
    DefaultBlock,
    /// A mapping resource had no entry (an event was raised to the agent).
    MappingMiss,
    /// The SNAT port range was exhausted.
    SnatExhausted,
    /// A load-balancing pool had no backend.
    NoBackend,
    /// A custom action refused the packet.
    ActionRefused,
    /// The transposition could not be applied to the bytes.
    EmitFailed,
    /// A later IP fragment held for its datagram's first fragment, which
    /// did not come in time.
    FragmentTimeout,
    /// A later IP fragment that came before its datagram's first fragment
    /// and could not be held (the port's or the datagram's share full).
    FragmentOverflow,
}

impl DropReason {
    pub const COUNT: usize = 10;
    /// The reasons snapshots before format version 10 counted (the first
    /// ones, in order).
    pub const COUNT_V9: usize = 8;
    pub const ALL: [DropReason; DropReason::COUNT] = [
        DropReason::Malformed,
        DropReason::RuleBlock,
        DropReason::DefaultBlock,
        DropReason::MappingMiss,
        DropReason::SnatExhausted,
        DropReason::NoBackend,
        DropReason::ActionRefused,
        DropReason::EmitFailed,
        DropReason::FragmentTimeout,
        DropReason::FragmentOverflow,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::RuleBlock => "rule-block",
            DropReason::DefaultBlock => "default-block",
            DropReason::MappingMiss => "mapping-miss",
            DropReason::SnatExhausted => "snat-exhausted",
            DropReason::NoBackend => "no-backend",
            DropReason::ActionRefused => "action-refused",
            DropReason::EmitFailed => "emit-failed",
            DropReason::FragmentTimeout => "fragment-timeout",
            DropReason::FragmentOverflow => "fragment-overflow",
        }
    }
}

impl std::fmt::Display for DropReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What the port decided for one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Verdict {
    /// Forward the (transformed) packet onward in its direction.
    Forward,
    /// A later IP fragment that came before its datagram's first: the port
    /// keeps a copy, and hands it on processed when the first fragment
    /// has passed ([`crate::Port::drain_released`]), or drops it, counted,
    /// if that does not come in time.
    Held,
    /// Dropped; `layer` is the index of the deciding layer when there is one.
    Drop {
        reason: DropReason,
        layer: Option<u16>,
    },
}

impl Verdict {
    pub fn is_forward(&self) -> bool {
        matches!(self, Verdict::Forward)
    }

    pub fn drop_reason(&self) -> Option<DropReason> {
        match self {
            Verdict::Forward | Verdict::Held => None,
            Verdict::Drop { reason, .. } => Some(*reason),
        }
    }
}
