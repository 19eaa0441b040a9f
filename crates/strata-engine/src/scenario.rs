//! The canonical VFP policy stack (VM side first): Meter, ACL, SLB NAT,
//! VNET — as used by `strata demo`, the integration tests and the benches.
//!
//! Addresses (one VM, one host):
//! - VNET `10.1.0.0/16`, VNI [`VNI`]; the VM is [`VM_CA`] with [`VM_MAC`].
//!   Remote CAs `10.1.x.y` live on hosts [`remote_pa`]`(x, y)`, installed in
//!   the mapping table [`MAPPING`] by [`install_mappings`] (or on demand).
//! - This host's PA is [`HOST_PA`]; the underlay next hop is [`GW_MAC`].
//! - SLB: VIP [`VIP`]:80 load-balances to the VM's port 8080 (inbound DNAT,
//!   reversed outbound); traffic to outside `10.0.0.0/8` is SNATed to the
//!   VIP with ports from pool [`SNAT_POOL`], and leaves natively (no encap);
//!   inbound load-balanced traffic arrives encapsulated from a MUX and its
//!   replies leave directly (direct server return).
//! - ACL: an infra group (terminating block of outbound SMTP, otherwise
//!   allow) and a customer group (all outbound allowed, stateful; inbound
//!   only TCP 8080 and ICMP echo, stateful); both defaults block, so
//!   unsolicited inbound traffic is dropped.
//! - Meter: per destination IP outbound, per source IP inbound.

use crate::action::ActionSpec;
use crate::classifier::MatchType;
use crate::condition::{Condition, Field, MatchValue};
use crate::error::ApiError;
use crate::policy::{DefaultAction, Group, LayerSpec, PortConfig, Rule};
use crate::port::Port;
use crate::resource::{Backend, Mapping};
use crate::types::Direction;
use std::net::{IpAddr, Ipv4Addr};
use strata_packet::flow::{MacAddr, TunnelKind, ethertype, ipproto};
use strata_packet::transposition::{OuterOp, Transposition};

pub const VNI: u32 = 5001;
pub const VM_CA: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 4);
pub const VM_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x04]);
/// The MAC the VM uses as its gateway (the switch answers for it).
pub const VM_GW_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x01]);
pub const HOST_PA: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 10);
pub const HOST_MAC: MacAddr = MacAddr([0x02, 0xaa, 0, 0, 0, 0x10]);
pub const GW_MAC: MacAddr = MacAddr([0x02, 0xaa, 0, 0, 0, 0x01]);
pub const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub const MUX_PA: Ipv4Addr = Ipv4Addr::new(192, 168, 255, 1);
pub const DIP_PORT: u16 = 8080;
pub const MAPPING: &str = "vnet-5001";
pub const SNAT_POOL: &str = "snat-vip";
pub const LB_POOL: &str = "web";

/// PA of the host holding remote CA `10.1.x.y`.
pub fn remote_pa(x: u8, y: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, x.wrapping_add(1), y)
}

/// MAC of the VNIC with CA `10.1.x.y`.
pub fn remote_mac(x: u8, y: u8) -> MacAddr {
    MacAddr([0x02, 0x01, 0, 0, x, y])
}

fn v4(ip: Ipv4Addr) -> IpAddr {
    IpAddr::V4(ip)
}

fn prefix(f: Field, ip: Ipv4Addr, len: u8) -> Condition {
    Condition::ip_prefix(f, v4(ip), len)
}

/// The four layers (Meter, ACL, SLB NAT, VNET) with `acl_extra` additional
/// customer ACL rules (for slow-path benches with big groups: each blocks
/// one /32 destination on an unused port, so none matches real traffic).
pub fn four_layer_specs(acl_extra: usize) -> Vec<LayerSpec> {
    four_layer_specs_with(acl_extra, false)
}

/// PA of the internet gateway used by [`four_layer_specs_with`]`(_, true)`.
pub const INET_GW_PA: Ipv4Addr = Ipv4Addr::new(192, 168, 255, 254);

