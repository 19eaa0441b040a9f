//! Declarative policy files: one file describes one port — its settings,
//! resources and layers — in TOML (or JSON, chosen by the `.json`
//! extension, with the same structure).
//!
//! # Format
//!
//! ```toml
//! [port]
//! name = "vm-10.1.0.4"          # required
//! max_connections = 1048576     # optional (at most 2^31); the rest too
//! reserve_connections = 100000  # size the flow tables for this many now
//!                               # (at most max_connections, and what the
//!                               # machine's memory can back; default 0)
//! tcp_established_idle = "300s" # durations: "300s", "250ms", "5m", "1h",
//! tcp_half_open_idle = "10s"    # "100us", "10ns", or an integer (seconds)
//! tcp_time_wait = "60s"
//! tcp_closed_linger = "1s"
//! udp_idle = "120s"
//! other_idle = "60s"
//!
//! [[resources.mapping]]         # a CA -> PA mapping table (VNET)
//! name = "vnet-5001"
//! entries = [
//!   { ca = "10.1.0.5", pa = "192.168.1.5", pa_mac = "02:aa:00:00:00:01",
//!     ca_mac = "02:01:00:00:00:05", vni = 5001, tunnel = "vxlan" },
//! ]                             # tunnel: vxlan (default) | nvgre | geneve
//!
//! [[resources.port_pool]]       # SNAT ports on one public address
//! name = "snat-vip"
//! ip = "203.0.113.10"
//! ranges = ["1024-65535"]       # "lo-hi" strings or single ports
//!
//! [[resources.backend_pool]]    # DIPs of a load-balanced VIP
//! name = "web"
//! backends = ["10.1.0.4:8080"]  # "ip:port", "ip" (keep the VIP's port),
//!                               # "[2001:db8::1]:80"
//!
//! [[layer]]                     # layers in order, VM side first
//! id = "acl"
//! default_out = "block"         # allow (default) | block
//! default_in = "block"
//!
//! [[layer.group]]
//! id = "customer-out"
//! direction = "out"             # out | in
//! match = "priority"            # "priority" (default) | { lpm = "dst_ip" }
//! conditions = { src_ip = ["10.1.0.4"] }   # optional, AND-ed with the rules'
//!
//! [[layer.group.rule]]
//! id = "allow-out"              # unique within the layer
//! priority = 1000               # lower wins; default 0
//! terminating = false           # default false
//! stateful = true               # default false
//! ttl_secs = 30                 # optional idle timeout of its flows
//! conditions = { ether_type = ["ipv4"], dst_port = ["80", "8000-8100"] }
//! action = { type = "allow" }   # or just: action = "allow"
//! ```
//!
//! ## Conditions
//!
//! `conditions` is a table `field = [values]` (a single value may be given
//! without brackets). Values of one field are OR-ed; fields are AND-ed, and
//! kept in the order written. Fields and value syntax:
//!
//! | field | values |
//! | --- | --- |
//! | `src_ip`, `dst_ip`, `outer_src_ip`, `outer_dst_ip` | `"10.1.0.4"`, `"10.0.0.0/8"`, `"10.0.0.1-10.0.0.9"`, IPv6 alike |
//! | `src_mac`, `dst_mac`, `outer_src_mac`, `outer_dst_mac` | `"02:00:00:00:00:01"`, `"02:00:00:00:00:00/24"`, `"02:00:00:00:00:01-02:00:00:00:00:09"` |
//! | `proto` | `"tcp"`, `"udp"`, `"icmp"`, `"icmpv6"`, `"gre"` or a number |
//! | `ether_type` | `"ipv4"`, `"ipv6"`, `"arp"`, `"0x0800"` or a number |
//! | `src_port`, `dst_port` | `80`, `"80"`, `"8000-8100"` |
//! | `vlan`, `dscp`, `icmp_type`, `icmp_code`, `tunnel_id` | numbers, `"lo-hi"` ranges, `"0x.."` hex |
//!
//! IPv4 addresses live in the engine's IPv6 space (`::ffff:a.b.c.d`); a
//! prefix length is written for its own family (`10.0.0.0/8`). Numeric
//! fields also accept `"value/len"` prefixes over the field's width.
//!
//! ## Actions
//!
//! `action = { type = "...", ... }`; `allow`, `block`, `decap` and `count`
//! may be written as a bare string.
//!
//! | type | parameters |
//! | --- | --- |
//! | `allow`, `block`, `decap`, `count` | — |
//! | `encap` | `tunnel` (default vxlan), `vni`, `local_pa`, `remote_pa`, `local_mac`, `next_hop_mac`, optional `inner_dst_mac` |
//! | `encap_mapped` | `mapping` (a mapping table), `local_pa`, `local_mac` |
//! | `nat` | any of `src_ip`, `dst_ip`, `src_port`, `dst_port` |
//! | `lb_nat` | `pool` (a backend pool) |
//! | `snat` | `pool` (a port pool); the rule must be `stateful` |
//! | `modify` | any of `src_mac`, `dst_mac`, `dscp`, `vlan` (a VLAN id, `"pop"`) |
//! | `transpose` | `outer` (`"pop"`, `{ push = ENCAP }`, `{ replace = ENCAP }`), and any of `src_mac`, `dst_mac`, `vlan`, `src_ip`, `dst_ip`, `dscp`, `src_port`, `dst_port`; ENCAP = `{ tunnel, vni, src_mac, dst_mac, src_ip, dst_ip, ttl?, dst_port?, geneve_options? (hex) }` |
//! | `meter` | `by` (a field name), optional `prefix_len` (bits of the field; IP fields are 128 bits wide, so an IPv4 /24 is 120) |
//! | `custom` | `name`, `params = { key = "value" }` (needs a registered action) |
//!
//! ## Errors
//!
//! Syntax and type errors name the line and column (`policy.toml:12:5:
//! invalid type: string "high", expected u32`). Errors of meaning name the
//! object path: `layer "acl" > group "customer-out" > rule "allow-out" >
//! condition dst_ip: "10.0.0.0/33" is not a valid prefix (an IPv4 prefix
//! length is at most 32)`. A bad file never panics and never builds a port.
//!
//! A port's policy can be written back out ([`PolicySpec::from_port`],
//! [`PolicySpec::to_toml`]), e.g. by `strata demo --write-pcap`.

use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use strata_engine::classifier::MatchType;
use strata_engine::error::check_id;
use strata_engine::resource::PortPool;
use strata_engine::{
    ActionRegistry, ActionSpec, Backend, Condition, DefaultAction, Direction, Field, LayerSpec,
    Mapping, MatchValue, Port, PortConfig, Rule,
};
use strata_engine::{Group, Time};
use strata_packet::flow::{MacAddr, TunnelKind, ethertype, ip_to_u128, ipproto, u128_to_ip};
use strata_packet::transposition::{Encap, OuterOp, Transposition, VlanOp, default_tunnel_port};

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Why a policy file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: unknown policy file type (expected a .toml or .json extension)", path.display())]
    Extension { path: PathBuf },
    /// A syntax or type error at a place in the text (1-based).
    #[error("{file}:{line}:{column}: {message}")]
    Syntax {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
    /// A well-formed file that does not make sense; `path` names the object.
    #[error("{file}: {path}: {message}")]
    Semantic {
        file: String,
        path: String,
        message: String,
    },
    #[error("cannot write the policy: {0}")]
    Serialize(String),
}

impl PolicyError {
    /// The line of a syntax error.
    pub fn line(&self) -> Option<usize> {
        match self {
            PolicyError::Syntax { line, .. } => Some(*line),
            _ => None,
        }
    }

    /// The object path of a semantic error.
    pub fn path(&self) -> Option<&str> {
        match self {
            PolicyError::Semantic { path, .. } => Some(path),
            _ => None,
        }
    }

    fn with_file(self, name: &str) -> PolicyError {
        match self {
            PolicyError::Syntax {
                line,
                column,
                message,
                ..
            } => PolicyError::Syntax {
                file: name.to_string(),
                line,
                column,
                message,
            },
            PolicyError::Semantic { path, message, .. } => PolicyError::Semantic {
                file: name.to_string(),
                path,
                message,
            },
            e => e,
        }
    }
}

/// A semantic error at `path`, before the file name is known.
fn sem(path: &Place, message: impl Into<String>) -> PolicyError {
    PolicyError::Semantic {
        file: DEFAULT_FILE.into(),
        path: path.to_string(),
        message: message.into(),
    }
}

const DEFAULT_FILE: &str = "<policy>";

/// The object path of a semantic error: `layer "acl" > group "g" > rule "r"`.
#[derive(Clone, Debug, Default)]
struct Place(Vec<String>);

impl Place {
    fn push(&self, seg: impl Into<String>) -> Place {
        let mut v = self.0.clone();
        v.push(seg.into());
        Place(v)
    }

