"""Receiving speed of our SCP from two or more checkouts, interleaved in one run.

Run from the repository root::

    python -m benchmarks.bench_receive_versions --out benchmarks/results/receive_versions.json \
        --trees /path/to/older/checkout . --senders 1 4 --rounds 6

On a shared machine the speed of every receiver (ours and DCMTK's alike) swings from run
to run, so a change to our receive path is judged against the code before it in the same
run: for each sender count and round, every checkout in ``--trees`` (order alternating per
round) starts :func:`benchmarks.bench_receive.serve_ours` from its own code (service
defaults, so ``node.acceptor_processes`` as that checkout sets it), and
:func:`benchmarks.bench_receive.send_all` sends the same ``--instances`` files with DCMTK
``storescu``. Every round checks that all instances arrived. The report holds images/s per
round and the median per checkout and sender count, and the median ratio of each checkout
to the first.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.bench_receive import (
    machine_info,
    make_instances,
    send_all,
    split_for_senders,
)

__all__ = ["main", "run"]

_SERVE = "import sys; from benchmarks.bench_receive import serve_ours; serve_ours(*sys.argv[1:])"


def _one_round(tree: Path, folders: list[Path], n_instances: int, workdir: Path) -> float:
    """Start ``tree``'s receiver, send everything, check arrival; images per second."""
    workdir.mkdir(parents=True)
    spool = workdir / "spool"
    env = dict(os.environ, PYTHONPATH=str(tree))
    with (workdir / "scp.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", _SERVE, str(spool), f"sqlite:///{workdir / 'jobs.sqlite'}"],
            cwd=tree,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("PORT "):
            raise RuntimeError(f"receiver from {tree} did not start; see {workdir / 'scp.log'}")
        seconds = send_all(int(line.split()[1]), folders, workdir)
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        proc.wait(timeout=60)
    received = len(list(spool.glob("*/*/*.dcm")))
    if received != n_instances:
        raise RuntimeError(f"{tree}: {received} of {n_instances} instances arrived")
    return n_instances / seconds


def _commit(tree: Path) -> str:
    """The checkout's commit (``+`` when it has uncommitted changes), or ``"unknown"``."""
    try:
        head = subprocess.run(
            ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+" if dirty else "")


def run(
    trees: Sequence[Path], n_instances: int, senders: Sequence[int], rounds: int, scratch: Path
) -> dict[str, Any]:
    """Measure every checkout in ``trees``; the report as a dict.

    Parameters
    ----------
    trees : sequence of pathlib.Path
        Checkouts of this repository; the first is the reference of the ratios.
    n_instances : int
        Instances sent per round.
    senders : sequence of int
        Parallel sender counts.
    rounds : int
        Rounds per sender count (the order of the checkouts alternates).
    scratch : pathlib.Path
        Parent of the scratch folder (removed afterwards).

    Returns
    -------
    dict
    """
    work = Path(tempfile.mkdtemp(prefix="cordt1-versions-", dir=scratch))
    try:
        source = make_instances(work / "source", n_instances)
        results: dict[str, dict[str, list[float]]] = {str(t): {} for t in trees}
        for count in senders:
            folders = split_for_senders(source, work / f"send{count}", count)
            for index in range(rounds):
                order = list(trees) if index % 2 == 0 else list(reversed(trees))
                for tree in order:
                    rate = _one_round(
                        tree, folders, n_instances, work / f"r{count}-{index}-{trees.index(tree)}"
                    )
                    results[str(tree)].setdefault(str(count), []).append(rate)
                    print(
                        f"{count} sender(s) round {index}: {tree}: {rate:.0f} images/s", flush=True
                    )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    reference = str(trees[0])
    summary = {
        tree: {
            count: {
                "median_images_per_s": statistics.median(rates),
                "rounds_images_per_s": rates,
                "ratio_to_first_median_of_rounds": statistics.median(
                    rate / first
                    for rate, first in zip(rates, results[reference][count], strict=True)
                ),
            }
            for count, rates in per_count.items()
        }
        for tree, per_count in results.items()
    }
    return {
        "benchmark": "receive_versions",
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "config": {"instances": n_instances, "senders": list(senders), "rounds": rounds},
        "trees": {str(t): _commit(t) for t in trees},
        "results": summary,
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command-line entry point; writes the report to ``--out`` and returns it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON report path")
    parser.add_argument("--trees", type=Path, nargs="+", required=True, help="checkouts")
    parser.add_argument("--instances", type=int, default=500, help="instances (default: 500)")
    parser.add_argument("--senders", type=int, nargs="+", default=[1, 4], help="default: 1 4")
    parser.add_argument("--rounds", type=int, default=6, help="rounds (default: 6)")
    parser.add_argument("--scratch", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args(argv)
    trees = [t.resolve() for t in args.trees]
    report = run(trees, args.instances, args.senders, args.rounds, args.scratch)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    for tree, per_count in report["results"].items():
        for count, numbers in per_count.items():
            print(
                f"{tree}, {count} sender(s): {numbers['median_images_per_s']:.0f} images/s, "
                f"x{numbers['ratio_to_first_median_of_rounds']:.2f} of the first"
            )
    return report


if __name__ == "__main__":
    main()
