"""The command line, called as `main([...])` like a user would type it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.cli import main
from tests.bloch_reference import ReferenceSequence, simulate_uni


def test_mp2rage_uni_prints_the_signal_model(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "mp2rage",
        "uni",
        "--tr",
        "5.0",
        "--ti",
        "0.8",
        "2.7",
        "--flip",
        "4",
        "5",
        "--echo-spacing",
        "0.0067",
        "--n-excitations",
        "48",
        "--t1",
        "0.5",
        "1.0",
        "1.5",
    ]
    assert main(argv) == 0
    values = json.loads(capsys.readouterr().out)
    sequence = ReferenceSequence(
        tr_mp2rage_s=5.0,
        ti1_s=0.8,
        ti2_s=2.7,
        flip1_deg=4,
        flip2_deg=5,
        echo_spacing_s=0.0067,
        n_excitations=48,
        n_before_centre=24,
        efficiency=0.96,
    )
    expected = [float(simulate_uni(t1, sequence)) for t1 in (0.5, 1.0, 1.5)]
    assert len(values) == 3
    assert all(-0.5 <= v <= 0.5 for v in values)
    assert values == pytest.approx(expected, abs=2e-6)


def test_mp2rage_uni_rejects_impossible_timing(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "mp2rage",
        "uni",
        "--tr",
        "3.0",
        "--ti",
        "0.8",
        "2.9",
        "--flip",
        "4",
        "5",
        "--echo-spacing",
        "0.0067",
        "--n-excitations",
        "48",
        "--t1",
        "1.0",
    ]
    assert main(argv) == 1
    assert "TD3" in capsys.readouterr().err


def test_status_on_an_empty_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--data-dir", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["jobs"] == [] and report["counts"]["failed"] == 0
    assert report["service"] == {"running": False, "pid": None}
    assert report["workers_alive"] == []


def test_retry_refuses_unknown_job(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["retry", "7", "--data-dir", str(tmp_path)]) == 1
    assert "no job 7" in capsys.readouterr().err


def test_phantom_writes_t2star_series_and_a_coarse_b1_map(tmp_path: Path) -> None:
    argv = ["phantom", "--out", str(tmp_path), "--controls", "1", "--patients", "0"]
    argv += ["--matrix", "32", "--slices", "3", "--slabs", "1", "--b1-map", "--b1-grid", "coarse"]
    argv += ["--t2star", "--t2star-echo-times", "4", "--t2star-echo-times", "12"]
    argv += ["--t2star-voxel-mm", "0.5", "--t2star-slice-mm", "2", "--t2star-combined"]
    argv += ["--t2star-shift-mm", "0.2", "-0.1", "0", "--t2star-description", "cord_axial"]
    assert main(argv) == 0
    truth = json.loads((tmp_path / "control-001/exam-1/truth/truth.json").read_text())
    record = truth["slabs"][0]["t2star"]
    assert record["echo_times_ms"] == [4.0, 12.0] and record["combined"] is True
    assert record["shape"][0] == 6 and record["voxel_mm"] == 0.5
    assert record["subject_shift_mm"] == [0.2, -0.1, 0.0]
    assert truth["b1_map"]["grid"] == "coarse"
    assert main(["phantom", "--out", str(tmp_path / "x"), "--b1-grid", "coarse"]) == 1


def test_status_cancel_and_retry_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import time

    from service.jobs.store import JobState, JobStore

    store = JobStore(f"sqlite:///{tmp_path / 'jobs.sqlite'}")
    job_id = store.create_job(
        study_uid="1.2.3", patient_key="k", series_uids=["1"], n_instances=1, complete=True
    )
    store.claim(job_id, "host:42:abc", lease_s=0.01)
    time.sleep(0.05)
    data = ["--data-dir", str(tmp_path)]
    assert main(["status", *data]) == 0
    out = capsys.readouterr().out
    assert "stale leases: 1" in out and "STALE lease" in out and "host:42:abc" in out
    assert main(["status", *data, "--stale", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["stale"] == [job_id]
    assert main(["cancel", str(job_id), *data]) != 0  # a reason is required
    capsys.readouterr()
    assert main(["cancel", str(job_id), *data, "--reason", "test exam"]) == 0
    job = store.get_job(job_id)
    assert job.state is JobState.CANCELLED and job.error.endswith(": test exam")
    assert main(["resend", str(job_id), *data]) == 1
    assert "no results to send" in capsys.readouterr().err
    store.close()


def test_purge_dry_run_then_purge_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import os
    import time

    refused = tmp_path / "quarantine" / "refused.dcm"
    refused.parent.mkdir(parents=True)
    refused.write_bytes(b"q" * 100)
    long_ago = time.time() - 365 * 86400
    os.utime(refused, (long_ago, long_ago))
    assert main(["purge", "--data-dir", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would delete: quarantine (1 file(s), 100 bytes)" in out
    assert "dry run, nothing deleted" in out and refused.exists()
    assert main(["purge", "--data-dir", str(tmp_path)]) == 0
    assert "deleted: quarantine (1 file(s), 100 bytes)" in capsys.readouterr().out
    assert not refused.exists()
    assert main(["purge", "--data-dir", str(tmp_path / "elsewhere")]) == 1
    assert "does not exist" in capsys.readouterr().err