    fn named(&self, kind: &str, id: &str, index: usize) -> Place {
        if id.is_empty() {
            self.push(format!("{kind} #{}", index + 1))
        } else {
            self.push(format!("{kind} {id:?}"))
        }
    }
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("policy")
        } else {
            f.write_str(&self.0.join(" > "))
        }
    }
}

// ---------------------------------------------------------------------------
// File-level structures
// ---------------------------------------------------------------------------

/// A number or a string: condition values, durations, port ranges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scalar {
    Int(u64),
    Str(String),
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scalar::Int(n) => write!(f, "{n}"),
            Scalar::Str(s) => write!(f, "{s:?}"),
        }
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a non-negative integer or a string")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
        Ok(Scalar::Int(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
        u64::try_from(v)
            .map(Scalar::Int)
            .map_err(|_| E::custom(format!("negative value {v} is not allowed")))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
        Ok(Scalar::Str(v.to_string()))
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Scalar, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

impl Serialize for Scalar {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Scalar::Int(n) => s.serialize_u64(*n),
            Scalar::Str(v) => s.serialize_str(v),
        }
    }
}

/// One value or a list of them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Values(pub Vec<Scalar>);

impl<'de> Deserialize<'de> for Values {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Values, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Values;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a value or a list of values (integers or strings)")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Values, E> {
                Ok(Values(vec![Scalar::Int(v)]))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Values, E> {
                ScalarVisitor.visit_i64(v).map(|s| Values(vec![s]))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Values, E> {
                Ok(Values(vec![Scalar::Str(v.to_string())]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Values, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<Scalar>()? {
                    out.push(s);
                }
                Ok(Values(out))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Values {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

/// Condition field names of the file format, in [`Field::ALL`] order.
pub const FIELD_NAMES: [(&str, Field); Field::COUNT] = [
    ("src_mac", Field::SrcMac),
    ("dst_mac", Field::DstMac),
    ("vlan", Field::Vlan),
    ("ether_type", Field::EtherType),
    ("src_ip", Field::SrcIp),
    ("dst_ip", Field::DstIp),
    ("proto", Field::Proto),
    ("dscp", Field::Dscp),
    ("src_port", Field::SrcPort),
    ("dst_port", Field::DstPort),
    ("icmp_type", Field::IcmpType),
    ("icmp_code", Field::IcmpCode),
    ("tunnel_id", Field::TunnelId),
    ("outer_src_mac", Field::OuterSrcMac),
    ("outer_dst_mac", Field::OuterDstMac),
    ("outer_src_ip", Field::OuterSrcIp),
    ("outer_dst_ip", Field::OuterDstIp),
];

/// The file name of a field.
pub fn field_name(f: Field) -> &'static str {
    FIELD_NAMES[f.index()].0
}

/// A field by its file name.
pub fn field_by_name(name: &str) -> Option<Field> {
    FIELD_NAMES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, f)| *f)
}

fn field_list() -> String {
    FIELD_NAMES
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `field = [values]` entries, in the order written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Conditions(pub Vec<(String, Values)>);

impl Conditions {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'de> Deserialize<'de> for Conditions {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Conditions, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Conditions;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table of `field = [values]`")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Conditions, A::Error> {
                let mut out: Vec<(String, Values)> = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    if field_by_name(&key).is_none() {
                        return Err(de::Error::custom(format!(
                            "unknown condition field `{key}`, expected one of: {}",
                            field_list()
                        )));
                    }
                    if out.iter().any(|(k, _)| *k == key) {
                        return Err(de::Error::custom(format!(
                            "condition field `{key}` given twice"
                        )));
                    }
                    let v = map.next_value::<Values>()?;
                    out.push((key, v));
                }
                Ok(Conditions(out))
            }
        }
        d.deserialize_map(V)
    }
}

impl Serialize for Conditions {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

/// The whole file.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyDoc {
    pub port: PortDoc,
    #[serde(default)]
    pub resources: ResourcesDoc,
    #[serde(default, rename = "layer")]
    pub layers: Vec<LayerDoc>,
}

/// `[port]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PortDoc {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserve_connections: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_established_idle: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_half_open_idle: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_time_wait: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_closed_linger: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp_idle: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub other_idle: Option<Scalar>,
}

/// `[resources]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ResourcesDoc {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mapping: Vec<MappingTableDoc>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub port_pool: Vec<PortPoolDoc>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backend_pool: Vec<BackendPoolDoc>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MappingTableDoc {
    pub name: String,
    #[serde(default)]
    pub entries: Vec<MappingEntryDoc>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MappingEntryDoc {
    pub ca: String,
    pub pa: String,
    pub pa_mac: String,
    pub ca_mac: String,
    pub vni: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PortPoolDoc {
    pub name: String,
    pub ip: String,
    pub ranges: Values,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackendPoolDoc {
    pub name: String,
    pub backends: Vec<String>,
}

/// `[[layer]]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LayerDoc {
    pub id: String,
    #[serde(default)]
    pub default_out: DefaultAction,
    #[serde(default)]
    pub default_in: DefaultAction,
    #[serde(default, rename = "group")]
    pub groups: Vec<GroupDoc>,
}

/// `match = "priority"` or `match = { lpm = "dst_ip" }`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum MatchDoc {
    Name(String),
    Lpm { lpm: String },
}

impl<'de> Deserialize<'de> for MatchDoc {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<MatchDoc, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Lpm {
            lpm: String,
        }
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = MatchDoc;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"priority\" or { lpm = \"<ip or mac field>\" }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<MatchDoc, E> {
                Ok(MatchDoc::Name(v.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<MatchDoc, A::Error> {
                Lpm::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(|l| MatchDoc::Lpm { lpm: l.lpm })
            }
        }
        d.deserialize_any(V)
    }
}

/// `[[layer.group]]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GroupDoc {
    pub id: String,
    pub direction: Direction,
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub match_type: Option<MatchDoc>,
    #[serde(default, skip_serializing_if = "Conditions::is_empty")]
    pub conditions: Conditions,
    #[serde(default, rename = "rule")]
    pub rules: Vec<RuleDoc>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// `[[layer.group.rule]]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleDoc {
    pub id: String,
    #[serde(default)]
    pub priority: u32,
    #[serde(default, skip_serializing_if = "is_false")]
    pub terminating: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub stateful: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Conditions::is_empty")]
    pub conditions: Conditions,
    pub action: ActionField,
}

/// A VLAN operation: a VLAN id, `"pop"` or `"ignore"`.
pub type VlanDoc = Scalar;

/// Outer headers of a transposition: `"pop"`, `"ignore"`,
/// `{ push = ENCAP }` or `{ replace = ENCAP }`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum OuterDoc {
    Name(String),
    Push { push: EncapDoc },
    Replace { replace: EncapDoc },
}

impl<'de> Deserialize<'de> for OuterDoc {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<OuterDoc, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OuterDoc;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"pop\", \"ignore\", { push = { ... } } or { replace = { ... } }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<OuterDoc, E> {
                Ok(OuterDoc::Name(v.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OuterDoc, A::Error> {
                let Some(key) = map.next_key::<String>()? else {
                    return Err(de::Error::custom("expected `push` or `replace`"));
                };
                let out = match key.as_str() {
                    "push" => OuterDoc::Push {
                        push: map.next_value()?,
                    },
                    "replace" => OuterDoc::Replace {
                        replace: map.next_value()?,
                    },
                    other => {
                        return Err(de::Error::unknown_field(other, &["push", "replace"]));
                    }
                };
                if let Some(extra) = map.next_key::<String>()? {
                    return Err(de::Error::custom(format!(
                        "unexpected `{extra}`: outer takes one of `push` or `replace`"
                    )));
                }
                Ok(out)
            }
        }
        d.deserialize_any(V)
    }
}

/// Explicit outer headers.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EncapDoc {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<String>,
    pub vni: u32,
    pub src_mac: String,
    pub dst_mac: String,
    pub src_ip: String,
    pub dst_ip: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_port: Option<u16>,
    /// Hex string of raw Geneve option TLVs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub geneve_options: Option<String>,
}

/// `action = { type = ..., ... }`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ActionDoc {
    Allow,
    Block,
    Decap,
    Count,
    Encap {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tunnel: Option<String>,
        vni: u32,
        local_pa: String,
        remote_pa: String,
        local_mac: String,
        next_hop_mac: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        inner_dst_mac: Option<String>,
    },
    EncapMapped {
        mapping: String,
        local_pa: String,
        local_mac: String,
    },
    Nat {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        src_ip: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dst_ip: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        src_port: Option<u16>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dst_port: Option<u16>,
    },
    LbNat {
        pool: String,
    },
    Snat {
        pool: String,
    },
    Modify {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        src_mac: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dst_mac: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dscp: Option<u8>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vlan: Option<VlanDoc>,
    },
    Transpose {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        outer: Option<OuterDoc>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        src_mac: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dst_mac: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vlan: Option<VlanDoc>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        src_ip: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dst_ip: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dscp: Option<u8>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        src_port: Option<u16>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dst_port: Option<u16>,
    },
    Meter {
        by: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prefix_len: Option<u8>,
    },
    Custom {
        name: String,
        #[serde(default)]
        params: BTreeMap<String, String>,
    },
}

