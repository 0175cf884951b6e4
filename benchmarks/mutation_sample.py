"""Mutation score of pyro_vae/infer, models and train from a seeded uniform sample of mutants.

Every mutant of the three packages is generated (about 9,000), but running them all takes
many hours on a small machine, so a uniform random sample of each package's mutants is run
and the package's score is estimated from it, with a 95% interval (see
benchmarks/mutation.md). Run from the repository root:

    python benchmarks/mutation_sample.py run      # generate (first time), then run the sample
    python benchmarks/mutation_sample.py report   # table per package, survivors
    python benchmarks/mutation_sample.py names    # the sampled mutant names, one a line
    python benchmarks/mutation_sample.py sweep --max-cost 5   # every mutant of cheap functions
    python benchmarks/mutation_sample.py swept --max-cost 5   # their table and survivors

``sweep`` is a census rather than a sample: it runs every mutant of each function whose tests
(mutmut's map from functions to tests, with their recorded durations) take at most
``--max-cost`` seconds in all, cheapest functions first. A surviving mutant runs all of its
function's tests, so the cost bounds the time a survivor takes.

``--per-package`` (default 10) and ``--seed`` (default 0) fix the sample: a generator seeded
with ``f"{seed}:{package}"`` draws that many names from each package's sorted mutant names.
``run`` skips sampled mutants that already have a result (``--rerun`` runs them again, e.g.
after new tests), so an interrupted run continues where it stopped. Equivalent mutants are
the backquoted names in the "Equivalent mutants" section of benchmarks/mutation.md.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

PACKAGES = ("infer", "models", "train")
#: mutmut's exit codes as in benchmarks/mutation_summary.py
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped",
          36: "timeout", 24: "timeout", -24: "timeout", 152: "timeout", 255: "timeout",
          37: "type check", None: "not checked"}  # fmt: skip
MUTANTS = Path("mutants")
NOTES = Path(__file__).with_name("mutation.md")
COLUMNS = ("killed", "survived", "timeout", "no tests", "not checked")
CHUNK = 1000  # mutants per `mutmut run` call (each result is saved as it comes)


def all_results() -> dict[str, int | None]:
    """Every generated mutant's name and exit code (``None``: not run yet)."""
    results: dict[str, int | None] = {}
    for meta in sorted(MUTANTS.rglob("*.py.meta")):
        results.update(json.loads(meta.read_text())["exit_code_by_key"])
    return results


def package_of(name: str) -> str:
    return name.split(".")[1]


def module_of(name: str) -> str:
    return ".".join(name.split(".")[:3])


def sample(names: list[str], per_package: int, seed: int) -> dict[str, list[str]]:
    """``per_package`` names drawn uniformly from each package's sorted mutant names.

    Each package has its own generator, so a larger ``per_package`` with the same seed draws
    a superset of a smaller one (and ``run`` only runs the added mutants)."""
    drawn = {}
    for package in PACKAGES:
        rng = random.Random(f"{seed}:{package}")
        pool = sorted(n for n in names if package_of(n) == package)
        drawn[package] = sorted(rng.sample(pool, min(per_package, len(pool))))
    return drawn


def sample_file(args: argparse.Namespace) -> Path:
    """Where ``run`` records the names it drew: mutmut regenerates the mutants of changed
    modules when it starts, so a draw made afterwards from the new names would differ."""
    return MUTANTS / f"sample-seed{args.seed}-{args.per_package}.json"


def drawn_names(args: argparse.Namespace, results: dict) -> dict[str, list[str]]:
    """The sample ``run`` drew and recorded, else a draw from the mutants there are now."""
    path = sample_file(args)
    if path.exists():
        return json.loads(path.read_text())
    return sample(list(results), args.per_package, args.seed)


def equivalent_names() -> set[str]:
    """The mutants listed as equivalent in mutation.md's "Equivalent mutants" section."""
    text = NOTES.read_text()
    section = text.split("## Equivalent mutants", 1)[-1].split("\n## ", 1)[0] if (
        "## Equivalent mutants" in text
    ) else ""
    return set(re.findall(r"`(pyro_vae\.[^`\s]+__mutmut_\d+)`", section))


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a binomial proportion k / n."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def mutmut(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "mutmut", *args], check=False)


