//! `strata trace`: what the port would do with one frame — each layer's
//! decision and transposition, the composed result and the cached unified
//! flow — without changing the port (a dry run, VFP-23).
//!
//! The frame is given as hex, or as a packet of a capture by index. With
//! `warm`, the capture's earlier packets are processed first, so the trace
//! sees the flows they created (e.g. the return half of a connection).

use crate::capture::CaptureReader;
use crate::frames::from_hex;
use crate::replay::{ReplayError, Replayer};
use std::path::PathBuf;
use strata_engine::trace::Trace;
use strata_engine::{Direction, Port};

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("bad --frame-hex: {0}")]
    Hex(String),
    #[error("the frame does not parse: {0} ({1})")]
    Parse(strata_packet::ParseError, &'static str),
    #[error("{path}: has no packet {index} (it holds {count})")]
    NoSuchPacket {
        path: String,
        index: usize,
        count: usize,
    },
    #[error(transparent)]
    Replay(#[from] ReplayError),
}

/// The frame to trace.
#[derive(Clone, Debug)]
pub enum TraceInput {
    Hex {
        hex: String,
        now_ns: u64,
    },
    Capture {
        path: PathBuf,
        index: usize,
        warm: bool,
    },
}

/// Trace one frame. `direction` overrides the capture's.
pub fn run(
    port: &mut Port,
    direction: Option<Direction>,
    input: &TraceInput,
) -> Result<Trace, TraceError> {
    let (d, frame, now) = match input {
        TraceInput::Hex { hex, now_ns } => (
            direction.unwrap_or(Direction::Out),
            from_hex(hex).map_err(TraceError::Hex)?,
            *now_ns,
        ),
        TraceInput::Capture { path, index, warm } => {
            let reader = CaptureReader::open(path).map_err(ReplayError::from)?;
            let mut r = Replayer::new(port, false, None);
            let mut found = None;
            let mut count = 0;
            for (i, f) in reader.enumerate() {
                let f = f.map_err(ReplayError::from)?;
                count = i + 1;
                let d = direction.or(f.direction).unwrap_or(Direction::Out);
                if i == *index {
                    found = Some((d, f.data, f.ts_ns));
                    break;
                }
                if *warm {
                    r.process(d, &f.data, f.ts_ns);
                }
            }
            found.ok_or_else(|| TraceError::NoSuchPacket {
                path: path.display().to_string(),
                index: *index,
                count,
            })?
        }
    };
    port.trace_frame(d, &frame, now)
        .map_err(|e| TraceError::Parse(e, e.reason()))
}
