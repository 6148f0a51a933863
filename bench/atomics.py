#!/usr/bin/env python3
"""Atomic read-modify-write instructions executed per request, from a callgrind profile.

Callgrind's cache and branch models do not price `lock`-prefixed instructions, `xchg` with
memory or `mfence` (each ~20 cycles and a full barrier on x86), so this counts them: it
matches the per-instruction counts of a profile taken with `--dump-instr=yes` against
`objdump -d` of every object in it (the load base of each object found from its symbols).

    KEEP=/tmp/prof VG_ARGS=--dump-instr=yes bash bench/instructions.sh target/release/iptgate nginx
    python3 bench/atomics.py /tmp/prof/iptgate.1 REQUESTS [TOP]

REQUESTS is the request count instructions.sh printed for that proxy. Prints the total per
request, then the TOP (default 25) functions that execute them.
"""
import collections
import re
import subprocess
import sys

ATOMIC = re.compile(r"lock |xchg\s.*\(|mfence")


def parse(path):
    """Self cost, function and object of every instruction address in the profile."""
    tables = {"ob": {}, "fn": {}}
    cost = collections.Counter()
    fn_of, ob_of = {}, {}
    fn, ob, pos, skip = "?", "?", 0, False

    def name(kind, tok):
        m = re.match(r"\((\d+)\)(?:\s+(.*))?", tok)
        if not m:
            return tok
        if m.group(2):
            tables[kind][m.group(1)] = m.group(2)
        return tables[kind].get(m.group(1), "?")

    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            key, _, rest = line.partition("=")
            if key in ("ob", "cob"):
                n = name("ob", rest)
                ob = n if key == "ob" else ob
                continue
            if key in ("fn", "cfn"):
                n = name("fn", rest)
                fn = n if key == "fn" else fn
                continue
            if key in ("fl", "fi", "fe", "cfi", "cfl"):
                continue
            if key == "calls":
                skip = True  # the next cost line is the call's inclusive cost
                continue
            if line[0] not in "0123456789+-*":
                continue
            parts = line.split()
            p = parts[0]
            if p.startswith("0x"):
                pos = int(p, 16)
            elif p[0] in "+-":
                pos += int(p, 0)
            elif p != "*":
                continue
            if skip:
                skip = False
                continue
            if len(parts) > 2:  # positions: instr line
                cost[pos] += int(parts[2])
                fn_of[pos], ob_of[pos] = fn, ob
    return cost, fn_of, ob_of


def atomic_addresses(obj, addrs, fn_of):
    """Addresses (as profiled) of the atomic instructions of `obj`."""
    syms = {}
    for flags in ([], ["-D"]):
        out = subprocess.run(["nm", *flags, obj], capture_output=True, text=True).stdout
        for line in out.splitlines():
            p = line.split()
            if len(p) == 3 and p[1] in "tTwW":
                syms.setdefault(p[2].split("@")[0], int(p[0], 16))
    lowest = {}
    for a in addrs:
        if a < lowest.get(fn_of[a], float("inf")):
            lowest[fn_of[a]] = a
    bases = collections.Counter(lowest[f] - syms[f] for f in lowest if f in syms)
    if not bases:
        return set()
    base = bases.most_common(1)[0][0]
    dis = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", obj], capture_output=True, text=True
    ).stdout
    found = set()
    for line in dis.splitlines():
        m = re.match(r"\s*([0-9a-f]+):\s+(.*)", line)
        if m and ATOMIC.search(m.group(2)):
            found.add(int(m.group(1), 16) + base)
    return found


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    path, requests = sys.argv[1], int(sys.argv[2])
    top = int(sys.argv[3]) if len(sys.argv) > 3 else 25
    cost, fn_of, ob_of = parse(path)
    by_obj = collections.defaultdict(list)
    for a, o in ob_of.items():
        by_obj[o].append(a)
    total, per_fn = 0, collections.Counter()
    for obj, addrs in by_obj.items():
        if not obj.startswith("/"):
            continue
        atomic = atomic_addresses(obj, addrs, fn_of)
        for a in addrs:
            if a in atomic and cost[a]:
                total += cost[a]
                per_fn[fn_of[a]] += cost[a]
    print(f"{total / requests:.1f} atomic read-modify-write instructions per request")
    for f, n in per_fn.most_common(top):
        print(f"  {n / requests:6.2f}  {f[:120]}")


if __name__ == "__main__":
    main()
