//! The `strata` tools over the engine: declarative policy files
//! ([`policy_file`]), pcap replay ([`replay`]), the in-memory traffic demo
//! ([`demo`]), single-packet traces ([`trace_cmd`]) and the frame builders
//! they share ([`frames`], [`capture`]).

pub mod capture;
pub mod demo;
pub mod frames;
pub mod policy_file;
pub mod replay;
pub mod trace_cmd;
