#!/usr/bin/env python3
"""The code a measured loop runs, in cache lines: how many distinct 64-byte
lines of code execute at least once per iteration, how many bytes of
instructions that is, and per function the lines and the bytes in them
that do not run (code laid out between code that does).

Input: a callgrind file written with `--dump-instr=yes` and the binary it
profiled (for instruction sizes, from objdump). Needs valgrind and
binutils (`apt-get install valgrind binutils`). `ITERATIONS` divides the
counts (e.g. the number of first packets of the measured round); an
instruction counts as executed if it ran at least `--min` (0.5) times per
iteration.

    N=5000 PREFILL=10000 valgrind --tool=callgrind --dump-instr=yes \\
        --callgrind-out-file=cg.out --toggle-collect='slow_path::measured_round' \\
        target/release/examples/slow_path
    tools/callgrind_lines.py cg.out target/release/examples/slow_path 5000

Used for the slow paths' code footprint in BENCHMARKS.md (twenty-second
session): a first packet's executed code against the 32 KB first-level
instruction cache.
"""

import argparse
import collections
import re
import subprocess

NAME = re.compile(r"^(fn|cfn|fl|fi|fe|cfl|cfi|ob|cob)=\((\d+)\)(?: (.*))?$")
COST = re.compile(r"^(0x[0-9a-f]+|\+\d+|-\d+|\*)\s+(\S+)\s+(\d+)")


def self_costs(path):
    """Per instruction address: its self cost, and the function it is in."""
    names, cost, func = {}, collections.Counter(), {}
    fn, addr, in_call = None, 0, False
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            m = NAME.match(line)
            if m:
                kind, ident, name = m.groups()
                key = ("fn" if kind in ("fn", "cfn") else kind, ident)
                if name:
                    names[key] = name
                if kind == "fn":
                    fn = names.get(("fn", ident))
                continue
            if line.startswith("calls="):
                # The next cost line is the call's inclusive cost.
                in_call = True
                continue
            m = COST.match(line)
            if not m:
                continue
            a = m.group(1)
            if a.startswith("0x"):
                addr = int(a, 16)
            elif a.startswith("+"):
                addr += int(a[1:])
            elif a.startswith("-"):
                addr -= int(a[1:])
            if in_call:
                in_call = False
                continue
            cost[addr] += int(m.group(3))
            func[addr] = fn
    return cost, func


def instruction_sizes(binary, lo, hi):
    out = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", binary,
         f"--start-address={lo}", f"--stop-address={hi + 16}"],
        capture_output=True, text=True, check=True).stdout
    starts = sorted(int(m.group(1), 16)
                    for m in re.finditer(r"^\s+([0-9a-f]+):", out, re.M))
    return {a: b - a for a, b in zip(starts, starts[1:])}


def gap_runs(hot, lines, size):
    """Runs of instructions that do not run, inside lines that do:
    `(first address, bytes)`."""
    runs, start, total, last_end = [], None, 0, None
    for a in sorted(size):
        if a // 64 not in lines or a in hot or (last_end is not None and a != last_end):
            if start is not None:
                runs.append((start, total))
                start = None
        if a // 64 in lines and a not in hot:
            if start is None:
                start, total = a, 0
            total += size[a]
            last_end = a + size[a]
        else:
            last_end = None
    if start is not None:
        runs.append((start, total))
    return runs


def source_lines(binary, addrs):
    """Per address: its inline chain, innermost first, as paths."""
    out = subprocess.run(
        ["addr2line", "-a", "-i", "-e", binary] + [hex(a) for a in addrs],
        capture_output=True, text=True, check=True).stdout
    chains, cur = {}, None
    for line in out.splitlines():
        if line.startswith("0x"):
            cur = int(line, 16)
            chains[cur] = []
        elif cur is not None:
            chains[cur].append(re.sub(r" \(discriminator \d+\)", "", line))
    return chains


def own_frame(chain, own):
    """The innermost frame of the chain in our own code (a path containing
    `own`), shortened, and the library frame inlined into it if any."""
    for i, loc in enumerate(chain):
        if own in loc:
            inner = chain[0].rsplit("/", 1)[-1] if i else ""
            return loc.split(own, 1)[1].replace("/src/", ":", 1), inner
    return "?", chain[0].rsplit("/", 1)[-1] if chain else ""


def print_gaps(args, hot, lines, size):
    runs = gap_runs(hot, lines, size)
    chains = source_lines(args.binary, [a for a, _ in runs])
    by_src = collections.defaultdict(lambda: [0, 0, collections.Counter()])
    for a, n in runs:
        src, inner = own_frame(chains.get(a, []), args.own)
        row = by_src[src]
        row[0] += n
        row[1] += 1
        if inner:
            row[2][inner] += n
    total = sum(n for _, n in runs)
    print(f"{total} bytes in {len(runs)} runs do not run inside the executed lines")
    print(f"{'bytes':>5} {'runs':>4}  our source line  (library code inlined there)")
    for src, (n, k, inner) in sorted(by_src.items(), key=lambda kv: -kv[1][0])[:args.top]:
        lib = ", ".join(x for x, _ in inner.most_common(2))
        print(f"{n:5d} {k:4d}  {src}" + (f"  ({lib})" if lib else ""))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("callgrind_out")
    ap.add_argument("binary")
    ap.add_argument("iterations", type=float)
    ap.add_argument("--min", type=float, default=0.5,
                    help="runs per iteration for an instruction to count")
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--gaps", action="store_true",
                    help="list instead the code that does not run inside the "
                         "executed lines, by our source line (addr2line)")
    ap.add_argument("--own", default="/crates/strata",
                    help="path part marking our own source files (--gaps)")
    args = ap.parse_args()

    cost, func = self_costs(args.callgrind_out)
    hot = [a for a, c in cost.items() if c / args.iterations >= args.min]
    if not hot:
        print("no instruction ran that often")
        return
    size = instruction_sizes(args.binary, min(hot), max(hot))
    lines = {a // 64 for a in hot}
    hot_bytes = sum(size.get(a, 4) for a in hot)
    print(f"executed: {len(hot)} instructions, {hot_bytes / 1024:.1f} KB, "
          f"in {len(lines)} lines = {len(lines) * 64 / 1024:.1f} KB "
          f"(density {hot_bytes / (len(lines) * 64):.0%})")
    if args.gaps:
        print_gaps(args, set(hot), lines, size)
        return
    per = collections.defaultdict(lambda: [0, set()])
    for a in hot:
        p = per[func[a]]
        p[0] += size.get(a, 4)
        p[1].add(a // 64)
    rows = sorted(((len(ls), b, fn) for fn, (b, ls) in per.items()), reverse=True)
    print(f"{'lines':>5} {'KB':>5} {'unused B':>8}  function")
    for n, b, fn in rows[:args.top]:
        print(f"{n:5d} {n * 64 / 1024:5.1f} {n * 64 - b:8d}  {(fn or '?')[:110]}")


if __name__ == "__main__":
    main()
