"""Time and memory of one full-size exam through the whole pipeline, and of writing its results.

``python -m benchmarks.bench_exam --out benchmarks/results/exam.json [--matrix 448]
[--controls 5] [--repeat 2]``

Makes a phantom cohort (controls for the model, one patient with 2 slabs), builds the model,
then processes the patient ``repeat`` times, each in a fresh subprocess (so peak memory is the
exam's own), and reads the pipeline's own stage timings from summary.json. Each child then
processes the exam again (``warm_worker``: what a long-lived Celery worker child sees from its
second job on, imports done and highdicom's tables loaded). Every run uses the service's
default settings (``writer_processes``: the results are written by the job's process and a
forked helper; no NIfTI); the warm variants also time one writing process and the NIfTI
export (``write_results_s_by_variant``). Each run is repeated in a second child that first
calls ``service.pipeline.warmup.warm_up``, as ``cordt1 worker`` does before its pool forks
(``worker_first_job``: the first job of a worker child). ``write_results`` is the writing of
the files only: statistics, segment lists and the summary belong to ``compute``. The peer in
the same run: pydicom reading and writing the exam's source images (plain I/O of the same
data); the ratio says how much writing our results in a warm worker costs against merely
copying the input.

Peak memory is the child's own high-water mark of resident memory (``VmHWM`` in
``/proc/self/status``), plus the largest sampled RSS of each phase and the largest sampled PSS
of the child and its writing helper together (``smaps_rollup``; shared pages counted once),
sampled in the cold runs only (sampling costs CPU).
``getrusage`` is not used
for it: Linux carries ``ru_maxrss`` over ``execve``, so a child started from this parent (which
built the model, at about 2.7 GiB) would report the parent's peak (an earlier version of this
benchmark reported 2.6 GiB that way). ``ru_maxrss_mib`` is still written, for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pydicom

RUNNER = """
import json, os, sys, resource, threading, time
from pathlib import Path
from service.inputs.exam import find_exam_series
from service.pipeline.identity import result_identity
from service.pipeline.model_build import load_scoring_model
from service.pipeline.run import process_exam
from service.inputs.protocol import load_site_protocols
from service.settings import Settings

def status_kib(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)

def pss_kib(pid):
    for line in open(f"/proc/{pid}/smaps_rollup"):
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0

def helpers():
    me = os.getpid()
    return [int(p) for p in open(f"/proc/{me}/task/{me}/children").read().split()]

samples, stop = [], threading.Event()
def sample():
    # own resident memory every 20 ms; every 0.25 s also the proportional share of this process
    # and its helpers (the result writer forked for the writing; PSS counts shared pages once;
    # reading smaps_rollup walks the page tables, too costly to do more often)
    last_pss, total = 0.0, 0
    while not stop.is_set():
        now = time.perf_counter()
        if now - last_pss >= 0.25:
            last_pss, total = now, pss_kib("self")
            for pid in helpers():
                try:
                    total += pss_kib(pid)
                except OSError:
                    pass
        samples.append((now, status_kib("VmRSS"), total))
        stop.wait(0.02)
dicom_dir, out, model, profile = map(Path, sys.argv[1:5])
warm_up_s = None
if sys.argv[5:] == ["warm-up"]:  # as `cordt1 worker` does before its pool forks
    from service.pipeline.warmup import warm_up
    warm_up_s = round(warm_up(), 3)
exams = find_exam_series(sorted(dicom_dir.rglob("*.dcm")))
(series,) = exams.values()
settings = Settings()
service = dict(
    profiles=load_site_protocols(profile), identity=result_identity(settings),
    model=load_scoring_model(model), writer_processes=settings.result_writer_processes,
    write_nifti=settings.nifti_results,
)
# Memory is sampled in the cold runs only: reading smaps_rollup costs CPU, and the worker-like
# runs are there for their timings.
sampler = threading.Thread(target=sample, daemon=True)
started = time.perf_counter()
if warm_up_s is None:
    sampler.start()
result = process_exam(series, out, **service)
stop.set()
if warm_up_s is None:
    sampler.join()
timings = result.summary["timings_s"]
edges, phases, pss, t = {}, {}, {}, started
for name in ("load", "compute", "write_results"):
    edges[name] = (t, t + timings[name])
    t += timings[name]
for name, (a, b) in edges.items():
    inside = [(kib, total) for when, kib, total in samples if a <= when <= b]
    phases[name] = round(max(k for k, _ in inside) / 1024, 1) if inside else None
    pss[name] = round(max(t for _, t in inside) / 1024, 1) if inside else None
# The same exam again in this process: what a long-lived Celery worker child sees from its
# second job on (imports done, highdicom's standard tables and matplotlib's fonts loaded),
# with the service's settings, with one writing process, and as `cordt1 process` (NIfTI too).
warm = {}
for name, options in (
    ("service", {}),
    ("one_writer_process", {"writer_processes": 1}),
    ("with_nifti", {"write_nifti": True}),
):
    summary = process_exam(series, Path(f"{out}-warm-{name}"), **{**service, **options}).summary
    warm[name] = summary["timings_s"]
