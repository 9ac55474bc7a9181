"""Exams are checked for consistency: the series of one slab agree on TR, TI, flip angles and
geometry or the exam fails naming the series; an unusable scanner T1 map is a QC note; a
missing series is reported as a missing series."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset

from dicom_node.components import Component
from processing.qc import QcVerdict
from service.inputs.consistency import (
    grid_differences,
    header_mismatches,
    scanner_t1_problem,
    series_label,
)
from service.inputs.exam import ExamError, Slab, dicom_files, find_exam_series, match_slabs
from service.inputs.protocol import SiteProtocol, load_site_protocols
from service.inputs.t1_map import slab_t1
from service.inputs.volumes import SeriesVolume
from service.phantom import PhantomOptions, write_cohort
from service.pipeline.run import with_series_notes
from tests.exam_edits import Edit, copy_exam_series

TINY = PhantomOptions(matrix=32, voxel_mm=0.6, slices_per_slab=3, slabs=1)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("phantom")
    write_cohort(root, controls=1, patients=0, follow_up=False, seed=5, options=TINY)
    return root


def _exam(
    phantom: Path, tmp_path: Path, keep: tuple[str, ...], edit: Edit | None = None
) -> list[Slab]:
    """Copy the series whose folder names contain one of ``keep``, edit them, pair slabs."""
    source = phantom / "control-001" / "exam-1" / "dicom"
    target = copy_exam_series(source, tmp_path / "dicom", keep, edit)
    exams = find_exam_series(dicom_files(target))
    assert len(exams) == 1
    return match_slabs(next(iter(exams.values())))


def _profiles(phantom: Path) -> list[SiteProtocol]:
    return load_site_protocols(phantom / "site-protocols.toml")


ALL = ("INV1", "INV2", "UNI", "T1MAP")


def test_a_consistent_exam_keeps_every_series_and_has_no_note(
    phantom: Path, tmp_path: Path
) -> None:
    (slab,) = _exam(phantom, tmp_path, ALL)
    assert slab.inv1 is not None and slab.inv2 is not None and slab.t1map is not None
    assert slab.qc_notes == []
    _t1, info, _protocol = slab_t1(slab, _profiles(phantom))
    assert info["protocol"]["sources"]["tr_mp2rage_s"] == "header"


def test_inv2_with_another_tr_fails_naming_series_tag_and_values(
    phantom: Path, tmp_path: Path
) -> None:
    def edit(name: str, ds: Dataset) -> None:
        if "INV2" in name:
            ds.RepetitionTime = 7500  # 1.5 x INV1's 5000 ms

    with pytest.raises(ExamError) as caught:
        _exam(phantom, tmp_path, ALL, edit)
    text = str(caught.value)
    assert "RepetitionTime 7500 ms in INV2 series 5 ('mp2rage_cspine_0.3_INV2')" in text
    assert "vs 5000 ms in INV1 series 4" in text
    assert "slab 1" in text


def test_swapped_inversion_times_and_a_foreign_uni_flip_angle_fail(
    phantom: Path, tmp_path: Path
) -> None:
    def edit(name: str, ds: Dataset) -> None:
        if "INV1" in name:
            ds.InversionTime = 2700
        if "INV2" in name:
            ds.InversionTime = 800
        if "UNI" in name:
            ds.FlipAngle = 7

    with pytest.raises(ExamError) as caught:
        _exam(phantom, tmp_path, ALL, edit)
    text = str(caught.value)
    assert "InversionTime 2700 ms in INV1 series 4" in text
    assert "not shorter than 800 ms in INV2 series 5" in text
    assert "FlipAngle 7 deg in UNI series 6" in text
    assert "4 deg in INV1 series 4" in text and "5 deg in INV2 series 5" in text


def test_values_missing_from_every_header_are_not_a_mismatch(
    phantom: Path, tmp_path: Path
) -> None:
    def edit(name: str, ds: Dataset) -> None:
        del ds.RepetitionTime
        if "UNI" in name or "T1MAP" in name:
            ds.InversionTime = 800  # a derived series carrying TI1 is fine

    (slab,) = _exam(phantom, tmp_path, ALL, edit)
    assert slab.inv2 is not None and slab.qc_notes == []


def test_inv2_off_the_uni_grid_fails_naming_the_geometry(phantom: Path, tmp_path: Path) -> None:
    def edit(name: str, ds: Dataset) -> None:
        if "INV2" in name:
            position = [float(v) for v in ds.ImagePositionPatient]
            ds.ImagePositionPatient = [position[0] + 2.0, position[1], position[2]]

    with pytest.raises(ExamError) as caught:
        _exam(phantom, tmp_path, ALL, edit)
    text = str(caught.value)
    assert text.startswith("slab 1: INV2 series 5")
    assert "is not on the grid of UNI series 6" in text
    assert "ImagePositionPatient (first slice)" in text
    assert "series missing" not in text


@pytest.mark.parametrize(
    ("edit_t1", "why"),
    [
        ({"RescaleSlope": "NaN"}, "not finite numbers (RescaleSlope 'NaN')"),
        ({"RescaleSlope": "1", "RescaleIntercept": "-1000", "zero": True}, "no value is positive"),
        ({"RescaleSlope": "0.01"}, "its median in the foreground is"),
    ],
)
def test_an_unusable_scanner_t1_map_is_dropped_with_a_qc_note(
    phantom: Path, tmp_path: Path, edit_t1: dict[str, object], why: str
) -> None:
    def edit(name: str, ds: Dataset) -> None:
        if "T1MAP" not in name:
            return
        if edit_t1.get("zero"):
            ds.PixelData = np.zeros((ds.Rows, ds.Columns), np.uint16).tobytes()
        ds.RescaleSlope = edit_t1["RescaleSlope"]
        ds.RescaleIntercept = edit_t1.get("RescaleIntercept", "0")

    with pytest.warns(UserWarning) if edit_t1["RescaleSlope"] == "NaN" else _no_warning():
        (slab,) = _exam(phantom, tmp_path, ALL, edit)
    assert slab.t1map is None
    (note,) = slab.qc_notes
    assert note.startswith("slab 1: scanner T1 map not used: T1 map series 7")
    assert why in note
    # T1 still comes from UNI; without UNI the same map fails the exam
    _t1, info, _protocol = slab_t1(slab, _profiles(phantom))
    assert info["t1_source"] == "UNI + protocol lookup table"


class _no_warning:  # noqa: N801 - used like pytest.warns
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def test_an_unusable_t1_map_without_uni_fails_the_exam(phantom: Path, tmp_path: Path) -> None:
    def edit(name: str, ds: Dataset) -> None:
        ds.PixelData = np.zeros((ds.Rows, ds.Columns), np.uint16).tobytes()
        ds.RescaleIntercept, ds.RescaleSlope = "-1000", "1"

    with pytest.raises(ExamError) as caught:
        _exam(phantom, tmp_path, ("T1MAP",), edit)
    text = str(caught.value)
    assert "T1 map series 7" in text and "cannot be used: no value is positive" in text
    assert "no UNI series to compute T1 from" in text


def test_a_t1_map_off_the_grid_is_dropped_with_a_note(phantom: Path, tmp_path: Path) -> None:
    def edit(name: str, ds: Dataset) -> None:
        if "T1MAP" in name:
            ds.PixelSpacing = [0.5, 0.5]

    (slab,) = _exam(phantom, tmp_path, ALL, edit)
    assert slab.t1map is None
    (note,) = slab.qc_notes
    assert "T1 map series 7" in note and "is not on the grid of UNI series 6" in note
    assert "PixelSpacing 0.5\\0.5 mm vs 0.6\\0.6 mm" in note


@pytest.mark.parametrize(
    ("keep", "expected"),
    [
        (("UNI",), "INV1 and INV2 series missing for slab 1: received UNI"),
        (("UNI", "T1MAP"), "INV1 and INV2 series missing for slab 1: received UNI, T1 map"),
        (("INV1", "UNI"), "INV2 series missing for slab 1: received INV1, UNI"),
        # UNI and T1 map carry INV1's flip angle: not a mismatch with INV2's
        (("INV2", "UNI", "T1MAP"), "INV1 series missing for slab 1: received INV2, UNI, T1 map"),
    ],
)
def test_a_missing_inversion_series_is_named_not_the_site_profile(
    phantom: Path, tmp_path: Path, keep: tuple[str, ...], expected: str
) -> None:
    (slab,) = _exam(phantom, tmp_path, keep)
    with pytest.raises(ExamError) as caught:
        slab_t1(slab, _profiles(phantom))
    text = str(caught.value)
    assert text.startswith(expected)
    assert "site_protocols" not in text and "protocol value(s) missing" not in text


def test_an_exam_of_inversions_only_says_uni_is_missing(phantom: Path, tmp_path: Path) -> None:
    with pytest.raises(ExamError) as caught:
        _exam(phantom, tmp_path, ("INV1", "INV2"))
    text = str(caught.value)
    assert text.startswith("UNI series missing")
    assert "received INV1, INV2" in text and "site_protocols" not in text


def test_a_site_profile_with_every_value_stands_in_for_missing_series(
    phantom: Path, tmp_path: Path
) -> None:
    (slab,) = _exam(phantom, tmp_path, ("UNI",))
    profile = SiteProtocol(
        "mp2rage_cspine_0.3",
        echo_spacing_s=0.0067,
        n_excitations=48,
        efficiency=0.96,
        ti1_s=0.8,
        ti2_s=2.7,
        flip1_deg=4.0,
        flip2_deg=5.0,
    )
    _t1, info, _protocol = slab_t1(slab, [profile])
    assert info["protocol"]["sources"]["ti2_s"] == "site profile"
    assert slab.qc_notes == [
        "INV1 and INV2 series missing for slab 1: received UNI; their protocol values came "
        "from the site profile"
    ]


def test_values_the_profile_lacks_still_point_at_the_site_profile(
    phantom: Path, tmp_path: Path
) -> None:
    (slab,) = _exam(phantom, tmp_path, ALL)
    with pytest.raises(ExamError) as caught:
        slab_t1(slab, [])
    text = str(caught.value)
    assert "echo_spacing_s" in text and "site_protocols" in text
    assert "series missing" not in text


def _volume(
    component: Component, array: np.ndarray, affine: np.ndarray, **tags: object
) -> SeriesVolume:
    ds = Dataset()
    for key, value in tags.items():
        setattr(ds, key, value)
    return SeriesVolume("1.2.3", component, array, affine, [ds])


def test_grid_differences_name_each_property() -> None:
    affine = np.diag([4.0, 0.3, 0.3, 1.0])
    reference = _volume(Component.UNI, np.zeros((3, 8, 8)), affine)
    assert grid_differences(reference, reference) == []
    other_affine = affine.copy()
    other_affine[:3, 3] = [0.0, 0.0, 1.0]
    other_affine[1, 1] = 0.4
    other = _volume(Component.INV2, np.zeros((4, 8, 6)), other_affine)
    text = "; ".join(grid_differences(other, reference))
    assert "matrix (Rows x Columns) 8 x 6 vs 8 x 8" in text
    assert "number of slices 4 vs 3" in text
    assert "PixelSpacing 0.4\\0.3 mm vs 0.3\\0.3 mm" in text
    assert "ImagePositionPatient (first slice) 0.00\\0.00\\1.00 mm vs 0.00\\0.00\\0.00 mm" in text


def test_the_odd_series_out_is_named_not_the_majority() -> None:
    def vol(component: Component, number: int, **tags: object) -> SeriesVolume:
        return _volume(component, np.zeros((1, 2, 2)), np.eye(4), SeriesNumber=number, **tags)

    series = {
        "inv1": vol(Component.INV1, 4, RepetitionTime=5000, InversionTime=800, FlipAngle=4),
        "inv2": vol(Component.INV2, 5, RepetitionTime=5000, InversionTime=2700, FlipAngle=5),
        "uni": vol(Component.UNI, 6, RepetitionTime=5030),  # 0.6 %: within tolerance
        "t1map": vol(Component.T1MAP, 7, RepetitionTime=6000),
    }
    (problem,) = header_mismatches(series)
    assert problem.startswith("RepetitionTime 6000 ms in T1 map series 7 vs 5000 ms in INV1")
    assert series_label(series["uni"]) == "UNI series 6"


def test_scanner_t1_plausibility_uses_the_foreground() -> None:
    values = np.zeros((2, 4, 4))
    values[:, 1:3, 1:3] = 1200.0
    t1map = _volume(Component.T1MAP, values, np.eye(4))
    assert scanner_t1_problem(t1map) is None
    foreground = np.ones_like(values, dtype=bool)  # mostly background zeros: median 0
    assert "median in the foreground is 0 ms" in str(scanner_t1_problem(t1map, foreground))


def test_series_notes_turn_a_pass_into_a_warning_and_keep_a_fail() -> None:
    passed = QcVerdict(verdict="pass")
    warned = with_series_notes(passed, ["slab 1: scanner T1 map not used: x"])
    assert warned.verdict == "warn"
    assert warned.reasons == ("warn: slab 1: scanner T1 map not used: x",)
    failed = QcVerdict(verdict="fail", reasons=("fail: SNR 2.0 is below 5",))
    assert with_series_notes(failed, ["n"]).verdict == "fail"
    assert with_series_notes(passed, []) is passed


def test_a_slab_without_the_inv2_the_other_slab_has_is_a_missing_series(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    root = tmp_path_factory.mktemp("two-slabs")
    options = PhantomOptions(matrix=32, voxel_mm=0.6, slices_per_slab=3, slabs=2)
    write_cohort(root, controls=1, patients=0, follow_up=False, seed=5, options=options)
    dicom = root / "control-001" / "exam-1" / "dicom"
    (dropped,) = [f for f in dicom.iterdir() if "INV2" in f.name and f.name.endswith("slab2")]
    shutil.rmtree(dropped)
    with pytest.raises(ExamError) as caught:
        match_slabs(next(iter(find_exam_series(dicom_files(dicom)).values())))
    text = str(caught.value)
    assert "INV2 series missing for slab" in text
    assert ": received INV1, UNI, T1 map (slab(s) [" in text
    assert "grid" not in text and "site_protocols" not in text
