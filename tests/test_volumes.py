"""DICOM series -> volume loading (service.inputs.volumes) and NIfTI conversion
(service.inputs.nifti)."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import JPEG2000Lossless, RLELossless, generate_uid

from dicom_node.components import Component
from service.inputs.nifti import from_nifti, to_nifti
from service.inputs.volumes import (
    SeriesVolume,
    combine_echoes,
    group_by_series,
    load_series,
    same_grid,
)
from tests.dicom_factory import (
    affine_from_geometry,
    make_enhanced_mr,
    make_legacy_series,
    write_datasets,
)

SHAPE = (6, 24, 20)  # k, j, i: non-square on purpose, so a transposition shows
OBLIQUE = affine_from_geometry(
    origin_mm=[12.5, -40.0, 80.0],
    row_cos=[0.95, 0.25, 0.1],
    col_cos=[-0.2, 0.8, -0.55],
    voxel_mm=[4.0, 0.3, 0.35],
)
SLOPE, INTERCEPT = 0.5, -1024.0


@pytest.fixture
def stored() -> np.ndarray:
    return np.random.default_rng(7).integers(0, 4096, SHAPE, dtype=np.uint16)


def _load(datasets: list[Dataset], directory: Path) -> SeriesVolume:
    return load_series(write_datasets(datasets, directory))


def test_shuffled_files_are_sorted_by_position_not_instance_number(
    stored: np.ndarray, tmp_path: Path
) -> None:
    datasets = make_legacy_series(stored, OBLIQUE, rescale=(SLOPE, INTERCEPT))
    volume = _load(datasets, tmp_path)

    np.testing.assert_array_equal(volume.array, stored * SLOPE + INTERCEPT)
    assert volume.array.dtype == np.float64
    assert volume.series_uid == datasets[0].SeriesInstanceUID
    assert volume.component is Component.UNI
    assert volume.frame_sources == [(ds.SOPInstanceUID, None) for ds in datasets]
    assert [ds.SOPInstanceUID for ds in volume.datasets] == [ds.SOPInstanceUID for ds in datasets]


def test_affine_maps_voxel_centres_to_each_slice_position(
    stored: np.ndarray, tmp_path: Path
) -> None:
    volume = _load(make_legacy_series(stored, OBLIQUE), tmp_path)

    np.testing.assert_allclose(volume.affine_lps, OBLIQUE, atol=1e-5)
    for k, ds in enumerate(volume.datasets):
        np.testing.assert_allclose(
            (volume.affine_lps @ [k, 0, 0, 1])[:3], [float(v) for v in ds.ImagePositionPatient]
        )
        # last voxel of the slice: rows go along the column cosines, columns along the rows
        row_cos = np.array([float(v) for v in ds.ImageOrientationPatient[:3]])
        col_cos = np.array([float(v) for v in ds.ImageOrientationPatient[3:]])
        row_mm, col_mm = (float(v) for v in ds.PixelSpacing)
        j, i = SHAPE[1] - 1, SHAPE[2] - 1
        expected = np.array([float(v) for v in ds.ImagePositionPatient])
        expected += j * row_mm * col_cos + i * col_mm * row_cos
        np.testing.assert_allclose((volume.affine_lps @ [k, j, i, 1])[:3], expected, atol=1e-6)
    np.testing.assert_allclose(volume.voxel_mm, (4.0, 0.3, 0.35), atol=1e-6)


def test_slices_stored_against_the_normal_are_reversed(stored: np.ndarray, tmp_path: Path) -> None:
    """A stack whose positions decrease along row x col comes out in increasing order."""
    reversed_affine = OBLIQUE.copy()
    reversed_affine[:3, 0] *= -1
    volume = _load(make_legacy_series(stored, reversed_affine), tmp_path)

    np.testing.assert_array_equal(volume.array, stored[::-1])
    np.testing.assert_allclose(volume.affine_lps[:3, 0], OBLIQUE[:3, 0], atol=1e-5)
    last = (reversed_affine @ [SHAPE[0] - 1, 0, 0, 1])[:3]
    np.testing.assert_allclose(volume.affine_lps[:3, 3], last, atol=1e-5)


@pytest.mark.parametrize("shared_geometry", [True, False])
@pytest.mark.parametrize("per_frame_rescale", [True, False])
def test_enhanced_mr_gives_the_same_volume_as_legacy(
    stored: np.ndarray, tmp_path: Path, shared_geometry: bool, per_frame_rescale: bool
) -> None:
    legacy = _load(make_legacy_series(stored, OBLIQUE, rescale=(SLOPE, INTERCEPT)), tmp_path / "a")
    frame_order = [3, 0, 5, 1, 4, 2]
    rescale = [(SLOPE, INTERCEPT)] * SHAPE[0] if per_frame_rescale else (SLOPE, INTERCEPT)
    enhanced_ds = make_enhanced_mr(
        stored, OBLIQUE, rescale=rescale, frame_order=frame_order, shared_geometry=shared_geometry
    )
    enhanced = _load([enhanced_ds], tmp_path / "b")

    np.testing.assert_array_equal(enhanced.array, legacy.array)
    np.testing.assert_allclose(enhanced.affine_lps, legacy.affine_lps, atol=1e-9)
    assert [frame for _, frame in enhanced.frame_sources] == [
        frame_order.index(k) + 1 for k in range(SHAPE[0])
    ]
    assert len(enhanced.datasets) == 1
    # back into the order of the frames, as result writers need it
    np.testing.assert_array_equal(
        enhanced.to_source_order(enhanced.array), legacy.array[frame_order]
    )


def test_per_frame_rescale_differs_between_frames(stored: np.ndarray, tmp_path: Path) -> None:
    rescale = [(1.0 + k, float(k)) for k in range(SHAPE[0])]
    volume = _load([make_enhanced_mr(stored, OBLIQUE, rescale=rescale)], tmp_path)
    expected = stored * np.arange(1.0, 7.0)[:, None, None] + np.arange(6.0)[:, None, None]
    np.testing.assert_array_equal(volume.array, expected)


def test_missing_rescale_slope_means_one(stored: np.ndarray, tmp_path: Path) -> None:
    volume = _load(make_legacy_series(stored, OBLIQUE, rescale=None), tmp_path)
    np.testing.assert_array_equal(volume.array, stored.astype(np.float64))


@pytest.mark.parametrize("syntax", [JPEG2000Lossless, RLELossless], ids=["j2k", "rle"])
def test_compressed_series_decode_equal_to_uncompressed(tmp_path: Path, syntax: str) -> None:
    # J2K needs at least 32 pixels per side for its default 6 resolution levels
    stored = np.random.default_rng(3).integers(0, 4096, (3, 64, 72), dtype=np.uint16)
    datasets = make_legacy_series(stored, OBLIQUE, rescale=(SLOPE, INTERCEPT))
    plain = _load(datasets, tmp_path / "plain")
    datasets = make_legacy_series(stored, OBLIQUE, rescale=(SLOPE, INTERCEPT))
    for ds in datasets:
        ds.compress(syntax)
    paths = write_datasets(datasets, tmp_path / "compressed")
    assert dcmread(paths[0], stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax

    compressed = load_series(paths)
    np.testing.assert_array_equal(compressed.array, plain.array)


def test_compressed_enhanced_mr_decodes(stored: np.ndarray, tmp_path: Path) -> None:
    ds = make_enhanced_mr(stored, OBLIQUE, frame_order=[5, 4, 3, 2, 1, 0])
    ds.compress(RLELossless)
    volume = _load([ds], tmp_path)
    np.testing.assert_array_equal(volume.array, stored)


def test_pixel_data_is_not_kept_twice(stored: np.ndarray, tmp_path: Path) -> None:
    volume = _load(make_legacy_series(stored, OBLIQUE), tmp_path)
    assert all("PixelData" not in ds for ds in volume.datasets)
    assert all("ImagePositionPatient" in ds for ds in volume.datasets)


def test_single_slice_uses_slice_thickness(stored: np.ndarray, tmp_path: Path) -> None:
    volume = _load(make_legacy_series(stored[:1], OBLIQUE), tmp_path)
    assert volume.array.shape == (1, *SHAPE[1:])
    np.testing.assert_allclose(volume.voxel_mm, (4.0, 0.3, 0.35), atol=1e-6)


# ---- errors: each names the series UID, never the patient -----------------------------------


def _series(stored: np.ndarray) -> list[Dataset]:
    return make_legacy_series(stored, OBLIQUE, patient_name="Secret^Name")


def _expect_error(datasets: list[Dataset], directory: Path, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        _load(datasets, directory)
    text = str(info.value)
    assert "Secret" not in text and "PHANTOM-001" not in text
    uids = {str(ds.SeriesInstanceUID) for ds in datasets}
    assert any(uid in text for uid in uids)


def test_mixed_series_is_refused(stored: np.ndarray, tmp_path: Path) -> None:
    datasets = _series(stored)
    datasets[2].SeriesInstanceUID = generate_uid()
    _expect_error(datasets, tmp_path, "mixed series")


def test_inconsistent_orientation_is_refused(stored: np.ndarray, tmp_path: Path) -> None:
    datasets = _series(stored)
    datasets[3].ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    _expect_error(datasets, tmp_path, "inconsistent orientation")


def test_inconsistent_pixel_spacing_is_refused(stored: np.ndarray, tmp_path: Path) -> None:
    datasets = _series(stored)
    datasets[1].PixelSpacing = [0.31, 0.35]
    _expect_error(datasets, tmp_path, "inconsistent pixel spacing")


def test_duplicate_slice_position_is_refused(stored: np.ndarray, tmp_path: Path) -> None:
    datasets = _series(stored)
    datasets[4].ImagePositionPatient = datasets[3].ImagePositionPatient
    _expect_error(datasets, tmp_path, "duplicate slice position")


def test_gap_is_reported_as_missing_slice(stored: np.ndarray, tmp_path: Path) -> None:
    datasets = _series(stored)
    del datasets[2]
    _expect_error(datasets, tmp_path, "missing slice")


def test_non_uniform_spacing_beyond_one_percent_is_refused(
    stored: np.ndarray, tmp_path: Path
) -> None:
    datasets = _series(stored)
    shifted = OBLIQUE @ [3.1, 0, 0, 1]  # 0.4 mm off on a 4 mm step
    datasets[3].ImagePositionPatient = [round(float(v), 6) for v in shifted[:3]]
    _expect_error(datasets, tmp_path, "non-uniform slice spacing")


def test_spacing_jitter_within_tolerance_is_accepted(stored: np.ndarray, tmp_path: Path) -> None:
    datasets = _series(stored)
    jittered = OBLIQUE @ [3.002, 0, 0, 1]  # 0.008 mm = 0.2 % of the step
    datasets[3].ImagePositionPatient = [round(float(v), 6) for v in jittered[:3]]
    assert _load(datasets, tmp_path).array.shape == SHAPE


def test_several_frames_of_reference_are_refused(stored: np.ndarray, tmp_path: Path) -> None:
    datasets = _series(stored)
    datasets[0].FrameOfReferenceUID = generate_uid()
    _expect_error(datasets, tmp_path, "frames of reference")


def test_missing_pixel_data_is_refused(stored: np.ndarray, tmp_path: Path) -> None:
    datasets = _series(stored)
    del datasets[1].PixelData
    _expect_error(datasets, tmp_path, "no pixel data")


def test_no_files_is_refused() -> None:
    with pytest.raises(ValueError, match="no files"):
        load_series([])


def test_slice_off_the_line_is_refused(stored: np.ndarray, tmp_path: Path) -> None:
    datasets = _series(stored)
    moved = OBLIQUE @ [3, 0, 1, 1]  # one column (0.35 mm) sideways, spacing along n intact
    datasets[3].ImagePositionPatient = [round(float(v), 6) for v in moved[:3]]
    _expect_error(datasets, tmp_path, "not on a straight line")


def test_gaps_within_one_percent_of_the_mean_are_accepted(
    stored: np.ndarray, tmp_path: Path
) -> None:
    """highdicom's rule: each gap within 1 % of the mean gap (here 3.97 and 4.03 mm)."""
    datasets = _series(stored)
    shifted = OBLIQUE @ [3.0075, 0, 0, 1]
    datasets[3].ImagePositionPatient = [round(float(v), 6) for v in shifted[:3]]
    volume = _load(datasets, tmp_path)
    np.testing.assert_allclose(volume.affine_lps, OBLIQUE, atol=1e-5)


