"""What ``train``, ``train --resume`` and ``evaluate`` print: a run's results, a kind's metrics."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def print_run_results(results: dict) -> None:
    """The epochs trained, the time taken and the metrics of a trained run."""
    from pyro_vae.models.kinds import build_kind
    from pyro_vae.runs.metrics import metric_lines

    print(f"trained {results['epochs']} epochs in {results['train_seconds']:.1f} s")
    print_metric_lines(metric_lines(build_kind(results.get("kind", "vae")), results))


def print_metric_lines(lines: Sequence[str]) -> None:
    """A kind's metric lines on stdout, its warnings on stderr."""
    for line in lines:
        print(line, file=sys.stderr if line.startswith("warning:") else sys.stdout)