/// A rule's action: the table form, or a bare name for the actions without
/// parameters (`action = "allow"`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActionField(pub ActionDoc);

impl<'de> Deserialize<'de> for ActionField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ActionField, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ActionField;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an action: a table like { type = \"snat\", pool = \"snat-vip\" }, or \"allow\", \"block\", \"decap\", \"count\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ActionField, E> {
                Ok(ActionField(match v {
                    "allow" => ActionDoc::Allow,
                    "block" => ActionDoc::Block,
                    "decap" => ActionDoc::Decap,
                    "count" => ActionDoc::Count,
                    other => {
                        return Err(E::custom(format!(
                            "unknown action `{other}` (as a bare string: allow, block, decap or count; actions with parameters are tables like {{ type = \"snat\", pool = \"snat-vip\" }})"
                        )));
                    }
                }))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ActionField, A::Error> {
                ActionDoc::deserialize(de::value::MapAccessDeserializer::new(map)).map(ActionField)
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for ActionField {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

// ---------------------------------------------------------------------------
// The compiled form
// ---------------------------------------------------------------------------

/// A mapping table and its entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MappingTableSpec {
    pub name: String,
    pub entries: Vec<(IpAddr, Mapping)>,
}

/// A port pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortPoolSpec {
    pub name: String,
    pub ip: IpAddr,
    pub ranges: Vec<(u16, u16)>,
}

/// A backend pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendPoolSpec {
    pub name: String,
    pub backends: Vec<Backend>,
}

/// A validated policy: everything needed to build a [`Port`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicySpec {
    pub name: String,
    pub config: PortConfig,
    /// Connections the port's flow tables are sized for when it is built
    /// (`Port::reserve`; 0: they grow as connections come).
    pub reserve_connections: usize,
    pub mappings: Vec<MappingTableSpec>,
    pub port_pools: Vec<PortPoolSpec>,
    pub backend_pools: Vec<BackendPoolSpec>,
    /// Layers, VM side first.
    pub layers: Vec<LayerSpec>,
}

/// The file format of a policy text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Toml,
    Json,
}

impl Format {
    /// By extension: `.json` is JSON, `.toml` TOML.
    pub fn from_path(path: &Path) -> Option<Format> {
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("toml") => Some(Format::Toml),
            Some(e) if e.eq_ignore_ascii_case("json") => Some(Format::Json),
            _ => None,
        }
    }
}

/// Load and validate a policy file.
pub fn load(path: &Path) -> Result<PolicySpec, PolicyError> {
    let format = Format::from_path(path).ok_or_else(|| PolicyError::Extension {
        path: path.to_path_buf(),
    })?;
    let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let name = path.display().to_string();
    parse_str(&text, format).map_err(|e| e.with_file(&name))
}

/// Load a policy file and build its port (no custom actions).
pub fn load_port(path: &Path) -> Result<Port, PolicyError> {
    let spec = load(path)?;
    spec.build_port(ActionRegistry::default())
        .map_err(|e| e.with_file(&path.display().to_string()))
}

/// Parse and validate policy text.
pub fn parse_str(text: &str, format: Format) -> Result<PolicySpec, PolicyError> {
    parse_doc(text, format)?.compile()
}

/// Parse policy text into its file-level structure (syntax and types only).
pub fn parse_doc(text: &str, format: Format) -> Result<PolicyDoc, PolicyError> {
    match format {
        Format::Toml => toml::from_str::<PolicyDoc>(text).map_err(|e| {
            let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
            PolicyError::Syntax {
                file: DEFAULT_FILE.into(),
                line,
                column,
                message: e.message().trim_end().to_string(),
            }
        }),
        Format::Json => serde_json::from_str::<PolicyDoc>(text).map_err(|e| {
            let full = e.to_string();
            let suffix = format!(" at line {} column {}", e.line(), e.column());
            let message = full.strip_suffix(&suffix).unwrap_or(&full).to_string();
            PolicyError::Syntax {
                file: DEFAULT_FILE.into(),
                line: e.line().max(1),
                column: e.column().max(1),
                message,
            }
        }),
    }
}

/// 1-based line and column (in characters) of byte offset `at`.
fn line_col(text: &str, at: usize) -> (usize, usize) {
    let at = at.min(text.len());
    let mut line = 1;
    let mut col = 1;
    for (i, ch) in text.char_indices() {
        if i >= at {
            break;
        }
        if ch == '\n' {
            line += 1;
            col = 1;
        } else {
            col += 1;
        }
    }
    (line, col)
}

// ---------------------------------------------------------------------------
// Value parsing
// ---------------------------------------------------------------------------

fn parse_ip(s: &str) -> Result<IpAddr, String> {
    s.trim()
        .parse::<IpAddr>()
        .map_err(|_| format!("{s:?} is not a valid IP address"))
}

fn parse_mac(s: &str) -> Result<MacAddr, String> {
    s.trim().parse::<MacAddr>().map_err(|_| {
        format!("{s:?} is not a valid MAC address (expected six hex octets like 02:00:00:00:00:01)")
    })
}

fn parse_tunnel(s: Option<&str>) -> Result<TunnelKind, String> {
    match s.map(|s| s.trim().to_ascii_lowercase()).as_deref() {
        None | Some("vxlan") => Ok(TunnelKind::Vxlan),
        Some("nvgre") => Ok(TunnelKind::Nvgre),
        Some("geneve") => Ok(TunnelKind::Geneve),
        Some(other) => Err(format!(
            "unknown tunnel {other:?} (expected vxlan, nvgre or geneve)"
        )),
    }
}

fn tunnel_name(k: TunnelKind) -> &'static str {
    match k {
        TunnelKind::Vxlan => "vxlan",
        TunnelKind::Nvgre => "nvgre",
        TunnelKind::Geneve => "geneve",
    }
}

/// A decimal or `0x` hexadecimal number.
fn parse_num(s: &str) -> Option<u128> {
    let s = s.trim();
    if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u128::from_str_radix(h, 16).ok()
    } else {
        s.parse::<u128>().ok()
    }
}

const PROTO_NAMES: [(&str, u8); 6] = [
    ("tcp", ipproto::TCP),
    ("udp", ipproto::UDP),
    ("icmp", ipproto::ICMP),
    ("icmpv6", ipproto::ICMPV6),
    ("icmp6", ipproto::ICMPV6),
    ("gre", ipproto::GRE),
];

const ETHERTYPE_NAMES: [(&str, u16); 3] = [
    ("ipv4", ethertype::IPV4),
    ("ipv6", ethertype::IPV6),
    ("arp", ethertype::ARP),
];

/// One numeric value of a non-IP, non-MAC field (names allowed for proto
/// and ether_type).
fn parse_field_number(f: Field, s: &str) -> Result<u128, String> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    if f == Field::Proto
        && let Some((_, p)) = PROTO_NAMES.iter().find(|(n, _)| *n == lower)
    {
        return Ok(u128::from(*p));
    }
    if f == Field::EtherType
        && let Some((_, e)) = ETHERTYPE_NAMES.iter().find(|(n, _)| *n == lower)
    {
        return Ok(u128::from(*e));
    }
    let v = parse_num(t).ok_or_else(|| match f {
        Field::Proto => format!(
            "unknown protocol {s:?} (expected tcp, udp, icmp, icmpv6, gre or a number 0-255)"
        ),
        Field::EtherType => {
            format!("unknown ether_type {s:?} (expected ipv4, ipv6, arp or a number like 0x0800)")
        }
        _ => format!("{s:?} is not a number"),
    })?;
    check_max(f, v)
}

fn check_max(f: Field, v: u128) -> Result<u128, String> {
    if v > f.max_value() {
        Err(format!(
            "{v} is out of range for {} (0-{})",
            field_name(f),
            f.max_value()
        ))
    } else {
        Ok(v)
    }
}