# ---- where highdicom's own volume construction is not used, and why ----------------------


def _sheared(tilt_deg: float) -> np.ndarray:
    """OBLIQUE with its slice step leaning along the rows by ``tilt_deg`` (a tilted stack)."""
    affine = OBLIQUE.copy()
    row_cos = OBLIQUE[:3, 2] / np.linalg.norm(OBLIQUE[:3, 2])
    affine[:3, 0] += row_cos * 4.0 * np.tan(np.deg2rad(tilt_deg))
    return affine


def test_tilted_stack_keeps_its_positions_where_highdicom_flattens_it(
    stored: np.ndarray, tmp_path: Path
) -> None:
    datasets = make_legacy_series(stored, _sheared(1.0))
    paths = write_datasets(datasets, tmp_path)
    volume = load_series(paths)
    by_highdicom = hd.get_volume_from_series([dcmread(path) for path in paths])

    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in volume.datasets])
    ours = np.array([(volume.affine_lps @ [k, 0, 0, 1])[:3] for k in range(SHAPE[0])])
    np.testing.assert_allclose(ours, positions, atol=1e-5)
    # highdicom steps along the normal: its slices drift off their real positions
    # (its volume runs the other way along the normal: right-handed)
    theirs = np.array([(by_highdicom.affine @ [k, 0, 0, 1])[:3] for k in range(SHAPE[0])])
    drift_mm = np.linalg.norm(theirs - positions[::-1], axis=1)
    assert drift_mm[-1] > 0.3  # 5 steps x 4 mm x tan(1 deg) = 0.35 mm