def run(args: argparse.Namespace) -> None:
    if not all_results():
        # mutmut has no generate-only command: a run of one small module generates every
        # mutant and records which tests reach which function
        mutmut("run", "--max-children", "1", "pyro_vae.train.rng.*")
    results = all_results()
    by_package = sample(list(results), args.per_package, args.seed)
    sample_file(args).write_text(json.dumps(by_package, indent=1))
    drawn = [n for names in by_package.values() for n in names]
    todo = drawn if args.rerun else [n for n in drawn if results.get(n) is None]
    print(f"{len(drawn)} sampled mutants, {len(todo)} to run", flush=True)
    for i in range(0, len(todo), CHUNK):
        mutmut("run", "--max-children", str(args.max_children), *todo[i : i + CHUNK])


def function_of(name: str) -> str:
    return name.rsplit("__mutmut_", 1)[0]


def test_costs() -> dict[str, float]:
    """Seconds of recorded test time that reach each mutated function (mutmut's stats)."""
    stats = json.loads((MUTANTS / "mutmut-stats.json").read_text())
    durations = stats["duration_by_test"]
    return {
        function: sum(durations.get(test, 0.0) for test in tests)
        for function, tests in stats["tests_by_mangled_function_name"].items()
    }


def swept_functions(args: argparse.Namespace, results: dict) -> list[str]:
    """The functions whose tests cost at most ``--max-cost`` seconds, cheapest first.

    The first sweep records them (``mutants/sweep-cost{max_cost}.json``): new tests add to the
    costs, and the census stays the same set of functions."""
    path = MUTANTS / f"sweep-cost{args.max_cost:g}.json"
    if path.exists():
        return json.loads(path.read_text())
    costs = test_costs()
    functions = {function_of(n) for n in results}
    cheap = [f for f in functions if costs.get(f, 0.0) <= args.max_cost]
    chosen = sorted(cheap, key=lambda f: (costs.get(f, 0.0), f))
    path.write_text(json.dumps(chosen, indent=1))
    return chosen


def census_estimate(args: argparse.Namespace, results: dict, functions: list[str]) -> str:
    """Caught share of all non-equivalent mutants: the swept functions counted in full, the
    others estimated from the sample ``--seed``/``--per-package`` (its mutants outside them),
    package by package; the range takes each package's 95% Wilson interval of the sampled part
    at its low and at its high end together (a conservative interval)."""
    swept_set, equivalent = set(functions), equivalent_names()
    drawn = drawn_names(args, results)
    caught = low = high = total = 0.0
    for package in PACKAGES:
        names = [n for n in results if package_of(n) == package and n not in equivalent]
        inside = [n for n in names if function_of(n) in swept_set]
        counted = sum(1 for n in inside if STATUS.get(results[n]) == "killed")
        rest = len(names) - len(inside)
        picked = [
            n for n in drawn[package]
            if n in results and n not in equivalent and function_of(n) not in swept_set
            and results[n] is not None
        ]  # fmt: skip
        k = sum(1 for n in picked if STATUS.get(results[n]) == "killed")
        lo, hi = wilson(k, len(picked))
        caught += counted + rest * (k / len(picked) if picked else 0.0)
        low += counted + rest * lo
        high += counted + rest * hi
        total += len(names)
    return (
        f"all three packages, swept functions in full and the rest from sample seed "
        f"{args.seed}: {caught / total:.1%} ({low / total:.1%}-{high / total:.1%}) of "
        f"non-equivalent mutants caught"
    )


def sweep(args: argparse.Namespace) -> None:
    results = all_results()
    if not results:
        raise SystemExit("no mutmut results under mutants/; run `mutation_sample.py run` first")
    functions = swept_functions(args, results)
    todo = [
        n
        for f in functions
        for n in sorted(results)
        if function_of(n) == f and (args.rerun or results[n] is None)
    ]
    print(f"{len(functions)} functions, {len(todo)} mutants to run", flush=True)
    step = 200  # results are saved per mutant; a chunk keeps the cheapest functions first
    for i in range(0, len(todo), step):
        mutmut("run", "--max-children", str(args.max_children), *todo[i : i + step])