/// One condition value of field `f`.
pub fn parse_match_value(f: Field, v: &Scalar) -> Result<MatchValue, String> {
    let s = match v {
        Scalar::Int(n) => {
            if f.is_ip() || f.is_mac() {
                return Err(format!(
                    "{n} is not an address: write {} values as strings",
                    field_name(f)
                ));
            }
            return check_max(f, u128::from(*n)).map(MatchValue::Exact);
        }
        Scalar::Str(s) => s.trim(),
    };
    if s.is_empty() {
        return Err("empty value".into());
    }
    if f.is_ip() {
        if let Some((a, len)) = s.split_once('/') {
            let ip = parse_ip(a)
                .map_err(|_| format!("{s:?} is not a valid prefix ({a:?} is not an IP address)"))?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let len: u8 = len
                .trim()
                .parse()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| {
                    format!(
                        "{s:?} is not a valid prefix (an {} prefix length is at most {max})",
                        if ip.is_ipv4() { "IPv4" } else { "IPv6" }
                    )
                })?;
            return Ok(MatchValue::ip_prefix(ip, len));
        }
        if let Some((a, b)) = s.split_once('-') {
            let lo = parse_ip(a)?;
            let hi = parse_ip(b)?;
            if lo.is_ipv4() != hi.is_ipv4() {
                return Err(format!("range {s:?} mixes IPv4 and IPv6"));
            }
            let (lo, hi) = (ip_to_u128(lo), ip_to_u128(hi));
            if lo > hi {
                return Err(format!("range {s:?} is empty (start after end)"));
            }
            return Ok(MatchValue::Range { lo, hi });
        }
        return Ok(MatchValue::ip(parse_ip(s)?));
    }
    if f.is_mac() {
        if let Some((a, len)) = s.split_once('/') {
            let m = parse_mac(a)?;
            let len: u8 = len
                .trim()
                .parse()
                .ok()
                .filter(|l| *l <= 48)
                .ok_or_else(|| format!("{s:?} is not a valid MAC prefix (length at most 48)"))?;
            let value = u128::from(m.to_u64());
            return Ok(MatchValue::Prefix {
                value: value & strata_engine::condition::prefix_mask(len, 48),
                len,
            });
        }
        if s.contains(':')
            && let Some((a, b)) = s.split_once('-')
        {
            let (lo, hi) = (
                u128::from(parse_mac(a)?.to_u64()),
                u128::from(parse_mac(b)?.to_u64()),
            );
            if lo > hi {
                return Err(format!("range {s:?} is empty (start after end)"));
            }
            return Ok(MatchValue::Range { lo, hi });
        }
        return Ok(MatchValue::Exact(u128::from(parse_mac(s)?.to_u64())));
    }
    if let Some((a, len)) = s.split_once('/') {
        let value = parse_field_number(f, a)?;
        let len: u8 = len
            .trim()
            .parse()
            .ok()
            .filter(|l| *l <= f.width())
            .ok_or_else(|| {
                format!(
                    "{s:?} is not a valid prefix ({} is {} bits wide)",
                    field_name(f),
                    f.width()
                )
            })?;
        return Ok(MatchValue::Prefix {
            value: value & strata_engine::condition::prefix_mask(len, f.width()),
            len,
        });
    }
    if let Some((a, b)) = s.split_once('-') {
        let lo = parse_field_number(f, a)?;
        let hi = parse_field_number(f, b)?;
        if lo > hi {
            return Err(format!("range {s:?} is empty (start after end)"));
        }
        return Ok(MatchValue::Range { lo, hi });
    }
    parse_field_number(f, s).map(MatchValue::Exact)
}

fn compile_conditions(conds: &Conditions, at: &Place) -> Result<Vec<Condition>, PolicyError> {
    let mut out = Vec::with_capacity(conds.0.len());
    for (name, values) in &conds.0 {
        let here = at.push(format!("condition {name}"));
        let f = field_by_name(name).ok_or_else(|| {
            sem(
                &here,
                format!("unknown field (expected one of: {})", field_list()),
            )
        })?;
        if values.0.is_empty() {
            return Err(sem(&here, "needs at least one value"));
        }
        let mut mv = Vec::with_capacity(values.0.len());
        for v in &values.0 {
            mv.push(parse_match_value(f, v).map_err(|m| sem(&here, m))?);
        }
        let c = Condition::new(f, mv);
        c.validate().map_err(|m| sem(&here, m))?;
        out.push(c);
    }
    Ok(out)
}

/// A duration: integer seconds, or a number with unit ns/us/ms/s/m/h.
fn parse_duration(v: &Scalar) -> Result<Time, String> {
    let s = match v {
        Scalar::Int(n) => {
            return n
                .checked_mul(1_000_000_000)
                .ok_or_else(|| format!("{n} seconds is too long"));
        }
        Scalar::Str(s) => s.trim(),
    };
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let mult: f64 = match unit.trim() {
        "ns" => 1.0,
        "us" | "µs" => 1e3,
        "ms" => 1e6,
        "s" | "" => 1e9,
        "m" | "min" => 60e9,
        "h" => 3600e9,
        _ => {
            return Err(format!(
                "{s:?} is not a duration (expected e.g. \"300s\", \"250ms\", \"5m\")"
            ));
        }
    };
    let n: f64 = num.parse().map_err(|_| {
        format!("{s:?} is not a duration (expected e.g. \"300s\", \"250ms\", \"5m\")")
    })?;
    let ns = n * mult;
    if !ns.is_finite() || ns < 0.0 || ns > u64::MAX as f64 {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(ns.round() as Time)
}

/// A duration as the shortest exact text.
fn format_duration(ns: Time) -> Scalar {
    let s = if ns.is_multiple_of(3_600_000_000_000) && ns > 0 {
        format!("{}h", ns / 3_600_000_000_000)
    } else if ns.is_multiple_of(60_000_000_000) && ns > 0 {
        format!("{}m", ns / 60_000_000_000)
    } else if ns.is_multiple_of(1_000_000_000) {
        format!("{}s", ns / 1_000_000_000)
    } else if ns.is_multiple_of(1_000_000) {
        format!("{}ms", ns / 1_000_000)
    } else if ns.is_multiple_of(1_000) {
        format!("{}us", ns / 1_000)
    } else {
        format!("{ns}ns")
    };
    Scalar::Str(s)
}

fn parse_port_range(v: &Scalar) -> Result<(u16, u16), String> {
    let one = |s: &str| -> Result<u16, String> {
        s.trim()
            .parse::<u16>()
            .map_err(|_| format!("{s:?} is not a port number (1-65535)"))
    };
    match v {
        Scalar::Int(n) => {
            let p = u16::try_from(*n).map_err(|_| format!("port {n} is out of range (1-65535)"))?;
            Ok((p, p))
        }
        Scalar::Str(s) => match s.split_once('-') {
            Some((a, b)) => Ok((one(a)?, one(b)?)),
            None => {
                let p = one(s)?;
                Ok((p, p))
            }
        },
    }
}

fn parse_backend(s: &str) -> Result<Backend, String> {
    let t = s.trim();
    if let Ok(ip) = t.parse::<IpAddr>() {
        return Ok(Backend { ip, port: None });
    }
    if let Ok(sa) = t.parse::<std::net::SocketAddr>() {
        return Ok(Backend {
            ip: sa.ip(),
            port: Some(sa.port()),
        });
    }
    Err(format!(
        "{s:?} is not a backend (expected \"10.1.0.4:8080\", \"10.1.0.4\" or \"[2001:db8::1]:80\")"
    ))
}

fn parse_vlan(v: &Scalar) -> Result<VlanOp, String> {
    match v {
        Scalar::Int(n) if *n <= 4095 => Ok(VlanOp::Set(*n as u16)),
        Scalar::Int(n) => Err(format!("vlan {n} does not fit 12 bits (0-4095)")),
        Scalar::Str(s) => match s.trim() {
            "pop" => Ok(VlanOp::Pop),
            "ignore" => Ok(VlanOp::Ignore),
            t => match t.parse::<u16>() {
                Ok(n) if n <= 4095 => Ok(VlanOp::Set(n)),
                _ => Err(format!(
                    "{s:?} is not a VLAN operation (expected a VLAN id 0-4095 or \"pop\")"
                )),
            },
        },
    }
}

fn parse_hex(s: &str) -> Result<Vec<u8>, String> {
    let t: String = s
        .chars()
        .filter(|c| !c.is_whitespace() && *c != ':')
        .collect();
    if !t.len().is_multiple_of(2) {
        return Err(format!("{s:?} is not hex bytes (odd number of digits)"));
    }
    (0..t.len())
        .step_by(2)
        .map(|i| {
            t.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
                .ok_or_else(|| format!("{s:?} is not hex bytes"))
        })
        .collect()
}

fn opt<T>(v: &Option<String>, f: impl Fn(&str) -> Result<T, String>) -> Result<Option<T>, String> {
    v.as_deref().map(f).transpose()
}

fn compile_encap(e: &EncapDoc) -> Result<Encap, String> {
    let kind = parse_tunnel(e.tunnel.as_deref())?;
    if e.vni > 0x00ff_ffff {
        return Err(format!("vni {} does not fit 24 bits", e.vni));
    }
    let src_ip = parse_ip(&e.src_ip)?;
    let dst_ip = parse_ip(&e.dst_ip)?;
    if src_ip.is_ipv4() != dst_ip.is_ipv4() {
        return Err("src_ip and dst_ip must be the same address family".into());
    }
    let mut enc = Encap::new(
        kind,
        e.vni,
        parse_mac(&e.src_mac)?,
        parse_mac(&e.dst_mac)?,
        src_ip,
        dst_ip,
    );
    if let Some(t) = e.ttl {
        enc.ttl = t;
    }
    if let Some(p) = e.dst_port {
        enc.dst_port = p;
    }
    if let Some(h) = &e.geneve_options {
        let opts = parse_hex(h)?;
        if opts.len() % 4 != 0 || opts.len() > 252 {
            return Err("geneve_options must be a multiple of 4 bytes, at most 252".into());
        }
        enc.geneve_options = opts;
    }
    Ok(enc)
}

/// What kind of resource an action names, for reference checks.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ResKind {
    Mapping,
    PortPool,
    BackendPool,
}

