//! Diagnostics (VFP-23): the result of simulating a UFID through a port —
//! which layer flow, rule or default decided in each layer, each layer's
//! transposition, the composed one, and what the unified flow table holds.

use crate::policy::DefaultAction;
use crate::types::{Direction, DropReason, Verdict};
use serde::{Deserialize, Serialize};
use std::fmt;
use strata_packet::flow::Ufid;
use strata_packet::transposition::Transposition;

/// What decided in one layer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LayerDecision {
    /// An existing stateful layer flow (the reverse side for return traffic).
    LayerFlow { rule: String, reverse: bool },
    /// A rule, classified.
    Rule {
        group: String,
        rule: String,
        stateful: bool,
    },
    /// No rule matched: the layer's default action.
    Default(DefaultAction),
}

/// One layer's step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerTrace {
    pub layer: String,
    /// The layer-local flow id the layer saw.
    pub input: Ufid,
    pub decision: LayerDecision,
    pub transposition: String,
    /// The layer's transposition itself (what composition used).
    pub step: Transposition,
    pub dropped: Option<DropReason>,
}

/// The unified flow currently cached for the traced UFID.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedFlow {
    pub generation: u64,
    /// False if a policy change happened since (reconciles on next packet).
    pub current: bool,
    pub transposition: String,
    pub verdict: Verdict,
}

/// A whole trace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trace {
    pub direction: Direction,
    pub input: Ufid,
    pub layers: Vec<LayerTrace>,
    pub transposition: String,
    pub output: Ufid,
    pub verdict: Verdict,
    pub cached: Option<CachedFlow>,
    /// For an ICMP error about one of the port's connections (traced as a
    /// frame): the connection and the translation the error is relayed
    /// with, which decide it instead of `layers` (see the port's
    /// `related` module).
    #[serde(default)]
    pub related: Option<RelatedError>,
    /// For an IP fragment (traced as a frame): which datagram and part it
    /// is, and whether it takes its first fragment's flow (see the port's
    /// `fragments` module).
    #[serde(default)]
    pub fragment: Option<FragmentTrace>,
}

/// An IP fragment's place, and what the port does with it before its flow
/// is looked up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FragmentTrace {
    /// IP identification.
    pub id: u32,
    /// Where its data starts in the datagram's payload, bytes.
    pub offset: u32,
    /// More fragments follow.
    pub more: bool,
    /// What the port does with it.
    pub handling: FragmentHandling,
}

/// What the port does with an IP fragment before its flow is looked up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FragmentHandling {
    /// The first fragment: its datagram is tracked from here.
    First,
    /// A later fragment: it takes the L4 identity of its datagram's first
    /// fragment, and that flow (`input` shows the key it is looked up by).
    Follows,
    /// A later fragment whose first fragment has not passed: held for it.
    Held,
}

/// The connection an ICMP error is about, and how it is relayed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelatedError {
    /// The key of the answer to the quoted packet (the connection's flow
    /// in the error's direction).
    pub answer: Ufid,
    /// The connection's transposition for that direction.
    pub transposition: String,
}

impl fmt::Display for Trace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "trace {} {}",
            self.direction.name(),
            describe_ufid(&self.input)
        )?;
        for l in &self.layers {
            let what = match &l.decision {
                LayerDecision::LayerFlow { rule, reverse } => format!(
                    "layer flow of rule {rule}{}",
                    if *reverse { " (reverse)" } else { "" }
                ),
                LayerDecision::Rule {
                    group,
                    rule,
                    stateful,
                } => format!(
                    "group {group} rule {rule}{}",
                    if *stateful { " (stateful)" } else { "" }
                ),
                LayerDecision::Default(d) => format!("default {d:?}"),
            };
            write!(f, "  [{}] {} -> {}", l.layer, what, l.transposition)?;
            if let Some(r) = l.dropped {
                write!(f, "  DROP {r}")?;
            }
            writeln!(f)?;
        }
        writeln!(f, "  final: {}", self.transposition)?;
        writeln!(f, "  output: {}", describe_ufid(&self.output))?;
        match self.verdict {
            Verdict::Forward => writeln!(f, "  verdict: forward")?,
            Verdict::Drop { reason, .. } => writeln!(f, "  verdict: drop ({reason})")?,
            Verdict::Held => writeln!(f, "  verdict: held for its datagram's first fragment")?,
        }
        if let Some(fr) = &self.fragment {
            let what = match fr.handling {
                FragmentHandling::First => "the first: its datagram is tracked from here",
                FragmentHandling::Follows => "a later one: takes its first fragment's flow",
                FragmentHandling::Held => "a later one: held for its first fragment",
            };
            writeln!(
                f,
                "  IP fragment id {} at offset {}{}, {what}",
                fr.id,
                fr.offset,
                if fr.more {
                    " (more follow)"
                } else {
                    " (the last)"
                }
            )?;
        }
        if let Some(r) = &self.related {
            writeln!(
                f,
                "  ICMP error about connection {}: relayed with {} (quote translated back)",
                describe_ufid(&r.answer),
                r.transposition
            )?;
        }
        if let Some(c) = &self.cached {
            writeln!(
                f,
                "  cached unified flow: gen {}{} {:?} {}",
                c.generation,
                if c.current { "" } else { " (stale)" },
                c.verdict,
                c.transposition
            )?;
        }
        Ok(())
    }
}

/// One line for a UFID.
pub fn describe_ufid(u: &Ufid) -> String {
    match &u.outer {
        Some(o) => format!(
            "[{:?} vni {} {} -> {}] {}",
            o.tunnel,
            o.vni,
            o.src_ip,
            o.dst_ip,
            u.inner.summary()
        ),
        None => u.inner.summary(),
    }
}
