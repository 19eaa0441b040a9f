//! `strata replay`: run a capture through a port.
//!
//! Each frame is processed with its capture timestamp as the engine's `now`
//! (nanoseconds). Forwarded frames — as the switch rewrote them — go to the
//! output capture with their original timestamps; a verdict log gets one
//! JSON object per input frame ([`VerdictLine`]): its verdict, drop reason,
//! fast or slow path, and the per-layer decisions of a trace taken *before*
//! the frame was processed (so it shows what decided, not the flow the
//! frame then created); for an ICMP error about one of the port's
//! connections, that connection and the translation the error was relayed
//! with (`related`). Every `expire_interval_ns` of capture time the
//! port's expiry runs, as a switch's housekeeping would.
//!
//! The direction of a frame is the forced one (`--direction`), else the
//! pcapng interface's ([`crate::capture`]), else `out`.

use crate::capture::{CaptureError, CaptureFormat, CaptureReader, CaptureWriter, Frame};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use strata_engine::port::parse_options;
use strata_engine::trace::{LayerDecision, Trace, describe_ufid};
use strata_engine::{
    ActionRegistry, ApiError, DefaultAction, Direction, DropReason, Port, Verdict,
};
use strata_packet::PacketBuf;
use strata_packet::parse::parse_with;

/// Errors of replay and of loading a port.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error(transparent)]
    Policy(#[from] crate::policy_file::PolicyError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Snapshot {
        path: PathBuf,
        #[source]
        source: ApiError,
    },
}

/// Where a port comes from.
#[derive(Clone, Debug)]
pub enum PortSource {
    Policy(PathBuf),
    Snapshot(PathBuf),
}

impl PortSource {
    /// Build or restore the port.
    pub fn open(&self) -> Result<Port, ReplayError> {
        match self {
            PortSource::Policy(p) => Ok(crate::policy_file::load_port(p)?),
            PortSource::Snapshot(p) => {
                let bytes = std::fs::read(p).map_err(|source| ReplayError::Io {
                    path: p.clone(),
                    source,
                })?;
                Port::restore(&bytes, ActionRegistry::default()).map_err(|source| {
                    ReplayError::Snapshot {
                        path: p.clone(),
                        source,
                    }
                })
            }
        }
    }
}

/// Write the port's state to `path`.
pub fn save_snapshot(port: &Port, path: &Path) -> Result<(), ReplayError> {
    let bytes = port.snapshot().map_err(|source| ReplayError::Snapshot {
        path: path.to_path_buf(),
        source,
    })?;
    std::fs::write(path, bytes).map_err(|source| ReplayError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Replay settings.
#[derive(Clone, Debug)]
pub struct ReplayOptions {
    pub input: PathBuf,
    /// Forwarded frames (pcapng if the name ends in `.pcapng`).
    pub output: Option<PathBuf>,
    /// Force one direction for every frame.
    pub direction: Option<Direction>,
    /// JSON-lines verdict log.
    pub log: Option<PathBuf>,
    /// Run `port.expire` whenever capture time advanced this much (None:
    /// never).
    pub expire_interval_ns: Option<u64>,
}

impl ReplayOptions {
    pub fn new(input: &Path) -> ReplayOptions {
        ReplayOptions {
            input: input.to_path_buf(),
            output: None,
            direction: None,
            log: None,
            expire_interval_ns: Some(DEFAULT_EXPIRE_INTERVAL_NS),
        }
    }
}

/// Housekeeping interval of replay and demo: one second of capture time.
pub const DEFAULT_EXPIRE_INTERVAL_NS: u64 = 1_000_000_000;

/// One layer's step in a [`VerdictLine`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerLine {
    pub layer: String,
    /// `rule`, `layer_flow` or `default`.
    pub decision: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stateful: Option<bool>,
    /// For `layer_flow`: the reverse side of a flow (return traffic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reverse: Option<bool>,
    /// For `default`: `allow` or `block`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    pub transposition: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropped: Option<String>,
}

/// One line of the verdict log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerdictLine {
    pub index: u64,
    pub ts_ns: u64,
    pub direction: String,
    /// `forward` or `drop`.
    pub verdict: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_reason: Option<String>,
    /// The layer that decided a drop, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_layer: Option<String>,
    /// `fast` (unified flow hit), `slow` (layers walked) or `none`
    /// (malformed: never reached the flow table).
    pub path: String,
    pub len_in: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub len_out: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parse_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_flow: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transposition: Option<String>,
    /// For an ICMP error about one of the port's connections: that
    /// connection (the answer's key). The error is relayed with the
    /// connection's translation (`transposition`), not decided by
    /// `layers`, which show what the policy would make of it alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub related: Option<String>,
    #[serde(default)]
    pub layers: Vec<LayerLine>,
}