impl ResKind {
    fn what(self) -> &'static str {
        match self {
            ResKind::Mapping => "mapping table",
            ResKind::PortPool => "port pool",
            ResKind::BackendPool => "backend pool",
        }
    }
}

fn compile_action(a: &ActionDoc) -> Result<(ActionSpec, Option<(ResKind, String)>), String> {
    Ok(match a {
        ActionDoc::Allow => (ActionSpec::Allow, None),
        ActionDoc::Block => (ActionSpec::Block, None),
        ActionDoc::Decap => (ActionSpec::Decap, None),
        ActionDoc::Count => (ActionSpec::Count, None),
        ActionDoc::Encap {
            tunnel,
            vni,
            local_pa,
            remote_pa,
            local_mac,
            next_hop_mac,
            inner_dst_mac,
        } => {
            let local_pa = parse_ip(local_pa)?;
            let remote_pa = parse_ip(remote_pa)?;
            if local_pa.is_ipv4() != remote_pa.is_ipv4() {
                return Err("local_pa and remote_pa must be the same address family".into());
            }
            if *vni > 0x00ff_ffff {
                return Err(format!("vni {vni} does not fit 24 bits"));
            }
            (
                ActionSpec::Encap {
                    tunnel: parse_tunnel(tunnel.as_deref())?,
                    vni: *vni,
                    local_pa,
                    remote_pa,
                    local_mac: parse_mac(local_mac)?,
                    next_hop_mac: parse_mac(next_hop_mac)?,
                    inner_dst_mac: opt(inner_dst_mac, parse_mac)?,
                },
                None,
            )
        }
        ActionDoc::EncapMapped {
            mapping,
            local_pa,
            local_mac,
        } => (
            ActionSpec::EncapMapped {
                mapping: mapping.clone(),
                local_pa: parse_ip(local_pa)?,
                local_mac: parse_mac(local_mac)?,
            },
            Some((ResKind::Mapping, mapping.clone())),
        ),
        ActionDoc::Nat {
            src_ip,
            dst_ip,
            src_port,
            dst_port,
        } => (
            ActionSpec::Nat {
                src_ip: opt(src_ip, parse_ip)?,
                dst_ip: opt(dst_ip, parse_ip)?,
                src_port: *src_port,
                dst_port: *dst_port,
            },
            None,
        ),
        ActionDoc::LbNat { pool } => (
            ActionSpec::LbNat { pool: pool.clone() },
            Some((ResKind::BackendPool, pool.clone())),
        ),
        ActionDoc::Snat { pool } => (
            ActionSpec::Snat { pool: pool.clone() },
            Some((ResKind::PortPool, pool.clone())),
        ),
        ActionDoc::Modify {
            src_mac,
            dst_mac,
            dscp,
            vlan,
        } => {
            if let Some(d) = dscp
                && *d > 63
            {
                return Err(format!("dscp {d} does not fit 6 bits (0-63)"));
            }
            (
                ActionSpec::Modify {
                    src_mac: opt(src_mac, parse_mac)?,
                    dst_mac: opt(dst_mac, parse_mac)?,
                    dscp: *dscp,
                    vlan: vlan.as_ref().map(parse_vlan).transpose()?,
                },
                None,
            )
        }
        ActionDoc::Transpose {
            outer,
            src_mac,
            dst_mac,
            vlan,
            src_ip,
            dst_ip,
            dscp,
            src_port,
            dst_port,
        } => {
            let outer = match outer {
                None => OuterOp::Ignore,
                Some(OuterDoc::Name(n)) => match n.trim() {
                    "pop" => OuterOp::Pop,
                    "ignore" => OuterOp::Ignore,
                    other => {
                        return Err(format!(
                            "outer {other:?} is not an outer operation (expected \"pop\", {{ push = ... }} or {{ replace = ... }})"
                        ));
                    }
                },
                Some(OuterDoc::Push { push }) => OuterOp::Push(Arc::new(
                    compile_encap(push).map_err(|m| format!("outer push: {m}"))?,
                )),
                Some(OuterDoc::Replace { replace }) => OuterOp::Replace(Arc::new(
                    compile_encap(replace).map_err(|m| format!("outer replace: {m}"))?,
                )),
            };
            if let Some(d) = dscp
                && *d > 63
            {
                return Err(format!("dscp {d} does not fit 6 bits (0-63)"));
            }
            (
                ActionSpec::Transpose {
                    transposition: Transposition {
                        outer,
                        src_mac: opt(src_mac, parse_mac)?,
                        dst_mac: opt(dst_mac, parse_mac)?,
                        vlan: vlan
                            .as_ref()
                            .map(parse_vlan)
                            .transpose()?
                            .unwrap_or_default(),
                        src_ip: opt(src_ip, parse_ip)?,
                        dst_ip: opt(dst_ip, parse_ip)?,
                        dscp: *dscp,
                        src_port: *src_port,
                        dst_port: *dst_port,
                    },
                },
                None,
            )
        }
        ActionDoc::Meter { by, prefix_len } => {
            let f = field_by_name(by).ok_or_else(|| {
                format!(
                    "meter by {by:?}: unknown field (expected one of: {})",
                    field_list()
                )
            })?;
            if let Some(l) = prefix_len
                && *l > f.width()
            {
                return Err(format!(
                    "prefix_len {l} is longer than {by} ({} bits{})",
                    f.width(),
                    if f.is_ip() {
                        "; an IPv4 /24 is 120 in the mapped space"
                    } else {
                        ""
                    }
                ));
            }
            (
                ActionSpec::Meter {
                    by: f,
                    prefix_len: *prefix_len,
                },
                None,
            )
        }
        ActionDoc::Custom { name, params } => (
            ActionSpec::Custom {
                name: name.clone(),
                params: params.clone(),
            },
            None,
        ),
    })
}

// ---------------------------------------------------------------------------
// Document -> spec
// ---------------------------------------------------------------------------

impl PolicyDoc {
    /// Validate and convert to a [`PolicySpec`]; errors name the object path.
    pub fn compile(&self) -> Result<PolicySpec, PolicyError> {
        let root = Place::default();
        let config = self.port.compile(&root.push("port"))?;
        let res = root.push("resources");
        let mut names: HashMap<String, ResKind> = HashMap::new();
        let mut claim = |at: &Place, name: &str, kind: ResKind| -> Result<(), PolicyError> {
            check_id(name).map_err(|e| sem(at, e.to_string()))?;
            if let Some(k) = names.insert(name.to_string(), kind) {
                return Err(sem(
                    at,
                    format!("the name is already used by a {}", k.what()),
                ));
            }
            Ok(())
        };

        let mut mappings = Vec::new();
        for (i, t) in self.resources.mapping.iter().enumerate() {
            let at = res.named("mapping", &t.name, i);
            claim(&at, &t.name, ResKind::Mapping)?;
            let mut entries = Vec::with_capacity(t.entries.len());
            let mut seen = HashSet::new();
            for (j, e) in t.entries.iter().enumerate() {
                let eat = at.push(format!("entry #{} (ca {:?})", j + 1, e.ca));
                let m = e.compile().map_err(|m| sem(&eat, m))?;
                if !seen.insert(m.0) {
                    return Err(sem(&eat, "this CA is mapped twice"));
                }
                entries.push(m);
            }
            mappings.push(MappingTableSpec {
                name: t.name.clone(),
                entries,
            });
        }
        let mut port_pools = Vec::new();
        for (i, p) in self.resources.port_pool.iter().enumerate() {
            let at = res.named("port_pool", &p.name, i);
            claim(&at, &p.name, ResKind::PortPool)?;
            let ip = parse_ip(&p.ip).map_err(|m| sem(&at.push("ip"), m))?;
            let mut ranges = Vec::new();
            for r in &p.ranges.0 {
                ranges.push(parse_port_range(r).map_err(|m| sem(&at.push("ranges"), m))?);
            }
            PortPool::new(ip, ranges.clone()).map_err(|m| sem(&at.push("ranges"), m))?;
            port_pools.push(PortPoolSpec {
                name: p.name.clone(),
                ip,
                ranges,
            });
        }
        let mut backend_pools = Vec::new();
        for (i, b) in self.resources.backend_pool.iter().enumerate() {
            let at = res.named("backend_pool", &b.name, i);
            claim(&at, &b.name, ResKind::BackendPool)?;
            let mut backends = Vec::new();
            for s in &b.backends {
                backends.push(parse_backend(s).map_err(|m| sem(&at.push("backends"), m))?);
            }
            backend_pools.push(BackendPoolSpec {
                name: b.name.clone(),
                backends,
            });
        }

        let mut layers = Vec::with_capacity(self.layers.len());
        let mut layer_ids = HashSet::new();
        for (i, l) in self.layers.iter().enumerate() {
            let at = root.named("layer", &l.id, i);
            check_id(&l.id).map_err(|e| sem(&at, e.to_string()))?;
            if !layer_ids.insert(l.id.as_str()) {
                return Err(sem(&at, "duplicate layer id"));
            }
            layers.push(l.compile(&at, &names)?);
        }
        let reserve_connections = self.port.reservation(&root.push("port"), &config)?;
        Ok(PolicySpec {
            name: self.port.name.clone(),
            config,
            reserve_connections,
            mappings,
            port_pools,
            backend_pools,
            layers,
        })
    }
}

