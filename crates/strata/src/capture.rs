//! Capture files: read pcap and pcapng (detected by their magic number),
//! write pcap (nanosecond timestamps) or pcapng (chosen by the `.pcapng`
//! extension).
//!
//! pcapng interfaces carry the packet direction: an interface named `out`
//! (or `vm`) holds frames travelling VM → network, one named `in` (or `net`,
//! `network`) frames travelling network → VM. [`CaptureWriter`] with
//! [`CaptureFormat::PcapNg`] writes interface 0 `out` and interface 1 `in`,
//! both with nanosecond timestamps. Only Ethernet captures are accepted.

use pcap_file::pcap::{PcapHeader, PcapPacket, PcapReader, PcapWriter};
use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::{Block, PcapNgReader, PcapNgWriter};
use pcap_file::{DataLink, PcapError, TsResolution};
use std::borrow::Cow;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;
use strata_engine::Direction;

/// Snap length written in headers (frames may grow by pushed encap).
const SNAPLEN: u32 = 262_144;

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a pcap or pcapng file", path.display())]
    NotACapture { path: PathBuf },
    #[error("{}: link type {link:?} is not supported (Ethernet only)", path.display())]
    LinkType { path: PathBuf, link: DataLink },
    #[error("{}: packet {index}: {source}", path.display())]
    Packet {
        path: PathBuf,
        index: usize,
        #[source]
        source: PcapError,
    },
    #[error("{}: {source}", path.display())]
    Pcap {
        path: PathBuf,
        #[source]
        source: PcapError,
    },
}

/// One captured frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Capture time, nanoseconds since the epoch.
    pub ts_ns: u64,
    pub data: Vec<u8>,
    /// Direction from the pcapng interface name, if it tells one.
    pub direction: Option<Direction>,
}

/// A direction by interface name (`out`/`vm`, `in`/`net`/`network`).
pub fn direction_of_interface(name: &str) -> Option<Direction> {
    match name.trim().to_ascii_lowercase().as_str() {
        "out" | "vm" | "vm-side" => Some(Direction::Out),
        "in" | "net" | "network" | "network-side" => Some(Direction::In),
        _ => None,
    }
}

#[derive(Clone, Debug)]
struct Iface {
    /// Nanoseconds per raw timestamp unit, as a ratio num/den.
    num: u128,
    den: u128,
    direction: Option<Direction>,
    ethernet: bool,
}

impl Iface {
    fn from_idb(idb: &InterfaceDescriptionBlock<'_>) -> Iface {
        // Default resolution is microseconds (if_tsresol = 6).
        let mut resol = 6u8;
        let mut direction = None;
        for o in &idb.options {
            match o {
                InterfaceDescriptionOption::IfTsResol(r) => resol = *r,
                InterfaceDescriptionOption::IfName(n) => direction = direction_of_interface(n),
                _ => {}
            }
        }
        let (num, den) = if resol & 0x80 != 0 {
            // Negative power of two.
            let e = u32::from(resol & 0x7f).min(64);
            (1_000_000_000u128, 1u128 << e)
        } else {
            let e = u32::from(resol).min(30);
            if e <= 9 {
                (10u128.pow(9 - e), 1)
            } else {
                (1, 10u128.pow(e - 9))
            }
        };
        Iface {
            num,
            den,
            direction,
            ethernet: idb.linktype == DataLink::ETHERNET,
        }
    }
}

enum Inner {
    Pcap(PcapReader<BufReader<File>>),
    PcapNg {
        reader: PcapNgReader<BufReader<File>>,
        ifaces: Vec<Iface>,
    },
}

/// A streaming reader of pcap or pcapng files.
pub struct CaptureReader {
    path: PathBuf,
    inner: Inner,
    index: usize,
    done: bool,
}

impl CaptureReader {
    pub fn open(path: &Path) -> Result<CaptureReader, CaptureError> {
        let io = |source| CaptureError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let mut r = BufReader::new(file);
        let head = r.fill_buf().map_err(io)?;
        let magic = head.get(..4).map(|m| [m[0], m[1], m[2], m[3]]);
        let pcap_err = |source| CaptureError::Pcap {
            path: path.to_path_buf(),
            source,
        };
        let inner = match magic {
            Some([0x0a, 0x0d, 0x0d, 0x0a]) => Inner::PcapNg {
                reader: PcapNgReader::new(r).map_err(pcap_err)?,
                ifaces: Vec::new(),
            },
            Some(m)
                if [
                    [0xa1, 0xb2, 0xc3, 0xd4],
                    [0xd4, 0xc3, 0xb2, 0xa1],
                    [0xa1, 0xb2, 0x3c, 0x4d],
                    [0x4d, 0x3c, 0xb2, 0xa1],
                ]
                .contains(&m) =>
            {
                let reader = PcapReader::new(r).map_err(pcap_err)?;
                let link = reader.header().datalink;
                if link != DataLink::ETHERNET {
                    return Err(CaptureError::LinkType {
                        path: path.to_path_buf(),
                        link,
                    });
                }
                Inner::Pcap(reader)
            }
            _ => {
                return Err(CaptureError::NotACapture {
                    path: path.to_path_buf(),
                });
            }
        };
        Ok(CaptureReader {
            path: path.to_path_buf(),
            inner,
            index: 0,
            done: false,
        })
    }

    /// The next frame; `None` at the end. After an error the reader stops.
    pub fn next_frame(&mut self) -> Option<Result<Frame, CaptureError>> {
        if self.done {
            return None;
        }
        let r = self.read_one();
        match &r {
            None | Some(Err(_)) => self.done = true,
            Some(Ok(_)) => self.index += 1,
        }
        r
    }

