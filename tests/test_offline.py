"""`cordt1 process` and `cordt1 phantom` on synthetic exams with known truth."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from scipy.ndimage import binary_erosion

from service.cli import main
from service.inputs.nifti import from_nifti
from tests.service_harness import PhantomExam, make_exams


@pytest.fixture(scope="module")
def exams(tmp_path_factory: pytest.TempPathFactory) -> list[PhantomExam]:
    return make_exams(tmp_path_factory.mktemp("cohort"), patients=1, controls=1, seed=5)


def _process(input_dir: Path, out: Path, profile: Path | None) -> int:
    argv = ["process", str(input_dir), "--out", str(out)]
    if profile is not None:
        argv += ["--site-protocols", str(profile)]
    return main(argv)


def _truth_t1_check(exam: PhantomExam, out_dir: Path, n_slabs: int = 2) -> None:
    """Our T1 agrees with the phantom's true T1 in deep white matter, on the exam's grid."""
    for slab in range(1, n_slabs + 1):
        t1_ms, affine = from_nifti(nib.load(out_dir / "nifti" / f"slab{slab}_t1_ms.nii.gz"))
        truth, _ = from_nifti(nib.load(exam.truth_dir / f"slab{slab}_t1_true_ms.nii.gz"))
        wm, truth_affine = from_nifti(nib.load(exam.truth_dir / f"slab{slab}_wm.nii.gz"))
        np.testing.assert_allclose(affine, truth_affine, atol=1e-4)
        deep = binary_erosion(wm.astype(bool), structure=np.ones((1, 3, 3)))
        ours = float(np.median(t1_ms[deep]))
        expected = float(np.median(truth[deep]))
        # Not B1-corrected: the phantom's B1 field in the cord is 0.88-1.04, so allow 5 %.
        assert abs(ours - expected) / expected < 0.05, (slab, ours, expected)


def test_process_writes_t1_maps_nifti_and_summary(
    exams: list[PhantomExam], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exam = exams[0]
    assert _process(exam.dicom_dir, tmp_path, exam.site_protocols) == 0
    captured = capsys.readouterr()
    assert f"exam 1 of 1: {exam.study_uid}" in captured.err
    assert f"table  {tmp_path / 'cordt1_regions.tsv'}" in captured.out
    out_dir = tmp_path / exam.study_uid
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["exam"]["study_instance_uid"] == exam.study_uid
    assert [s["slab"] for s in summary["slabs"]] == [1, 2]
    slab = summary["slabs"][0]
    assert slab["protocol"]["sources"]["ti1_s"] == "header"
    assert slab["protocol"]["sources"]["echo_spacing_s"] == "site profile"
    assert slab["b1_corrected"] is False
    # The scanner's T1 map was made with the same lookup idea: we must agree closely.
    assert abs(slab["scanner_t1_agreement"]["median_difference_ms"]) < 5
    pm = pydicom.dcmread(out_dir / "dicom" / "t1map_slab1.dcm")
    assert pm.StudyInstanceUID == exam.study_uid
    assert "RESEARCH USE ONLY" in pm.SeriesDescription
    _truth_t1_check(exam, out_dir)
    # The group table next to the outputs: the exam's region and level values.
    rows = _read_tsv(tmp_path / "cordt1_regions.tsv")
    cord = next(r for r in rows if (r["slab"], r["region"], r["level"]) == ("all", "cord", "n/a"))
    assert float(cord["mean_t1_ms"]) == summary["regions"]["cord"]["mean_t1_ms"]
    assert int(cord["voxels"]) == summary["regions"]["cord"]["voxels"]
    assert cord["qc_verdict"] == summary["qc"]["verdict"]
    levels = {r["level"] for r in rows if r["slab"] == "all"} - {"n/a"}
    assert levels == {key for key in summary["regions"] if key.startswith("C")}
    assert levels
    # Processing again replaces the exam's rows.
    assert _process(exam.dicom_dir, tmp_path, exam.site_protocols) == 0
    assert len(_read_tsv(tmp_path / "cordt1_regions.tsv")) == len(rows)


def _read_tsv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


@pytest.mark.parametrize(
    ("content", "why"),
    [({}, "holds no DICOM (Part-10) file"), ({"notes.txt": "hello"}, "holds no DICOM")],
)
def test_no_exam_found_exits_non_zero_and_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: dict[str, str], why: str
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for name, text in content.items():
        (folder / name).write_text(text)
    assert _process(folder, tmp_path / "out", None) == 1
    captured = capsys.readouterr()
    assert "no DICOM exam found" in captured.err
    assert why in captured.err


def test_results_only_folder_is_no_exam(
    exams: list[PhantomExam], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An earlier run's DICOM results are never inputs: nothing to process is an error."""
    out = tmp_path / "out"
    assert _process(exams[0].dicom_dir, out, exams[0].site_protocols) == 0
    capsys.readouterr()
    assert _process(out, tmp_path / "again", exams[0].site_protocols) == 1
    assert "results this software wrote" in capsys.readouterr().err


