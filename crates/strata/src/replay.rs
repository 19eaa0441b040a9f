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
//! with (`related`). A later IP fragment that came before its datagram's
//! first is `held`; when the first has passed it is processed, written to
//! the output after the first, and logged again under its own index with
//! `released_by` naming the frame that released it. Every
//! `expire_interval_ns` of capture time the port's expiry runs, as a
//! switch's housekeeping would (held fragments whose first never came are
//! dropped then, counted as `fragment-timeout`).
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
    /// `forward`, `drop` or `held` (a later IP fragment waiting for its
    /// datagram's first).
    pub verdict: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_reason: Option<String>,
    /// The layer that decided a drop, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_layer: Option<String>,
    /// `fast` (unified flow hit), `slow` (layers walked), `none`
    /// (malformed, or held: never reached the flow table), or `released`
    /// (a held fragment processed after its first; the summary counts it
    /// on the path the port took).
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
    /// For a held IP fragment processed once its first fragment passed:
    /// the index of the frame that released it (this line's `index` is
    /// the held frame's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_by: Option<u64>,
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
    /// Later IP fragments held for their first (each is also counted as
    /// forwarded or dropped once that is decided).
    pub held: u64,
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
    /// Fragments still held for their first at the end.
    pub held_at_end: usize,
}

