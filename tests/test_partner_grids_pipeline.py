"""Whole exams with a B1 map on its own grid, and with only the scanner's T1 map and a model."""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from scipy.ndimage import binary_erosion

from processing.phantom.fields import FieldParameters
from service.inputs.exam import ExamError, find_exam_series
from service.inputs.nifti import from_nifti
from service.inputs.protocol import load_site_protocols
from service.phantom import PRESETS
from service.phantom.cohort import _subject_plans
from service.pipeline.identity import result_identity
from service.pipeline.model_build import build_model, load_scoring_model
from service.pipeline.run import process_exam
from service.settings import Settings
from tests.dicom_factory import affine_from_geometry
from tests.service_harness import SMALL_EXAM, PhantomExam, make_exams

pytestmark = pytest.mark.slow

COARSE_VOXEL_MM = (5.0, 3.5, 3.5)  # slice, row, column


def _run(exam_dir: Path, study_uid: str, profile: Path, out: Path, model: Path | None = None):
    series = find_exam_series(sorted(exam_dir.rglob("*.dcm")))[study_uid]
    return process_exam(
        series,
        out,
        profiles=load_site_protocols(profile),
        identity=result_identity(Settings()),
        model=load_scoring_model(model) if model else None,
    ).summary


def _world(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    k, j, i = np.meshgrid(*(np.arange(n, dtype=float) for n in shape), indexing="ij")
    index = np.stack([k, j, i, np.ones_like(k)], axis=-1).reshape(-1, 4)
    return (index @ affine.T)[:, :3]


def _transmit_field(exam: PhantomExam, seed: int, n_slabs: int) -> FieldParameters:
    """The phantom's B1 field of the exam, checked against the truth it wrote."""
    options = dataclasses.replace(SMALL_EXAM, b1_map=True)
    fields = _subject_plans(seed, "patient", 1, False, options)[0].fields
    for slab in range(1, n_slabs + 1):
        b1, affine = from_nifti(nib.load(exam.truth_dir / f"slab{slab}_b1_true.nii.gz"))
        expected = fields.b1(_world(b1.shape, affine)).reshape(b1.shape)
        np.testing.assert_allclose(b1, expected, atol=1e-5)
    return fields


def _write_coarse_b1_series(exam_dir: Path, fields: FieldParameters) -> Path:
    """Replace the per-slab B1 maps by one coarse, oblique B1 map covering both slabs."""
    truth = json.loads((exam_dir / "truth" / "truth.json").read_text())
    template_files = sorted(exam_dir.glob("dicom/*_B1MAP_*/*.dcm"))
    template = pydicom.dcmread(template_files[0])
    for folder in {path.parent for path in template_files}:
        shutil.rmtree(folder)
    corners = []
    for slab in truth["slabs"]:
        shape = np.array(slab["shape"]) - 1
        affine = np.array(slab["affine_lps"])
        for corner in np.ndindex(2, 2, 2):
            corners.append((affine @ [*(np.array(corner) * shape), 1.0])[:3])
    tilt = np.deg2rad(12.0)
    row_cos = np.array([1.0, 0.0, 0.0])
    col_cos = np.array([0.0, np.cos(tilt), -np.sin(tilt)])  # rows tilted about left-right
    axes = np.stack([np.cross(row_cos, col_cos), col_cos, row_cos])  # k, j, i unit vectors
    along = np.asarray(corners) @ axes.T  # corner coordinates along the coarse axes
    low, high = along.min(axis=0) - 8.0, along.max(axis=0) + 8.0
    shape = tuple(int(n) for n in np.ceil((high - low) / COARSE_VOXEL_MM) + 1)
    affine = affine_from_geometry(low @ axes, row_cos, col_cos, COARSE_VOXEL_MM)
    b1 = fields.b1(_world(shape, affine)).reshape(shape)
    stored = np.clip(np.rint(b1 * truth["b1"]["map_scale"]), 0, 4095).astype(np.uint16)

    folder = exam_dir / "dicom" / "090_B1MAP_coarse"
    folder.mkdir()
    series_uid = generate_uid()
    iop = [*row_cos, *col_cos]
    for k in range(shape[0]):
        ds = copy.deepcopy(template)
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesNumber = 90
        ds.InstanceNumber = k + 1
        ds.ImagesInAcquisition = shape[0]
        ds.Rows, ds.Columns = shape[1], shape[2]
        ds.PixelSpacing = [f"{COARSE_VOXEL_MM[1]:g}", f"{COARSE_VOXEL_MM[2]:g}"]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in iop]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in (affine @ [k, 0, 0, 1])[:3]]
        ds.SliceThickness = ds.SpacingBetweenSlices = f"{COARSE_VOXEL_MM[0]:g}"
        if "SliceLocation" in ds:
            del ds.SliceLocation
        ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()
        ds.save_as(folder / f"{k + 1:04d}.dcm", enforce_file_format=True)
    return folder


def _deep_wm_errors(exam: PhantomExam, out_dir: Path, n_slabs: int) -> list[float]:
    """Relative error of the median T1 in deep cord white matter, per slab."""
    errors = []
    for slab in range(1, n_slabs + 1):
        t1_ms, _ = from_nifti(nib.load(out_dir / "nifti" / f"slab{slab}_t1_ms.nii.gz"))
        truth, _ = from_nifti(nib.load(exam.truth_dir / f"slab{slab}_t1_true_ms.nii.gz"))
        wm, _ = from_nifti(nib.load(exam.truth_dir / f"slab{slab}_wm.nii.gz"))
        deep = binary_erosion(wm.astype(bool), structure=np.ones((1, 3, 3)))
        ours, expected = float(np.median(t1_ms[deep])), float(np.median(truth[deep]))
        errors.append((ours - expected) / expected)
    return errors