impl PortDoc {
    /// `reserve_connections`, checked against the port's limit.
    fn reservation(&self, at: &Place, config: &PortConfig) -> Result<usize, PolicyError> {
        let Some(n) = self.reserve_connections else {
            return Ok(0);
        };
        let at = at.push("reserve_connections");
        match usize::try_from(n) {
            Ok(n) if n <= config.max_connections => Ok(n),
            _ => Err(sem(
                &at,
                format!(
                    "{n} is more than max_connections ({})",
                    config.max_connections
                ),
            )),
        }
    }

    fn compile(&self, at: &Place) -> Result<PortConfig, PolicyError> {
        check_id(&self.name).map_err(|e| sem(&at.push("name"), e.to_string()))?;
        let mut c = PortConfig::default();
        if let Some(n) = self.max_connections {
            if n == 0 {
                return Err(sem(&at.push("max_connections"), "must be at least 1"));
            }
            let most = strata_engine::port::MAX_CONNECTIONS;
            c.max_connections = usize::try_from(n)
                .ok()
                .filter(|&n| n <= most)
                .ok_or_else(|| sem(&at.push("max_connections"), format!("at most {most}")))?;
        }
        let set = |name: &str, v: &Option<Scalar>, slot: &mut Time| -> Result<(), PolicyError> {
            if let Some(v) = v {
                *slot = parse_duration(v).map_err(|m| sem(&at.push(name), m))?;
            }
            Ok(())
        };
        set(
            "tcp_established_idle",
            &self.tcp_established_idle,
            &mut c.tcp_established_idle,
        )?;
        set(
            "tcp_half_open_idle",
            &self.tcp_half_open_idle,
            &mut c.tcp_half_open_idle,
        )?;
        set("tcp_time_wait", &self.tcp_time_wait, &mut c.tcp_time_wait)?;
        set(
            "tcp_closed_linger",
            &self.tcp_closed_linger,
            &mut c.tcp_closed_linger,
        )?;
        set("udp_idle", &self.udp_idle, &mut c.udp_idle)?;
        set("other_idle", &self.other_idle, &mut c.other_idle)?;
        Ok(c)
    }
}

impl MappingEntryDoc {
    fn compile(&self) -> Result<(IpAddr, Mapping), String> {
        let ca = parse_ip(&self.ca).map_err(|m| format!("ca: {m}"))?;
        let pa = parse_ip(&self.pa).map_err(|m| format!("pa: {m}"))?;
        if self.vni > 0x00ff_ffff {
            return Err(format!("vni {} does not fit 24 bits", self.vni));
        }
        Ok((
            ca,
            Mapping {
                pa,
                pa_mac: parse_mac(&self.pa_mac).map_err(|m| format!("pa_mac: {m}"))?,
                ca_mac: parse_mac(&self.ca_mac).map_err(|m| format!("ca_mac: {m}"))?,
                vni: self.vni,
                tunnel: parse_tunnel(self.tunnel.as_deref())?,
            },
        ))
    }
}

impl LayerDoc {
    fn compile(
        &self,
        at: &Place,
        names: &HashMap<String, ResKind>,
    ) -> Result<LayerSpec, PolicyError> {
        let mut groups = Vec::with_capacity(self.groups.len());
        let mut group_ids = HashSet::new();
        // Rule ids are unique across the layer's groups.
        let mut rule_ids: HashMap<&str, &str> = HashMap::new();
        for (gi, g) in self.groups.iter().enumerate() {
            let gat = at.named("group", &g.id, gi);
            check_id(&g.id).map_err(|e| sem(&gat, e.to_string()))?;
            if !group_ids.insert(g.id.as_str()) {
                return Err(sem(&gat, "duplicate group id in this layer"));
            }
            let match_type = match &g.match_type {
                None => MatchType::Priority,
                Some(MatchDoc::Name(n)) if n == "priority" => MatchType::Priority,
                Some(MatchDoc::Name(n)) => {
                    return Err(sem(
                        &gat.push("match"),
                        format!(
                            "{n:?} is not a match type (expected \"priority\" or {{ lpm = \"dst_ip\" }})"
                        ),
                    ));
                }
                Some(MatchDoc::Lpm { lpm }) => {
                    let f = field_by_name(lpm).ok_or_else(|| {
                        sem(
                            &gat.push("match"),
                            format!("lpm field {lpm:?} is not a field name"),
                        )
                    })?;
                    if !(f.is_ip() || f.is_mac()) {
                        return Err(sem(
                            &gat.push("match"),
                            format!("lpm needs an IP or MAC field, {lpm} is neither"),
                        ));
                    }
                    MatchType::Lpm(f)
                }
            };
            let conditions = compile_conditions(&g.conditions, &gat)?;
            let mut rules = Vec::with_capacity(g.rules.len());
            for (ri, r) in g.rules.iter().enumerate() {
                let rat = gat.named("rule", &r.id, ri);
                check_id(&r.id).map_err(|e| sem(&rat, e.to_string()))?;
                if let Some(other) = rule_ids.insert(r.id.as_str(), g.id.as_str()) {
                    return Err(sem(
                        &rat,
                        if other == g.id {
                            "duplicate rule id in this group".to_string()
                        } else {
                            format!(
                                "duplicate rule id (also in group {other:?}; rule ids are unique per layer)"
                            )
                        },
                    ));
                }
                let conds = compile_conditions(&r.conditions, &rat)?;
                let aat = rat.push("action");
                let (action, uses) = compile_action(&r.action.0).map_err(|m| sem(&aat, m))?;
                if let Some((kind, name)) = uses {
                    match names.get(&name) {
                        Some(k) if *k == kind => {}
                        Some(k) => {
                            return Err(sem(
                                &aat,
                                format!("{name:?} is a {}, not a {}", k.what(), kind.what()),
                            ));
                        }
                        None => {
                            return Err(sem(
                                &aat,
                                format!(
                                    "{} {name:?} is not defined under [resources]",
                                    kind.what()
                                ),
                            ));
                        }
                    }
                }
                if matches!(action, ActionSpec::Snat { .. }) && !r.stateful {
                    return Err(sem(
                        &aat,
                        "snat must be in a stateful rule (the port is held by the connection's flow); add `stateful = true`",
                    ));
                }
                rules.push(Rule {
                    id: r.id.clone(),
                    priority: r.priority,
                    conditions: conds,
                    action,
                    terminating: r.terminating,
                    stateful: r.stateful,
                    ttl_secs: r.ttl_secs,
                });
            }
            groups.push(Group {
                id: g.id.clone(),
                direction: g.direction,
                conditions,
                match_type,
                rules,
            });
        }
        Ok(LayerSpec {
            id: self.id.clone(),
            default_out: self.default_out,
            default_in: self.default_in,
            groups,
        })
    }
}

// ---------------------------------------------------------------------------
// Spec -> port, port -> spec -> document
// ---------------------------------------------------------------------------

