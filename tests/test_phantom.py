"""Synthetic exam generator: ground truth, physics and cohort layout."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from scipy import ndimage

from dicom_node.components import Component, classify
from processing.mp2rage import T1LookupTable, stored_to_uni, t1_from_uni
from service.phantom import PRESETS, PhantomOptions, write_cohort

# The analytic anatomy: deep WM is pure WM (no through-slice partial volume at the cord edge)
# and the physics checks below need that trivial case; real shapes are tested in
# test_phantom_real_anatomy.py.
SMALL = PhantomOptions(matrix=80, slices_per_slab=4, slabs=2, b1_map=True, anatomy="simple")


def _volume(folder: Path) -> tuple[np.ndarray, list[pydicom.Dataset]]:
    """Stack a legacy series by InstanceNumber, shape (slices, rows, cols)."""
    datasets = sorted(
        (pydicom.dcmread(p) for p in folder.glob("*.dcm")), key=lambda d: d.InstanceNumber
    )
    return np.stack([d.pixel_array for d in datasets]), datasets


def _truth(exam: Path, name: str) -> np.ndarray:
    """Truth NIfTI back in the [k, j, i] array convention."""
    return np.asarray(nib.load(exam / "truth" / name).dataobj).transpose(2, 1, 0)


def _series(exam: Path, component: str, slab: int) -> Path:
    (folder,) = (exam / "dicom").glob(f"*_{component}_slab{slab}")
    return folder


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cohort")
    write_cohort(out, controls=1, patients=1, follow_up=True, seed=11, options=SMALL)
    return out


def test_options_are_validated() -> None:
    with pytest.raises(ValueError, match="slabs"):
        PhantomOptions(slabs=3)
    with pytest.raises(ValueError, match="transfer_syntax"):
        PhantomOptions(transfer_syntax="jpeg")
    with pytest.raises(ValueError, match="protocol preset"):
        PhantomOptions(protocol="philips")
    with pytest.raises(ValueError, match="controls"):
        write_cohort(Path("/nonexistent"), controls=-1, patients=0, follow_up=False, seed=1)


def test_presets_differ_and_site_profile_matches_headers(cohort: Path) -> None:
    a, b = (p.mp2rage for p in PRESETS.values())
    assert (a.tr_mp2rage_s, a.ti1_s, a.n_excitations) != (b.tr_mp2rage_s, b.ti1_s, b.n_excitations)
    profile = tomllib.loads((cohort / "site-protocols.toml").read_text())["protocol"]
    assert len(profile) == 1
    exam = cohort / "control-001" / "exam-1"
    ds = pydicom.dcmread(next(_series(exam, "INV1", 1).glob("*.dcm")))
    assert profile[0]["protocol_name"] == ds.ProtocolName
    truth = json.loads((exam / "truth" / "truth.json").read_text())
    assert profile[0]["n_excitations"] == truth["protocol"]["n_excitations"]


def test_cohort_layout_and_follow_up(cohort: Path) -> None:
    subjects = json.loads((cohort / "cohort.json").read_text())
    assert [(s["id"], s["kind"], len(s["exams"])) for s in subjects] == [
        ("control-001", "control", 1),
        ("patient-001", "patient", 2),
    ]
    base, follow = subjects[1]["exams"]
    assert follow["follow_up_of"] == base["exam_dir"]
    assert follow["study_uid"] != base["study_uid"]
    ds_base = pydicom.dcmread(next(_series(cohort / base["exam_dir"], "UNI", 1).glob("*.dcm")))
    ds_follow = pydicom.dcmread(next(_series(cohort / follow["exam_dir"], "UNI", 1).glob("*.dcm")))
    assert ds_follow.PatientID == ds_base.PatientID
    assert ds_follow.StudyInstanceUID == follow["study_uid"]
    assert ds_follow.StudyDate > ds_base.StudyDate
    truth = json.loads((cohort / follow["exam_dir"] / "truth" / "truth.json").read_text())
    changed = truth["follow_up"]["new_lesion_ids"] + truth["follow_up"]["enlarged_lesion_ids"]
    assert changed
    assert truth["follow_up"]["diffuse_rise_change"] != 0
    ids = {lesion["id"] for lesion in truth["lesions"] if lesion["voxels"] > 0}
    assert set(changed) <= ids
    control = json.loads((cohort / "control-001/exam-1/truth/truth.json").read_text())
    assert control["lesions"] == [] and control["diffuse_rise"] == 0


def test_truth_masks_match_their_definitions(cohort: Path) -> None:
    exam = cohort / "patient-001" / "exam-2"
    truth = json.loads((exam / "truth" / "truth.json").read_text())
    voxel_mm3 = SMALL.voxel_mm**2 * SMALL.slice_mm
    counts: dict[int, int] = {}
    for slab in (1, 2):
        cord, gm, wm = (_truth(exam, f"slab{slab}_{n}.nii.gz") > 0 for n in ("cord", "gm", "wm"))
        assert np.array_equal(gm | wm, cord) and not np.any(gm & wm)
        assert 0.15 <= gm.sum() / cord.sum() <= 0.27
        widths_mm = [np.ptp(np.nonzero(s)[1]) * SMALL.voxel_mm + SMALL.voxel_mm for s in cord]
        assert 11.5 <= float(np.median(widths_mm)) <= 15.5
        levels = _truth(exam, f"slab{slab}_levels.nii.gz")
        assert np.array_equal(levels > 0, cord) and set(np.unique(levels)) <= set(range(8))
        labels = _truth(exam, f"slab{slab}_lesions.nii.gz")
        assert np.all(cord[labels > 0])
        for lesion_id in np.unique(labels[labels > 0]):
            counts[int(lesion_id)] = counts.get(int(lesion_id), 0) + int(
                (labels == lesion_id).sum()
            )
            in_gm = gm[labels == lesion_id].any()
            record = next(x for x in truth["lesions"] if x["id"] == lesion_id)
            assert record["composition"] == ("mixed" if in_gm else "wm_only")
    for lesion in truth["lesions"]:
        assert lesion["volume_mm3"] == pytest.approx(counts.get(lesion["id"], 0) * voxel_mm3)
        assert lesion["location"] in ("posterior", "lateral", "anterior")
        assert 1 <= lesion["level"] <= 7
    assert len(truth["lesions"]) >= 2  # 1..4 at baseline plus the follow-up change


def test_truth_grid_is_the_uni_grid(cohort: Path) -> None:
    exam = cohort / "control-001" / "exam-1"
    image = nib.load(exam / "truth" / "slab2_cord.nii.gz")
    uni, datasets = _volume(_series(exam, "UNI", 2))
    assert image.shape == uni.shape[::-1]
    ras_origin = image.affine[:3, 3]
    lps_origin = np.asarray(datasets[0].ImagePositionPatient, dtype=float)
    assert np.allclose(ras_origin * [-1, -1, 1], lps_origin, atol=1e-3)
    # i (columns) runs along the DICOM row direction.
    row_cosines = np.asarray(datasets[0].ImageOrientationPatient[:3], dtype=float)
    assert np.allclose(image.affine[:3, 0] * [-1, -1, 1], row_cosines * SMALL.voxel_mm)


def test_images_carry_the_physics(cohort: Path) -> None:
    exam = cohort / "control-001" / "exam-1"
    truth = json.loads((exam / "truth" / "truth.json").read_text())
    table = T1LookupTable.build(PRESETS[SMALL.protocol].mp2rage, b1=np.linspace(0.7, 1.2, 51))
    in_plane = np.zeros((3, 3, 3), bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)
    for slab in (1, 2):
        uni, _ = _volume(_series(exam, "UNI", slab))
        b1_stored, _ = _volume(_series(exam, "B1MAP", slab))
        scanner_t1, _ = _volume(_series(exam, "T1MAP", slab))
        wm = _truth(exam, f"slab{slab}_wm.nii.gz") > 0
        deep = ndimage.binary_erosion(wm, in_plane, iterations=2)
        assert deep.sum() > 100
        b1 = b1_stored / truth["b1"]["map_scale"]
        t1_ms = t1_from_uni(stored_to_uni(uni), table, b1=b1) * 1000.0
        expected = truth["tissue_t1_ms"]["effective"]["WM"]
        values = t1_ms[deep]
        standard_error = np.std(values) / np.sqrt(values.size)
        assert abs(np.mean(values) - expected) < 4 * standard_error + 0.01 * expected
        assert 40 < np.std(values) < 110  # about 70 ms of noise at the default SNR
        nominal_ms = t1_from_uni(stored_to_uni(uni), table) * 1000.0
        assert np.median(np.abs(scanner_t1[deep] - nominal_ms[deep])) <= 1.0
        true_t1 = _truth(exam, f"slab{slab}_t1_true_ms.nii.gz")
        assert np.allclose(true_t1[deep], expected, rtol=1e-4)


def test_components_classify_and_inversion_tags(cohort: Path) -> None:
    exam = cohort / "patient-001" / "exam-1"
    preset = PRESETS[SMALL.protocol].mp2rage
    folders = sorted((exam / "dicom").iterdir())
    assert len(folders) == 2 * 5
    numbers = set()
    for folder in folders:
        ds = pydicom.dcmread(next(folder.glob("*.dcm")))
        component = folder.name.split("_")[1]
        assert classify(ds) == Component(component)
        assert ds.Modality == "MR" and ds.Manufacturer == "SIEMENS"
        assert float(ds.MagneticFieldStrength) == pytest.approx(6.98)
        assert float(ds.RepetitionTime) == pytest.approx(preset.tr_mp2rage_s * 1000)
        assert ds.ImagesInAcquisition == SMALL.slices_per_slab
        expected_ti = {"INV1": preset.ti1_s * 1000, "INV2": preset.ti2_s * 1000}.get(component)
        if expected_ti is None:
            assert "InversionTime" not in ds
        else:
            assert float(ds.InversionTime) == pytest.approx(expected_ti)
        flip = preset.flip2_deg if component == "INV2" else preset.flip1_deg
        assert float(ds.FlipAngle) == pytest.approx(flip)
        numbers.add(ds.SeriesNumber)
    assert len(numbers) == len(folders)
    assert "004_INV1_slab1" in {f.name for f in folders}
