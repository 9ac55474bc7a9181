"""The group-level table: rows per exam/slab/region/level, replaced on re-processing, locked."""

from __future__ import annotations

import csv
import json
import multiprocessing
from pathlib import Path
from typing import Any

import pytest

from service.exports.group_table import COLUMNS, TABLE_NAME, exam_rows, read_table, update_table


def _summary(study_uid: str, *, scored: bool = True, t1_ms: float = 1300.0) -> dict[str, Any]:
    def values(voxels: int) -> dict[str, Any]:
        return {
            "voxels": voxels,
            "mean_t1_ms": t1_ms,
            "median_t1_ms": t1_ms - 5,
            "mean_z": 1.25 if scored else None,
            "abnormal_percent": 4.5 if scored else None,
        }

    summary: dict[str, Any] = {
        "software": {"name": "cordt1", "version": "1.2.3"},
        "exam": {"study_instance_uid": study_uid, "study_date": "20240102"},
        "qc": {"verdict": "warn"},
        "slabs": [
            {"slab": 1, "regions": {"cord": values(100), "gm_left": values(9), "C2": values(50)}},
            {"slab": 2, "regions": {"cord": values(80), "gm_left": values(7), "C4": values(40)}},
        ],
        "regions": {"cord": values(180), "gm_left": values(16), "C2": values(50)},
    }
    if scored:
        summary["model"] = {"model_version": "nm-feedbeef"}
    return summary


def test_rows_per_slab_region_and_level() -> None:
    rows = exam_rows(_summary("1.2.3"), subject="abc123", session="20240102")
    assert len(rows) == 9
    assert all(list(row) == list(COLUMNS) or set(row) == set(COLUMNS) for row in rows)
    by_key = {(r["slab"], r["region"], r["level"]): r for r in rows}
    level = by_key["1", "cord", "C2"]
    assert (level["voxels"], level["mean_t1_ms"], level["median_t1_ms"]) == (
        "50",
        "1300.0",
        "1295.0",
    )
    assert by_key["all", "cord", "n/a"]["voxels"] == "180"
    assert by_key["2", "gm_left", "n/a"]["mean_z"] == "1.25"
    assert {r["qc_verdict"] for r in rows} == {"warn"}
    assert {r["model_version"] for r in rows} == {"nm-feedbeef"}
    assert {(r["subject"], r["session"], r["study_date"]) for r in rows} == {
        ("abc123", "20240102", "20240102")
    }


def test_unscored_exam_says_n_a() -> None:
    rows = exam_rows(_summary("1.2.3", scored=False), subject="abc", session="20240102")
    assert {r["mean_z"] for r in rows} == {"n/a"}
    assert {r["abnormal_percent"] for r in rows} == {"n/a"}
    assert {r["model_version"] for r in rows} == {"n/a"}


def test_summary_without_study_is_refused() -> None:
    with pytest.raises(ValueError, match="study_instance_uid"):
        exam_rows({"exam": {}}, subject="abc", session="1")


def test_reprocessed_exam_replaces_its_rows(tmp_path: Path) -> None:
    update_table(tmp_path, exam_rows(_summary("1.1"), subject="a", session="20240102"))
    update_table(tmp_path, exam_rows(_summary("2.2"), subject="b", session="20240102"))
    again = exam_rows(_summary("1.1", t1_ms=1500.0), subject="a", session="20240102")
    path = update_table(tmp_path, again)
    rows = read_table(path)
    assert len(rows) == 18
    assert {r["mean_t1_ms"] for r in rows if r["study_instance_uid"] == "1.1"} == {"1500.0"}
    assert {r["mean_t1_ms"] for r in rows if r["study_instance_uid"] == "2.2"} == {"1300.0"}
    # Sorted: subject a before b; within an exam slab 1, 2, then all; regions before levels.
    first = [(r["slab"], r["region"], r["level"]) for r in rows[:9]]
    assert first == [
        ("1", "cord", "n/a"),
        ("1", "gm_left", "n/a"),
        ("1", "cord", "C2"),
        ("2", "cord", "n/a"),
        ("2", "gm_left", "n/a"),
        ("2", "cord", "C4"),
        ("all", "cord", "n/a"),
        ("all", "gm_left", "n/a"),
        ("all", "cord", "C2"),
    ]
    with path.open(newline="") as handle:
        assert next(csv.reader(handle, delimiter="\t")) == list(COLUMNS)
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["mean_t1_ms"]["Units"] == "ms"
    assert set(sidecar) == set(COLUMNS)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(f".{TABLE_NAME}")]


def test_a_foreign_file_under_the_name_is_refused(tmp_path: Path) -> None:
    (tmp_path / TABLE_NAME).write_text("participant_id\tage\nsub-01\t40\n")
    with pytest.raises(ValueError, match="not a cordt1 group table"):
        update_table(tmp_path, exam_rows(_summary("1.1"), subject="a", session="1"))
    assert (tmp_path / TABLE_NAME).read_text().startswith("participant_id")


def _writer(folder: str, worker: int, exams: int) -> None:
    for n in range(exams):
        uid = f"{worker}.{n}"
        update_table(Path(folder), exam_rows(_summary(uid), subject=f"s{worker}", session="1"))
        # the same exam again: replaced, never duplicated
        update_table(Path(folder), exam_rows(_summary(uid), subject=f"s{worker}", session="1"))


def test_two_workers_writing_at_once_lose_nothing(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_writer, args=(str(tmp_path), w, 15)) for w in range(2)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(timeout=60)
        assert process.exitcode == 0
    rows = read_table(tmp_path / TABLE_NAME)
    assert len(rows) == 2 * 15 * 9
    keys = [(r["study_instance_uid"], r["slab"], r["region"], r["level"]) for r in rows]
    assert len(set(keys)) == len(keys)
