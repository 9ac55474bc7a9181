"""T1 and Z maps as ordinary derived MR images (reports.derived_image): what a viewer's probe
and window show."""

from __future__ import annotations

import shutil
import subprocess
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import MRImageStorage

from reports.derived_image import build_derived_images, decode_values
from reports.identity import DEFAULT_RESEARCH_USE_TEXT, ResultIdentity
from reports.parametric_map import MapKind
from tests.dicom_factory import affine_from_geometry, make_enhanced_mr, make_legacy_series

SHAPE = (4, 32, 40)
OBLIQUE = affine_from_geometry(
    origin_mm=[5.0, -30.0, 60.0],
    row_cos=[0.97, 0.2, 0.05],
    col_cos=[-0.15, 0.9, -0.4],
    voxel_mm=[4.0, 0.3, 0.3],
)
IDENTITY = ResultIdentity(software_version="9.8.7")


@pytest.fixture
def stored() -> np.ndarray:
    return np.random.default_rng(11).integers(0, 4096, SHAPE, dtype=np.uint16)


def _t1_ms() -> np.ndarray:
    values = np.random.default_rng(5).uniform(800.0, 4000.0, SHAPE)
    values[0, :3, :3] = np.nan
    return values


def _round_trip(images: list[Dataset]) -> list[Dataset]:
    out = []
    for image in images:
        buffer = BytesIO()
        image.save_as(buffer, enforce_file_format=True)
        out.append(dcmread(BytesIO(buffer.getvalue())))
    return out


def test_probe_shows_t1_in_ms_on_the_source_grid(stored: np.ndarray) -> None:
    sources = make_legacy_series(stored, OBLIQUE)
    t1 = _t1_ms()
    images = _round_trip(
        build_derived_images(
            sources, t1, MapKind.T1_MS, series_number=9111, identity=IDENTITY, slab=1
        )
    )
    assert len(images) == len(sources)
    assert len({str(ds.SeriesInstanceUID) for ds in images}) == 1
    for k, (image, source) in enumerate(zip(images, sources, strict=True)):
        assert image.SOPClassUID == MRImageStorage
        assert list(image.ImageType) == ["DERIVED", "SECONDARY", "T1 MAP"]
        assert image.StudyInstanceUID == source.StudyInstanceUID
        assert image.FrameOfReferenceUID == source.FrameOfReferenceUID
        for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
            np.testing.assert_allclose(
                [float(v) for v in image[keyword].value],
                [float(v) for v in source[keyword].value],
                err_msg=keyword,
            )
        reference = image.SourceImageSequence[0]
        assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID
        values = decode_values(image)
        finite = np.isfinite(t1[k])
        # the probe (stored x slope + intercept) is T1 in ms within rounding
        assert np.max(np.abs(values[finite] - t1[k][finite])) <= 0.5
        assert np.isnan(values[~finite]).all()
        # a viewer ignoring the rescale still shows ms
        assert float(image.RescaleSlope) == 1.0 and float(image.RescaleIntercept) == 0.0
        assert (float(image.WindowCenter), float(image.WindowWidth)) == (1400.0, 1600.0)
        assert "ms" in image.WindowCenterWidthExplanation
    assert images[0].SeriesDescription == f"cordt1 T1 map ms slab 1 - {DEFAULT_RESEARCH_USE_TEXT}"
    assert DEFAULT_RESEARCH_USE_TEXT in images[0].ImageComments


def test_z_scores_keep_two_decimals_and_no_value_is_padding(stored: np.ndarray) -> None:
    sources = make_legacy_series(stored, OBLIQUE)
    z = np.random.default_rng(2).normal(0.0, 2.0, SHAPE)
    z[1, 5, 5] = np.nan
    z[2, 6, 6] = 500.0  # beyond the int16 range: clipped
    images = _round_trip(
        build_derived_images(sources, z, MapKind.Z_SCORE, series_number=9211, identity=IDENTITY)
    )
    values = np.stack([decode_values(image) for image in images])
    finite = np.isfinite(z) & (np.abs(z) < 300)
    assert np.max(np.abs(values[finite] - z[finite])) <= 0.005 + 1e-9
    assert np.isnan(values[1, 5, 5])
    assert values[2, 6, 6] == pytest.approx(327.67)
    assert (float(images[0].WindowCenter), float(images[0].WindowWidth)) == (0.0, 8.0)
    assert images[0].PixelRepresentation == 1


def test_enhanced_source_frames_become_single_images(stored: np.ndarray) -> None:
    source = make_enhanced_mr(stored, OBLIQUE, frame_order=[2, 0, 3, 1])
    t1 = _t1_ms()
    images = build_derived_images(
        [source], t1, MapKind.T1_MS, series_number=9111, identity=IDENTITY
    )
    assert [int(ds.SourceImageSequence[0].ReferencedFrameNumber) for ds in images] == [1, 2, 3, 4]
    for f, image in enumerate(images):
        frame = source.PerFrameFunctionalGroupsSequence[f]
        np.testing.assert_allclose(
            [float(v) for v in image.ImagePositionPatient],
            [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient],
        )


def test_bad_inputs_are_refused(stored: np.ndarray) -> None:
    sources = make_legacy_series(stored, OBLIQUE)
    with pytest.raises(ValueError, match="does not match"):
        build_derived_images(
            sources, np.zeros((3, 32, 40)), "T1_MS", series_number=1, identity=IDENTITY
        )
    with pytest.raises(ValueError, match="infinite"):
        build_derived_images(
            sources, np.full(SHAPE, np.inf), "T1_MS", series_number=1, identity=IDENTITY
        )
    with pytest.raises(ValueError, match="unknown map kind"):
        build_derived_images(sources, np.zeros(SHAPE), "R2", series_number=1, identity=IDENTITY)
    with pytest.raises(ValueError, match="series_number"):
        build_derived_images(sources, np.zeros(SHAPE), "T1_MS", series_number=0, identity=IDENTITY)


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools not installed")
def test_dciodvfy_finds_no_errors(stored: np.ndarray, tmp_path: Path) -> None:
    for kind, sources in (
        (MapKind.T1_MS, make_legacy_series(stored, OBLIQUE)),
        (MapKind.Z_SCORE, [make_enhanced_mr(stored, OBLIQUE)]),
    ):
        image = build_derived_images(
            sources, _t1_ms(), kind, series_number=9111, identity=IDENTITY
        )[0]
        path = tmp_path / f"{kind}.dcm"
        image.save_as(path, enforce_file_format=True)
        result = subprocess.run(
            ["dciodvfy", "-new", str(path)], capture_output=True, text=True, check=False
        )
        report = result.stdout + result.stderr
        assert "MRImage" in report
        errors = [line for line in report.splitlines() if line.startswith("Error")]
        assert errors == [], kind


def test_a_pacs_sending_the_images_back_does_not_start_a_new_exam(stored: np.ndarray) -> None:
    # MR images with a T1 MAP image type could look like a scanner's T1 map: they carry the
    # software's manufacturer, which the DICOM node and the folder reader skip.
    from service.inputs.exam import own_markers

    (image,) = build_derived_images(
        make_legacy_series(stored[:1], OBLIQUE),
        _t1_ms()[:1],
        MapKind.T1_MS,
        series_number=9111,
        identity=IDENTITY,
    )
    assert own_markers().matches(image)
