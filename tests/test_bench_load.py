"""The load benchmark: a short smoke run with two senders against a real `cordt1 serve`."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from benchmarks.bench_load import run


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_senders_for_a_few_seconds_lose_nothing_and_report_latency(tmp_path: Path) -> None:
    args = argparse.Namespace(
        senders=2,
        duration_s=4.0,
        interval_s=60.0,
        drain_s=180.0,
        workers=1,
        matrix=128,
        settle_s=1.0,
        idle_exams=1,
        sample_s=0.5,
        work=str(tmp_path / "work"),
        out=None,
    )
    report = run(args)
    summary = report["summary"]
    assert report["window"]["drained"]
    assert summary["exams_sent"] == 2 and summary["exams_done"] == 2, summary
    assert summary["instances_recorded"] == summary["instances_sent"] > 0
    assert summary["result_objects_expected"] > 0
    assert summary["result_objects_missing"] == 0
    assert summary["result_objects_sent_twice"] == 0
    assert summary["result_objects_unexpected"] == 0
    assert 0 < summary["latency_s"]["p50"] <= summary["latency_s"]["max"]
    assert report["ratios"]["latency_p50_load_vs_idle"] > 0
    assert report["memory_samples"] and summary["workers_rss_mb_max"] > 50
    assert [e["state"] for e in report["exams"]] == ["done"] * 3
