"""Smoke test of the pipeline validation benchmark on a tiny phantom cohort."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.validate_pipeline import CohortPlan, main

TINY = ["--controls", "4", "--patients", "1", "--follow-ups", "1", "--oblique-patients", "0"]
TINY += ["--loo-folds", "1", "--matrix", "128", "--slices", "4", "--slabs", "1", "--jobs", "2"]


@pytest.mark.slow
def test_tiny_validation_writes_every_report_key(tmp_path: Path) -> None:
    out = tmp_path / "results"
    assert main(["--out", str(out), "--work", str(tmp_path / "work"), *TINY]) == 0

    report = json.loads((out / "validation-real.json").read_text())
    assert report["config"]["anatomy"] == "real"
    assert {
        "created",
        "machine",
        "config",
        "model_builds",
        "rows",
        "exams",
        "reader_exams",
    } <= set(report)
    assert report["machine"]["cpus"] >= 1
    assert [b["n_controls"] for b in report["model_builds"]] == [3, 4]  # one fold + all
    metrics = " ".join(row["metric"] for row in report["rows"])
    for words in ("T1 bias", "Dice cord", "Dice gm", "left-out controls", "diffuse rise",
                  "cord found on slices",
                  "sensitivity", "false candidates", "composition", "follow-up",
                  "run time", "peak memory"):  # fmt: skip
        assert words in metrics
    assert {row["status"] for row in report["rows"]} <= {"met", "missed", "info", "n/a"}
    # the left-out control and the patient's two exams; reader runs for the patient only
    assert [e["kind"] for e in report["exams"]] == ["control", "patient", "patient"]
    assert len(report["reader_exams"]) == 2
    for exam in report["exams"]:
        assert exam["error"] is None
        assert {"dice", "t1", "regions", "lesions", "seconds", "peak_rss_mib"} <= set(exam)
        assert exam["cord_slices"]["truth"] == 4  # the phantom's cord runs through the slab
        assert {"cord", "gm", "wm"} == set(exam["dice"])
    markdown = (out / "validation-real.md").read_text()
    assert "| metric | value | target | status |" in markdown
    assert "patients-follow-up/patient-001/exam-2" in markdown


def test_plan_refuses_too_few_controls_for_leave_one_out() -> None:
    with pytest.raises(ValueError, match="controls must be >= 4"):
        CohortPlan(controls=3)
    with pytest.raises(ValueError, match="loo_folds"):
        CohortPlan(controls=5, loo_folds=6)
    with pytest.raises(ValueError, match="anatomy"):
        CohortPlan(anatomy="disc")
    assert main(["--out", "unused", "--controls", "2"]) == 2
