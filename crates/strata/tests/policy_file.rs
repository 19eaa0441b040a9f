//! Policy files: the example file is the scenario's policy, export and
//! re-import are lossless, and bad files give errors that point at the
//! right place (line for syntax and type errors, object path for errors of
//! meaning) without ever panicking.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use strata::policy_file::{self, Format, MappingTableSpec, PolicyError, PolicySpec};
use strata_engine::scenario;
use strata_engine::{ActionRegistry, PortConfig};

fn example_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/four-layer.toml")
}

fn example_text() -> String {
    std::fs::read_to_string(example_path()).expect("example file")
}

#[test]
fn example_file_is_the_scenario_policy() {
    let spec = policy_file::load(&example_path()).expect("example loads");
    assert_eq!(spec.layers, scenario::four_layer_specs(0));
    let port = spec
        .build_port(ActionRegistry::default())
        .expect("port builds");
    let reference = scenario::four_layer_port(PortConfig::default(), 0).expect("scenario port");
    assert_eq!(port.layer_specs(), reference.layer_specs());
    assert_eq!(port.name(), reference.name());
    assert_eq!(port.config(), reference.config());
    assert_eq!(
        port.resources().port_pools,
        reference.resources().port_pools
    );
    assert_eq!(
        port.resources().backend_pools,
        reference.resources().backend_pools
    );
    let table = &port.resources().mappings[scenario::MAPPING];
    assert_eq!(table.len(), 5);
    for (x, y) in [(0, 1), (0, 2), (0, 5), (0, 9), (1, 7)] {
        let ca = IpAddr::V4(Ipv4Addr::new(10, 1, x, y));
        assert_eq!(table.get(&ca), Some(&scenario::mapping_for(x, y)), "{ca}");
    }
}

#[test]
fn load_port_builds_the_example() {
    let port = policy_file::load_port(&example_path()).expect("port");
    assert_eq!(port.layer_ids(), ["meter", "acl", "slb", "vnet"]);
}

fn scenario_spec() -> PolicySpec {
    let port = scenario::four_layer_port(PortConfig::default(), 3).expect("port");
    let mappings = MappingTableSpec {
        name: scenario::MAPPING.into(),
        entries: (1..=20u8)
            .map(|y| {
                (
                    IpAddr::V4(Ipv4Addr::new(10, 1, 0, y)),
                    scenario::mapping_for(0, y),
                )
            })
            .collect(),
    };
    PolicySpec::from_port(&port, &[mappings])
}

#[test]
fn export_and_reimport_toml_is_lossless() {
    let spec = scenario_spec();
    let text = spec.to_toml().expect("toml");
    let back = policy_file::parse_str(&text, Format::Toml).expect("re-import");
    assert_eq!(back, spec);
}

#[test]
fn export_and_reimport_json_is_lossless() {
    let spec = scenario_spec();
    let text = spec.to_json().expect("json");
    let back = policy_file::parse_str(&text, Format::Json).expect("re-import");
    assert_eq!(back, spec);
}

