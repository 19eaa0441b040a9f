#!/usr/bin/env python3
"""Where a function's instructions go, one machine instruction at a time:
the hottest instructions of the functions whose names start with a
prefix, with their self cost per iteration, their disassembly and the
chain of source lines they were inlined from (innermost first).

Input: a callgrind file written with `--dump-instr=yes` and the binary it
profiled.

    CLASSES=1 N=4096 valgrind --tool=callgrind --dump-instr=yes \\
        --callgrind-out-file=cg.out --toggle-collect='fastpath::measured' \\
        target/release/examples/fastpath
    tools/callgrind_instr.py cg.out target/release/examples/fastpath \\
        'strata_engine::port::Port::process_batch' 8192

Callgrind's own annotation gives a line's cost where the line is; this
gives it where it was inlined to, which is what a change to the caller
moves (BENCHMARKS.md: bounds checks, spills, the leaf loop's cost per
item).
"""

import argparse
import re
import subprocess

from callgrind_lines import self_costs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("callgrind_out")
    ap.add_argument("binary")
    ap.add_argument("prefix", help="function name prefix, e.g. 'strata_engine::port::'")
    ap.add_argument("iterations", type=float)
    ap.add_argument("--top", type=int, default=60)
    args = ap.parse_args()

    cost, func = self_costs(args.callgrind_out)
    mine = {a: c for a, c in cost.items() if (func[a] or "").startswith(args.prefix)}
    if not mine:
        print("no function with that prefix ran")
        return
    print(f"total {sum(mine.values()) / args.iterations:.1f} per iteration")
    hot = sorted(mine.items(), key=lambda x: -x[1])[:args.top]
    addrs = [hex(a) for a, _ in hot]
    chains = subprocess.run(["addr2line", "-a", "-i", "-C", "-e", args.binary] + addrs,
                            capture_output=True, text=True, check=True).stdout
    per_addr = re.split(r"^0x[0-9a-f]+\n", chains, flags=re.M)[1:]
    dis = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", args.binary,
         f"--start-address={min(mine)}", f"--stop-address={max(mine) + 16}"],
        capture_output=True, text=True, check=True).stdout
    text = {}
    for line in dis.splitlines():
        m = re.match(r"^\s+([0-9a-f]+):\s+(.*)$", line)
        if m:
            text[int(m.group(1), 16)] = m.group(2)
    for (a, c), chain in zip(hot, per_addr):
        locs = [re.sub(r".*/(src/)", r"\1", x) for x in chain.strip().splitlines()]
        print(f"{c / args.iterations:7.1f} {a:x} {text.get(a, '?')[:40]:40s} "
              f"{' <- '.join(locs)[:160]}")


if __name__ == "__main__":
    main()