print(json.dumps({"timings_s": timings, "warm_up_s": warm_up_s,
                  "warm_timings_s": warm["service"],
                  "warm_variants_timings_s": warm,
                  "writer_processes": settings.result_writer_processes,
                  "peak_rss_mib": round(status_kib("VmHWM") / 1024, 1),
                  "sampled_peak_rss_mib_by_phase": phases,
                  "sampled_peak_pss_with_helpers_mib_by_phase": pss,
                  "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "objects": len(result.dicom_files)}))
"""


def _copy_sources(dicom_dir: Path, target: Path) -> float:
    target.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for i, path in enumerate(sorted(dicom_dir.rglob("*.dcm"))):
        ds = pydicom.dcmread(path)
        ds.save_as(target / f"{i:05d}.dcm")
    return time.perf_counter() - start


def run(matrix: int, controls: int, repeat: int, workdir: Path) -> dict[str, Any]:
    """Build the cohort and model, then time the patient's exam."""
    from service.inputs.protocol import load_site_protocols
    from service.phantom import PhantomOptions, write_cohort
    from service.pipeline.model_build import build_model

    options = PhantomOptions(matrix=matrix)
    profile = workdir / "controls" / "site-protocols.toml"
    built = workdir / "bench-exam-data.json"
    if built.exists():  # --work DIR of an earlier run with the same matrix and controls
        data = json.loads(built.read_text())
        if data["matrix"] != matrix or data["controls"] != controls:
            raise SystemExit(f"{workdir} holds data of another configuration: {data}")
    else:
        write_cohort(
            workdir / "controls",
            controls=controls,
            patients=0,
            follow_up=False,
            seed=3,
            options=options,
        )
        cohort = json.loads(
            write_cohort(
                workdir / "patient",
                controls=0,
                patients=1,
                follow_up=False,
                seed=4,
                options=options,
            ).read_text()
        )
        started = time.perf_counter()
        build_model(
            workdir / "controls",
            workdir / "model",
            profiles=load_site_protocols(profile),
            created_at=datetime.now(UTC),
        )
        model_build_s = time.perf_counter() - started
        data = {
            "matrix": matrix,
            "controls": controls,
            "model_build_s": round(model_build_s, 2),
            "dicom_dir": str(workdir / "patient" / cohort[0]["exams"][0]["exam_dir"] / "dicom"),
        }
        built.write_text(json.dumps(data))
    dicom_dir = Path(data["dicom_dir"])
    runs: list[dict[str, Any]] = []
    worker_runs: list[dict[str, Any]] = []
    peers = []
    for i in range(repeat):
        for mode, into in (("cold", runs), ("warm-up", worker_runs)):
            out = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    RUNNER,
                    str(dicom_dir),
                    str(workdir / f"out{i}-{mode}"),
                    str(workdir / "model"),
                    str(profile),
                    *([mode] if mode == "warm-up" else []),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            into.append(json.loads(out.stdout.strip().splitlines()[-1]))
        peers.append(_copy_sources(dicom_dir, workdir / f"copy{i}"))
    best = min(runs, key=lambda r: sum(r["timings_s"].values()))
    first_job = min((r["timings_s"] for r in worker_runs), key=lambda t: t["write_results"])
    both = runs + worker_runs
    best_warm = min((r["warm_timings_s"] for r in both), key=lambda t: sum(t.values()))
    write_s = best_warm["write_results"]
    return {
        "benchmark": "exam",
        "created_utc": datetime.now(UTC).isoformat(),
        "config": {
            "matrix": matrix,
            "slabs": 2,
            "slices_per_slab": options.slices_per_slab,
            "controls": controls,
            "repeat": repeat,
        },
        "machine": {
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "load_avg": os.getloadavg(),
        },
        "model_build_s": data["model_build_s"],
        "runs": runs,
        "worker_runs": worker_runs,
        "best": best,
        "total_s": round(sum(best["timings_s"].values()), 2),
        "worker_first_job": {
            "timings_s": first_job,
            "warm_up_s": min(r["warm_up_s"] for r in worker_runs),
        },
        "warm_worker": {
            "timings_s": best_warm,
            "total_s": round(sum(best_warm.values()), 2),
            "write_results_s_by_variant": {
                name: min(r["warm_variants_timings_s"][name]["write_results"] for r in both)
                for name in both[0]["warm_variants_timings_s"]
            },
        },
        "peer_copy_sources_s": round(min(peers), 3),
        # writing in a warm worker (the service's settings) against copying the sources
        "ratio_write_results_to_copy_sources": round(write_s / min(peers), 2),
        "targets": {"exam_s": 10.0, "peak_rss_mib": 1536, "write_results_s": 3.0},
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--matrix", type=int, default=448)
    parser.add_argument("--controls", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument(
        "--work", type=Path, help="keep the cohort and model here and reuse them next time"
    )
    args = parser.parse_args(argv)
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
        report = run(args.matrix, args.controls, args.repeat, args.work)
    else:
        with tempfile.TemporaryDirectory(prefix="cordt1-bench-exam-") as tmp:
            report = run(args.matrix, args.controls, args.repeat, Path(tmp))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(
        json.dumps(
            {
                k: report[k]
                for k in (
                    "total_s",
                    "best",
                    "worker_first_job",
                    "warm_worker",
                    "peer_copy_sources_s",
                    "ratio_write_results_to_copy_sources",
                )
            }
        )
    )
    return report


if __name__ == "__main__":
    main()