impl fmt::Display for ReplaySummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dropped: u64 = self.dir.iter().map(|t| t.dropped).sum();
        write!(
            f,
            "packets in: {}, forwarded (out): {}, dropped: {dropped}",
            self.packets_in, self.packets_out,
        )?;
        if self.held_at_end > 0 {
            write!(f, ", held at end: {}", self.held_at_end)?;
        }
        writeln!(f)?;
        for d in [Direction::Out, Direction::In] {
            let t = &self.dir[d.index()];
            write!(
                f,
                "  {:<3} packets {:>8}  forwarded {:>8}  dropped {:>8}  fast {:>8}  slow {:>8}",
                d.name(),
                t.packets,
                t.forwarded,
                t.dropped,
                t.fast_path,
                t.slow_path
            )?;
            if t.held > 0 {
                write!(f, "  held {:>8}", t.held)?;
            }
            writeln!(f)?;
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
    pub direction: Direction,
    pub verdict: Verdict,
    pub fast: bool,
    /// The transformed frame when forwarded.
    pub output: Option<Vec<u8>>,
    pub line: Option<VerdictLine>,
    /// Held fragments this frame released (it was their datagram's first
    /// fragment), processed after it, with their own indexes.
    pub released: Vec<Processed>,
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
    /// Held fragments by hold number ([`ReleasedFragment::hold`]): their
    /// index and input length.
    held: BTreeMap<u64, (u64, usize)>,
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
            held: BTreeMap::new(),
            summary: ReplaySummary::default(),
        }
    }

    /// Process one frame at time `now`.
    pub fn process(&mut self, d: Direction, frame: &[u8], now: u64) -> Processed {
        if let Some(iv) = self.expire_interval_ns {
            match self.last_expire {
                None => self.last_expire = Some(now),
                Some(t) if now >= t.saturating_add(iv) => {
                    self.expire(now);
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
        // key already? (The key the port looks it up by; reading the
        // port's counters per packet would cost O(flows).)
        let pre = self.port.lookup_key(d, frame);
        let (fast, slow, pre_error) = match &pre {
            Ok(key) => {
                let hit = self.port.connection(d, key).is_some();
                (hit, !hit, None)
            }
            Err(e) => (false, false, Some(e.reason())),
        };
        self.buf.reset(frame);
        let paths = |p: &Port| {
            [Direction::Out, Direction::In].map(|d| {
                let c = p.direction_counters(d);
                (c.fast_path, c.slow_path)
            })
        };
        let before = paths(self.port);
        let verdict = self.port.process(d, &mut self.buf, now);
        let output = verdict.is_forward().then(|| self.buf.as_slice().to_vec());
        // A held fragment has not reached the flow table yet.
        let (fast, slow) = if verdict == Verdict::Held {
            (false, false)
        } else {
            (fast, slow)
        };

        let s = &mut self.summary;
        s.packets_in += 1;
        let t = &mut s.dir[d.index()];
        t.packets += 1;
        t.fast_path += u64::from(fast);
        t.slow_path += u64::from(slow);
        count_verdict(s, d, verdict);
        if self.port.released_fragments() > 0 {
            // The fragments this frame released took the paths the port
            // counted beyond this frame's own.
            let after = paths(self.port);
            for e in [Direction::Out, Direction::In] {
                let own = if e == d { (fast, slow) } else { (false, false) };
                let t = &mut s.dir[e.index()];
                let (b, a) = (before[e.index()], after[e.index()]);
                t.fast_path += (a.0 - b.0).saturating_sub(u64::from(own.0));
                t.slow_path += (a.1 - b.1).saturating_sub(u64::from(own.1));
            }
        }
        if verdict == Verdict::Held {
            let hold = self.port.fragment_counters().held;
            self.held.insert(hold, (self.index, frame.len()));
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
                verdict: verdict_name(verdict).into(),
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
                released_by: None,
                layers: tr.as_ref().map(layer_lines).unwrap_or_default(),
            }
        });
        let released = self.drain_released(now);
        self.index += 1;
        Processed {
            direction: d,
            verdict,
            fast,
            output,
            line,
            released,
        }
    }

    /// The held fragments the frame just processed released, counted and
    /// logged.
    fn drain_released(&mut self, now: u64) -> Vec<Processed> {
        let mut out = Vec::new();
        let (log, by) = (self.log, self.index);
        let held = &mut self.held;
        let summary = &mut self.summary;
        self.port.drain_released(|r| {
            let (index, len_in) = held.remove(&r.hold).unwrap_or((by, 0));
            count_verdict(summary, r.direction, r.verdict);
            let output = r.verdict.is_forward().then(|| r.frame.as_slice().to_vec());
            let line = log.then(|| VerdictLine {
                index,
                ts_ns: now,
                direction: r.direction.name().to_string(),
                verdict: verdict_name(r.verdict).into(),
                drop_reason: r.verdict.drop_reason().map(|x| x.name().to_string()),
                drop_layer: None,
                path: "released".into(),
                len_in,
                len_out: output.as_ref().map(Vec::len),
                parse_error: None,
                flow: None,
                output_flow: output.as_ref().and_then(|o| {
                    let d = r.direction;
                    parse_with(o, parse_options(d))
                        .ok()
                        .map(|p| describe_ufid(&p.ufid))
                }),
                transposition: None,
                related: None,
                released_by: Some(by),
                layers: Vec::new(),
            });
            out.push(Processed {
                direction: r.direction,
                verdict: r.verdict,
                fast: false,
                output,
                line,
                released: Vec::new(),
            });
        });
        out
    }

    /// The port's expiry, with the held fragments it drops counted.
    fn expire(&mut self, now: u64) {
        let dropped = |p: &Port| {
            let c = p.counters();
            [Direction::Out, Direction::In].map(|d| c.direction(d).dropped)
        };
        let before = dropped(self.port);
        self.summary.expired_connections += self.port.expire(now) as u64;
        if self.port.held_fragments() == 0 {
            // The ones expiry dropped are never released.
            self.held.clear();
        }
        let after = dropped(self.port);
        for d in [Direction::Out, Direction::In] {
            let n = after[d.index()] - before[d.index()];
            if n > 0 {
                self.summary.dir[d.index()].dropped += n;
                *self
                    .summary
                    .drops
                    .entry(DropReason::FragmentTimeout.name().to_string())
                    .or_insert(0) += n;
            }
        }
    }

    /// Close the summary.
    pub fn finish(mut self) -> ReplaySummary {
        self.summary.connections_at_end = self.port.connection_count();
        self.summary.held_at_end = self.port.held_fragments();
        self.summary
    }
}

/// Count a frame's verdict in the summary.
fn count_verdict(s: &mut ReplaySummary, d: Direction, verdict: Verdict) {
    let t = &mut s.dir[d.index()];
    match verdict {
        Verdict::Forward => {
            t.forwarded += 1;
            s.packets_out += 1;
        }
        Verdict::Drop { reason, .. } => {
            t.dropped += 1;
            *s.drops.entry(reason.name().to_string()).or_insert(0) += 1;
        }
        Verdict::Held => t.held += 1,
    }
}

/// A verdict as the log names it.
fn verdict_name(v: Verdict) -> &'static str {
    match v {
        Verdict::Forward => "forward",
        Verdict::Drop { .. } => "drop",
        Verdict::Held => "held",
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
        let mut p = r.process(d, &data, ts_ns);
        let released = std::mem::take(&mut p.released);
        for p in std::iter::once(p).chain(released) {
            if let (Some(w), Some(bytes)) = (out.as_mut(), p.output.as_ref()) {
                w.write(ts_ns, bytes, p.direction)?;
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
