"""Benchmark of finding a follow-up exam's prior in the job store: one query against the former
way (load every finished job, then :func:`service.pipeline.history.choose_prior`).

Run from the repository root::

    python -m benchmarks.bench_prior_lookup --out benchmarks/results/prior_lookup.json

Fills a SQLite job store (schema 2) with ``--jobs`` finished jobs of ``--patients`` patients,
each result carrying a summary of about ``--summary-kb`` kB (real summaries carry every region
and lesion), then times both ways for the same current exams (best of ``--repeat``) and checks
they choose the same prior.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import insert

from benchmarks.bench_mp2rage import best_time, machine_info
from service.jobs.store import JobState, JobStore, exam_moment_columns, jobs
from service.pipeline.history import choose_prior


def _fill(store: JobStore, n_jobs: int, n_patients: int, summary_kb: float, seed: int) -> None:
    rng = random.Random(seed)
    padding = "x" * int(summary_kb * 1024)
    rows = []
    now = time.time()
    for job_id in range(1, n_jobs + 1):
        day = f"20{rng.randrange(15, 26)}{rng.randrange(1, 13):02d}{rng.randrange(1, 29):02d}"
        summary = {
            "exam": {"study_date": day, "study_time": f"{rng.randrange(7, 19):02d}0000"},
            "regions": {"padding": padding},
        }
        result = {"summary": summary}
        rows.append(
            {
                "id": job_id,
                "study_uid": f"1.2.{job_id}",
                "patient_key": f"p{rng.randrange(n_patients)}",
                "state": JobState.DONE.value,
                "complete": True,
                "reason": "",
                "series": json.dumps([f"1.2.{job_id}.1"]),
                "n_instances": 100,
                "attempts": 1,
                "error": "",
                "result": json.dumps(result),
                "created_at": now,
                "updated_at": now,
                "lease_owner": "",
                **exam_moment_columns(result),
            }
        )
    with store.engine.begin() as conn:
        for start in range(0, len(rows), 1000):
            conn.execute(insert(jobs), rows[start : start + 1000])


def _former(store: JobStore, patient: str, study_uid: str, job_id: int, moment: Any) -> Any:
    """How the job runner found the prior before schema 2."""
    others = [
        j.result["summary"]
        for j in sorted(store.list_jobs(limit=100000, states=[JobState.DONE]), key=lambda j: j.id)
        if j.patient_key == patient
        and j.study_uid != study_uid
        and j.id != job_id
        and "summary" in j.result
    ]
    prior = choose_prior(others, moment)
    return dict(prior) if prior is not None else None


def run(
    n_jobs: int, n_patients: int, summary_kb: float, lookups: int, repeat: int
) -> dict[str, Any]:
    """Fill a store, time both ways over ``lookups`` current exams; the result record."""
    with tempfile.TemporaryDirectory() as tmp:
        store = JobStore(f"sqlite:///{Path(tmp) / 'jobs.sqlite'}")
        try:
            _fill(store, n_jobs, n_patients, summary_kb, seed=13)
            rng = random.Random(7)
            cases = [
                (f"p{rng.randrange(n_patients)}", "9.9.9", n_jobs + 1, ("20230601", "120000"))
                for _ in range(lookups)
            ]

            def by_query() -> list[Any]:
                return [
                    store.prior_summary(patient_key=p, study_uid=s, job_id=j, moment=m)
                    for p, s, j, m in cases
                ]

            def former() -> list[Any]:
                return [_former(store, p, s, j, m) for p, s, j, m in cases]

            query_s, chosen = best_time(by_query, repeat)
            former_s, expected = best_time(former, repeat)
        finally:
            store.close()
    if chosen != expected:
        raise AssertionError("the query and the former selection chose different priors")
    return {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "config": {
            "jobs": n_jobs,
            "patients": n_patients,
            "summary_kb": summary_kb,
            "lookups": lookups,
            "repeat": repeat,
            "database": "sqlite",
        },
        "query_per_lookup_s": round(query_s / lookups, 6),
        "former_per_lookup_s": round(former_s / lookups, 6),
        "speedup": round(former_s / query_s, 1),
        "priors_found": sum(p is not None for p in chosen),
    }


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument("--summary-kb", type=float, default=8.0)
    parser.add_argument("--lookups", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/prior_lookup.json"))
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark and write its record to ``--out``."""
    args = _parse(argv)
    result = run(args.jobs, args.patients, args.summary_kb, args.lookups, args.repeat)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("query_per_lookup_s", "former_per_lookup_s")}))
    return result


if __name__ == "__main__":
    main()