def test_steeper_tilt_loads_where_highdicom_refuses_it(stored: np.ndarray, tmp_path: Path) -> None:
    paths = write_datasets(make_legacy_series(stored, _sheared(5.0)), tmp_path)
    with pytest.raises(ValueError, match="not a regularly-spaced volume"):
        hd.get_volume_from_series([dcmread(path) for path in paths])
    volume = load_series(paths)
    np.testing.assert_allclose(volume.affine_lps, _sheared(5.0), atol=1e-5)


def test_single_slice_without_spacing_between_slices_uses_its_thickness(
    stored: np.ndarray, tmp_path: Path
) -> None:
    datasets = make_legacy_series(stored[:1], OBLIQUE)
    del datasets[0].SpacingBetweenSlices
    paths = write_datasets(datasets, tmp_path)
    assert load_series(paths).voxel_mm[0] == pytest.approx(4.0)
    assert hd.get_volume_from_series([dcmread(paths[0])]).spacing_between_slices == pytest.approx(
        1.0
    )


def test_enhanced_multi_echo_is_refused_by_highdicom(tmp_path: Path) -> None:
    """Several echoes in one Enhanced MR instance: highdicom has no echo dimension."""
    echoes = _echoes()
    ds = make_enhanced_mr(np.concatenate(echoes), OBLIQUE)
    n = SHAPE[0]
    for frame, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        position = OBLIQUE @ [frame % n, 0, 0, 1]
        item.PlanePositionSequence[0].ImagePositionPatient = [
            round(float(v), 6) for v in position[:3]
        ]
        echo = Dataset()
        echo.EffectiveEchoTime = ECHO_TIMES_MS[frame // n]
        item.MREchoSequence = [echo]
    paths = write_datasets([ds], tmp_path)
    with pytest.raises(RuntimeError, match="Multiple frames found"):
        hd.imread(paths[0]).get_volume()
    assert load_series(paths).echo_times_ms == ECHO_TIMES_MS


def test_rescale_is_applied_where_highdicom_prefers_a_real_world_value_map(
    stored: np.ndarray, tmp_path: Path
) -> None:
    """Philips-style headers carry both; the loader keeps RescaleSlope/RescaleIntercept."""
    datasets = make_legacy_series(stored, OBLIQUE, rescale=(SLOPE, INTERCEPT))
    for ds in datasets:
        mapping = Dataset()
        mapping.RealWorldValueFirstValueMapped = 0
        mapping.RealWorldValueLastValueMapped = 4095
        mapping.RealWorldValueSlope = 2.0
        mapping.RealWorldValueIntercept = 0.0
        mapping.LUTExplanation = "other units"
        mapping.LUTLabel = "other"
        mapping.MeasurementUnitsCodeSequence = [
            Dataset.from_json(
                {
                    "00080100": {"vr": "SH", "Value": ["1"]},
                    "00080102": {"vr": "SH", "Value": ["UCUM"]},
                    "00080104": {"vr": "LO", "Value": ["no units"]},
                }
            )
        ]
        ds.RealWorldValueMappingSequence = [mapping]
    paths = write_datasets(datasets, tmp_path)

    np.testing.assert_array_equal(load_series(paths).array, stored * SLOPE + INTERCEPT)
    by_highdicom = hd.get_volume_from_series([dcmread(path) for path in paths])
    np.testing.assert_array_equal(by_highdicom.array, stored[::-1] * 2.0)


# ---- grouping and grids ----------------------------------------------------------------------


def test_group_by_series_splits_a_folder(stored: np.ndarray, tmp_path: Path) -> None:
    first = make_legacy_series(stored, OBLIQUE)
    second = make_legacy_series(stored[:3], OBLIQUE, series_number=2)
    paths = write_datasets(first + second, tmp_path, seed=3)

    groups = group_by_series(paths)

    assert {uid: len(files) for uid, files in groups.items()} == {
        first[0].SeriesInstanceUID: 6,
        second[0].SeriesInstanceUID: 3,
    }
    assert load_series(groups[second[0].SeriesInstanceUID]).array.shape == (3, *SHAPE[1:])


def test_group_by_series_refuses_non_dicom(tmp_path: Path) -> None:
    junk = tmp_path / "notes.txt"
    junk.write_text("not DICOM")
    with pytest.raises(ValueError, match="not a DICOM file"):
        group_by_series([junk])


def test_same_grid(stored: np.ndarray, tmp_path: Path) -> None:
    frame_uid = generate_uid()

    def load(
        data: np.ndarray, affine: np.ndarray, name: str, uid: str | None = frame_uid
    ) -> SeriesVolume:
        series = make_legacy_series(data, affine, frame_of_reference_uid=uid)
        return _load(series, tmp_path / name)

    near, far = OBLIQUE.copy(), OBLIQUE.copy()
    near[:3, 3] += [0.01, 0.0, 0.0]
    far[:3, 3] += [0.0, 0.2, 0.0]
    a = load(stored, OBLIQUE, "a")
    b = load(stored, near, "b")
    c = load(stored, far, "c")
    d = load(stored[:5], OBLIQUE, "d")
    e = load(stored, OBLIQUE, "e", uid=None)  # another frame of reference

    assert same_grid(a, b)
    assert not same_grid(a, c)
    assert same_grid(a, c, tol_mm=0.25)
    assert not same_grid(a, d)
    assert not same_grid(a, e)


# ---- multi-echo gradient echo ---------------------------------------------------------------

ECHO_TIMES_MS = (3.1, 8.2, 13.3)
GRE_TYPE = ("ORIGINAL", "PRIMARY", "M", "ND")


def _echoes() -> list[np.ndarray]:
    rng = np.random.default_rng(11)
    return [rng.integers(0, 2000, SHAPE, dtype=np.uint16) for _ in ECHO_TIMES_MS]


def _rss(echoes: list[np.ndarray], slope: float = 1.0, intercept: float = 0.0) -> np.ndarray:
    return np.sqrt(sum((e.astype(float) * slope + intercept) ** 2 for e in echoes))


def test_legacy_multi_echo_series_is_one_root_sum_of_squares_volume(tmp_path: Path) -> None:
    echoes = _echoes()
    series_uid, frame_uid = generate_uid(), generate_uid()
    datasets = []
    for number, (stored, echo_ms) in enumerate(zip(echoes, ECHO_TIMES_MS, strict=True), 1):
        for ds in make_legacy_series(
            stored,
            OBLIQUE,
            rescale=(SLOPE, 0.0),
            series_uid=series_uid,
            frame_of_reference_uid=frame_uid,
            image_type=GRE_TYPE,
            series_description="cord_axial_gre",
        ):
            ds.EchoNumbers, ds.EchoTime = number, echo_ms
            datasets.append(ds)

    volume = _load(datasets, tmp_path)

    np.testing.assert_allclose(volume.array, _rss(echoes, SLOPE))
    np.testing.assert_allclose(volume.affine_lps, OBLIQUE, atol=1e-5)
    assert volume.echo_times_ms == ECHO_TIMES_MS and volume.n_echoes == 3
    assert volume.component is Component.T2STAR  # recognised without a T2* description
    assert len(volume.datasets) == SHAPE[0] and len(volume.frame_sources) == SHAPE[0]
    assert all(int(ds.EchoNumbers) == 1 for ds in volume.datasets)


def test_enhanced_multi_echo_instance_is_combined_like_legacy(tmp_path: Path) -> None:
    echoes = _echoes()
    ds = make_enhanced_mr(np.concatenate(echoes), OBLIQUE)
    ds.ImageType = list(GRE_TYPE)
    ds.SeriesDescription = "cord_axial_gre"
    ds.EchoPulseSequence = "GRADIENT"
    n = SHAPE[0]
    for frame, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        position = OBLIQUE @ [frame % n, 0, 0, 1]
        item.PlanePositionSequence[0].ImagePositionPatient = [
            round(float(v), 6) for v in position[:3]
        ]
        echo = Dataset()
        echo.EffectiveEchoTime = ECHO_TIMES_MS[frame // n]
        item.MREchoSequence = [echo]

    volume = _load([ds], tmp_path)

    np.testing.assert_allclose(volume.array, _rss(echoes))
    assert volume.echo_times_ms == ECHO_TIMES_MS
    assert volume.component is Component.T2STAR
    assert [frame for _, frame in volume.frame_sources] == list(range(1, n + 1))


def test_an_echo_missing_a_slice_is_refused(tmp_path: Path) -> None:
    echoes = _echoes()[:2]
    series_uid, frame_uid = generate_uid(), generate_uid()
    datasets = []
    for number, stored in enumerate(echoes, 1):
        for ds in make_legacy_series(
            stored, OBLIQUE, series_uid=series_uid, frame_of_reference_uid=frame_uid
        ):
            ds.EchoNumbers, ds.EchoTime = number, ECHO_TIMES_MS[number - 1]
            datasets.append(ds)
    del datasets[-1]  # the last slice of echo 2
    with pytest.raises(ValueError, match="echo 2 does not cover the slice positions"):
        _load(datasets, tmp_path)


def _single_echo(stored: np.ndarray, echo_ms: float, frame_uid: str, path: Path) -> SeriesVolume:
    datasets = make_legacy_series(
        stored, OBLIQUE, frame_of_reference_uid=frame_uid, image_type=GRE_TYPE
    )
    for ds in datasets:
        ds.EchoTime = echo_ms
    return _load(datasets, path)


def test_one_series_per_echo_is_combined(tmp_path: Path) -> None:
    echoes = _echoes()
    frame_uid = generate_uid()
    volumes = [
        _single_echo(stored, echo_ms, frame_uid, tmp_path / str(echo_ms))
        for stored, echo_ms in zip(echoes, ECHO_TIMES_MS, strict=True)
    ]
    combined = combine_echoes(volumes[::-1])
    np.testing.assert_allclose(combined.array, _rss(echoes))
    assert combined.echo_times_ms == ECHO_TIMES_MS
    assert combined.series_uid == volumes[0].series_uid  # the earliest echo's headers

    with pytest.raises(ValueError, match="share an echo time"):
        combine_echoes([volumes[0], volumes[0]])
    shifted = OBLIQUE.copy()
    shifted[:3, 3] += 5.0
    elsewhere = _load(
        make_legacy_series(echoes[0], shifted, frame_of_reference_uid=frame_uid), tmp_path / "x"
    )
    with pytest.raises(ValueError, match="not on the grid"):
        combine_echoes([volumes[0], elsewhere])


# ---- NIfTI -------------------------------------------------------------------------------------


def test_nifti_is_ijk_and_ras() -> None:
    array = np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE)
    img = to_nifti(array, OBLIQUE)

    assert img.shape == (SHAPE[2], SHAPE[1], SHAPE[0])
    k, j, i = 4, 17, 3
    assert img.get_fdata()[i, j, k] == array[k, j, i]
    lps = (OBLIQUE @ [k, j, i, 1])[:3]
    np.testing.assert_allclose((img.affine @ [i, j, k, 1])[:3], lps * [-1, -1, 1])
    axial = affine_from_geometry([0, 0, 0], [1, 0, 0], [0, 1, 0], [4, 0.3, 0.3])
    assert nib.aff2axcodes(to_nifti(array, axial).affine) == ("L", "P", "S")


def test_nifti_round_trip_in_memory_is_exact() -> None:
    array = np.random.default_rng(1).normal(size=SHAPE)
    back, affine = from_nifti(to_nifti(array, OBLIQUE))
    np.testing.assert_array_equal(back, array)
    np.testing.assert_array_equal(affine, OBLIQUE)


def test_nifti_round_trip_through_a_file(tmp_path: Path) -> None:
    mask = np.zeros(SHAPE, dtype=np.uint8)
    mask[2, 5:9, 3:7] = 1
    nib.save(to_nifti(mask, OBLIQUE), tmp_path / "mask.nii.gz")
    back, affine = from_nifti(nib.load(tmp_path / "mask.nii.gz"))
    np.testing.assert_array_equal(back, mask)
    assert back.dtype == np.uint8
    np.testing.assert_allclose(affine, OBLIQUE, atol=1e-4)


def test_nifti_refuses_non_3d() -> None:
    with pytest.raises(ValueError, match="3-D"):
        to_nifti(np.zeros((3, 4)), np.eye(4))
    with pytest.raises(ValueError, match="3-D"):
        from_nifti(nib.Nifti1Image(np.zeros((2, 3, 4, 2)), np.eye(4)))
