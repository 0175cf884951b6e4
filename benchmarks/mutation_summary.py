"""Summarize a mutmut run per module: killed, survived, timeout, no tests, not checked, score.

Run from the repository root after ``mutmut run`` (see benchmarks/mutation.md):

    python benchmarks/mutation_summary.py            # table per module
    python benchmarks/mutation_summary.py --survivors  # also list the surviving mutants

Reads mutmut's result files ``mutants/**/*.py.meta``. The score is killed / (killed + survived
+ timeout + suspicious), over the mutants that ran against at least one test.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped",
          36: "timeout", 24: "timeout", -24: "timeout", 152: "timeout", 255: "timeout",
          37: "type check", None: "not checked"}  # fmt: skip
COLUMNS = ["killed", "survived", "timeout", "suspicious", "no tests", "not checked"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mutants", default="mutants", help="mutmut's working directory")
    parser.add_argument("--survivors", action="store_true", help="list surviving mutants")
    args = parser.parse_args()
    metas = sorted(Path(args.mutants).rglob("*.py.meta"))
    if not metas:
        raise SystemExit(f"no mutmut results under {args.mutants}/; run `mutmut run` first")
    total: Counter = Counter()
    survivors = []
    print(f"| module | {' | '.join(COLUMNS)} | score |")
    print("|---" * (len(COLUMNS) + 2) + "|")
    for meta in metas:
        results = json.loads(meta.read_text())["exit_code_by_key"]
        counts = Counter(STATUS.get(code, "suspicious") for code in results.values())
        total += counts
        survivors += [name for name, code in results.items() if code == 0]
        module = str(meta.relative_to(args.mutants)).removesuffix(".meta")
        print(f"| {module} | {' | '.join(str(counts[c]) for c in COLUMNS)} | {_score(counts)} |")
    print(f"| all | {' | '.join(str(total[c]) for c in COLUMNS)} | {_score(total)} |")
    if args.survivors:
        print("\nsurviving mutants (`mutmut show NAME` prints the change):")
        print("\n".join(survivors))


def _score(counts: Counter) -> str:
    ran = counts["killed"] + counts["survived"] + counts["timeout"] + counts["suspicious"]
    return f"{counts['killed'] / ran:.1%}" if ran else "-"


if __name__ == "__main__":
    main()