/// As [`four_layer_specs`]; with `internet_via_gateway`, internet-bound
/// traffic (after SNAT) is VXLAN-encapsulated to the gateway [`INET_GW_PA`]
/// instead of leaving natively — the NAT + encap path of the benches.
pub fn four_layer_specs_with(acl_extra: usize, internet_via_gateway: bool) -> Vec<LayerSpec> {
    let meter = LayerSpec {
        groups: vec![
            Group::new("meter-out", Direction::Out).with_rules(vec![Rule::new(
                "meter-dst",
                100,
                vec![],
                ActionSpec::Meter {
                    by: Field::DstIp,
                    prefix_len: None,
                },
            )]),
            Group::new("meter-in", Direction::In).with_rules(vec![Rule::new(
                "meter-src",
                100,
                vec![],
                ActionSpec::Meter {
                    by: Field::SrcIp,
                    prefix_len: None,
                },
            )]),
        ],
        ..LayerSpec::new("meter", DefaultAction::Allow, DefaultAction::Allow)
    };

    let mut customer_out = vec![
        Rule::new(
            "allow-out",
            1000,
            vec![Condition::exact(
                Field::EtherType,
                u128::from(ethertype::IPV4),
            )],
            ActionSpec::Allow,
        )
        .stateful(),
    ];
    for i in 0..acl_extra {
        let ip = Ipv4Addr::new(172, 16 + (i >> 16) as u8, (i >> 8) as u8, i as u8);
        customer_out.push(Rule::new(
            &format!("deny-{i}"),
            10 + (i % 900) as u32,
            vec![
                prefix(Field::DstIp, ip, 32),
                Condition::exact(Field::Proto, u128::from(ipproto::TCP)),
                Condition::range(Field::DstPort, 1, 9),
            ],
            ActionSpec::Block,
        ));
    }
    let acl = LayerSpec {
        groups: vec![
            Group::new("infra-out", Direction::Out).with_rules(vec![
                Rule::new(
                    "infra-block-smtp",
                    10,
                    vec![
                        Condition::exact(Field::Proto, u128::from(ipproto::TCP)),
                        Condition::exact(Field::DstPort, 25),
                    ],
                    ActionSpec::Block,
                )
                .terminating(),
                Rule::new("infra-allow-out", 1000, vec![], ActionSpec::Allow),
            ]),
            Group::new("customer-out", Direction::Out).with_rules(customer_out),
            Group::new("customer-in", Direction::In).with_rules(vec![
                Rule::new(
                    "allow-web-in",
                    100,
                    vec![
                        Condition::exact(Field::Proto, u128::from(ipproto::TCP)),
                        Condition::exact(Field::DstPort, u128::from(DIP_PORT)),
                    ],
                    ActionSpec::Allow,
                )
                .stateful(),
                Rule::new(
                    "allow-ping-in",
                    200,
                    vec![
                        Condition::exact(Field::Proto, u128::from(ipproto::ICMP)),
                        Condition::exact(Field::IcmpType, 8),
                    ],
                    ActionSpec::Allow,
                )
                .stateful(),
            ]),
        ],
        ..LayerSpec::new("acl", DefaultAction::Block, DefaultAction::Block)
    };

    let private = vec![prefix(Field::DstIp, Ipv4Addr::new(10, 0, 0, 0), 8)];
    let slb = LayerSpec {
        groups: vec![
            Group::new("slb-in", Direction::In).with_rules(vec![
                Rule::new(
                    "vip-web",
                    100,
                    vec![
                        Condition::new(Field::DstIp, vec![MatchValue::ip(v4(VIP))]),
                        Condition::exact(Field::Proto, u128::from(ipproto::TCP)),
                        Condition::exact(Field::DstPort, 80),
                    ],
                    ActionSpec::LbNat {
                        pool: LB_POOL.into(),
                    },
                )
                .stateful(),
            ]),
            Group::new("snat-out", Direction::Out).with_rules(vec![
                Rule::new("vnet-no-nat", 100, private, ActionSpec::Allow),
                Rule::new(
                    "snat-internet",
                    1000,
                    vec![Condition::exact(
                        Field::EtherType,
                        u128::from(ethertype::IPV4),
                    )],
                    ActionSpec::Snat {
                        pool: SNAT_POOL.into(),
                    },
                )
                .stateful(),
            ]),
        ],
        ..LayerSpec::new("slb", DefaultAction::Allow, DefaultAction::Allow)
    };

    let vnet = LayerSpec {
        groups: vec![
            Group {
                match_type: MatchType::Lpm(Field::DstIp),
                ..Group::new("vnet-routes", Direction::Out).with_rules(vec![
                    Rule::new(
                        "vnet-local",
                        100,
                        vec![prefix(Field::DstIp, Ipv4Addr::new(10, 1, 0, 0), 16)],
                        ActionSpec::EncapMapped {
                            mapping: MAPPING.into(),
                            local_pa: v4(HOST_PA),
                            local_mac: HOST_MAC,
                        },
                    ),
                    Rule::new(
                        "internet",
                        100,
                        vec![prefix(Field::DstIp, Ipv4Addr::UNSPECIFIED, 0)],
                        if internet_via_gateway {
                            ActionSpec::Encap {
                                tunnel: TunnelKind::Vxlan,
                                vni: VNI,
                                local_pa: v4(HOST_PA),
                                remote_pa: v4(INET_GW_PA),
                                local_mac: HOST_MAC,
                                next_hop_mac: GW_MAC,
                                inner_dst_mac: None,
                            }
                        } else {
                            ActionSpec::Modify {
                                src_mac: Some(HOST_MAC),
                                dst_mac: Some(GW_MAC),
                                dscp: None,
                                vlan: None,
                            }
                        },
                    ),
                ])
            },
            Group::new("vnet-in", Direction::In).with_rules(vec![
                Rule::new(
                    "decap",
                    100,
                    vec![
                        Condition::exact(Field::TunnelId, u128::from(VNI)),
                        Condition::new(Field::OuterDstIp, vec![MatchValue::ip(v4(HOST_PA))]),
                    ],
                    // Decap, and present the frame as coming from the
                    // virtual gateway (as Azure does), so inbound keys are
                    // the exact reverse of the VM's outbound keys.
                    ActionSpec::Transpose {
                        transposition: Transposition {
                            outer: OuterOp::Pop,
                            src_mac: Some(VM_GW_MAC),
                            dst_mac: Some(VM_MAC),
                            ..Transposition::default()
                        },
                    },
                ),
                Rule::new(
                    "native-to-vip",
                    200,
                    vec![Condition::new(Field::DstIp, vec![MatchValue::ip(v4(VIP))])],
                    ActionSpec::Modify {
                        src_mac: Some(VM_GW_MAC),
                        dst_mac: Some(VM_MAC),
                        dscp: None,
                        vlan: None,
                    },
                ),
            ]),
        ],
        ..LayerSpec::new("vnet", DefaultAction::Block, DefaultAction::Block)
    };
    vec![meter, acl, slb, vnet]
}