@pytest.mark.slow
def test_every_written_dicom_object_passes_dciodvfy(
    exams: list[PhantomExam], tmp_path: Path
) -> None:
    exam = exams[0]
    assert _process(exam.dicom_dir, tmp_path, exam.site_protocols) == 0
    files = sorted((tmp_path / exam.study_uid / "dicom").glob("*.dcm"))
    assert files
    for path in files:
        out = subprocess.run(["dciodvfy", "-new", str(path)], capture_output=True, text=True)
        errors = [x for x in (out.stdout + out.stderr).splitlines() if x.startswith("Error")]
        assert errors == [], (path.name, errors)


def test_missing_protocol_profile_names_the_missing_values(
    exams: list[PhantomExam], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _process(exams[0].dicom_dir, tmp_path, None) == 1
    output = capsys.readouterr().out
    assert "FAILED" in output
    assert "echo_spacing_s" in output and "n_excitations" in output


def test_one_broken_exam_does_not_stop_the_others(
    exams: list[PhantomExam], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "in"
    for exam in exams:
        shutil.copytree(exam.dicom_dir, folder / exam.root.parent.name)
    broken = folder / exams[1].root.parent.name
    for series in broken.glob("*"):
        if "UNI" in series.name or "T1MAP" in series.name:
            shutil.rmtree(series)
    (folder / "not-dicom.txt").write_text("hello")
    assert _process(folder, tmp_path / "out", exams[0].site_protocols) == 1
    captured = capsys.readouterr()
    output = captured.out
    assert f"done   {exams[0].study_uid}" in output
    assert f"FAILED {exams[1].study_uid}" in output
    assert "UNI series missing" in output and "no scanner T1 map" in output
    # stderr: progress over both exams, and which exam failed and why
    for uid in (exams[0].study_uid, exams[1].study_uid):
        assert f" of 2: {uid}" in captured.err
    assert f"1 of 2 exam(s) failed: {exams[1].study_uid}: " in captured.err
    assert "UNI series missing" in captured.err.split("failed:")[1]
    rows = _read_tsv(tmp_path / "out" / "cordt1_regions.tsv")
    assert {r["study_instance_uid"] for r in rows} == {exams[0].study_uid}


@pytest.mark.parametrize(
    "options",
    [
        {"oblique_deg": 15.0, "matrix": 192},
        {"enhanced": True, "transfer_syntax": "j2k", "slabs": 1},
        {"transfer_syntax": "rle", "protocol": "siemens-7t-cspine-tr6", "slice_mm": 5.0},
    ],
    ids=["oblique-192", "enhanced-j2k-1slab", "rle-other-protocol"],
)
def test_scanner_variety_is_processed(options: dict[str, object], tmp_path: Path) -> None:
    exam = make_exams(tmp_path / "phantom", seed=9, **options)[0]
    assert _process(exam.dicom_dir, tmp_path / "out", exam.site_protocols) == 0
    out_dir = tmp_path / "out" / exam.study_uid
    summary = json.loads((out_dir / "summary.json").read_text())
    for slab in summary["slabs"]:
        assert abs(slab["scanner_t1_agreement"]["median_difference_ms"]) < 5
    n_slabs = 1 if options.get("slabs") == 1 else 2
    assert len(summary["slabs"]) == n_slabs
    _truth_t1_check(exam, out_dir, n_slabs)


def test_phantom_command_writes_a_cohort(tmp_path: Path) -> None:
    argv = ["phantom", "--out", str(tmp_path), "--controls", "1", "--patients", "0"]
    argv += ["--matrix", "128", "--slices", "4", "--slabs", "1", "--seed", "3"]
    assert main(argv) == 0
    cohort = json.loads((tmp_path / "cohort.json").read_text())
    assert [s["kind"] for s in cohort] == ["control"]
    assert (tmp_path / "site-protocols.toml").exists()
    assert main(["phantom", "--out", str(tmp_path), "--matrix", "7"]) == 1


def test_b1_map_corrects_t1_where_the_transmit_field_is_off(tmp_path: Path) -> None:
    exam = make_exams(tmp_path / "ph", seed=5, matrix=192, b1_map=True)[0]
    no_scale = tmp_path / "no-scale.toml"
    no_scale.write_text(
        "\n".join(
            line
            for line in exam.site_protocols.read_text().splitlines()
            if not line.startswith("b1_map_scale")
        )
    )
    errors = {}
    for name, profile in (("corrected", exam.site_protocols), ("uncorrected", no_scale)):
        assert _process(exam.dicom_dir, tmp_path / name, profile) == 0
        out_dir = tmp_path / name / exam.study_uid
        summary = json.loads((out_dir / "summary.json").read_text())
        assert summary["b1_corrected"] is (name == "corrected")
        if name == "uncorrected":
            assert "b1_map_scale is not set" in summary["b1_note"]
        relative = []
        for slab in (1, 2):
            t1, _ = from_nifti(nib.load(out_dir / "nifti" / f"slab{slab}_t1_ms.nii.gz"))
            truth, _ = from_nifti(nib.load(exam.truth_dir / f"slab{slab}_t1_true_ms.nii.gz"))
            b1, _ = from_nifti(nib.load(exam.truth_dir / f"slab{slab}_b1_true.nii.gz"))
            off = (truth > 800) & (truth < 2000) & (t1 > 0) & (np.abs(b1 - 1) > 0.08)
            relative.append((t1[off] - truth[off]) / truth[off])
        errors[name] = abs(float(np.median(np.concatenate(relative))))
    assert errors["corrected"] < 0.5 * errors["uncorrected"], errors
