"""Throughput: exams per hour through `cordt1 serve` with 1 and with 2 worker processes.

Run from the repository root::

    python -m benchmarks.bench_throughput --exams 8 --out benchmarks/results/throughput.json

A normative model is built from synthetic healthy controls, then one phantom patient exam
(full size by default: 448 x 448, 2 slabs of 12 slices) is copied with fresh UIDs ``--exams``
times. For each worker count (``--workers 1 2``) a fresh `cordt1 serve` (embedded broker and
SQLite job store, results delivered to a folder PACS) receives every copy at once from one
simulated scanner (DCMTK ``storescu``), and the clock runs from the first image sent to the
last job done. Exams per hour = exams / that time x 3600. The report also gives each job's
queue wait and processing time from the job store and the load average, and the ratio of the
two throughputs (the gain of a second worker on this machine).

The peer in the same run is the service itself with one worker: what a second worker process
buys on the same cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.bench_soak import copy_with_new_uids
from benchmarks.service_run import one_patient_exam, start_serve
from service.jobs.store import JobState, JobStore
from service.phantom import PhantomOptions
from service.phantom.demo import build_demo_model, send_folder, write_service_config
from service.phantom.pacs import FolderPacs, free_port, wait_for_port

FINAL = (JobState.DONE, JobState.FAILED)


def _wait_all(store: JobStore, n_jobs: int, timeout_s: float) -> list[Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        jobs = store.list_jobs(limit=n_jobs + 5)
        if len(jobs) >= n_jobs and all(j.state in FINAL for j in jobs):
            return jobs
        time.sleep(0.2)
    raise TimeoutError(f"{n_jobs} jobs not finished after {timeout_s:.0f} s")


def _one_run(
    work: Path, copies: list[Path], model_dir: Path, site_protocols: Path, workers: int
) -> dict[str, Any]:
    """Every copy through a fresh service with ``workers`` worker processes."""
    folder = work / f"workers-{workers}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    pacs = FolderPacs.start(folder / "pacs")
    port = free_port()
    config = write_service_config(
        folder / "cordt1.toml",
        data_dir=folder / "data",
        port=port,
        destination=pacs.destination,
        site_protocols=site_protocols,
        model_dir=model_dir,
        settle_s=1.0,
    )
    config.write_text(config.read_text().replace("workers = 1", f"workers = {workers}", 1))
    serve = start_serve(config, folder / "serve.log")
    try:
        wait_for_port(port, timeout_s=60)
        store = JobStore(f"sqlite:///{folder / 'data' / 'jobs.sqlite'}")
        load_before = os.getloadavg()
        started = time.monotonic()
        for copy in copies:
            send_folder(copy, port)
        sent = time.monotonic()
        jobs = _wait_all(store, len(copies), timeout_s=120 * len(copies))
        elapsed_s = time.monotonic() - started
        load_after = os.getloadavg()
        store.close()
    finally:
        serve.terminate()
        serve.wait(timeout=90)
        pacs.stop()
    done = [j for j in jobs if j.state is JobState.DONE]
    processing = sorted(
        float(j.result.get("summary", {}).get("timings_s", {}).get("compute", 0.0))
        + float(j.result.get("summary", {}).get("timings_s", {}).get("write_results", 0.0))
        for j in done
    )
    return {
        "workers": workers,
        "exams": len(copies),
        "done": len(done),
        "failed": len(jobs) - len(done),
        "send_s": round(sent - started, 2),
        "elapsed_s": round(elapsed_s, 2),
        "exams_per_hour": round(len(done) / elapsed_s * 3600, 1),
        "median_compute_and_write_s": round(processing[len(processing) // 2], 2)
        if processing
        else None,
        "load_avg_before": [round(x, 2) for x in load_before],
        "load_avg_after": [round(x, 2) for x in load_after],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark; the report."""
    work = Path(args.work or tempfile.mkdtemp(prefix="cordt1-throughput-"))
    work.mkdir(parents=True, exist_ok=True)
    options = PhantomOptions(matrix=args.matrix)
    model_dir = build_demo_model(work, controls=args.controls, matrix=args.matrix)
    exam_dir = one_patient_exam(work / "phantom", options)
    copies = []
    for index in range(args.exams):
        copy = work / "send" / f"exam-{index:03d}"
        copy_with_new_uids(exam_dir, copy)
        copies.append(copy)
    runs = [
        _one_run(work, copies, model_dir, work / "phantom" / "site-protocols.toml", n)
        for n in args.workers
    ]
    by_workers = {r["workers"]: r for r in runs}
    report: dict[str, Any] = {
        "benchmark": "throughput",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "settings": {"exams": args.exams, "matrix": args.matrix, "controls": args.controls},
        "runs": runs,
    }
    if 1 in by_workers and 2 in by_workers and by_workers[1]["exams_per_hour"]:
        report["ratio_2_workers_to_1"] = round(
            by_workers[2]["exams_per_hour"] / by_workers[1]["exams_per_hour"], 2
        )
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return report


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exams", type=int, default=8)
    parser.add_argument("--matrix", type=int, default=448)
    parser.add_argument("--controls", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--work", default=None, help="Keep everything in this folder.")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    report = run(args)
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
