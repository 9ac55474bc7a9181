"""Phantom generation time per exam: real anatomy against the analytic (simple) anatomy.

``python -m benchmarks.bench_phantom --out benchmarks/results/phantom.json [--seeds 1 2 3]
[--matrix 448] [--repeat 2]``

Writes one control exam per seed (default options: 448 x 448, 2 slabs of 12 x 4 mm, scanner
T1 map) with ``write_cohort`` for each anatomy, alternating the two so that machine load hits
both alike, and reports the best of ``--repeat`` wall times per seed and anatomy, their
medians and the ratio real / simple. The one-off preparation of the real reference arrays
(PAM50 layout and the real neck's classification, cached per process) is timed separately.
The peer is the analytic anatomy the phantom used before.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import scipy

from service.phantom import PhantomOptions, write_cohort
from service.phantom.anatomy import real_reference

ANATOMIES = ("simple", "real")


def _time_exam(seed: int, options: PhantomOptions) -> float:
    root = Path(tempfile.mkdtemp(prefix="bench_phantom_"))
    try:
        started = time.perf_counter()
        write_cohort(root, controls=1, patients=0, follow_up=False, seed=seed, options=options)
        return time.perf_counter() - started
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run(seeds: list[int], matrix: int, repeat: int) -> dict[str, object]:
    """Time one exam per seed and anatomy; see the module docstring."""
    started = time.perf_counter()
    real_reference()
    prepare_s = time.perf_counter() - started
    best: dict[str, dict[int, float]] = {kind: {} for kind in ANATOMIES}
    for seed in seeds:
        for _ in range(repeat):
            for kind in ANATOMIES:
                seconds = _time_exam(seed, PhantomOptions(matrix=matrix, anatomy=kind))
                best[kind][seed] = min(best[kind].get(seed, np.inf), seconds)
    medians = {kind: statistics.median(best[kind].values()) for kind in ANATOMIES}
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "scipy": scipy.__version__,
        },
        "exam": {"matrix": matrix, "slabs": 2, "slices_per_slab": 12, "controls": 1},
        "seeds": seeds,
        "repeat": repeat,
        "real_reference_prepare_s": round(prepare_s, 3),
        "exam_s": {
            kind: {str(seed): round(value, 3) for seed, value in best[kind].items()}
            for kind in ANATOMIES
        },
        "median_exam_s": {kind: round(value, 3) for kind, value in medians.items()},
        "ratio_real_vs_simple": round(medians["real"] / medians["simple"], 3),
    }


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--matrix", type=int, default=448)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args(argv)
    report = run(args.seeds, args.matrix, args.repeat)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["median_exam_s"]), "ratio", report["ratio_real_vs_simple"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