/// Layer lines of a trace.
pub fn layer_lines(t: &Trace) -> Vec<LayerLine> {
    t.layers
        .iter()
        .map(|l| {
            let mut line = LayerLine {
                layer: l.layer.clone(),
                decision: String::new(),
                group: None,
                rule: None,
                stateful: None,
                reverse: None,
                default: None,
                transposition: l.transposition.clone(),
                dropped: l.dropped.map(|r| r.name().to_string()),
            };
            match &l.decision {
                LayerDecision::LayerFlow { rule, reverse } => {
                    line.decision = "layer_flow".into();
                    line.rule = Some(rule.clone());
                    line.reverse = Some(*reverse);
                }
                LayerDecision::Rule {
                    group,
                    rule,
                    stateful,
                } => {
                    line.decision = "rule".into();
                    line.group = Some(group.clone());
                    line.rule = Some(rule.clone());
                    line.stateful = Some(*stateful);
                }
                LayerDecision::Default(d) => {
                    line.decision = "default".into();
                    line.default = Some(
                        match d {
                            DefaultAction::Allow => "allow",
                            DefaultAction::Block => "block",
                        }
                        .into(),
                    );
                }
            }
            line
        })
        .collect()
}

/// Totals of one direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DirTotals {
    pub packets: u64,
    pub forwarded: u64,
    pub dropped: u64,
    pub fast_path: u64,
    pub slow_path: u64,
}

/// What a replay did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ReplaySummary {
    pub packets_in: u64,
    pub packets_out: u64,
    pub dir: [DirTotals; 2],
    pub drops: BTreeMap<String, u64>,
    pub malformed: BTreeMap<String, u64>,
    pub expired_connections: u64,
    pub connections_at_end: usize,
}

impl fmt::Display for ReplaySummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "packets in: {}, forwarded (out): {}, dropped: {}",
            self.packets_in,
            self.packets_out,
            self.packets_in - self.packets_out
        )?;
        for d in [Direction::Out, Direction::In] {
            let t = &self.dir[d.index()];
            writeln!(
                f,
                "  {:<3} packets {:>8}  forwarded {:>8}  dropped {:>8}  fast {:>8}  slow {:>8}",
                d.name(),
                t.packets,
                t.forwarded,
                t.dropped,
                t.fast_path,
                t.slow_path
            )?;
        }
        if !self.drops.is_empty() {
            writeln!(f, "drops by reason:")?;
            for (r, n) in &self.drops {
                writeln!(f, "  {r:<16} {n}")?;
            }
        }
        if !self.malformed.is_empty() {
            writeln!(f, "malformed by parser reason:")?;
            for (r, n) in &self.malformed {
                writeln!(f, "  {r:<26} {n}")?;
            }
        }
        write!(
            f,
            "connections expired during replay: {}, live at end: {}",
            self.expired_connections, self.connections_at_end
        )
    }
}

/// The outcome of one frame.
#[derive(Clone, Debug)]
pub struct Processed {
    pub verdict: Verdict,
    pub fast: bool,
    /// The transformed frame when forwarded.
    pub output: Option<Vec<u8>>,
    pub line: Option<VerdictLine>,
}

/// Runs frames through a port one by one, with tracing and housekeeping.
pub struct Replayer<'p> {
    pub port: &'p mut Port,
    buf: PacketBuf,
    /// Record a [`VerdictLine`] (with a trace) per frame.
    pub log: bool,
    pub expire_interval_ns: Option<u64>,
    last_expire: Option<u64>,
    index: u64,
    pub summary: ReplaySummary,
}