    fn read_one(&mut self) -> Option<Result<Frame, CaptureError>> {
        let path = self.path.clone();
        let index = self.index;
        let perr = |source| CaptureError::Packet {
            path: path.clone(),
            index,
            source,
        };
        match &mut self.inner {
            Inner::Pcap(r) => {
                let p = match r.next_packet()? {
                    Ok(p) => p,
                    Err(e) => return Some(Err(perr(e))),
                };
                Some(Ok(Frame {
                    ts_ns: duration_ns(p.timestamp),
                    data: p.data.into_owned(),
                    direction: None,
                }))
            }
            Inner::PcapNg { reader, ifaces } => loop {
                let block = match reader.next_block()? {
                    Ok(b) => b,
                    Err(e) => return Some(Err(perr(e))),
                };
                match block {
                    Block::SectionHeader(_) => ifaces.clear(),
                    Block::InterfaceDescription(idb) => ifaces.push(Iface::from_idb(&idb)),
                    Block::EnhancedPacket(epb) => {
                        let Some(iface) = ifaces.get(epb.interface_id as usize) else {
                            return Some(Err(perr(PcapError::InvalidInterfaceId(
                                epb.interface_id,
                            ))));
                        };
                        if !iface.ethernet {
                            return Some(Err(CaptureError::LinkType {
                                path: path.clone(),
                                link: DataLink::Unknown(0),
                            }));
                        }
                        // pcap-file reads the raw units as nanoseconds.
                        let raw = epb.timestamp.as_nanos();
                        let ns = raw.saturating_mul(iface.num) / iface.den;
                        return Some(Ok(Frame {
                            ts_ns: u64::try_from(ns).unwrap_or(u64::MAX),
                            data: epb.data.into_owned(),
                            direction: iface.direction,
                        }));
                    }
                    Block::SimplePacket(spb) => {
                        let direction = ifaces.first().and_then(|i| i.direction);
                        return Some(Ok(Frame {
                            ts_ns: 0,
                            data: spb.data.into_owned(),
                            direction,
                        }));
                    }
                    _ => {}
                }
            },
        }
    }
}

impl Iterator for CaptureReader {
    type Item = Result<Frame, CaptureError>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_frame()
    }
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaptureFormat {
    Pcap,
    PcapNg,
}

impl CaptureFormat {
    /// `.pcapng` → pcapng, anything else pcap.
    pub fn from_path(path: &Path) -> CaptureFormat {
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("pcapng") => CaptureFormat::PcapNg,
            _ => CaptureFormat::Pcap,
        }
    }
}

enum Writer {
    Pcap(PcapWriter<BufWriter<File>>),
    PcapNg(PcapNgWriter<BufWriter<File>>),
}

/// Writes frames to a pcap or pcapng file.
pub struct CaptureWriter {
    path: PathBuf,
    w: Writer,
    pub written: u64,
}

impl CaptureWriter {
    pub fn create(path: &Path, format: CaptureFormat) -> Result<CaptureWriter, CaptureError> {
        let file = File::create(path).map_err(|source| CaptureError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let out = BufWriter::new(file);
        let perr = |source| CaptureError::Pcap {
            path: path.to_path_buf(),
            source,
        };
        let w = match format {
            CaptureFormat::Pcap => {
                let header = PcapHeader {
                    snaplen: SNAPLEN,
                    datalink: DataLink::ETHERNET,
                    ts_resolution: TsResolution::NanoSecond,
                    endianness: pcap_file::Endianness::native(),
                    ..PcapHeader::default()
                };
                Writer::Pcap(PcapWriter::with_header(out, header).map_err(perr)?)
            }
            CaptureFormat::PcapNg => {
                let mut w = PcapNgWriter::new(out).map_err(perr)?;
                for name in ["out", "in"] {
                    let idb = InterfaceDescriptionBlock {
                        linktype: DataLink::ETHERNET,
                        snaplen: SNAPLEN,
                        options: vec![
                            InterfaceDescriptionOption::IfName(Cow::Borrowed(name)),
                            InterfaceDescriptionOption::IfTsResol(9),
                        ],
                    };
                    w.write_pcapng_block(idb).map_err(perr)?;
                }
                Writer::PcapNg(w)
            }
        };
        Ok(CaptureWriter {
            path: path.to_path_buf(),
            w,
            written: 0,
        })
    }

    /// Write one frame; `direction` picks the pcapng interface (pcap has
    /// none).
    pub fn write(
        &mut self,
        ts_ns: u64,
        data: &[u8],
        direction: Direction,
    ) -> Result<(), CaptureError> {
        let perr = |source| CaptureError::Pcap {
            path: self.path.clone(),
            source,
        };
        let ts = Duration::from_nanos(ts_ns);
        let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
        match &mut self.w {
            Writer::Pcap(w) => {
                w.write_packet(&PcapPacket::new(ts, len, data))
                    .map_err(perr)?;
            }
            Writer::PcapNg(w) => {
                let epb = EnhancedPacketBlock {
                    interface_id: match direction {
                        Direction::Out => 0,
                        Direction::In => 1,
                    },
                    timestamp: ts,
                    original_len: len,
                    data: Cow::Borrowed(data),
                    options: vec![],
                };
                w.write_pcapng_block(epb).map_err(perr)?;
            }
        }
        self.written += 1;
        Ok(())
    }

    /// Flush to disk.
    pub fn finish(self) -> Result<(), CaptureError> {
        let path = self.path;
        let mut out = match self.w {
            Writer::Pcap(w) => w.into_writer(),
            Writer::PcapNg(w) => w.into_inner(),
        };
        out.flush()
            .map_err(|source| CaptureError::Io { path, source })
    }
}
