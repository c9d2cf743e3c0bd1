#!/bin/bash
# The pool's overhead and capacity, this checkout against another, alternated run by run on one machine:
#   git worktree add /tmp/old <commit>; bench/side_by_side.sh /tmp/old [ROUNDS] [OUT]
# Each run is the checkout's own bench/pool_overhead.py --stub-only and bench/faults.py --only capacity,
# importing its own caelum_mcp (bench/reference/sitecustomize.py); the medians come out at the end.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
old=$(cd "${1:?usage: bench/side_by_side.sh OLD_CHECKOUT [ROUNDS] [OUT]}" && pwd)
rounds=${2:-5}
out=${3:-$(mktemp -d)}
mkdir -p "$out"
py="$here/.venv/bin/python"
run() {  # run WHICH TREE SCRIPT ARGS...
    local which=$1 tree=$2; shift 2
    (cd "$tree" && CAELUM_TREE="$tree" PYTHONPATH="$here/bench/reference" "$py" "$@")
}
for i in $(seq "$rounds"); do
    for which in old new; do
        tree=$([ $which = old ] && echo "$old" || echo "$here")
        run $which "$tree" bench/pool_overhead.py --stub-only > "$out/pool_${which}_$i.txt" 2>&1
        run $which "$tree" bench/faults.py --only capacity > "$out/cap_${which}_$i.txt" 2>&1
        echo "$(date +%T) load $(cut -d' ' -f1 /proc/loadavg): round $i $which done"
    done
done
"$py" - "$out" <<'PY'
import re, statistics, sys
from pathlib import Path
out = Path(sys.argv[1])
def pool(text):
    p50 = float(re.search(r"pool-direct \+?(-?[\d.]+) ms", text).group(1))
    part = text[text.index("throughput"):]
    rps, share = re.search(r"\n  pool\s+([\d.]+)\s+([\d.]+)", part).groups()
    return p50, float(rps), float(share)
def cap(text):
    return tuple(float(x) for x in re.search(r"of direct: pool ([\d.]+) %, router ([\d.]+) %", text).groups())
print(f"{'code':5} {'pool p50 +ms':>13} {'pool req/s':>11} {'% direct (8)':>13} {'capacity pool %':>16} {'router %':>9}")
for which in ("old", "new"):
    p = [pool((out / f"pool_{which}_{i}.txt").read_text()) for i in range(1, 1 + len(list(out.glob(f"pool_{which}_*.txt"))))]
    c = [cap((out / f"cap_{which}_{i}.txt").read_text()) for i in range(1, 1 + len(list(out.glob(f"cap_{which}_*.txt"))))]
    med = lambda xs: statistics.median(xs)
    print(f"{which:5} {med([x[0] for x in p]):13.3f} {med([x[1] for x in p]):11.1f} {med([x[2] for x in p]):13.1f} "
          f"{med([x[0] for x in c]):16.1f} {med([x[1] for x in c]):9.1f}")
print(f"medians of {len(p)} runs each; raw printouts in {out}")
PY
