//! Emit: apply one compiled [`Transposition`] to a frame in place.

use crate::parse::Parsed;
use crate::transposition::Transposition;

/// Default headroom kept in front of a frame for pushed outer headers
/// (enough for Ethernet + IPv6 + UDP + Geneve with options).
pub const DEFAULT_HEADROOM: usize = 128;

/// A frame buffer with headroom, reused across packets (no allocation on the
/// fast path after construction).
#[derive(Clone, Debug)]
pub struct PacketBuf {
    storage: Vec<u8>,
    start: usize,
    end: usize,
}

impl PacketBuf {
    /// A buffer able to hold `capacity` frame bytes plus [`DEFAULT_HEADROOM`].
    pub fn with_capacity(capacity: usize) -> PacketBuf {
        PacketBuf { storage: vec![0; capacity + DEFAULT_HEADROOM], start: DEFAULT_HEADROOM, end: DEFAULT_HEADROOM }
    }

    /// A buffer holding a copy of `frame` with default headroom.
    pub fn from_frame(frame: &[u8]) -> PacketBuf {
        let mut b = PacketBuf::with_capacity(frame.len().max(2048));
        b.reset(frame);
        b
    }

    /// Replace the contents with `frame`, restoring full headroom. Grows the
    /// storage only if the frame does not fit.
    pub fn reset(&mut self, frame: &[u8]) {
        let need = DEFAULT_HEADROOM + frame.len();
        if self.storage.len() < need {
            self.storage.resize(need, 0);
        }
        self.start = DEFAULT_HEADROOM;
        self.end = self.start + frame.len();
        self.storage[self.start..self.end].copy_from_slice(frame);
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.storage[self.start..self.end]
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.end]
    }

    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }

    pub fn headroom(&self) -> usize {
        self.start
    }
}

/// Why a transposition could not be applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EmitError {
    #[error("not enough headroom to push {0} bytes")]
    NoHeadroom(usize),
}

impl EmitError {
    pub fn reason(&self) -> &'static str {
        match self {
            EmitError::NoHeadroom(_) => "no-headroom",
        }
    }
}

/// Apply `t` to the frame in `buf`, which `parsed` describes.
pub fn apply(_t: &Transposition, _buf: &mut PacketBuf, _parsed: &Parsed) -> Result<(), EmitError> {
    Ok(())
}