def test_b1_map_on_a_coarse_oblique_grid_corrects_cord_t1_like_a_same_grid_map(
    tmp_path: Path,
) -> None:
    exam = make_exams(tmp_path / "ph", seed=5, b1_map=True)[0]
    fields = _transmit_field(exam, seed=5, n_slabs=2)
    same = _run(exam.dicom_dir, exam.study_uid, exam.site_protocols, tmp_path / "same")
    coarse_exam = tmp_path / "coarse"
    shutil.copytree(exam.root, coarse_exam)
    _write_coarse_b1_series(coarse_exam, fields)
    coarse = _run(coarse_exam / "dicom", exam.study_uid, exam.site_protocols, tmp_path / "c")

    assert same["b1_corrected"] and coarse["b1_corrected"]
    for entry in coarse["slabs"]:
        assert entry["b1_note"].startswith(
            "T1 corrected for B1+ with the B1 map (resampled from 3.5 x 3.5 x 5 mm; 100 % of "
            "voxels covered"
        )
        assert "b1map" in entry["components"]
    same_errors = _deep_wm_errors(exam, tmp_path / "same", 2)
    coarse_errors = _deep_wm_errors(exam, tmp_path / "c", 2)
    for a, b in zip(same_errors, coarse_errors, strict=True):
        assert abs(b) < abs(a) + 0.01, (same_errors, coarse_errors)
    # voxel by voxel in the cord, the two corrections agree closely
    for slab in (1, 2):
        t1_same, _ = from_nifti(nib.load(tmp_path / "same" / "nifti" / f"slab{slab}_t1_ms.nii.gz"))
        t1_coarse, _ = from_nifti(nib.load(tmp_path / "c" / "nifti" / f"slab{slab}_t1_ms.nii.gz"))
        cord, _ = from_nifti(nib.load(tmp_path / "same" / "nifti" / f"slab{slab}_cord.nii.gz"))
        inside = cord.astype(bool) & (t1_same > 0)
        relative = np.abs(t1_coarse[inside] - t1_same[inside]) / t1_same[inside]
        assert float(np.median(relative)) < 0.002


@pytest.fixture(scope="module")
def model_and_exam(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, PhantomExam, Path]:
    """A model from five UNI controls, and another control reduced to its scanner T1 maps."""
    root = tmp_path_factory.mktemp("t1map_only")
    controls = make_exams(root / "controls", controls=5, patients=0, seed=41)
    model_dir = root / "model"
    build_model(
        root / "controls",
        model_dir,
        profiles=load_site_protocols(controls[0].site_protocols),
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    exam = make_exams(root / "exam", controls=1, patients=0, seed=42)[0]
    for folder in exam.dicom_dir.iterdir():
        if any(kind in folder.name for kind in ("_UNI_", "_INV1_", "_INV2_")):
            shutil.rmtree(folder)
    return model_dir, exam, root


def _full_profile(root: Path, **override: float) -> Path:
    values = {**PRESETS["siemens-7t-cspine"].as_dict(), **override}
    keys = ("tr_mp2rage_s", "ti1_s", "ti2_s", "flip1_deg", "flip2_deg", "echo_spacing_s")
    lines = ["[[protocol]]", f'protocol_name = "{values["protocol_name"]}"']
    lines += [f"{key} = {float(values[key])!r}" for key in keys]
    lines += [f"n_excitations = {int(values['n_excitations'])}", "efficiency = 0.96"]
    path = root / f"full-{len(override)}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_t1_map_only_exam_is_scored_when_the_full_profile_matches_the_model(
    model_and_exam: tuple[Path, PhantomExam, Path], tmp_path: Path
) -> None:
    model_dir, exam, root = model_and_exam
    summary = _run(exam.dicom_dir, exam.study_uid, _full_profile(root), tmp_path, model_dir)
    version = summary["model"]["model_version"]
    for entry in summary["slabs"]:
        assert entry["components"] == ["t1map"]
        assert entry["t1_source"] == (
            "scanner T1 map; protocol from site profile entry 'mp2rage_cspine_0.3', checked "
            f"against normative model {version} (built from T1 computed from UNI with the "
            "same protocol)"
        )
    assert summary["qc"]["verdict"] != "fail", summary["qc"]
    assert abs(summary["mean_z"]["cord"]) < 1.5  # a control scores as a control


def test_t1_map_only_exam_without_a_full_profile_is_refused_with_what_to_add(
    model_and_exam: tuple[Path, PhantomExam, Path], tmp_path: Path
) -> None:
    model_dir, exam, root = model_and_exam
    with pytest.raises(ExamError) as info:
        _run(exam.dicom_dir, exam.study_uid, exam.site_protocols, tmp_path, model_dir)
    text = str(info.value)
    assert "exam has no UNI series" in text
    assert "site protocol entry 'mp2rage_cspine_0.3'" in text
    assert "add tr_mp2rage_s, ti1_s, ti2_s, flip1_deg, flip2_deg to it" in text
    with pytest.raises(ExamError, match="exam protocol differs from normative model"):
        _run(exam.dicom_dir, exam.study_uid, _full_profile(root, ti2_s=3.0), tmp_path, model_dir)
