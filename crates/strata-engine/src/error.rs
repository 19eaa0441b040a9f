//! Typed errors of the policy API. A call that returns an error has changed
//! nothing (every update is validated in full before it is applied).

use thiserror::Error;

#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ApiError {
    #[error("layer {0:?} already exists on this port")]
    LayerExists(String),
    #[error("no layer {0:?} on this port")]
    NoSuchLayer(String),
    #[error("layer position {position} is out of range (port has {layers} layers)")]
    BadPosition { position: usize, layers: usize },
    #[error("group {group:?} already exists in layer {layer:?}")]
    GroupExists { layer: String, group: String },
    #[error("no group {group:?} in layer {layer:?}")]
    NoSuchGroup { layer: String, group: String },
    #[error("duplicate rule id {rule:?} in layer {layer:?}")]
    DuplicateRule { layer: String, rule: String },
    #[error("invalid condition in {place}: {message}")]
    InvalidCondition { place: String, message: String },
    #[error("invalid action in rule {rule:?}: {message}")]
    InvalidAction { rule: String, message: String },
    #[error("unknown action type {0:?} (not registered)")]
    UnknownAction(String),
    #[error(
        "group {group:?}: LPM group needs an LPM field that is an IP or MAC field, got {field}"
    )]
    BadLpmField { group: String, field: String },
    #[error("no resource {0:?}")]
    NoSuchResource(String),
    #[error("resource {0:?} already exists")]
    ResourceExists(String),
    #[error("invalid resource {name:?}: {message}")]
    InvalidResource { name: String, message: String },
    #[error("invalid identifier {0:?}: must be 1-64 characters of [A-Za-z0-9_.:-]")]
    BadId(String),
    #[error(
        "cannot reserve room for {requested} connections: the port keeps at most {max} (max_connections)"
    )]
    ReserveBeyondLimit { requested: usize, max: usize },
    #[error(
        "cannot reserve room for {requested} connections: that needs {needed} more bytes of flow tables, and this process has {available} bytes available (free memory, within its cgroups' limits)"
    )]
    ReserveBeyondMemory {
        requested: usize,
        needed: usize,
        available: usize,
    },
    #[error(
        "layer {layer} would hold stateful rules on a port reserved for {connections} connections: its flow table needs {needed} more bytes, and this process has {available} bytes available (free memory, within its cgroups' limits)"
    )]
    LayerBeyondReservation {
        layer: String,
        connections: usize,
        needed: usize,
        available: usize,
    },
    #[error(
        "layer {layer} would hold meter rules on a port reserved for {connections} connections: room for their buckets needs {needed} more bytes, and this process has {available} bytes available (free memory, within its cgroups' limits)"
    )]
    MetersBeyondReservation {
        layer: String,
        connections: usize,
        needed: usize,
        available: usize,
    },
    #[error("snapshot error: {0}")]
    Snapshot(String),
}

/// Validate an object identifier (layer, group, rule, resource names).
pub fn check_id(id: &str) -> Result<(), ApiError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ApiError::BadId(id.to_string()))
    }
}