impl PolicySpec {
    /// Build the port: resources first, then the layers in order. Groups are
    /// compiled through `registry` (custom actions must be registered).
    pub fn build_port(&self, registry: ActionRegistry) -> Result<Port, PolicyError> {
        let mut port = Port::with_registry(&self.name, self.config.clone(), registry);
        let res = Place::default().push("resources");
        for (i, t) in self.mappings.iter().enumerate() {
            let at = res.named("mapping", &t.name, i);
            port.add_mapping_table(&t.name)
                .map_err(|e| sem(&at, e.to_string()))?;
            for (ca, m) in &t.entries {
                port.set_mapping(&t.name, *ca, *m)
                    .map_err(|e| sem(&at.push(format!("entry ca {ca}")), e.to_string()))?;
            }
        }
        for (i, p) in self.port_pools.iter().enumerate() {
            port.add_port_pool(&p.name, p.ip, p.ranges.clone())
                .map_err(|e| sem(&res.named("port_pool", &p.name, i), e.to_string()))?;
        }
        for (i, b) in self.backend_pools.iter().enumerate() {
            port.set_backend_pool(&b.name, b.backends.clone())
                .map_err(|e| sem(&res.named("backend_pool", &b.name, i), e.to_string()))?;
        }
        for (i, l) in self.layers.iter().enumerate() {
            let at = Place::default().named("layer", &l.id, i);
            // Compile each group first so an error names its group.
            for (gi, g) in l.groups.iter().enumerate() {
                g.clone()
                    .prepare(port.registry())
                    .map_err(|e| sem(&at.named("group", &g.id, gi), e.to_string()))?;
            }
            port.add_layer(l.clone(), None)
                .map_err(|e| sem(&at, e.to_string()))?;
        }
        // Last, so that the stateful layers' tables are sized too.
        port.reserve(self.reserve_connections).map_err(|e| {
            sem(
                &Place::default().push("port").push("reserve_connections"),
                e.to_string(),
            )
        })?;
        Ok(port)
    }

    /// The policy of a live port. The engine exposes no way to list a
    /// mapping table's entries, so the caller supplies them (`mappings`);
    /// tables of the port missing from `mappings` are written empty.
    pub fn from_port(port: &Port, mappings: &[MappingTableSpec]) -> PolicySpec {
        let r = port.resources();
        let mut tables: Vec<MappingTableSpec> = r
            .mappings
            .keys()
            .map(|name| {
                mappings
                    .iter()
                    .find(|m| &m.name == name)
                    .cloned()
                    .unwrap_or_else(|| MappingTableSpec {
                        name: name.clone(),
                        entries: Vec::new(),
                    })
            })
            .collect();
        tables.sort_by(|a, b| a.name.cmp(&b.name));
        PolicySpec {
            name: port.name().to_string(),
            config: port.config().clone(),
            reserve_connections: port.reserved_connections(),
            mappings: tables,
            port_pools: r
                .port_pools
                .iter()
                .map(|(name, p)| PortPoolSpec {
                    name: name.clone(),
                    ip: p.ip,
                    ranges: p.ranges.clone(),
                })
                .collect(),
            backend_pools: r
                .backend_pools
                .iter()
                .map(|(name, b)| BackendPoolSpec {
                    name: name.clone(),
                    backends: b.backends.clone(),
                })
                .collect(),
            layers: port.layer_specs(),
        }
    }

    /// The file-level form.
    pub fn to_doc(&self) -> PolicyDoc {
        let c = &self.config;
        PolicyDoc {
            port: PortDoc {
                name: self.name.clone(),
                max_connections: Some(c.max_connections as u64),
                reserve_connections: (self.reserve_connections > 0)
                    .then_some(self.reserve_connections as u64),
                tcp_established_idle: Some(format_duration(c.tcp_established_idle)),
                tcp_half_open_idle: Some(format_duration(c.tcp_half_open_idle)),
                tcp_time_wait: Some(format_duration(c.tcp_time_wait)),
                tcp_closed_linger: Some(format_duration(c.tcp_closed_linger)),
                udp_idle: Some(format_duration(c.udp_idle)),
                other_idle: Some(format_duration(c.other_idle)),
            },
            resources: ResourcesDoc {
                mapping: self
                    .mappings
                    .iter()
                    .map(|t| MappingTableDoc {
                        name: t.name.clone(),
                        entries: t
                            .entries
                            .iter()
                            .map(|(ca, m)| MappingEntryDoc {
                                ca: ca.to_string(),
                                pa: m.pa.to_string(),
                                pa_mac: m.pa_mac.to_string(),
                                ca_mac: m.ca_mac.to_string(),
                                vni: m.vni,
                                tunnel: Some(tunnel_name(m.tunnel).to_string()),
                            })
                            .collect(),
                    })
                    .collect(),
                port_pool: self
                    .port_pools
                    .iter()
                    .map(|p| PortPoolDoc {
                        name: p.name.clone(),
                        ip: p.ip.to_string(),
                        ranges: Values(
                            p.ranges
                                .iter()
                                .map(|(lo, hi)| {
                                    if lo == hi {
                                        Scalar::Int(u64::from(*lo))
                                    } else {
                                        Scalar::Str(format!("{lo}-{hi}"))
                                    }
                                })
                                .collect(),
                        ),
                    })
                    .collect(),
                backend_pool: self
                    .backend_pools
                    .iter()
                    .map(|b| BackendPoolDoc {
                        name: b.name.clone(),
                        backends: b
                            .backends
                            .iter()
                            .map(|be| match (be.ip, be.port) {
                                (ip, None) => ip.to_string(),
                                (IpAddr::V4(ip), Some(p)) => format!("{ip}:{p}"),
                                (IpAddr::V6(ip), Some(p)) => format!("[{ip}]:{p}"),
                            })
                            .collect(),
                    })
                    .collect(),
            },
            layers: self.layers.iter().map(layer_doc).collect(),
        }
    }

    /// The policy as TOML text, in the layout of the module doc: one
    /// section per object, conditions, actions and mapping entries inline.
    pub fn to_toml(&self) -> Result<String, PolicyError> {
        self.to_doc().to_toml()
    }

    /// The policy as JSON text.
    pub fn to_json(&self) -> Result<String, PolicyError> {
        serde_json::to_string_pretty(&self.to_doc())
            .map_err(|e| PolicyError::Serialize(e.to_string()))
    }
}

/// One value in TOML's inline syntax.
fn inline<T: Serialize + ?Sized>(v: &T) -> Result<String, PolicyError> {
    let mut s = String::new();
    v.serialize(toml::ser::ValueSerializer::new(&mut s))
        .map_err(|e| PolicyError::Serialize(e.to_string()))?;
    Ok(s)
}

/// Appends `key = value` lines.
struct TomlOut(String);

impl TomlOut {
    fn kv<T: Serialize + ?Sized>(&mut self, key: &str, v: &T) -> Result<(), PolicyError> {
        let v = inline(v)?;
        self.0.push_str(key);
        self.0.push_str(" = ");
        self.0.push_str(&v);
        self.0.push('\n');
        Ok(())
    }

    fn opt<T: Serialize>(&mut self, key: &str, v: &Option<T>) -> Result<(), PolicyError> {
        match v {
            Some(v) => self.kv(key, v),
            None => Ok(()),
        }
    }

    fn header(&mut self, h: &str) {
        self.0.push('\n');
        self.0.push_str(h);
        self.0.push('\n');
    }
}

impl PolicyDoc {
    /// TOML text (see [`PolicySpec::to_toml`]).
    pub fn to_toml(&self) -> Result<String, PolicyError> {
        let mut o = TomlOut(String::new());
        let p = &self.port;
        o.0.push_str("[port]\n");
        o.kv("name", &p.name)?;
        o.opt("max_connections", &p.max_connections)?;
        o.opt("reserve_connections", &p.reserve_connections)?;
        o.opt("tcp_established_idle", &p.tcp_established_idle)?;
        o.opt("tcp_half_open_idle", &p.tcp_half_open_idle)?;
        o.opt("tcp_time_wait", &p.tcp_time_wait)?;
        o.opt("tcp_closed_linger", &p.tcp_closed_linger)?;
        o.opt("udp_idle", &p.udp_idle)?;
        o.opt("other_idle", &p.other_idle)?;
        for m in &self.resources.mapping {
            o.header("[[resources.mapping]]");
            o.kv("name", &m.name)?;
            o.0.push_str("entries = [\n");
            for e in &m.entries {
                o.0.push_str("  ");
                o.0.push_str(&inline(e)?);
                o.0.push_str(",\n");
            }
            o.0.push_str("]\n");
        }
        for pp in &self.resources.port_pool {
            o.header("[[resources.port_pool]]");
            o.kv("name", &pp.name)?;
            o.kv("ip", &pp.ip)?;
            o.kv("ranges", &pp.ranges)?;
        }
        for b in &self.resources.backend_pool {
            o.header("[[resources.backend_pool]]");
            o.kv("name", &b.name)?;
            o.kv("backends", &b.backends)?;
        }
        for l in &self.layers {
            o.header("[[layer]]");
            o.kv("id", &l.id)?;
            o.kv("default_out", &l.default_out)?;
            o.kv("default_in", &l.default_in)?;
            for g in &l.groups {
                o.header("[[layer.group]]");
                o.kv("id", &g.id)?;
                o.kv("direction", &g.direction)?;
                o.opt("match", &g.match_type)?;
                if !g.conditions.is_empty() {
                    o.kv("conditions", &g.conditions)?;
                }
                for r in &g.rules {
                    o.header("[[layer.group.rule]]");
                    o.kv("id", &r.id)?;
                    o.kv("priority", &r.priority)?;
                    if r.terminating {
                        o.kv("terminating", &true)?;
                    }
                    if r.stateful {
                        o.kv("stateful", &true)?;
                    }
                    o.opt("ttl_secs", &r.ttl_secs)?;
                    if !r.conditions.is_empty() {
                        o.kv("conditions", &r.conditions)?;
                    }
                    o.kv("action", &r.action)?;
                }
            }
        }
        Ok(o.0)
    }
}