/// A port with the four layers and their resources. Mappings are not
/// installed (see [`install_mappings`]).
pub fn four_layer_port(config: PortConfig, acl_extra: usize) -> Result<Port, ApiError> {
    four_layer_port_with(config, acl_extra, false)
}

/// As [`four_layer_port`], see [`four_layer_specs_with`].
pub fn four_layer_port_with(
    config: PortConfig,
    acl_extra: usize,
    internet_via_gateway: bool,
) -> Result<Port, ApiError> {
    let mut port = Port::new("vm-10.1.0.4", config);
    port.add_mapping_table(MAPPING)?;
    port.add_port_pool(SNAT_POOL, v4(VIP), vec![(1024, 65535)])?;
    port.set_backend_pool(
        LB_POOL,
        vec![Backend {
            ip: v4(VM_CA),
            port: Some(DIP_PORT),
        }],
    )?;
    for l in four_layer_specs_with(acl_extra, internet_via_gateway) {
        port.add_layer(l, None)?;
    }
    Ok(port)
}

/// The mapping of remote CA `10.1.x.y`.
pub fn mapping_for(x: u8, y: u8) -> Mapping {
    Mapping {
        pa: v4(remote_pa(x, y)),
        pa_mac: GW_MAC,
        ca_mac: remote_mac(x, y),
        vni: VNI,
        tunnel: TunnelKind::Vxlan,
    }
}

