//! `strata-engine`: the VFP model, pure and deterministic.
//!
//! A [`Port`] holds layers of match-action tables ([`policy`]), stateful
//! layer flows and the unified flow table ([`flow_table`]), resources
//! ([`resource`]), TCP tracking ([`tcp`]) and counters ([`counters`]). It
//! takes parsed packets and returns exactly what to do with them; it knows
//! nothing of I/O, threads or clocks (time is an argument).

pub mod action;
pub mod classifier;
pub mod condition;
pub mod counters;
pub mod error;
pub mod expiry;
pub mod flow_index;
pub mod flow_key;
pub mod flow_table;
pub mod hint;
pub mod host_memory;
pub mod intern;
pub mod layer_refs;
pub mod policy;
pub mod port;
pub mod preclassify;
pub mod resource;
pub mod rulegen;
pub mod scenario;
pub mod slab;
pub mod snapshot;
pub mod tcp;
pub mod trace;
pub mod types;

pub use action::{Action, ActionCx, ActionOutput, ActionRegistry, ActionSpec};
pub use condition::{Condition, Field, FieldValues, MatchValue};
pub use error::ApiError;
pub use policy::{DefaultAction, Group, LayerSpec, PortConfig, Rule};
pub use port::Port;
pub use resource::{Backend, Mapping, ResourceEvent};
pub use types::{Direction, DropReason, Time, Verdict, secs};
