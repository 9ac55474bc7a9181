"""Synthetic exam generator: reproducibility, geometry, encodings, enhanced MR, validity."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_node.components import Component, classify
from service.phantom import PhantomOptions, write_cohort
from service.phantom.identity import draw_identity

TINY = PhantomOptions(matrix=32, voxel_mm=0.6, slices_per_slab=3, slabs=1)


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _write(root: Path, seed: int = 5, **changes: object) -> Path:
    options = PhantomOptions(**{**TINY.__dict__, **changes})
    write_cohort(root, controls=1, patients=1, follow_up=False, seed=seed, options=options)
    return root


def test_same_seed_same_bytes_other_seed_other_anatomy(tmp_path: Path) -> None:
    first = _files(_write(tmp_path / "a"))
    assert first == _files(_write(tmp_path / "b"))
    other = _files(_write(tmp_path / "c", seed=6))
    key = "control-001/exam-1/truth/slab1_cord.nii.gz"
    assert other[key] != first[key]
    assert (
        other["control-001/exam-1/truth/truth.json"]
        != first["control-001/exam-1/truth/truth.json"]
    )


def test_oblique_slab_positions_step_along_the_normal(tmp_path: Path) -> None:
    root = _write(tmp_path, oblique_deg=15.0, slices_per_slab=4, slice_mm=5.0)
    for folder in (root / "control-001/exam-1/dicom").iterdir():
        datasets = sorted(
            (pydicom.dcmread(p) for p in folder.glob("*.dcm")), key=lambda d: d.InstanceNumber
        )
        orientation = np.asarray(datasets[0].ImageOrientationPatient, dtype=float)
        normal = np.cross(orientation[:3], orientation[3:])
        assert abs(np.degrees(np.arccos(abs(normal[2])))) == pytest.approx(15.0, abs=1e-3)
        positions = np.asarray([d.ImagePositionPatient for d in datasets], dtype=float)
        steps = np.diff(positions, axis=0)
        assert np.allclose(steps, 5.0 * normal, atol=1e-3)
        assert float(datasets[0].SpacingBetweenSlices) == pytest.approx(5.0)
        assert len({d.FrameOfReferenceUID for d in datasets}) == 1


def test_enhanced_writes_one_multiframe_instance_per_series(tmp_path: Path) -> None:
    root = _write(tmp_path, enhanced=True, b1_map=True)
    legacy = _write(tmp_path / "legacy", b1_map=True)
    folders = sorted((root / "patient-001/exam-1/dicom").iterdir())
    assert len(folders) == 5
    for folder in folders:
        (path,) = folder.glob("*.dcm")
        ds = pydicom.dcmread(path)
        assert ds.SOPClassUID == pydicom.uid.EnhancedMRImageStorage
        assert ds.NumberOfFrames == TINY.slices_per_slab
        assert classify(ds) == Component(folder.name.split("_")[1])
        frames = ds.pixel_array
        single = [
            pydicom.dcmread(p).pixel_array
            for p in sorted((legacy / "patient-001/exam-1/dicom" / folder.name).glob("*.dcm"))
        ]
        assert np.array_equal(frames, np.stack(single))
        positions = [
            item.PlanePositionSequence[0].ImagePositionPatient
            for item in ds.PerFrameFunctionalGroupsSequence
        ]
        assert len(positions) == TINY.slices_per_slab


@pytest.mark.parametrize("syntax", ["implicit", "j2k", "rle", "jpegls"])
def test_transfer_syntaxes_decode_losslessly(tmp_path: Path, syntax: str) -> None:
    reference = _write(tmp_path / "explicit", scanner_t1_map=False)
    encoded = _write(tmp_path / syntax, transfer_syntax=syntax, scanner_t1_map=False)
    expected_uid = {
        "implicit": pydicom.uid.ImplicitVRLittleEndian,
        "j2k": pydicom.uid.JPEG2000Lossless,
        "rle": pydicom.uid.RLELossless,
        "jpegls": pydicom.uid.JPEGLSLossless,
    }[syntax]
    paths = sorted(encoded.rglob("*.dcm"))
    assert paths
    for path in paths:
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == expected_uid
        original = pydicom.dcmread(reference / path.relative_to(encoded))
        assert np.array_equal(ds.pixel_array, original.pixel_array)


def test_non_ascii_names_round_trip(tmp_path: Path) -> None:
    seed = next(s for s in range(200) if not draw_identity(s, "control", 1).patient_name.isascii())
    name = draw_identity(seed, "control", 1).patient_name
    root = tmp_path / "names"
    write_cohort(root, controls=1, patients=0, follow_up=False, seed=seed, options=TINY)
    ds = pydicom.dcmread(next((root / "control-001").rglob("*.dcm")))
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert str(ds.PatientName) == name


def _dciodvfy_errors(path: Path) -> list[str]:
    result = subprocess.run(
        ["dciodvfy", "-new", str(path)], capture_output=True, text=True, timeout=60
    )
    report = result.stdout + result.stderr
    return [line for line in report.splitlines() if line.startswith("Error")]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools not installed")
@pytest.mark.parametrize("enhanced", [False, True])
def test_dciodvfy_reports_no_errors(tmp_path: Path, enhanced: bool) -> None:
    root = _write(tmp_path, enhanced=enhanced, b1_map=True)
    folders = sorted((root / "patient-001/exam-1/dicom").iterdir())
    assert len(folders) == 5
    for folder in folders:
        path = next(folder.glob("*.dcm"))
        errors = _dciodvfy_errors(path)
        assert errors == [], f"{folder.name}: {errors}"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools not installed")
@pytest.mark.parametrize(("enhanced", "combined"), [(False, False), (True, False), (True, True)])
def test_dciodvfy_gre_and_coarse_b1_have_no_errors(
    tmp_path: Path, enhanced: bool, combined: bool
) -> None:
    root = _write(
        tmp_path,
        enhanced=enhanced,
        b1_map=True,
        b1_grid="coarse",
        t2star=True,
        t2star_combined=combined,
        slabs=2,
    )
    folders = sorted((root / "patient-001/exam-1/dicom").iterdir())
    names = [folder.name.split("_", 1)[1] for folder in folders]
    assert "T2STAR_slab1" in names and "T2STAR_slab2" in names and "B1MAP" in names
    for folder in folders:
        for path in sorted(folder.glob("*.dcm"))[:2]:
            errors = _dciodvfy_errors(path)
            assert errors == [], f"{folder.name}/{path.name}: {errors}"
