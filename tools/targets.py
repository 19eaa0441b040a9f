#!/usr/bin/env python3
"""Every benchmark the issues set a target for, run once and printed as a
table against its target: the figures of a build on this machine, in one
command (for a new host, or a session's end).

    tools/targets.py                      # build and run both benches
    tools/targets.py --engine BIN --classifier BIN
                                          # run bench binaries already built
                                          # (e.g. another build's, to compare)

It runs `cargo bench -p strata-engine --bench engine` and `--bench
classifier` (or the given binaries) with `--warm-up-time 2
--measurement-time 4`, reads criterion's `time: [low median high]` lines
and the engine bench's own report lines (flow state per connection,
fast-path allocations), and prints a Markdown table: median, criterion's
interval, the figure per packet where the bench times a batch, the
target and whether it is met. The fast path's floor (the same output with
the least work, measured in the same run) is printed as a ratio: on a
machine where the floor itself misses the target, no design meets it.

Wall times move with the machine's other tenants: compare builds by
running them alternately in the same window, not against another day's
table.
"""

import argparse
import re
import subprocess
import sys

UNITS = {"ps": 1e-3, "ns": 1.0, "µs": 1e3, "us": 1e3, "ms": 1e6, "s": 1e9}

# (bench name, label, frames per iteration, target: the most nanoseconds
# per packet or operation, None where no target is set)
FAST = "fast_path/nat_vxlan_batch32_1000000_conns"
FLOOR = "fast_path/floor_nat_vxlan_batch32_1000000_conns"
CONNECTIONS = "connection_rate/tcp_lifecycle_6_packets_create_and_retire"
CONNECTIONS_BURSTS = "connection_rate/tcp_lifecycle_6_packets_bursts_of_32"
FAST_TARGET = 40.0
ENGINE = [
    (FAST, "fast path, 1M connections (per packet)", 32, FAST_TARGET),
    (FLOOR, "its floor, same run (per packet)", 32, None),
    ("slow_path/first_packet_4_layers_acl_1000_rules",
     "first packet, four layers, 1,000-rule ACL", 1, 300.0),
    ("slow_path/first_packet_4_layers_acl_1000_rules_10k_flows",
     "the same, up to 10k connections", 1, None),
    ("slow_path/first_reply_4_layers_acl_1000_rules",
     "first reply (SYN-ACK)", 1, None),
    (CONNECTIONS, "connection rate (per connection)", 1, 1000.0),
    (CONNECTIONS_BURSTS, "the same, 32 connections a burst per step", 32, 1000.0),
    ("slow_path/first_packet_10_layers_x_10_groups_x_5k_rules",
     "10 x 10 x 5k first packet, one at a time", 1, 2000.0),
    ("slow_path/first_packet_10_layers_x_10_groups_x_5k_rules_batch_32",
     "the same in bursts of 32 (per packet)", 32, 2000.0),
]
CLASSIFIER = [
    ("acl/planner/1000", "ACL 1k rules", 1, None),
    ("acl/planner/10000", "ACL 10k rules", 1, None),
    ("acl/planner/50000", "ACL 50k rules", 1, 150.0),
    ("acl/linear/50000", "linear scan, 50k rules, same run", 1, None),
    ("lpm/planner/v4_1M", "LPM, 1M IPv4 routes", 1, 50.0),
    ("lpm/planner/v6_100k", "LPM, 100k IPv6 routes", 1, 80.0),
    ("build/acl_50k", "build a 50k-rule group", 1, 100e6),
    ("build/acl_50k_set_group_on_port", "replace it on a port", 1, 100e6),
]
CLASSIFIER_FILTER = "acl/planner|acl/linear/50000|lpm/planner|build/acl_50k"
BENCH_ARGS = ["--warm-up-time", "2", "--measurement-time", "4"]

TIME = re.compile(r"time:\s+\[([\d.]+) (\S+) ([\d.]+) (\S+) ([\d.]+) (\S+)\]")
NAME = re.compile(r"^([\w./-]+)(?:\s+time:|\s*$)")


def run(cmd):
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    try:
        out = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as e:
        sys.exit(f"cannot run {cmd[0]}: {e.strerror}")
    if out.returncode != 0:
        sys.exit(f"{cmd[0]} failed (exit {out.returncode}):\n{out.stderr[-2000:]}")
    return out.stdout


def parse(text):
    """Criterion's figures by bench name: (low, median, high) in ns."""
    found, name = {}, None
    for line in text.splitlines():
        m = NAME.match(line)
        if m and "/" in m.group(1):
            name = m.group(1)
        t = TIME.search(line)
        if t and name and name not in found:
            v = t.groups()
            found[name] = tuple(float(v[i]) * UNITS[v[i + 1]] for i in (0, 2, 4))
    return found


def human(ns):
    for unit, scale in (("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.3g} {unit}"
    return f"{ns:.3g} ns"


def rows(figures, table):
    for name, label, per, target in table:
        f = figures.get(name)
        if f is None:
            yield f"| {label} | not run | | | |"
            continue
        lo, mid, hi = (x / per for x in f)
        met = "—" if target is None else ("yes" if mid <= target else "**no**")
        goal = "—" if target is None else f"≤ {human(target)}"
        yield f"| {label} | **{human(mid)}** | {human(lo)} – {human(hi)} | {goal} | {met} |"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engine", help="engine bench binary to run instead of cargo bench")
    ap.add_argument("--classifier", help="classifier bench binary to run instead of cargo bench")
    ap.add_argument("--engine-only", action="store_true", help="skip the classifier bench")
    args = ap.parse_args()

    def bench(binary, name, extra):
        if binary:
            return run([binary, "--bench", *BENCH_ARGS, *extra])
        return run(["cargo", "bench", "-p", "strata-engine", "--bench", name, "--",
                    *BENCH_ARGS, *extra])

    engine_out = bench(args.engine, "engine", [])
    figures = parse(engine_out)
    if not args.engine_only:
        figures.update(parse(bench(args.classifier, "classifier", [CLASSIFIER_FILTER])))

    print("| benchmark | median | criterion's interval | target | met |")
    print("|---|---|---|---|---|")
    for line in rows(figures, ENGINE + ([] if args.engine_only else CLASSIFIER)):
        print(line)

    fast = figures.get(FAST)
    floor = figures.get(FLOOR)
    if fast and floor:
        print(f"\nfast path / its floor: {fast[1] / floor[1]:.2f}×"
              f" (floor {floor[1] / 32:.1f} ns per packet against the"
              f" {FAST_TARGET:.0f} ns target)")
    linear = figures.get("acl/linear/50000")
    acl = figures.get("acl/planner/50000")
    if linear and acl:
        print(f"ACL 50k: {linear[1] / acl[1]:,.0f}× faster than the linear scan (target ≥ 100×)")
    conn = figures.get(CONNECTIONS)
    if conn:
        print(f"connection rate: {1e9 / conn[1] / 1e3:,.0f}k connections/s (target ≥ 1M/s)")
    bursts = figures.get(CONNECTIONS_BURSTS)
    if bursts:
        print(f"  in bursts of 32: {1e9 * 32 / bursts[1] / 1e3:,.0f}k connections/s")
    m = re.search(r"flow state [\d.]+ MiB = ([\d.]+) bytes/connection", engine_out)
    if m:
        print(f"flow state per connection at 1M connections: {m.group(1)} B (target ≤ 256)")
    m = re.search(r"fast path allocations: (\d+) in (\d+) packets", engine_out)
    if m:
        print(f"fast-path allocations: {m.group(1)} in {m.group(2)} packets (target 0)")


if __name__ == "__main__":
    main()