#[test]
fn every_action_and_value_syntax_round_trips() {
    let text = r#"
[port]
name = "p1"
tcp_time_wait = "1500ms"
udp_idle = 30

[[resources.mapping]]
name = "m"
entries = [{ ca = "2001:db8::5", pa = "2001:db8:ff::5", pa_mac = "02:00:00:00:00:05", ca_mac = "02:00:00:00:01:05", vni = 7, tunnel = "geneve" }]

[[resources.port_pool]]
name = "pp"
ip = "198.51.100.1"
ranges = ["2000-2999", 4000]

[[resources.backend_pool]]
name = "bp"
backends = ["10.0.0.1:80", "10.0.0.2", "[2001:db8::7]:8443"]

[[layer]]
id = "all"

[[layer.group]]
id = "g-out"
direction = "out"
conditions = { src_mac = ["02:00:00:00:00:00/24", "02:00:00:00:00:01-02:00:00:00:00:09"] }

[[layer.group.rule]]
id = "r-encap"
priority = 1
ttl_secs = 30
conditions = { dst_ip = ["10.0.0.1-10.0.0.9", "2001:db8::/32"], dst_port = ["80", "8000-8100", 443], proto = ["tcp", 17], ether_type = ["ipv4", "0x86dd"], dscp = ["10-20"], vlan = [5], tunnel_id = ["0x1389"] }
action = { type = "encap", tunnel = "nvgre", vni = 42, local_pa = "192.0.2.1", remote_pa = "192.0.2.2", local_mac = "02:00:00:00:00:01", next_hop_mac = "02:00:00:00:00:02", inner_dst_mac = "02:00:00:00:00:03" }

[[layer.group.rule]]
id = "r-mapped"
action = { type = "encap_mapped", mapping = "m", local_pa = "2001:db8:ff::1", local_mac = "02:00:00:00:00:01" }

[[layer.group.rule]]
id = "r-nat"
action = { type = "nat", src_ip = "192.0.2.9", dst_port = 8080 }

[[layer.group.rule]]
id = "r-lb"
action = { type = "lb_nat", pool = "bp" }

[[layer.group.rule]]
id = "r-snat"
stateful = true
action = { type = "snat", pool = "pp" }

[[layer.group.rule]]
id = "r-modify"
action = { type = "modify", dscp = 46, vlan = "pop" }

[[layer.group.rule]]
id = "r-modify2"
action = { type = "modify", src_mac = "02:00:00:00:00:0a", vlan = 100 }

[[layer.group.rule]]
id = "r-transpose"
action = { type = "transpose", outer = { push = { tunnel = "geneve", vni = 9, src_mac = "02:00:00:00:00:01", dst_mac = "02:00:00:00:00:02", src_ip = "192.0.2.1", dst_ip = "192.0.2.3", ttl = 32, dst_port = 6082, geneve_options = "0101020300000000" } }, src_port = 1, dscp = 3 }

[[layer.group.rule]]
id = "r-replace"
action = { type = "transpose", outer = { replace = { vni = 9, src_mac = "02:00:00:00:00:01", dst_mac = "02:00:00:00:00:02", src_ip = "192.0.2.1", dst_ip = "192.0.2.3" } } }

[[layer.group.rule]]
id = "r-meter"
action = { type = "meter", by = "dst_ip", prefix_len = 120 }

[[layer.group.rule]]
id = "r-count"
conditions = { icmp_type = [0, 8], icmp_code = "0", outer_src_ip = "192.0.2.0/24", outer_dst_mac = "02:00:00:00:00:01" }
action = "count"

[[layer.group.rule]]
id = "r-decap"
action = "decap"

[[layer.group.rule]]
id = "r-block"
action = { type = "block" }

[[layer.group]]
id = "g-in"
direction = "in"
match = { lpm = "src_ip" }

[[layer.group.rule]]
id = "r-custom"
action = { type = "custom", name = "mirror", params = { to = "collector" } }
"#;
    let spec = policy_file::parse_str(text, Format::Toml).expect("parses");
    assert_eq!(spec.config.tcp_time_wait, 1_500_000_000);
    assert_eq!(spec.config.udp_idle, 30_000_000_000);
    assert_eq!(spec.port_pools[0].ranges, vec![(2000, 2999), (4000, 4000)]);
    assert_eq!(spec.backend_pools[0].backends.len(), 3);
    let rules = &spec.layers[0].groups[0].rules;
    assert_eq!(rules.len(), 13);
    // Export and re-import: the same spec.
    let again =
        policy_file::parse_str(&spec.to_toml().expect("toml"), Format::Toml).expect("toml again");
    assert_eq!(again, spec);
    let again =
        policy_file::parse_str(&spec.to_json().expect("json"), Format::Json).expect("json again");
    assert_eq!(again, spec);
    // The custom action is not registered: building the port says so, and
    // names the group.
    let e = spec
        .build_port(ActionRegistry::default())
        .expect_err("custom action");
    let msg = e.to_string();
    assert!(msg.contains(r#"layer "all" > group "g-in""#), "{msg}");
    assert!(msg.contains("mirror"), "{msg}");
}

// ----- errors ---------------------------------------------------------------

const BASE: &str = r#"[port]
name = "vm"

[[resources.port_pool]]
name = "snat-vip"
ip = "203.0.113.10"
ranges = ["1024-65535"]

[[layer]]
id = "acl"
default_out = "block"

[[layer.group]]
id = "customer-out"
direction = "out"

[[layer.group.rule]]
id = "allow-out"
priority = 1000
stateful = true
conditions = { dst_ip = ["10.0.0.0/8"] }
action = "allow"

[[layer.group.rule]]
id = "snat-it"
priority = 2000
stateful = true
action = { type = "snat", pool = "snat-vip" }
"#;

fn err(text: &str) -> PolicyError {
    policy_file::parse_str(text, Format::Toml).expect_err("must fail")
}

/// 1-based line of the first occurrence of `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .map(|i| i + 1)
        .expect("needle")
}

fn assert_path(e: &PolicyError, path: &str, message_part: &str) {
    let msg = e.to_string();
    assert_eq!(e.path(), Some(path), "{msg}");
    assert!(msg.contains(message_part), "{msg}");
}

#[test]
fn base_is_valid() {
    let spec = policy_file::parse_str(BASE, Format::Toml).expect("base");
    spec.build_port(ActionRegistry::default()).expect("port");
}

#[test]
fn syntax_error_names_the_line() {
    let text = BASE.replace(
        r#"conditions = { dst_ip = ["10.0.0.0/8"] }"#,
        r#"conditions = { dst_ip = ["10.0.0.0/8" }"#,
    );
    let e = err(&text);
    assert_eq!(e.line(), Some(line_of(&text, "conditions = {")), "{e}");
    assert!(e.to_string().starts_with("<policy>:"), "{e}");
}

#[test]
fn type_error_names_the_line() {
    let text = BASE.replace("priority = 1000", r#"priority = "high""#);
    let e = err(&text);
    assert_eq!(
        e.line(),
        Some(line_of(&text, r#"priority = "high""#)),
        "{e}"
    );
    assert!(e.to_string().contains("invalid type"), "{e}");
}

#[test]
fn unknown_key_names_the_line() {
    let text = BASE.replace(
        "stateful = true\nconditions",
        "statefull = true\nconditions",
    );
    let e = err(&text);
    assert!(e.to_string().contains("statefull"), "{e}");
    let l = e.line().expect("line");
    let want = line_of(&text, "statefull");
    // The error points at the key or at the table holding it.
    assert!(
        l <= want && l >= want - 3,
        "line {l}, want about {want}: {e}"
    );
}

#[test]
fn unknown_condition_field_names_the_line() {
    let text = BASE.replace("{ dst_ip = [", "{ dst_addr = [");
    let e = err(&text);
    assert_eq!(e.line(), Some(line_of(&text, "dst_addr")), "{e}");
    assert!(
        e.to_string().contains("unknown condition field `dst_addr`"),
        "{e}"
    );
}

#[test]
fn bad_direction_names_the_line() {
    let text = BASE.replace(r#"direction = "out""#, r#"direction = "sideways""#);
    let e = err(&text);
    assert_eq!(e.line(), Some(line_of(&text, "sideways")), "{e}");
}

#[test]
fn bad_prefix_names_the_rule_and_condition() {
    let text = BASE.replace("10.0.0.0/8", "10.0.0.0/33");
    let e = err(&text);
    assert_path(
        &e,
        r#"layer "acl" > group "customer-out" > rule "allow-out" > condition dst_ip"#,
        r#""10.0.0.0/33" is not a valid prefix"#,
    );
    assert_eq!(
        e.to_string(),
        r#"<policy>: layer "acl" > group "customer-out" > rule "allow-out" > condition dst_ip: "10.0.0.0/33" is not a valid prefix (an IPv4 prefix length is at most 32)"#
    );
}

#[test]
fn port_out_of_range_names_the_condition() {
    let text = BASE.replace(
        r#"{ dst_ip = ["10.0.0.0/8"] }"#,
        r#"{ dst_port = ["80", "8000-70000"] }"#,
    );
    let e = err(&text);
    assert_path(
        &e,
        r#"layer "acl" > group "customer-out" > rule "allow-out" > condition dst_port"#,
        "70000 is out of range for dst_port",
    );
}

#[test]
fn unknown_protocol_names_the_condition() {
    let text = BASE.replace(r#"{ dst_ip = ["10.0.0.0/8"] }"#, r#"{ proto = ["tpc"] }"#);
    let e = err(&text);
    assert_path(
        &e,
        r#"layer "acl" > group "customer-out" > rule "allow-out" > condition proto"#,
        r#"unknown protocol "tpc""#,
    );
}

#[test]
fn undefined_pool_names_the_action() {
    let text = BASE.replace(r#"pool = "snat-vip" }"#, r#"pool = "snat-vpi" }"#);
    let e = err(&text);
    assert_path(
        &e,
        r#"layer "acl" > group "customer-out" > rule "snat-it" > action"#,
        r#"port pool "snat-vpi" is not defined"#,
    );
}

#[test]
fn stateless_snat_names_the_action() {
    let text = BASE.replace("priority = 2000\nstateful = true", "priority = 2000");
    let e = err(&text);
    assert_path(
        &e,
        r#"layer "acl" > group "customer-out" > rule "snat-it" > action"#,
        "snat must be in a stateful rule",
    );
}

#[test]
fn duplicate_rule_id_names_the_second_rule() {
    let text = format!(
        "{BASE}\n[[layer.group]]\nid = \"other\"\ndirection = \"in\"\n\n[[layer.group.rule]]\nid = \"allow-out\"\naction = \"allow\"\n"
    );
    let e = err(&text);
    assert_path(
        &e,
        r#"layer "acl" > group "other" > rule "allow-out""#,
        r#"duplicate rule id (also in group "customer-out""#,
    );
}

#[test]
fn bad_mac_in_action_names_the_action() {
    let text = BASE.replace(
        "action = \"allow\"",
        r#"action = { type = "modify", dst_mac = "02:00:00:00:00" }"#,
    );
    let e = err(&text);
    assert_path(
        &e,
        r#"layer "acl" > group "customer-out" > rule "allow-out" > action"#,
        "is not a valid MAC address",
    );
}

#[test]
fn bad_resource_names_the_resource() {
    let text = BASE.replace(
        r#"ranges = ["1024-65535"]"#,
        r#"ranges = ["1024-65535", "2000-2001"]"#,
    );
    let e = err(&text);
    assert_path(
        &e,
        r#"resources > port_pool "snat-vip" > ranges"#,
        "appears in two ranges",
    );
    let text = format!(
        "{BASE}\n[[resources.backend_pool]]\nname = \"web\"\nbackends = [\"10.1.0.4:99999\"]\n"
    );
    let e = err(&text);
    assert_path(
        &e,
        r#"resources > backend_pool "web" > backends"#,
        "is not a backend",
    );
}

#[test]
fn lpm_on_a_non_address_field_names_the_group() {
    let text = BASE.replace(
        "direction = \"out\"\n",
        "direction = \"out\"\nmatch = { lpm = \"proto\" }\n",
    );
    let e = err(&text);
    assert_path(
        &e,
        r#"layer "acl" > group "customer-out" > match"#,
        "lpm needs an IP or MAC field",
    );
}

/// The base policy with more `[port]` settings.
fn with_port_settings(settings: &str) -> String {
    BASE.replace("name = \"vm\"\n", &format!("name = \"vm\"\n{settings}"))
}

#[test]
fn bad_duration_names_the_setting() {
    let e = err(&with_port_settings("tcp_time_wait = \"60 parsecs\"\n"));
    assert_path(&e, "port > tcp_time_wait", "is not a duration");
}

#[test]
fn a_reservation_sizes_the_built_port_and_round_trips() {
    let text = with_port_settings("max_connections = 5000\nreserve_connections = 3000\n");
    let spec = policy_file::parse_str(&text, Format::Toml).expect("spec");
    assert_eq!(spec.reserve_connections, 3000);
    let port = spec.build_port(ActionRegistry::default()).expect("port");
    assert_eq!(port.reserved_connections(), 3000);
    // The flow tables hold room for the connections already; the same
    // port unreserved holds a few kilobytes.
    assert!(port.flow_memory().total() > 3000 * 100);
    let unreserved = PolicySpec {
        reserve_connections: 0,
        ..spec.clone()
    };
    let small = unreserved
        .build_port(ActionRegistry::default())
        .expect("port");
    assert!(small.flow_memory().total() < 3000 * 10);
    let back =
        policy_file::parse_str(&spec.to_toml().expect("toml"), Format::Toml).expect("re-import");
    assert_eq!(back, spec);
}

/// A spec made in code skips the file's checks: building it refuses the
/// reservation with the same place named.
#[test]
fn building_a_spec_beyond_the_limit_names_the_setting() {
    let mut spec = policy_file::parse_str(BASE, Format::Toml).expect("base");
    spec.config.max_connections = 100;
    spec.reserve_connections = 101;
    let e = spec
        .build_port(ActionRegistry::default())
        .expect_err("must fail");
    assert_path(&e, "port > reserve_connections", "at most 100");
}

/// A reservation the machine cannot back (2^31 connections: hundreds of
/// GiB of flow tables) is refused when the port is built, at the setting,
/// before any of it is allocated.
#[test]
fn a_reservation_beyond_memory_names_the_setting() {
    if strata_engine::host_memory::available().is_none() {
        return; // not known on this system: nothing to refuse by
    }
    let spec = policy_file::parse_str(
        &with_port_settings("max_connections = 2147483648\nreserve_connections = 2147483648\n"),
        Format::Toml,
    )
    .expect("within max_connections");
    let e = spec
        .build_port(ActionRegistry::default())
        .expect_err("must fail");
    assert_path(&e, "port > reserve_connections", "bytes available");
}

/// A port numbers its connections in 31 bits: a larger limit is refused
/// at the setting, the largest one accepted.
#[test]
fn max_connections_past_what_a_port_can_number_is_refused() {
    let e = err(&with_port_settings("max_connections = 2147483649\n"));
    assert_path(&e, "port > max_connections", "at most 2147483648");
    let spec = policy_file::parse_str(
        &with_port_settings("max_connections = 2147483648\n"),
        Format::Toml,
    )
    .expect("the largest limit");
    assert_eq!(spec.config.max_connections, 1 << 31);
}

#[test]
fn a_reservation_beyond_the_limit_names_the_setting() {
    let e = err(&with_port_settings(
        "max_connections = 5000\nreserve_connections = 5001\n",
    ));
    assert_path(
        &e,
        "port > reserve_connections",
        "5001 is more than max_connections (5000)",
    );
}

#[test]
fn bad_ids_are_refused() {
    let text = BASE.replace("id = \"customer-out\"", "id = \"customer out\"");
    let e = err(&text);
    assert_path(
        &e,
        r#"layer "acl" > group "customer out""#,
        "invalid identifier",
    );
}

#[test]
fn json_errors_name_the_line() {
    let json = "{\n  \"port\": { \"name\": \"vm\" },\n  \"layer\": [\n    { \"id\": \"acl\", \"default_out\": \"sometimes\" }\n  ]\n}\n";
    let e = policy_file::parse_str(json, Format::Json).expect_err("bad default");
    assert_eq!(e.line(), Some(4), "{e}");
    let e = policy_file::parse_str("{\n \"port\": {\n", Format::Json).expect_err("truncated");
    assert!(e.line().is_some(), "{e}");
}

#[test]
fn file_errors_name_the_file() {
    let dir = std::env::temp_dir().join(format!("strata-policy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let p = dir.join("bad.toml");
    std::fs::write(&p, BASE.replace("10.0.0.0/8", "10.0.0.0/33")).expect("write");
    let e = policy_file::load(&p).expect_err("bad");
    assert!(
        e.to_string()
            .starts_with(&format!("{}: layer", p.display())),
        "{e}"
    );
    let e = policy_file::load(&dir.join("missing.toml")).expect_err("missing");
    assert!(matches!(e, PolicyError::Io { .. }), "{e}");
    let e = policy_file::load(&dir.join("policy.yaml")).expect_err("extension");
    assert!(matches!(e, PolicyError::Extension { .. }), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn mangled_files_never_panic() {
    let text = example_text();
    let bytes = text.as_bytes();
    // Every truncation point on a stride, and single-byte corruptions.
    for cut in (0..bytes.len()).step_by(37) {
        let t = String::from_utf8_lossy(&bytes[..cut]);
        let _ = policy_file::parse_str(&t, Format::Toml);
    }
    for (i, junk) in (0..bytes.len()).step_by(53).zip(
        [b'"', b'[', b'{', b'=', b'\n', b'9', b'-', b'/']
            .iter()
            .cycle(),
    ) {
        let mut b = bytes.to_vec();
        b[i] = *junk;
        let t = String::from_utf8_lossy(&b);
        if let Ok(spec) = policy_file::parse_str(&t, Format::Toml) {
            let _ = spec.build_port(ActionRegistry::default());
        }
    }
}
