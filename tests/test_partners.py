"""B1 maps and T2* series on their own grids: which slab they serve, and how they are read
on the slab's grid (service.inputs.partners, service.inputs.exam.match_slabs,
service.inputs.t1_map.slab_t1)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from dicom_node.components import Component
from processing.mp2rage import MP2RAGEProtocol, uni_from_t1, uni_to_stored
from service.inputs.exam import Slab, find_exam_series, match_slabs
from service.inputs.partners import (
    assign_partners,
    combine_echo_series,
    describe_grid,
    partner_fit,
    partner_on_grid,
)
from service.inputs.protocol import SiteProtocol
from service.inputs.t1_map import slab_t1
from service.inputs.volumes import SeriesVolume
from tests.dicom_factory import make_legacy_series, write_datasets
from tests.grids import tilted_affine, world_mm

FRAME = "1.2.826.0.1.3680043.8.498.1"
PROTOCOL = MP2RAGEProtocol(5.0, 0.8, 2.7, 4.0, 5.0, 0.0067, 48, 0.96)
PROFILE = [
    SiteProtocol(
        "mp2rage_cord", echo_spacing_s=0.0067, n_excitations=48, efficiency=0.96,
        b1_map_scale=1000.0,
    )
]  # fmt: skip


def _b1_field(points_mm: np.ndarray) -> np.ndarray:
    """A smooth transmit field, about 0.86 to 1.22 over slab 1."""
    return 1.0 + 0.008 * points_mm[..., 0] - 0.006 * points_mm[..., 1] + 0.004 * points_mm[..., 2]


def _volume(
    component: Component,
    array: np.ndarray,
    affine: np.ndarray,
    *,
    frame: str | None = FRAME,
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "M", "ND"),
    **header: object,
) -> SeriesVolume:
    ds = Dataset()
    if frame:
        ds.FrameOfReferenceUID = frame
    ds.ImageType = list(image_type)
    ds.ProtocolName = "mp2rage_cord"
    for keyword, value in header.items():
        setattr(ds, keyword, value)
    return SeriesVolume(generate_uid(), component, np.asarray(array, float), affine, [ds])


SLAB_SHAPE = (6, 40, 40)
SLAB_1 = tilted_affine((4.0, 0.5, 0.5), (-10.0, -10.0, 0.0))
SLAB_2 = tilted_affine((4.0, 0.5, 0.5), (-10.0, -10.0, -24.0))
COARSE = tilted_affine((5.0, 3.5, 3.5), (-30.0, -30.0, -35.0), tilt_deg=12.0)
COARSE_SHAPE = (14, 18, 18)


def _uni(affine: np.ndarray) -> SeriesVolume:
    return _volume(Component.UNI, np.zeros(SLAB_SHAPE), affine)


# ---- which slab a candidate serves -----------------------------------------------------------


def test_one_coarse_oblique_b1_map_serves_both_slabs() -> None:
    b1 = _volume(Component.B1MAP, np.ones(COARSE_SHAPE), COARSE)
    chosen, notes = assign_partners([_uni(SLAB_1), _uni(SLAB_2)], [b1], "B1 map")
    assert chosen == [b1, b1] and notes == [[], []]
    assert partner_fit(b1, _uni(SLAB_1)).fraction == pytest.approx(1.0)
    assert describe_grid(b1) == "3.5 x 3.5 x 5 mm"


def test_another_frame_of_reference_is_not_used_and_says_why() -> None:
    b1 = _volume(Component.B1MAP, np.ones(COARSE_SHAPE), COARSE, frame="1.2.3.999")
    chosen, notes = assign_partners([_uni(SLAB_1)], [b1], "B1 map")
    assert chosen == [None]
    assert notes[0] == [
        f"B1 map not used: series {b1.series_uid} lies in another frame of reference "
        "(FrameOfReferenceUID differs from the slab's: the patient was repositioned or it "
        "belongs to another exam)"
    ]
    unknown = _volume(Component.B1MAP, np.ones(COARSE_SHAPE), COARSE, frame=None)
    assert "frame of reference" in str(partner_fit(unknown, _uni(SLAB_1)).reason)


def test_a_map_covering_too_little_of_a_slab_is_not_used_for_it() -> None:
    # covers slab 1 (z 0..20 mm) only up to z = 8 mm: 3 of 6 slices minus a little
    low = _volume(
        Component.B1MAP, np.ones((3, 30, 30)), tilted_affine((4.0, 2.0, 2.0), (-30, -30, -6))
    )
    fit = partner_fit(low, _uni(SLAB_1))
    assert 0.3 < fit.fraction < 0.5 and not fit.usable
    assert f"covers {100 * fit.fraction:.0f} % of the slab (at least 50 % needed)" in str(
        fit.reason
    )


def test_the_candidate_covering_most_of_a_slab_wins() -> None:
    half = _volume(
        Component.B1MAP, np.ones((4, 30, 30)), tilted_affine((4.0, 2.0, 2.0), (-30, -30, 4))
    )
    full = _volume(Component.B1MAP, np.ones(COARSE_SHAPE), COARSE)
    chosen, _ = assign_partners([_uni(SLAB_1)], [half, full], "B1 map")
    assert chosen == [full]
    # two series on the slab's own grid (e.g. the B1 map and its magnitude image): the one
    # whose ImageType names the map wins
    magnitude = _volume(Component.B1MAP, np.ones(SLAB_SHAPE), SLAB_1)
    named = _volume(
        Component.B1MAP, np.ones(SLAB_SHAPE), SLAB_1, image_type=("ORIGINAL", "FLIP ANGLE MAP")
    )
    chosen, _ = assign_partners([_uni(SLAB_1)], [magnitude, named, full], "B1 map")
    assert chosen == [named]


# ---- reading a partner on the slab's grid ----------------------------------------------------


def test_partner_on_grid_resamples_a_smooth_field_and_marks_uncovered_voxels_nan() -> None:
    source_affine = tilted_affine((5.0, 3.5, 3.5), (-30.0, -30.0, 8.0), tilt_deg=12.0)
    source_shape = (6, 18, 18)
    b1 = _volume(Component.B1MAP, _b1_field(world_mm(source_shape, source_affine)), source_affine)
    reference = _uni(SLAB_1)
    on_grid, covered = partner_on_grid(b1, reference)
    inside = np.isfinite(on_grid)
    assert on_grid.shape == SLAB_SHAPE and on_grid.dtype == np.float64
    assert covered == pytest.approx(inside.mean()) and 0.4 < covered < 0.9
    assert not inside[0].any() and inside[-1].all()  # the map starts above the first slices
    expected = _b1_field(world_mm(SLAB_SHAPE, SLAB_1))
    # linear interpolation is exact between the map's voxel centres (the outer half voxel
    # repeats the edge value)
    index = world_mm(SLAB_SHAPE, np.linalg.inv(source_affine) @ SLAB_1)
    between = np.all((index >= 0) & (index <= np.array(source_shape) - 1), axis=-1)
    assert between.sum() > 1000
    np.testing.assert_allclose(on_grid[between], expected[between], atol=1e-9)
    np.testing.assert_allclose(on_grid[inside], expected[inside], atol=0.02)
    # same grid: the values themselves
    same = _volume(Component.B1MAP, expected, SLAB_1)
    values, covered = partner_on_grid(same, reference)
    np.testing.assert_array_equal(values, expected)
    assert covered == 1.0
    with pytest.raises(ValueError, match="not in the frame of reference"):
        partner_on_grid(_volume(Component.B1MAP, expected, COARSE, frame="9.9"), reference)


def test_echo_series_of_one_grid_are_combined_and_others_kept() -> None:
    def echo(value: float, echo_ms: float, affine: np.ndarray = COARSE) -> SeriesVolume:
        volume = _volume(Component.T2STAR, np.full(COARSE_SHAPE, value), affine)
        volume.echo_times_ms = (echo_ms,)
        return volume

    first, second, medic = echo(3.0, 4.0), echo(4.0, 9.0), echo(7.0, 6.0, SLAB_1)
    out = combine_echo_series([first, medic, second])
    assert len(out) == 2
    assert out[0].echo_times_ms == (4.0, 9.0) and np.allclose(out[0].array, 5.0)
    assert out[1] is medic


# ---- match_slabs on DICOM files --------------------------------------------------------------


def _write(
    folder: Path,
    stored: np.ndarray,
    affine: np.ndarray,
    frame: str,
    study: str,
    *,
    image_type: tuple[str, ...],
    description: str,
    **header: object,
) -> None:
    datasets = make_legacy_series(
        stored.astype(np.uint16),
        affine,
        study_uid=study,
        frame_of_reference_uid=frame,
        image_type=image_type,
        series_description=description,
    )
    for ds in datasets:
        ds.ProtocolName = "mp2rage_cord"
        for keyword, value in header.items():
            setattr(ds, keyword, value)
    write_datasets(datasets, folder)


def test_match_slabs_gives_each_slab_the_b1_map_and_t2star_covering_it(tmp_path: Path) -> None:
    study, frame = generate_uid(), generate_uid()
    data = np.full(SLAB_SHAPE, 100)
    for n, affine in enumerate((SLAB_1, SLAB_2)):
        for kind, image_type in (
            ("UNI", ("DERIVED", "PRIMARY", "M", "ND", "UNI")),
            ("INV1", ("ORIGINAL", "PRIMARY", "M", "ND")),
            ("INV2", ("ORIGINAL", "PRIMARY", "M", "ND")),
        ):
            _write(
                tmp_path / f"{kind}{n}", data, affine, frame, study, image_type=image_type,
                description=f"mp2rage_{kind}", ScanningSequence=["GR", "IR"],
            )  # fmt: skip
    b1_values = np.full(COARSE_SHAPE, 950)
    _write(
        tmp_path / "b1", b1_values, COARSE, frame, study,
        image_type=("ORIGINAL", "PRIMARY", "FLIP ANGLE MAP", "ND"), description="tfl_b1map",
    )  # fmt: skip
    _write(
        tmp_path / "b1_other_exam", b1_values, COARSE, generate_uid(), study,
        image_type=("ORIGINAL", "PRIMARY", "FLIP ANGLE MAP", "ND"), description="b1map_old",
    )  # fmt: skip
    # a multi-echo GRE sent as one series per echo, renamed by the site: the first echo alone
    # looks like any single-echo gradient echo
    gre = tilted_affine((3.0, 0.6, 0.6), (-12.0, -12.0, -30.0))
    for number, (value, echo_ms) in enumerate(((300, 4.0), (400, 9.0)), start=1):
        _write(
            tmp_path / f"gre_echo{number}", np.full((18, 40, 40), value), gre, frame, study,
            image_type=("ORIGINAL", "PRIMARY", "M", "ND"), description="cord_axial",
            EchoNumbers=number, EchoTime=echo_ms, ProtocolName="cord_gre",
        )  # fmt: skip

    exam = find_exam_series(sorted(tmp_path.rglob("*.dcm")))[study]
    assert len(exam.series(Component.T2STAR)) == 2 and Component.OTHER not in exam.by_component
    slabs = match_slabs(exam)

    assert [s.index for s in slabs] == [1, 2]
    for slab in slabs:
        assert slab.b1map is not None and slab.b1map.frame_of_reference_uid == frame
        assert slab.t2star is not None and slab.t2star.echo_times_ms == (4.0, 9.0)
        assert np.allclose(slab.t2star.array, 500.0)  # root sum of squares of 300 and 400
        assert slab.inv1 is not None and slab.inv2 is not None
    assert slabs[0].b1map is slabs[1].b1map
    assert slabs[0].notes == [] and slabs[1].notes == []


# ---- B1 correction with a map on another grid ------------------------------------------------


def _mp2rage_slab(b1map: SeriesVolume | None, t1_s: float = 2.0) -> Slab:
    """A slab whose UNI was acquired under the transmit field ``_b1_field``."""
    truth_b1 = _b1_field(world_mm(SLAB_SHAPE, SLAB_1))
    stored = uni_to_stored(uni_from_t1(np.full(SLAB_SHAPE, t1_s), PROTOCOL, truth_b1))
    uni = _volume(Component.UNI, stored, SLAB_1, RepetitionTime=5000)
    inv1 = _volume(Component.INV1, stored, SLAB_1, InversionTime=800, FlipAngle=4)
    inv2 = _volume(Component.INV2, stored, SLAB_1, InversionTime=2700, FlipAngle=5)
    return Slab(index=1, uni=uni, inv1=inv1, inv2=inv2, b1map=b1map)


def _b1_map(affine: np.ndarray, shape: tuple[int, int, int], **kwargs: object) -> SeriesVolume:
    stored = np.rint(1000.0 * _b1_field(world_mm(shape, affine)))
    return _volume(Component.B1MAP, stored, affine, **kwargs)  # type: ignore[arg-type]


def test_b1_map_on_a_coarse_oblique_grid_corrects_like_one_on_the_same_grid() -> None:
    same_t1, same_info, _ = slab_t1(_mp2rage_slab(_b1_map(SLAB_1, SLAB_SHAPE)), PROFILE)
    coarse_t1, coarse_info, _ = slab_t1(_mp2rage_slab(_b1_map(COARSE, COARSE_SHAPE)), PROFILE)
    plain_t1, plain_info, _ = slab_t1(_mp2rage_slab(None), PROFILE)

    assert coarse_info["b1_corrected"] and same_info["b1_corrected"]
    assert not plain_info["b1_corrected"]
    assert coarse_info["b1_note"] == (
        "T1 corrected for B1+ with the B1 map (resampled from 3.5 x 3.5 x 5 mm; 100 % of "
        "voxels covered, 100 % of those inside the table's range)"
    )
    assert "same grid" in same_info["b1_note"]
    for t1_ms in (same_t1, coarse_t1):
        assert np.max(np.abs(t1_ms / 2000.0 - 1.0)) < 0.002
    assert np.max(np.abs(plain_t1 / 2000.0 - 1.0)) > 0.01  # what the correction removes


def test_voxels_outside_a_partial_b1_map_stay_uncorrected_and_the_note_says_so() -> None:
    partial = tilted_affine((5.0, 3.5, 3.5), (-30.0, -30.0, 8.0), tilt_deg=12.0)
    t1_ms, info, _ = slab_t1(_mp2rage_slab(_b1_map(partial, (6, 18, 18))), PROFILE)
    plain_t1, _, _ = slab_t1(_mp2rage_slab(None), PROFILE)
    assert info["b1_corrected"]
    assert "voxels outside the B1 map are not corrected" in info["b1_note"]
    assert "resampled from 3.5 x 3.5 x 5 mm" in info["b1_note"]
    np.testing.assert_array_equal(t1_ms[0], plain_t1[0])  # below the map: as without it
    assert np.max(np.abs(t1_ms[-1] / 2000.0 - 1.0)) < 0.002


def test_b1_map_of_another_frame_of_reference_is_reported_in_the_b1_note() -> None:
    slab = _mp2rage_slab(None)
    slab.notes.append("B1 map not used: series 1.2.3 lies in another frame of reference")
    _, info, _ = slab_t1(slab, PROFILE)
    assert info["b1_note"] == (
        "B1 map not used: series 1.2.3 lies in another frame of reference; "
        "T1 not corrected for B1+"
    )
    assert info["partner_notes"] == slab.notes