def swept(args: argparse.Namespace) -> None:
    results = all_results()
    functions = swept_functions(args, results)
    equivalent = equivalent_names()
    print("| package | functions | mutants | killed | survived | timeout | not run | equivalent |")
    print("|---" * 8 + "|")
    survivors = []
    for package in PACKAGES:
        mine = [f for f in functions if package_of(f) == package]
        names = [n for n in results if function_of(n) in set(mine)]
        status = Counter(STATUS.get(results[n], "suspicious") for n in names)
        eq = sum(1 for n in names if n in equivalent)
        cells = [package, len(mine), len(names), status["killed"], status["survived"],
                 status["timeout"], status["not checked"], eq]  # fmt: skip
        print("| " + " | ".join(map(str, cells)) + " |")
        survivors += sorted(
            n for n in names if STATUS.get(results[n]) == "survived" and n not in equivalent
        )
    if sample_file(args).exists():
        print("\n" + census_estimate(args, results, functions))
    print(f"\nnot caught, not listed as equivalent ({len(survivors)}):")
    print("\n".join(f"  {n}" for n in survivors))


def report(args: argparse.Namespace) -> None:
    results = all_results()
    if not results:
        raise SystemExit("no mutmut results under mutants/; run `mutation_sample.py run` first")
    drawn = drawn_names(args, results)
    equivalent = equivalent_names()
    totals = Counter(package_of(n) for n in results)
    print("| package | mutants | sampled | killed | survived | timeout | no tests | not run "
          "| equivalent | score (95% CI) | caught of non-equivalent (95% CI) "
          "| est. caught in package |")
    print("|---" * 12 + "|")
    estimate, variance, survivors = 0.0, 0.0, []
    for package in PACKAGES:
        names = drawn[package]
        # a drawn mutant whose line has since changed no longer exists: counted as not run
        status = {n: STATUS.get(results.get(n), "suspicious") for n in names}
        counts = Counter(status.values())
        eq = sum(1 for n in names if n in equivalent)
        ran = counts["killed"] + counts["survived"] + counts["timeout"] + counts["suspicious"]
        lo, hi = wilson(counts["killed"], ran)
        score = f"{counts['killed'] / ran:.1%} ({lo:.1%}-{hi:.1%})" if ran else "-"
        # every sampled mutant counts except the equivalent ones; a mutant that no selected
        # test reaches, or that timed out, is not caught
        counted = [n for n in names if n not in equivalent and status[n] != "not checked"]
        m = len(counted)
        k = sum(1 for n in counted if status[n] == "killed")
        p = k / m if m else 0.0
        clo, chi = wilson(k, m)
        caught = f"{p:.1%} ({clo:.1%}-{chi:.1%})" if m else "-"
        total = totals[package]
        estimate += total * p
        variance += total**2 * p * (1 - p) / max(m, 1) * (1 - len(names) / total)
        cells = [package, total, len(names)] + [counts[c] for c in COLUMNS] + [eq, score, caught]
        print("| " + " | ".join(map(str, cells)) + f" | {total * clo:.0f}-{total * chi:.0f} |")
        survivors += [
            (n, status[n])
            for n in names
            if status[n] not in ("killed", "not checked") and n not in equivalent
        ]
    n_all = sum(totals[p] for p in PACKAGES)
    half = 1.96 * math.sqrt(variance)
    print(f"\nall three packages (stratified): {estimate / n_all:.1%} +- {half / n_all:.1%} of "
          f"non-equivalent mutants caught, over {n_all} mutants")  # fmt: skip
    print("\nmutants per module:")
    for module, count in sorted(Counter(module_of(n) for n in results).items()):
        print(f"  {module}: {count}")
    if survivors:
        print("\nnot caught, not listed as equivalent (`mutmut show NAME`):")
        print("\n".join(f"  {n} ({s})" for n, s in survivors))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("run", "report", "names", "sweep", "swept"))
    parser.add_argument("--per-package", type=int, default=10, help="mutants drawn per package")
    parser.add_argument("--seed", type=int, default=0, help="the sample's seed")
    parser.add_argument("--max-children", type=int, default=1, help="mutmut's workers")
    parser.add_argument("--max-cost", type=float, default=5.0,
                        help="sweep: the most seconds of tests a swept function may have")
    parser.add_argument("--rerun", action="store_true", help="rerun sampled mutants with results")
    args = parser.parse_args()
    if args.command == "run":
        run(args)
    elif args.command == "report":
        report(args)
    elif args.command == "sweep":
        sweep(args)
    elif args.command == "swept":
        swept(args)
    else:
        for names in drawn_names(args, all_results()).values():
            print("\n".join(names))


if __name__ == "__main__":
    main()
