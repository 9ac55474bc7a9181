"""Soak: many exams through one `cordt1 serve`; pool child memory per exam, latency.

Run from the repository root::

    python -m benchmarks.bench_soak --exams 40 --out benchmarks/results/soak.json

One small phantom exam is written once; for every round it is copied with fresh Study,
Series and SOP Instance UIDs (a new exam to the service), sent by DCMTK ``storescu`` (our
Python sender when DCMTK is missing) to a `cordt1 serve` with one worker, and the round ends
when its job is done. After each round the resident memory (VmRSS) of the worker's pool
children is read from ``/proc``, with their process ids, so recycling
(``worker_max_tasks_per_child`` / ``worker_max_memory_per_child_mb``) shows as a new id and a
drop. The report holds every round and a summary: memory of the first, last and highest
round, the slope over the second half (MB per exam), the pool children seen, and latency
percentiles (last image sent -> job done, which includes the service's settle time).
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
from typing import Any

import numpy as np
import pydicom
from pydicom.uid import generate_uid

from benchmarks.service_run import one_patient_exam, start_serve
from service.jobs.store import JobState, JobStore
from service.phantom import PhantomOptions
from service.phantom.demo import send_folder, write_service_config
from service.phantom.pacs import FolderPacs, free_port, wait_for_port


def child_pids(pid: int) -> list[int]:
    """Process ids of the direct children of ``pid`` (Linux /proc), [] when it is gone."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def _rss_mb(pid: int) -> float:
    """Resident memory; 0 for a process that is exiting (a recycled pool child)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return 0.0
    for line in lines:
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _pool(serve_pid: int, timeout_s: float = 10.0) -> dict[int, float]:
    """Pool child id -> resident MB, once every pool child is a live one (after recycling)."""
    deadline = time.monotonic() + timeout_s
    sizes: dict[int, float] = {}
    while time.monotonic() < deadline:
        sizes = {c: _rss_mb(c) for w in child_pids(serve_pid) for c in child_pids(w)}
        if sizes and all(size > 0 for size in sizes.values()):
            return sizes
        time.sleep(0.2)
    return sizes


def copy_with_new_uids(source: Path, target: Path) -> None:
    """The exam under ``source`` as a new exam: every UID that names it replaced."""
    study = generate_uid()
    series: dict[str, str] = {}
    for path in sorted(source.rglob("*.dcm")):
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series.setdefault(str(ds.SeriesInstanceUID), generate_uid())
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        out = target / path.relative_to(source)
        out.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(out)


def _wait_done(store: JobStore, n_jobs: int, timeout_s: float) -> JobState:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        jobs = store.list_jobs(limit=n_jobs)
        if len(jobs) >= n_jobs and jobs[0].state in (JobState.DONE, JobState.FAILED):
            return jobs[0].state
        time.sleep(0.05)
    raise TimeoutError(f"job {n_jobs} not finished after {timeout_s:.0f} s")


def summarize(rounds: list[dict[str, Any]], window: int = 20) -> dict[str, Any]:
    """Memory and latency figures of the soak's rounds.

    ``pool_rss_mb_per_exam_*`` are least-squares slopes (MB per exam) over the second half
    and over all rounds; ``pool_rss_mb_mean_per_window`` holds the mean of each ``window``
    consecutive rounds (flat memory: these do not climb).
    """
    rss = [r["pool_rss_mb"] for r in rounds]
    half = rss[len(rss) // 2 :]

    def slope(values: list[float]) -> float:
        return float(np.polyfit(np.arange(len(values)), values, 1)[0]) if len(values) > 1 else 0.0

    latencies = sorted(r["latency_s"] for r in rounds)
    return {
        "failed": sum(r["state"] != "done" for r in rounds),
        "pool_rss_mb_first": rss[0],
        "pool_rss_mb_last": rss[-1],
        "pool_rss_mb_max": max(rss),
        "pool_rss_mb_per_exam_second_half": round(slope(half), 2),
        "pool_rss_mb_per_exam_all": round(slope(rss), 2),
        "pool_rss_mb_mean_per_window": [
            round(statistics.mean(rss[i : i + window]), 1) for i in range(0, len(rss), window)
        ],
        "pool_children_seen": len({p for r in rounds for p in r["pool_pids"]}),
        "latency_s_p50": statistics.median(latencies),
        "latency_s_p95": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the soak; the report."""
    work = Path(args.work or tempfile.mkdtemp(prefix="cordt1-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    exam_dir = one_patient_exam(
        work / "phantom", PhantomOptions(matrix=args.matrix, slices_per_slab=6, slabs=2)
    )
    pacs = FolderPacs.start(work / "pacs")
    port = free_port()
    config = write_service_config(
        work / "cordt1.toml",
        data_dir=work / "data",
        port=port,
        destination=pacs.destination,
        site_protocols=work / "phantom" / "site-protocols.toml",
        settle_s=1.0,
    )
    tasks = "None" if args.max_tasks_per_child == 0 else str(args.max_tasks_per_child)
    jobs_toml = [
        "",
        "[jobs]",
        f"worker_max_memory_per_child_mb = {args.max_memory_mb}",
    ]
    if tasks != "None":
        jobs_toml.append(f"worker_max_tasks_per_child = {tasks}")
    config.write_text(config.read_text() + "\n".join(jobs_toml) + "\n")
    serve = start_serve(config, work / "serve.log")
    rounds: list[dict[str, Any]] = []
    try:
        wait_for_port(port, timeout_s=60)
        store = JobStore(f"sqlite:///{work / 'data' / 'jobs.sqlite'}")
        for index in range(1, args.exams + 1):
            copy = work / "send"
            shutil.rmtree(copy, ignore_errors=True)
            copy_with_new_uids(exam_dir, copy)
            send_folder(copy, port)
            sent = time.monotonic()
            state = _wait_done(store, index, timeout_s=300)
            latency = time.monotonic() - sent
            pool = _pool(serve.pid)
            rounds.append(
                {
                    "exam": index,
                    "state": state.value,
                    "latency_s": round(latency, 2),
                    "pool_pids": sorted(pool),
                    "pool_rss_mb": round(sum(pool.values()), 1),
                }
            )
            print(json.dumps(rounds[-1]), flush=True)
        store.close()
    finally:
        serve.terminate()
        serve.wait(timeout=60)
        pacs.stop()
    report = {
        "benchmark": "soak",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg_1_5_15_at_end": [round(x, 2) for x in os.getloadavg()],
        },
        "settings": {
            "exams": args.exams,
            "matrix": args.matrix,
            "worker_max_tasks_per_child": args.max_tasks_per_child or None,
            "worker_max_memory_per_child_mb": args.max_memory_mb,
        },
        "summary": summarize(rounds),
        "rounds": rounds,
    }
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return report


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exams", type=int, default=40)
    parser.add_argument("--matrix", type=int, default=160)
    parser.add_argument(
        "--max-tasks-per-child", type=int, default=10, help="0: never recycle by count"
    )
    parser.add_argument("--max-memory-mb", type=int, default=1536)
    parser.add_argument("--work", default=None, help="Keep everything in this folder.")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    report = run(args)
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(json.dumps(report["summary"], indent=2))


if __name__ == "__main__":
    main()
