"""Load: 10 scanners sending at once to one `cordt1 serve`; latency, memory, nothing lost.

Run from the repository root::

    python -m benchmarks.bench_load --out benchmarks/results/load.json

One small phantom exam is written once. Each of ``--senders`` threads then plays a scanner
for ``--duration-s`` seconds: it makes a copy of the exam with fresh Study, Series and SOP
Instance UIDs (a new exam), sends it with DCMTK ``storescu`` (``TCP_NODELAY=1``), waits
``--interval-s`` from the start of that send, and sends the next. After the sending window
the service is given ``--drain-s`` to finish what it received. The destination is the
counting test PACS (every C-STORE kept as a new file), so a lost or duplicated result shows.

Measured:

* exams sent, exams done (within the window and after the drain), failed jobs;
* latency per exam: storescu returned (last image acknowledged) -> job ``done`` (results
  confirmed by the PACS), p50 / p95 / max;
* resident memory (VmRSS) of the worker processes (the worker and its pool children) and of
  `serve` itself, sampled every ``--sample-s`` seconds, with the load average;
* nothing lost (every exam sent has a job, every instance sent was recorded, every result
  object of every done job is in the PACS) and nothing sent twice.

The peer, in the same run: before the load, ``--idle-exams`` exams sent one at a time to the
idle service; ``ratios.latency_p50_load_vs_idle`` compares the two medians.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bench_soak import _rss_mb, child_pids, copy_with_new_uids
from benchmarks.service_run import one_patient_exam, start_serve
from service.jobs.store import JobState, JobStore, count_instances
from service.phantom import PhantomOptions
from service.phantom.demo import dcmtk_tool, write_service_config
from service.phantom.pacs import free_port, wait_for_port
from tests.counting_pacs import CountingPacs


@dataclass
class Sent:
    """One exam a sender delivered."""

    sender: int
    study_uid: str
    instances: int
    sent_at: float  # time.time() when storescu returned
    send_s: float
    returncode: int


@dataclass
class Senders:
    """What the sender threads did (shared, under a lock)."""

    sent: list[Sent] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _storescu(port: int, folder: Path, calling_ae: str) -> int:
    binary = dcmtk_tool("storescu")
    if binary is None:
        raise SystemExit("DCMTK storescu is needed (scripts/bootstrap.sh installs it)")
    command = [binary, "-aet", calling_ae, "-aec", "CORDT1", "+sd", "+r", "127.0.0.1", str(port)]
    done = subprocess.run(
        [*command, str(folder)],
        capture_output=True,
        env={**os.environ, "TCP_NODELAY": "1"},
    )
    return done.returncode


def _study_uid(folder: Path) -> str:
    import pydicom

    first = next(folder.rglob("*.dcm"))
    return str(pydicom.dcmread(first, stop_before_pixels=True).StudyInstanceUID)


def _send_one(
    index: int, source: Path, work: Path, port: int, counter: itertools.count[int]
) -> Sent:
    copy = work / f"send-{index:02d}-{next(counter):05d}"
    copy_with_new_uids(source, copy)
    study = _study_uid(copy)
    instances = sum(1 for _ in copy.rglob("*.dcm"))
    started = time.monotonic()
    code = _storescu(port, copy, f"SCANNER{index + 1:02d}" if index >= 0 else "SCANNER")
    sent = Sent(index, study, instances, time.time(), time.monotonic() - started, code)
    shutil.rmtree(copy, ignore_errors=True)
    return sent


def _sender(
    index: int,
    source: Path,
    work: Path,
    port: int,
    until: float,
    interval_s: float,
    out: Senders,
    counter: itertools.count[int],
) -> None:
    next_start = time.monotonic()
    while next_start < until:
        try:
            sent = _send_one(index, source, work, port, counter)
        except Exception as exc:  # keep the other senders going; reported
            with out.lock:
                out.errors.append(f"sender {index}: {type(exc).__name__}: {exc}")
        else:
            with out.lock:
                out.sent.append(sent)
                if sent.returncode != 0:
                    out.errors.append(f"sender {index}: storescu exit {sent.returncode}")
        next_start += interval_s
        time.sleep(max(0.0, next_start - time.monotonic()))


def _tree(pid: int) -> list[int]:
    found = []
    for child in child_pids(pid):
        found += [child, *_tree(child)]
    return found


def _sampler(serve_pid: int, stop: threading.Event, every_s: float, out: list[dict]) -> None:
    started = time.monotonic()
    while not stop.wait(every_s):
        workers = _tree(serve_pid)
        out.append(
            {
                "t_s": round(time.monotonic() - started, 1),
                "serve_rss_mb": round(_rss_mb(serve_pid), 1),
                "workers_rss_mb": round(sum(_rss_mb(p) for p in workers), 1),
                "processes": len(workers),
                "loadavg_1min": round(os.getloadavg()[0], 2),
            }
        )


def _wait_done(store: JobStore, studies: set[str], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        jobs = {j.study_uid: j for j in store.list_jobs(limit=100000)}
        if studies <= set(jobs) and all(
            jobs[s].state in (JobState.DONE, JobState.FAILED) for s in studies
        ):
            return True
        time.sleep(0.5)
    return False


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "max": None}
    array = np.asarray(values)
    return {
        "p50": round(float(np.percentile(array, 50)), 2),
        "p95": round(float(np.percentile(array, 95)), 2),
        "max": round(float(array.max()), 2),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the load benchmark; the report."""
    work = Path(args.work or tempfile.mkdtemp(prefix="cordt1-load-"))
    work.mkdir(parents=True, exist_ok=True)
    exam_dir = one_patient_exam(
        work / "phantom", PhantomOptions(matrix=args.matrix, slices_per_slab=6, slabs=2)
    )
    pacs = CountingPacs(work / "pacs").start()
    port = free_port()
    config = write_service_config(
        work / "cordt1.toml",
        data_dir=work / "data",
        port=port,
        destination=pacs.destination,
        site_protocols=work / "phantom" / "site-protocols.toml",
        settle_s=args.settle_s,
    )
    text = config.read_text().replace("workers = 1", f"workers = {args.workers}")
    config.write_text(text.replace("[node]\n", f"[node]\nmax_associations = {args.senders + 4}\n"))
    serve = start_serve(config, work / "serve.log")
    samples: list[dict[str, Any]] = []
    stop_sampling = threading.Event()
    load_before = [round(x, 2) for x in os.getloadavg()]
    out = Senders()
    idle: list[Sent] = []
    try:
        wait_for_port(port, timeout_s=60)
        store = JobStore(f"sqlite:///{work / 'data' / 'jobs.sqlite'}")
        counter = itertools.count(1)
        for _ in range(args.idle_exams):  # the peer: one exam at a time, idle service
            sent = _send_one(-1, exam_dir, work, port, counter)
            idle.append(sent)
            if not _wait_done(store, {sent.study_uid}, timeout_s=300):
                raise TimeoutError("an idle exam did not finish in 300 s")
        sampler = threading.Thread(
            target=_sampler, args=(serve.pid, stop_sampling, args.sample_s, samples), daemon=True
        )
        sampler.start()
        window_start = time.monotonic()
        window_start_wall = time.time()
        until = window_start + args.duration_s
        threads = [
            threading.Thread(
                target=_sender,
                args=(i, exam_dir, work, port, until, args.interval_s, out, counter),
                name=f"sender-{i}",
            )
            for i in range(args.senders)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        window_end_wall = time.time()
        studies = {s.study_uid for s in out.sent if s.returncode == 0}
        drained = _wait_done(store, studies, timeout_s=args.drain_s)
        drain_s = time.monotonic() - window_start - args.duration_s
        stop_sampling.set()
        sampler.join()
        jobs = {j.study_uid: j for j in store.list_jobs(limit=100000)}
        instances_recorded = count_instances(store)
        store.close()
    finally:
        stop_sampling.set()
        serve.terminate()
        serve.wait(timeout=120)
        pacs.stop()
    report = _report(args, out, idle, jobs, samples, pacs, instances_recorded, window_start_wall)
    report["window"] = {
        "drained": drained,
        "drain_s": round(drain_s, 1),
        "exams_done_within_window": sum(
            1
            for s in out.sent
            if s.study_uid in jobs
            and jobs[s.study_uid].state is JobState.DONE
            and (jobs[s.study_uid].finished_at or 0) <= window_end_wall
        ),
    }
    report["machine"]["loadavg_1_5_15_before"] = load_before
    report["machine"]["loadavg_1_5_15_after"] = [round(x, 2) for x in os.getloadavg()]
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return report


def _report(
    args: argparse.Namespace,
    out: Senders,
    idle: list[Sent],
    jobs: dict[str, Any],
    samples: list[dict[str, Any]],
    pacs: CountingPacs,
    instances_recorded: int,
    window_start_wall: float,
) -> dict[str, Any]:
    from service.jobs.delivery import result_objects

    def latency(sent: Sent) -> float | None:
        job = jobs.get(sent.study_uid)
        if job is None or job.state is not JobState.DONE or job.finished_at is None:
            return None
        return job.finished_at - sent.sent_at

    loaded = [x for x in (latency(s) for s in out.sent) if x is not None]
    idle_latencies = [x for x in (latency(s) for s in idle) if x is not None]
    counts = pacs.counts()
    expected: set[str] = set()
    for job in jobs.values():
        if job.state is JobState.DONE:
            expected |= {o.sop_instance_uid for o in result_objects(job.result["dicom"])}
    sent_ok = [s for s in out.sent if s.returncode == 0]
    finished = [jobs[s.study_uid].finished_at or 0.0 for s in sent_ok if latency(s) is not None]
    busy_s = max(finished, default=window_start_wall) - window_start_wall
    workers = [s["workers_rss_mb"] for s in samples]
    half = workers[len(workers) // 2 :]
    times = [s["t_s"] for s in samples][len(workers) // 2 :]
    slope = float(np.polyfit(times, half, 1)[0]) if len(half) > 1 else 0.0
    summary = {
        "exams_sent": len(out.sent),
        "exams_send_failed": len(out.sent) - len(sent_ok),
        "exams_done": sum(1 for s in sent_ok if latency(s) is not None),
        "exams_failed": sum(
            1
            for s in sent_ok
            if s.study_uid in jobs and jobs[s.study_uid].state is JobState.FAILED
        ),
        "exams_without_job": sum(1 for s in sent_ok if s.study_uid not in jobs),
        "exams_done_per_min": round(len(loaded) / (busy_s / 60), 2) if busy_s > 0 else None,
        "latency_s": _percentiles(loaded),
        "send_s": _percentiles([s.send_s for s in out.sent]),
        "idle_latency_s": _percentiles(idle_latencies),
        "instances_sent": sum(s.instances for s in sent_ok + idle),
        "instances_recorded": instances_recorded,
        "result_objects_expected": len(expected),
        "result_objects_missing": len(expected - set(counts)),
        "result_objects_sent_twice": sum(1 for n in counts.values() if n > 1),
        "result_objects_unexpected": len(set(counts) - expected),
        "workers_rss_mb_first": workers[0] if workers else None,
        "workers_rss_mb_last": workers[-1] if workers else None,
        "workers_rss_mb_max": max(workers) if workers else None,
        "workers_rss_mb_per_min_second_half": round(slope * 60, 2),
        "serve_rss_mb_max": max((s["serve_rss_mb"] for s in samples), default=None),
        "loadavg_1min_max": max((s["loadavg_1min"] for s in samples), default=None),
        "sender_errors": out.errors[:20],
    }
    idle_p50 = summary["idle_latency_s"]["p50"]
    return {
        "benchmark": "load",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "settings": {
            "senders": args.senders,
            "duration_s": args.duration_s,
            "interval_s": args.interval_s,
            "workers": args.workers,
            "matrix": args.matrix,
            "settle_s": args.settle_s,
            "idle_exams": args.idle_exams,
        },
        "summary": summary,
        "ratios": {
            "latency_p50_load_vs_idle": (
                round(summary["latency_s"]["p50"] / idle_p50, 2)
                if idle_p50 and summary["latency_s"]["p50"]
                else None
            )
        },
        "exams": [
            {
                "sender": s.sender,
                "instances": s.instances,
                "send_s": round(s.send_s, 2),
                "latency_s": None if latency(s) is None else round(latency(s) or 0.0, 2),
                "state": jobs[s.study_uid].state.value if s.study_uid in jobs else "no job",
            }
            for s in idle + out.sent
        ],
        "memory_samples": samples,
    }


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--senders", type=int, default=10)
    parser.add_argument("--duration-s", type=float, default=300.0)
    parser.add_argument(
        "--interval-s", type=float, default=60.0, help="Each sender starts an exam this often."
    )
    parser.add_argument("--drain-s", type=float, default=900.0)
    parser.add_argument("--workers", type=int, default=1, help="Worker pool size of serve.")
    parser.add_argument("--matrix", type=int, default=160)
    parser.add_argument("--settle-s", type=float, default=1.0)
    parser.add_argument("--idle-exams", type=int, default=3)
    parser.add_argument("--sample-s", type=float, default=2.0)
    parser.add_argument("--work", default=None, help="Keep everything in this folder.")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.senders < 1 or args.duration_s <= 0 or args.interval_s <= 0:
        parser.error("--senders must be >= 1, --duration-s and --interval-s > 0")
    report = run(args)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({**report["summary"], "ratios": report["ratios"]}, indent=2))


if __name__ == "__main__":
    main()