impl<'p> Replayer<'p> {
    pub fn new(port: &'p mut Port, log: bool, expire_interval_ns: Option<u64>) -> Replayer<'p> {
        Replayer {
            port,
            buf: PacketBuf::with_capacity(16 * 1024),
            log,
            expire_interval_ns,
            last_expire: None,
            index: 0,
            summary: ReplaySummary::default(),
        }
    }

    /// Process one frame at time `now`.
    pub fn process(&mut self, d: Direction, frame: &[u8], now: u64) -> Processed {
        if let Some(iv) = self.expire_interval_ns {
            match self.last_expire {
                None => self.last_expire = Some(now),
                Some(t) if now >= t.saturating_add(iv) => {
                    self.summary.expired_connections += self.port.expire(now) as u64;
                    self.last_expire = Some(now);
                }
                _ => {}
            }
        }
        let trace = if self.log {
            Some(self.port.trace_frame(d, frame, now))
        } else {
            None
        };
        // Fast or slow path: does the unified flow table hold the frame's
        // key already? (Parsed as the port parses this direction; reading
        // the port's counters per packet would cost O(flows).)
        let pre = parse_with(frame, parse_options(d));
        let (fast, slow, pre_error) = match &pre {
            Ok(p) => {
                let hit = self.port.connection(d, &p.ufid).is_some();
                (hit, !hit, None)
            }
            Err(e) => (false, false, Some(e.reason())),
        };
        self.buf.reset(frame);
        let verdict = self.port.process(d, &mut self.buf, now);
        let output = verdict.is_forward().then(|| self.buf.as_slice().to_vec());

        let s = &mut self.summary;
        s.packets_in += 1;
        let t = &mut s.dir[d.index()];
        t.packets += 1;
        t.fast_path += u64::from(fast);
        t.slow_path += u64::from(slow);
        match verdict {
            Verdict::Forward => {
                t.forwarded += 1;
                s.packets_out += 1;
            }
            Verdict::Drop { reason, .. } => {
                t.dropped += 1;
                *s.drops.entry(reason.name().to_string()).or_insert(0) += 1;
            }
        }
        let mut parse_error = None;
        if verdict.drop_reason() == Some(DropReason::Malformed) {
            let r = pre_error.unwrap_or("unknown");
            *s.malformed.entry(r.to_string()).or_insert(0) += 1;
            parse_error = Some(r.to_string());
        }
        let line = trace.map(|tr| {
            let tr = tr.ok();
            let related = tr.as_ref().and_then(|t| t.related.as_ref());
            let drop_layer = match verdict {
                Verdict::Drop {
                    layer: Some(li), ..
                } => self.port.layer_ids().get(usize::from(li)).cloned(),
                _ => None,
            };
            VerdictLine {
                index: self.index,
                ts_ns: now,
                direction: d.name().to_string(),
                verdict: if verdict.is_forward() {
                    "forward"
                } else {
                    "drop"
                }
                .into(),
                drop_reason: verdict.drop_reason().map(|r| r.name().to_string()),
                drop_layer,
                path: if fast {
                    "fast"
                } else if slow {
                    "slow"
                } else {
                    "none"
                }
                .into(),
                len_in: frame.len(),
                len_out: output.as_ref().map(Vec::len),
                parse_error,
                flow: tr.as_ref().map(|t| describe_ufid(&t.input)),
                output_flow: tr
                    .as_ref()
                    .filter(|_| verdict.is_forward() && related.is_none())
                    .map(|t| describe_ufid(&t.output)),
                transposition: match related {
                    Some(r) => Some(r.transposition.clone()),
                    None => tr.as_ref().map(|t| t.transposition.clone()),
                },
                related: related.map(|r| describe_ufid(&r.answer)),
                layers: tr.as_ref().map(layer_lines).unwrap_or_default(),
            }
        });
        self.index += 1;
        Processed {
            verdict,
            fast,
            output,
            line,
        }
    }

    /// Close the summary.
    pub fn finish(mut self) -> ReplaySummary {
        self.summary.connections_at_end = self.port.connection_count();
        self.summary
    }
}

/// Replay a capture file through `port` (see the module doc).
pub fn replay(port: &mut Port, opts: &ReplayOptions) -> Result<ReplaySummary, ReplayError> {
    let reader = CaptureReader::open(&opts.input)?;
    let mut out = match &opts.output {
        Some(p) => Some(CaptureWriter::create(p, CaptureFormat::from_path(p))?),
        None => None,
    };
    let mut log = match &opts.log {
        Some(p) => Some((
            p.clone(),
            BufWriter::new(File::create(p).map_err(|source| ReplayError::Io {
                path: p.clone(),
                source,
            })?),
        )),
        None => None,
    };
    let mut r = Replayer::new(port, log.is_some(), opts.expire_interval_ns);
    for frame in reader {
        let Frame {
            ts_ns,
            data,
            direction,
        } = frame?;
        let d = opts.direction.or(direction).unwrap_or(Direction::Out);
        let p = r.process(d, &data, ts_ns);
        if let (Some(w), Some(bytes)) = (out.as_mut(), p.output.as_ref()) {
            w.write(ts_ns, bytes, d)?;
        }
        if let (Some((path, w)), Some(line)) = (log.as_mut(), p.line.as_ref()) {
            let io = |source| ReplayError::Io {
                path: path.clone(),
                source,
            };
            serde_json::to_writer(&mut *w, line).map_err(|e| io(std::io::Error::other(e)))?;
            w.write_all(b"\n").map_err(io)?;
        }
    }
    if let Some(w) = out {
        w.finish()?;
    }
    if let Some((path, mut w)) = log {
        w.flush()
            .map_err(|source| ReplayError::Io { path, source })?;
    }
    Ok(r.finish())
}