fn layer_doc(l: &LayerSpec) -> LayerDoc {
    LayerDoc {
        id: l.id.clone(),
        default_out: l.default_out,
        default_in: l.default_in,
        groups: l
            .groups
            .iter()
            .map(|g| GroupDoc {
                id: g.id.clone(),
                direction: g.direction,
                match_type: match g.match_type {
                    MatchType::Priority => None,
                    MatchType::Lpm(f) => Some(MatchDoc::Lpm {
                        lpm: field_name(f).to_string(),
                    }),
                },
                conditions: conditions_doc(&g.conditions),
                rules: g
                    .rules
                    .iter()
                    .map(|r| RuleDoc {
                        id: r.id.clone(),
                        priority: r.priority,
                        terminating: r.terminating,
                        stateful: r.stateful,
                        ttl_secs: r.ttl_secs,
                        conditions: conditions_doc(&r.conditions),
                        action: ActionField(action_doc(&r.action)),
                    })
                    .collect(),
            })
            .collect(),
    }
}

fn conditions_doc(conds: &[Condition]) -> Conditions {
    Conditions(
        conds
            .iter()
            .map(|c| {
                (
                    field_name(c.field).to_string(),
                    Values(
                        c.values
                            .iter()
                            .map(|v| format_match_value(c.field, v))
                            .collect(),
                    ),
                )
            })
            .collect(),
    )
}

/// The file syntax of one condition value (inverse of [`parse_match_value`]).
pub fn format_match_value(f: Field, v: &MatchValue) -> Scalar {
    let ip_text = |x: u128| u128_to_ip(x).to_string();
    let mac_text = |x: u128| MacAddr::from_u64(x as u64).to_string();
    if f.is_ip() {
        return Scalar::Str(match *v {
            MatchValue::Exact(x) => ip_text(x),
            MatchValue::Range { lo, hi } => format!("{}-{}", ip_text(lo), ip_text(hi)),
            MatchValue::Prefix { value, len } => {
                let ip = u128_to_ip(value);
                if ip.is_ipv4() && len >= 96 {
                    format!("{ip}/{}", len - 96)
                } else {
                    // Shorter than the mapped space: write it as IPv6.
                    let v6 = std::net::Ipv6Addr::from(value);
                    format!("{v6}/{len}")
                }
            }
        });
    }
    if f.is_mac() {
        return Scalar::Str(match *v {
            MatchValue::Exact(x) => mac_text(x),
            MatchValue::Range { lo, hi } => format!("{}-{}", mac_text(lo), mac_text(hi)),
            MatchValue::Prefix { value, len } => format!("{}/{len}", mac_text(value)),
        });
    }
    let num = |x: u128| -> String {
        if f == Field::Proto
            && let Some((n, _)) = PROTO_NAMES.iter().find(|(_, p)| u128::from(*p) == x)
        {
            return (*n).to_string();
        }
        if f == Field::EtherType {
            if let Some((n, _)) = ETHERTYPE_NAMES.iter().find(|(_, e)| u128::from(*e) == x) {
                return (*n).to_string();
            }
            return format!("0x{x:04x}");
        }
        x.to_string()
    };
    match *v {
        MatchValue::Exact(x) => {
            let s = num(x);
            match (s.parse::<u64>(), f) {
                (Ok(n), _) if f != Field::EtherType => Scalar::Int(n),
                _ => Scalar::Str(s),
            }
        }
        MatchValue::Range { lo, hi } => Scalar::Str(format!("{}-{}", num(lo), num(hi))),
        MatchValue::Prefix { value, len } => Scalar::Str(format!("{}/{len}", num(value))),
    }
}

fn encap_doc(e: &Encap) -> EncapDoc {
    EncapDoc {
        tunnel: Some(tunnel_name(e.kind).to_string()),
        vni: e.vni,
        src_mac: e.src_mac.to_string(),
        dst_mac: e.dst_mac.to_string(),
        src_ip: e.src_ip.to_string(),
        dst_ip: e.dst_ip.to_string(),
        ttl: (e.ttl != 64).then_some(e.ttl),
        dst_port: (e.dst_port != default_tunnel_port(e.kind)).then_some(e.dst_port),
        geneve_options: (!e.geneve_options.is_empty()).then(|| {
            e.geneve_options
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        }),
    }
}

fn vlan_doc(v: VlanOp) -> Option<VlanDoc> {
    match v {
        VlanOp::Ignore => None,
        VlanOp::Pop => Some(Scalar::Str("pop".into())),
        VlanOp::Set(id) => Some(Scalar::Int(u64::from(id))),
    }
}

fn action_doc(a: &ActionSpec) -> ActionDoc {
    let mac = |m: &Option<MacAddr>| m.map(|m| m.to_string());
    let ip = |i: &Option<IpAddr>| i.map(|i| i.to_string());
    match a {
        ActionSpec::Allow => ActionDoc::Allow,
        ActionSpec::Block => ActionDoc::Block,
        ActionSpec::Decap => ActionDoc::Decap,
        ActionSpec::Count => ActionDoc::Count,
        ActionSpec::Encap {
            tunnel,
            vni,
            local_pa,
            remote_pa,
            local_mac,
            next_hop_mac,
            inner_dst_mac,
        } => ActionDoc::Encap {
            tunnel: Some(tunnel_name(*tunnel).to_string()),
            vni: *vni,
            local_pa: local_pa.to_string(),
            remote_pa: remote_pa.to_string(),
            local_mac: local_mac.to_string(),
            next_hop_mac: next_hop_mac.to_string(),
            inner_dst_mac: mac(inner_dst_mac),
        },
        ActionSpec::EncapMapped {
            mapping,
            local_pa,
            local_mac,
        } => ActionDoc::EncapMapped {
            mapping: mapping.clone(),
            local_pa: local_pa.to_string(),
            local_mac: local_mac.to_string(),
        },
        ActionSpec::Nat {
            src_ip,
            dst_ip,
            src_port,
            dst_port,
        } => ActionDoc::Nat {
            src_ip: ip(src_ip),
            dst_ip: ip(dst_ip),
            src_port: *src_port,
            dst_port: *dst_port,
        },
        ActionSpec::LbNat { pool } => ActionDoc::LbNat { pool: pool.clone() },
        ActionSpec::Snat { pool } => ActionDoc::Snat { pool: pool.clone() },
        ActionSpec::Modify {
            src_mac,
            dst_mac,
            dscp,
            vlan,
        } => ActionDoc::Modify {
            src_mac: mac(src_mac),
            dst_mac: mac(dst_mac),
            dscp: *dscp,
            vlan: vlan.and_then(vlan_doc),
        },
        ActionSpec::Transpose { transposition: t } => ActionDoc::Transpose {
            outer: match &t.outer {
                OuterOp::Ignore => None,
                OuterOp::Pop => Some(OuterDoc::Name("pop".into())),
                OuterOp::Push(e) => Some(OuterDoc::Push { push: encap_doc(e) }),
                OuterOp::Replace(e) => Some(OuterDoc::Replace {
                    replace: encap_doc(e),
                }),
            },
            src_mac: mac(&t.src_mac),
            dst_mac: mac(&t.dst_mac),
            vlan: vlan_doc(t.vlan),
            src_ip: ip(&t.src_ip),
            dst_ip: ip(&t.dst_ip),
            dscp: t.dscp,
            src_port: t.src_port,
            dst_port: t.dst_port,
        },
        ActionSpec::Meter { by, prefix_len } => ActionDoc::Meter {
            by: field_name(*by).to_string(),
            prefix_len: *prefix_len,
        },
        ActionSpec::Custom { name, params } => ActionDoc::Custom {
            name: name.clone(),
            params: params.clone(),
        },
    }
}
