#!/usr/bin/env python3
"""Instructions per packet, connection and lookup for every path an issue
sets a target for, counted by callgrind: the figures that do not move with
the machine or its other tenants (wall times do; see tools/targets.py).

    tools/instructions.py                       # build the examples, count all
    tools/instructions.py --only acl            # the rows whose name has "acl"
    tools/instructions.py --target-dir /tmp/t   # another build's examples
                                                # (built with CARGO_TARGET_DIR)

Each row runs one example of `crates/strata-engine/examples` under
`valgrind --tool=callgrind --toggle-collect=<its measured function>`, so
only the measured round is counted (not the set-up), and divides the
collected instructions by the packets, connections or lookups the round
made. Needs valgrind (`apt-get install valgrind`). A full run takes a few
minutes: the 10 x 10 x 5k port and the 50k-rule group are built under
callgrind too.

Two builds are compared by running this on each (`--target-dir`); a
change that lowers the count can still be slower on the wall clock
(BENCHMARKS.md, twenty-sixth session), so a kept change is also timed,
alternating the two builds' bench binaries.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys

# (name, example, environment, measured function, what one unit is, units:
# N for the example's own `N` (one unit each), a number, or a regex over
# the example's output whose first group is it)
N = "N"
ROWS = [
    ("fast path, outbound NAT + VXLAN (the criterion bench's traffic)",
     "fastpath", {"CLASSES": "1", "N": "4096"}, "fastpath::measured",
     "packet", r"(\d+) packets"),
    ("fast path, all four traffic classes",
     "fastpath", {"CLASSES": "15", "N": "4096"}, "fastpath::measured",
     "packet", r"(\d+) packets"),
    ("first packet, four layers, 1,000-rule ACL, 10k connections held",
     "slow_path", {"N": "5000", "PREFILL": "10000"}, "slow_path::measured_round",
     "packet", N),
    ("the same in bursts of 32",
     "slow_path", {"N": "5024", "PREFILL": "10000", "BATCH": "1"},
     "slow_path::measured_round", "packet", N),
    ("connection: six-packet TCP lifecycle",
     "lifecycle", {"N": "5000"}, "lifecycle::measured_round",
     "connection", N),
    ("the same, 32 connections a burst per step",
     "lifecycle", {"N": "4096", "BATCH": "1"}, "lifecycle::measured_round",
     "connection", N),
    ("retiring a connection (expiry)",
     "lifecycle", {"N": "5000"}, "lifecycle::measured_expire",
     "connection", N),
    ("first packet, 10 layers x 10 groups x 5k rules",
     "acl_layers", {"N": "2000"}, "acl_layers::measured_round",
     "packet", N),
    ("the same in bursts of 32",
     "acl_layers", {"N": "2048", "BATCH": "1"}, "acl_layers::measured_round",
     "packet", N),
] + [
    # One round of the classifier bench's 4,096 packets.
    (f"ACL lookup, {k} rules", "acl_probe", {"N": str(n), "ROUNDS": "1"},
     "acl_probe::measured", "lookup", 4096)
    for k, n in (("1k", 1000), ("5k", 5000), ("50k", 50000))
]

COLLECTED = re.compile(r"Collected : (\d+)")


def fail(msg):
    print(f"tools/instructions.py: {msg}", file=sys.stderr)
    sys.exit(1)


def count(binary, env, toggle, units):
    cmd = [
        "valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
        f"--toggle-collect={toggle}", binary,
    ]
    run = subprocess.run(
        cmd, env={**os.environ, **env}, capture_output=True, text=True)
    if run.returncode != 0:
        fail(f"{' '.join(cmd)} exited with {run.returncode}:\n{run.stderr[-2000:]}")
    m = COLLECTED.search(run.stderr)
    if not m:
        fail(f"no instruction count in callgrind's output of {binary}")
    if units == N:
        units = int(env[N])
    elif isinstance(units, str):
        u = re.search(units, run.stdout)
        if not u:
            fail(f"{binary} did not print its unit count (/{units}/)")
        units = int(u.group(1))
    return int(m.group(1)) / units


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", help="count only the rows whose name contains this")
    ap.add_argument("--target-dir", help="cargo target directory of the build to count "
                    "(default: target, built first)")
    args = ap.parse_args()
    if shutil.which("valgrind") is None:
        fail("valgrind is not installed (apt-get install valgrind)")
    rows = [r for r in ROWS if not args.only or args.only in r[0]]
    if not rows:
        fail(f"no row's name contains {args.only!r}")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    target = args.target_dir or os.path.join(root, "target")
    if not args.target_dir:
        examples = sorted({r[1] for r in rows})
        cmd = ["cargo", "build", "--release", "-p", "strata-engine"]
        for e in examples:
            cmd += ["--example", e]
        print("$ " + " ".join(cmd), file=sys.stderr)
        if subprocess.run(cmd, cwd=root).returncode != 0:
            fail("the build failed")
    for example in {r[1] for r in rows}:
        binary = os.path.join(target, "release", "examples", example)
        if not os.path.exists(binary):
            fail(f"{binary} does not exist (build it, or drop --target-dir)")
    print("| path | instructions | per | command |")
    print("|---|---|---|---|")
    for name, example, env, toggle, unit, units in rows:
        binary = os.path.join(target, "release", "examples", example)
        n = count(binary, env, toggle, units)
        setting = " ".join(f"{k}={v}" for k, v in env.items())
        print(f"| {name} | **{n:,.1f}** | {unit} | `{setting} examples/{example}`, "
              f"`{toggle}` |", flush=True)


if __name__ == "__main__":
    main()
