"""The receiving benchmark: its arrival check and a smoke run against real DCMTK (slow)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from benchmarks.bench_receive import (
    ORTHANC,
    STORESCP,
    STORESCU,
    SourceSet,
    main,
    make_instances,
    verify_received,
)


def _copy_all(source: SourceSet, folder: Path) -> list[Path]:
    folder.mkdir()
    return [Path(shutil.copy(src, folder / f"MR.{n}")) for n, src in enumerate(source.paths)]


def test_verify_accepts_identical_copies(tmp_path: Path) -> None:
    source = make_instances(tmp_path / "src", 3, n_series=2)
    received = _copy_all(source, tmp_path / "rx")
    verify_received(lambda: received, source)


def test_verify_reports_a_missing_instance(tmp_path: Path) -> None:
    source = make_instances(tmp_path / "src", 3, n_series=1)
    received = _copy_all(source, tmp_path / "rx")[:2]
    with pytest.raises(RuntimeError, match="2 files received, 3 sent"):
        verify_received(lambda: received, source, timeout_s=0.1)


def test_verify_reports_a_changed_pixel(tmp_path: Path) -> None:
    source = make_instances(tmp_path / "src", 3, n_series=1)
    received = _copy_all(source, tmp_path / "rx")
    data = bytearray(received[1].read_bytes())
    data[-1] ^= 0xFF  # last byte of the pixel data
    received[1].write_bytes(bytes(data))
    with pytest.raises(RuntimeError, match="1 received datasets differ"):
        verify_received(lambda: received, source)


def test_run_rejects_more_senders_than_instances(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"sender counts must be in 1\.\.3, got 4"):
        main(["--out", str(tmp_path / "r.json"), "--instances", "3", "--senders", "4"])


@pytest.mark.slow
@pytest.mark.skipif(
    not (Path(STORESCU).is_file() and Path(STORESCP).is_file() and Path(ORTHANC).is_file()),
    reason="DCMTK storescu/storescp or Orthanc not installed",
)
def test_smoke_run_writes_a_complete_report(tmp_path: Path) -> None:
    out = tmp_path / "receive.json"
    main(["--out", str(out), "--instances", "20", "--rounds", "1", "--scratch", str(tmp_path)])

    report = json.loads(out.read_text())
    assert report["config"]["instances"] == 20
    assert report["config"]["senders"] == [1, 4]
    # no receiver pays for the previous one's deletions: the files stay until the end
    assert report["config"]["received_files"] == "kept until the end of the run"
    assert {"cpu_count", "pydicom", "pynetdicom", "dcmtk"} <= set(report["machine"])
    for receiver in ("ours", "dcmtk", "orthanc"):
        for senders in ("1", "4"):
            summary = report["results"][receiver][senders]
            assert len(summary["rounds"]) == 1
            assert summary["median_images_per_s"] > 0
            assert summary["median_mb_per_s"] > 0
    assert report["results"]["ours"]["1"]["median_cpu_ms_per_image"] > 0
    for other in ("dcmtk", "orthanc"):
        ratios = report[f"ratio_ours_to_{other}"]
        assert set(ratios) == {"1", "4"}
        assert all(r["median_of_rounds"] > 0 for r in ratios.values())
    assert not list(tmp_path.glob("bench_receive_*")), "scratch folder left behind"