/// Install mappings for remote CAs `10.1.x.y` with `x` in `0..hosts_x` and
/// `y` in `1..=254` (except the VM itself).
pub fn install_mappings(port: &mut Port, hosts_x: u8) -> Result<(), ApiError> {
    for x in 0..hosts_x {
        for y in 1..=254u8 {
            if x == 0 && y == 4 {
                continue;
            }
            port.set_mapping(MAPPING, v4(Ipv4Addr::new(10, 1, x, y)), mapping_for(x, y))?;
        }
    }
    Ok(())
}

/// Where a probe packet goes: IPv4 source, destination and TCP destination
/// port.
pub type ProbeTarget = (Ipv4Addr, Ipv4Addr, u16);

/// Outbound group `acl` of `n` generated stateful allow rules
/// (`rulegen::acl(n, seed)`), ids `{prefix}{i}`: the group of the issue-3
/// replacement measurements.
pub fn generated_acl_group(n: usize, seed: u64, prefix: &str) -> Group {
    let rules = crate::rulegen::acl(n, seed)
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let mut r = Rule::new(
                &format!("{prefix}{i}"),
                m.priority,
                m.conditions,
                ActionSpec::Allow,
            );
            r.stateful = true;
            r
        })
        .collect();
    Group::new("acl", Direction::Out).with_rules(rules)
}

/// The classifier-scale port of issue 3: `layers` layers × `groups` groups of
/// `rules` generated ACL rules each (`rulegen::acl`, seeds `1..`), every rule
/// an allow, so every packet walks all layers. Also returns, for probing,
/// IPv4 TCP targets `(src, dst, dst port)` aimed at the first group's rules
/// (hits, near misses and misses, from `rulegen::packets`).
pub fn acl_layers_port(
    layers: u64,
    groups: u64,
    rules: usize,
    probes: usize,
) -> Result<(Port, Vec<ProbeTarget>), ApiError> {
    use crate::rulegen;
    let mut port = Port::new("acl-layers", PortConfig::default());
    let mut probe_rules = Vec::new();
    for l in 0..layers {
        let mut spec = LayerSpec::new(&format!("l{l}"), DefaultAction::Allow, DefaultAction::Allow);
        for g in 0..groups {
            let set = rulegen::acl(rules, l * groups + g + 1);
            let group_rules = set
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    Rule::new(
                        &format!("g{g}r{i}"),
                        m.priority,
                        m.conditions.clone(),
                        ActionSpec::Allow,
                    )
                })
                .collect();
            if l == 0 && g == 0 {
                probe_rules = set;
            }
            spec.groups
                .push(Group::new(&format!("g{g}"), Direction::Out).with_rules(group_rules));
        }
        port.add_layer(spec, None)?;
    }
    Ok((port, probe_targets(&probe_rules, probes)))
}

/// Up to `n` IPv4 targets aimed at `rules` (`rulegen::packets`, seed 3):
/// what [`acl_layers_port`] returns for its first group's rules.
pub fn probe_targets(rules: &[crate::classifier::RuleMatch], n: usize) -> Vec<ProbeTarget> {
    let to4 = |v: u128| (v >> 32 == 0xffff).then(|| Ipv4Addr::from(v as u32));
    crate::rulegen::packets(rules, n, 3)
        .into_iter()
        .filter_map(|fv| {
            Some((
                to4(fv.get(Field::SrcIp)?)?,
                to4(fv.get(Field::DstIp)?)?,
                fv.get(Field::DstPort).unwrap_or(80) as u16,
            ))
        })
        .collect()
}
