"""Lesion characterisation and automatic candidates (processing/lesions.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from numpy.typing import NDArray

from processing.lesions import (
    DEFAULT_REGION_NAMES,
    LesionStats,
    candidates,
    characterise,
    label_components,
    patient_lesion_summary,
)

# ----------------------------------------------------------------------------- synthetic cord

VOXEL_MM = (4.0, 0.3, 0.3)
SHAPE = (6, 64, 64)
WM_T1_MS, GM_T1_MS = 1190.0, 1310.0
NORM_SD_MS, NOISE_MS = 80.0, 70.0


def axial_affine(flip_rows: bool = False, rotate_deg: float = 0.0) -> NDArray[np.float64]:
    """[k, j, i] -> LPS: slices toward the head, rows/columns in-plane (optionally rotated)."""
    theta = math.radians(rotate_deg)
    row_dir = np.array([math.cos(theta), math.sin(theta), 0.0])  # direction of increasing i
    col_dir = np.array([-math.sin(theta), math.cos(theta), 0.0])  # direction of increasing j
    if flip_rows:
        row_dir = -row_dir
    affine = np.eye(4)
    affine[:3, 0] = [0.0, 0.0, VOXEL_MM[0]]
    affine[:3, 1] = col_dir * VOXEL_MM[1]
    affine[:3, 2] = row_dir * VOXEL_MM[2]
    affine[:3, 3] = [-10.0, -10.0, -30.0]
    return affine


def patient_xy(affine: NDArray[np.float64]) -> tuple[NDArray, NDArray]:
    """Patient x (left) and y (posterior) in mm of every in-plane voxel, centred on the grid."""
    j, i = np.meshgrid(np.arange(SHAPE[1]), np.arange(SHAPE[2]), indexing="ij")
    centre = (np.array(SHAPE[1:]) - 1) / 2.0
    offset = (j - centre[0])[..., None] * affine[:3, 1] + (i - centre[1])[..., None] * affine[
        :3, 2
    ]
    return offset[..., 0], offset[..., 1]


def synthetic_cord(affine: NDArray[np.float64]) -> dict[str, NDArray]:
    """Elliptic cord (6 x 4.2 mm semi-axes) with a central GM ellipse, constant along z."""
    x, y = patient_xy(affine)
    cord2d = (x / 6.0) ** 2 + (y / 4.2) ** 2 <= 1.0
    gm2d = cord2d & ((x / 3.0) ** 2 + (y / 2.0) ** 2 <= 1.0)
    cord = np.broadcast_to(cord2d, SHAPE).copy()
    gm = np.broadcast_to(gm2d, SHAPE).copy()
    t1 = np.where(gm, GM_T1_MS, np.where(cord, WM_T1_MS, 3800.0))
    return {"cord": cord, "gm": gm, "wm": cord & ~gm, "t1": t1, "x": x, "y": y}


def blob(x: NDArray, y: NDArray, cx: float, cy: float, r_mm: float, slices: range) -> NDArray:
    mask2d = (x - cx) ** 2 + (y - cy) ** 2 <= r_mm**2
    out = np.zeros(SHAPE, dtype=bool)
    out[list(slices)] = mask2d
    return out


def run(labels: NDArray, cord: dict[str, NDArray], affine: NDArray, **kw) -> list[LesionStats]:
    return characterise(
        labels.astype(np.int16),
        cord["t1"],
        gm=cord["gm"],
        wm=cord["wm"],
        cord=cord["cord"],
        affine_lps=affine,
        **kw,
    )


# ----------------------------------------------------------------------------- characterise


@pytest.mark.parametrize(
    ("flip_rows", "rotate_deg"), [(False, 0.0), (True, 0.0), (False, 35.0), (True, -60.0)]
)
def test_location_and_side_follow_patient_directions_not_the_image_grid(
    flip_rows: bool, rotate_deg: float
) -> None:
    affine = axial_affine(flip_rows, rotate_deg)
    cord = synthetic_cord(affine)
    x, y = cord["x"], cord["y"]
    labels = np.zeros(SHAPE, dtype=np.int16)
    labels[blob(x, y, 1.5, 3.0, 0.9, range(1, 3))] = 1  # posterior left (LPS +x, +y)
    labels[blob(x, y, -4.8, 0.2, 0.8, range(2, 5))] = 2  # lateral right
    labels[blob(x, y, 0.0, -3.2, 0.8, range(3, 4))] = 3  # anterior midline
    stats = {s.id: s for s in run(labels, cord, affine)}
    assert (stats[1].location, stats[1].side) == ("posterior", "left")
    assert (stats[2].location, stats[2].side) == ("lateral", "right")
    assert (stats[3].location, stats[3].side) == ("anterior", "midline")
    assert stats[2].extent_mm == pytest.approx(3 * VOXEL_MM[0])
    assert stats[2].length_along_cord_mm == pytest.approx(3 * VOXEL_MM[0])


def test_reader_outline_spilling_into_csf_is_clipped_and_reported() -> None:
    affine = axial_affine()
    cord = synthetic_cord(affine)
    lesion = blob(cord["x"], cord["y"], 5.5, 0.0, 1.5, range(2, 4))  # crosses the lateral edge
    t1 = cord["t1"].copy()
    t1[lesion & cord["cord"]] = 1700.0
    cord["t1"] = t1
    [stats] = run(lesion.astype(np.int16), cord, affine)
    inside = int((lesion & cord["cord"]).sum())
    assert stats.dropped_voxels == int(lesion.sum()) - inside > 0
    assert stats.voxels == inside
    assert stats.volume_mm3 == pytest.approx(inside * 0.36)
    assert stats.mean_t1_ms == pytest.approx(1700.0)  # CSF (3800 ms) not mixed in


def test_lesion_wholly_outside_the_cord_is_left_out() -> None:
    affine = axial_affine()
    cord = synthetic_cord(affine)
    labels = np.zeros(SHAPE, dtype=np.int16)
    labels[blob(cord["x"], cord["y"], 8.0, 0.0, 0.6, range(0, 2))] = 4
    assert run(labels, cord, affine) == []


def test_composition_and_tissue_shares() -> None:
    affine = axial_affine()
    cord = synthetic_cord(affine)
    labels = np.zeros(SHAPE, dtype=np.int16)
    labels[blob(cord["x"], cord["y"], 3.0, 0.0, 1.2, range(1, 4))] = 1  # straddles GM edge
    labels[blob(cord["x"], cord["y"], 0.0, 3.4, 0.6, range(1, 2))] = 2  # dorsal columns
    stats = {s.id: s for s in run(labels, cord, affine)}
    mixed = labels == 1
    expected_gm = 100.0 * (mixed & cord["gm"]).sum() / mixed.sum()
    assert stats[1].composition == "mixed"
    assert stats[1].gm_percent == pytest.approx(expected_gm)
    assert stats[1].gm_percent + stats[1].wm_percent == pytest.approx(100.0)
    assert 0 < stats[1].gm_percent < 100
    assert stats[2].composition == "wm_only"
    assert stats[2].gm_percent == 0.0
    # a stricter GM share for "mixed" turns a lesion that barely touches GM into WM-only
    strict = run(labels, cord, affine, mixed_min_gm_percent=stats[1].gm_percent + 1.0)
    assert {s.id: s.composition for s in strict}[1] == "wm_only"


def test_max_t1_is_robust_to_one_outlier_voxel_and_level_is_the_majority() -> None:
    affine = axial_affine()
    cord = synthetic_cord(affine)
    lesion = blob(cord["x"], cord["y"], 0.0, 3.0, 0.9, range(1, 4))
    rng = np.random.default_rng(3)
    t1 = cord["t1"].copy()
    t1[lesion] = rng.normal(1600.0, 30.0, int(lesion.sum()))
    k, j, i = np.nonzero(lesion)
    t1[k[0], j[0], i[0]] = 9000.0  # one corrupt voxel
    cord["t1"] = t1
    levels = np.where(cord["cord"], 3, 0)
    levels[3:] = np.where(cord["cord"][3:], 4, 0)  # lesion: 2 slices at C3, 1 at C4
    [stats] = run(lesion.astype(np.int16), cord, affine, levels=levels)
    assert stats.max_t1_ms < 1700.0
    assert stats.mean_t1_ms == pytest.approx(float(t1[lesion].mean()))
    assert (stats.level, stats.level_name) == (3, "C3")


def test_region_labels_decide_location_when_given() -> None:
    affine = axial_affine()
    cord = synthetic_cord(affine)
    lesion = blob(cord["x"], cord["y"], 2.5, 2.5, 0.8, range(2, 3))  # 45 deg: posterior sector
    regions = np.where(lesion, 3, 0)  # a region map says: left lateral funiculus
    [geometric] = run(lesion.astype(np.int16), cord, affine)
    [labelled] = run(lesion.astype(np.int16), cord, affine, region_labels=regions)
    assert geometric.location == "posterior"
    assert labelled.location == "lateral"
    assert DEFAULT_REGION_NAMES[3] == "wm_lateral_funiculi_left"
    with pytest.raises(ValueError, match="neither dorsal"):
        run(lesion.astype(np.int16), cord, affine, region_names={1: "somewhere"})


def test_invalid_inputs_are_rejected_clearly() -> None:
    affine = axial_affine()
    cord = synthetic_cord(affine)
    mask = blob(cord["x"], cord["y"], 0.0, 0.0, 1.0, range(1, 2))
    with pytest.raises(TypeError, match="label_components"):
        characterise(mask, cord["t1"], gm=cord["gm"], wm=cord["wm"], cord=cord["cord"],
                     affine_lps=affine)  # fmt: skip
    with pytest.raises(ValueError, match="shape"):
        run(mask.astype(np.int16), {**cord, "gm": cord["gm"][:3]}, affine)
    with pytest.raises(ValueError, match="source"):
        run(mask.astype(np.int16), cord, affine, source="ai")
    with pytest.raises(ValueError, match="4x4"):
        run(mask.astype(np.int16), cord, np.eye(3))


def test_label_components_splits_a_binary_reader_mask() -> None:
    affine = axial_affine()
    cord = synthetic_cord(affine)
    mask = blob(cord["x"], cord["y"], 0.0, 3.0, 0.9, range(1, 3)) | blob(
        cord["x"], cord["y"], -4.5, 0.0, 1.2, range(3, 6)
    )
    labels = label_components(mask)
    assert labels.max() == 2
    assert (labels == 1).sum() > (labels == 2).sum()  # largest first
    assert [s.location for s in run(labels, cord, affine)] == ["lateral", "posterior"]


def test_patient_summary_counts_load_and_tissue_shares() -> None:
    affine = axial_affine()
    cord = synthetic_cord(affine)
    labels = np.zeros(SHAPE, dtype=np.int16)
    labels[blob(cord["x"], cord["y"], 3.0, 0.0, 1.2, range(1, 4))] = 1
    labels[blob(cord["x"], cord["y"], 0.0, 3.4, 0.6, range(1, 2))] = 2
    lesions = run(labels, cord, affine)
    summary = patient_lesion_summary(lesions, cord["gm"], cord["wm"])
    in_gm = ((labels > 0) & cord["gm"]).sum()
    assert summary["count"] == 2
    assert (summary["count_mixed"], summary["count_wm_only"]) == (1, 1)
    assert summary["load_mm3"] == pytest.approx((labels > 0).sum() * 0.36, abs=0.01)
    assert summary["gm_share_percent"] == pytest.approx(100 * in_gm / (labels > 0).sum(), 0.01)
    assert summary["gm_share_percent"] + summary["wm_share_percent"] == pytest.approx(100)
    assert summary["gm_lesion_fraction_percent"] == pytest.approx(
        100 * in_gm / cord["gm"].sum(), abs=0.01
    )
    json.dumps(summary)
    json.dumps([s.to_dict() for s in lesions])
    candidate = run(labels, cord, affine, source="candidate")
    with pytest.raises(ValueError, match="separately"):
        patient_lesion_summary([lesions[0], candidate[0]], cord["gm"], cord["wm"])


# ----------------------------------------------------------------------------- candidates


def synthetic_z(cord: dict[str, NDArray], t1: NDArray, seed: int) -> tuple[NDArray, NDArray]:
    """Noisy T1 and Z against tissue means (normative SD 80 ms, T1 noise 70 ms)."""
    rng = np.random.default_rng(seed)
    noisy = t1 + rng.normal(0.0, NOISE_MS, t1.shape)
    mean = np.where(cord["gm"], GM_T1_MS, WM_T1_MS)
    return noisy, np.where(cord["cord"], (noisy - mean) / NORM_SD_MS, np.nan)


def test_healthy_cord_gives_no_candidate_but_raw_thresholding_would() -> None:
    affine = axial_affine()
    cord = synthetic_cord(affine)
    raw_clusters = 0
    for seed in range(10):
        t1, z = synthetic_z(cord, cord["t1"], seed)
        assert candidates(z, t1, cord["cord"], voxel_mm=VOXEL_MM).max() == 0
        raw_clusters += candidates(
            z, t1, cord["cord"], voxel_mm=VOXEL_MM, smoothing_mm=0.0, min_volume_mm3=0.0
        ).max()
    assert raw_clusters > 10  # without smoothing and a size limit, noise makes candidates


@pytest.mark.parametrize("t1_factor", [1.25, 1.6])
@pytest.mark.parametrize(("radius_mm", "slices"), [(0.9, range(2, 3)), (0.65, range(1, 3))])
def test_10_mm3_lesions_are_found_at_low_and_high_contrast(
    t1_factor: float, radius_mm: float, slices: range
) -> None:
    affine = axial_affine()
    cord = synthetic_cord(affine)
    found = 0
    for seed in range(5):
        # about 10 mm^3 (28 voxels of 0.36 mm^3): one thick slice or two thinner discs
        lesion = blob(cord["x"], cord["y"], -1.0, 2.5, radius_mm, slices)
        t1 = np.where(lesion, cord["t1"] * t1_factor, cord["t1"])
        noisy, z = synthetic_z(cord, t1, 100 + seed)
        labels = candidates(z, noisy, cord["cord"], voxel_mm=VOXEL_MM)
        assert labels.max() <= 1  # no extra candidate
        found += bool(np.any(labels[lesion] > 0))
        assert (lesion.sum() * 0.36) == pytest.approx(10.0, abs=1.0)
    assert found == 5


#: Normative SD where GM and WM mix across subjects (real anatomy): a +30 % WM lesion of
#: 10 mm^3 has a mean Z near 1.4 there, as the Z rule's misses on the real-anatomy phantom.
WIDE_SD_MS = 250.0


def wide_sd_z(cord: dict[str, NDArray], t1: NDArray, seed: int) -> tuple[NDArray, NDArray]:
    rng = np.random.default_rng(seed)
    noisy = t1 + rng.normal(0.0, NOISE_MS, t1.shape)
    mean = np.where(cord["gm"], GM_T1_MS, WM_T1_MS)
    return noisy, np.where(cord["cord"], (noisy - mean) / WIDE_SD_MS, np.nan)


@pytest.mark.parametrize(("radius_mm", "slices"), [(0.9, range(2, 3)), (0.65, range(1, 3))])
def test_small_wm_lesion_with_low_z_is_found_by_its_t1_contrast(
    radius_mm: float, slices: range
) -> None:
    affine = axial_affine()
    cord = synthetic_cord(affine)
    z_only, with_contrast = 0, 0
    for seed in range(5):
        lesion = blob(cord["x"], cord["y"], -1.0, 2.5, radius_mm, slices)
        t1 = np.where(lesion, cord["t1"] * 1.3, cord["t1"])
        noisy, z = wide_sd_z(cord, t1, 300 + seed)
        z_only += bool(np.any(candidates(z, noisy, cord["cord"], voxel_mm=VOXEL_MM)[lesion]))
        labels = candidates(z, noisy, cord["cord"], voxel_mm=VOXEL_MM, wm=cord["wm"])
        assert labels.max() <= 1  # no extra candidate
        with_contrast += bool(np.any(labels[lesion] > 0))
    assert z_only <= 1  # the Z rule alone misses them
    assert with_contrast == 5


def test_contrast_rule_spares_healthy_cords_and_the_csf_edge() -> None:
    affine = axial_affine()
    cord = synthetic_cord(affine)
    # CSF partial volume on one side: outer row of the outline at 2500 ms, the next at 1500 ms
    # (+26 % over WM, as a small lesion, but Z only 1.2 with the wide SD)
    c = cord["cord"]
    outer = c & ~np.roll(c, 1, axis=2)
    second = c & ~np.roll(c, 2, axis=2) & ~outer
    unguarded = 0
    for seed in range(10):
        t1 = np.where(outer, 2500.0, np.where(second, 1500.0, cord["t1"]))
        noisy, z = wide_sd_z(cord, t1, 400 + seed)
        assert candidates(z, noisy, c, voxel_mm=VOXEL_MM, wm=cord["wm"]).max() == 0
        no_margins = {"csf_margin_mm": 0.0, "contrast_rim_mm": 0.0, "contrast_max_volume_mm3": 1e9}
        unguarded += candidates(z, noisy, c, voxel_mm=VOXEL_MM, wm=cord["wm"], **no_margins).max()
    assert unguarded >= 5  # without the margins (and size cap) the edge would be a candidate
    with pytest.raises(ValueError, match="csf_t1_ms"):
        candidates(z, noisy, cord["cord"], voxel_mm=VOXEL_MM, wm=cord["wm"], csf_t1_ms=0.0)


def test_candidates_do_not_depend_on_the_field_of_view_around_the_cord() -> None:
    """The cord's surroundings never matter: a cord touching the volume edge and the same
    cord inside a larger volume give the same candidates."""
    rng = np.random.default_rng(7)
    cord = np.zeros((4, 20, 24), bool)
    cord[:, 2:18, 1:23] = True
    cord[:, 0, 5:9] = True  # touches the edge of the volume
    z = np.where(cord, rng.normal(0, 1, cord.shape), np.nan)
    z[1:3, 5:10, 4:9] += 6.0
    z[0:2, 12:16, 15:20] += 4.0
    t1 = np.full(cord.shape, 1500.0)
    tight = candidates(z, t1, cord, voxel_mm=VOXEL_MM)
    assert tight.max() == 2
    box = (slice(1, 5), slice(30, 50), slice(7, 31))
    big_cord = np.zeros((6, 80, 90), bool)
    big_cord[box] = cord
    big_z = np.full(big_cord.shape, np.nan)
    big_z[box] = z
    big = candidates(big_z, np.full(big_cord.shape, 1500.0), big_cord, voxel_mm=VOXEL_MM)
    assert np.array_equal(big[box], tight) and big.sum() == tight.sum()


def test_isolated_hot_voxel_and_csf_rim_are_not_candidates() -> None:
    affine = axial_affine()
    cord = synthetic_cord(affine)
    z = np.where(cord["cord"], 0.0, np.nan)
    t1 = cord["t1"].copy()
    z[2, 32, 32] = 40.0  # one corrupt voxel
    rim = cord["cord"] & ~np.roll(cord["cord"], 1, axis=2)  # partial-volume edge voxels
    z[rim] = 15.0
    assert candidates(z, t1, cord["cord"], voxel_mm=VOXEL_MM).max() == 0


def test_candidates_are_labelled_by_decreasing_volume_and_validated() -> None:
    affine = axial_affine()
    cord = synthetic_cord(affine)
    z = np.where(cord["cord"], 0.0, np.nan)
    small = blob(cord["x"], cord["y"], -2.0, 2.5, 0.9, range(1, 3))
    large = blob(cord["x"], cord["y"], 3.0, -1.0, 1.3, range(2, 6))
    z[small | large] = 6.0
    labels = candidates(z, cord["t1"], cord["cord"], voxel_mm=VOXEL_MM)
    assert labels.max() == 2
    assert np.all(labels[large & (labels > 0)] == 1)
    assert np.all(labels[small & (labels > 0)] == 2)
    # a higher size limit keeps only the large one
    only = candidates(z, cord["t1"], cord["cord"], voxel_mm=VOXEL_MM, min_volume_mm3=40.0)
    assert only.max() == 1
    # CSF-like T1 is never lesion tissue
    hot_csf = candidates(z, np.full(SHAPE, 3900.0), cord["cord"], voxel_mm=VOXEL_MM)
    assert hot_csf.max() == 0
    with pytest.raises(ValueError, match="voxel_mm"):
        candidates(z, cord["t1"], cord["cord"], voxel_mm=(4.0, 0.3))
    with pytest.raises(ValueError, match="connectivity"):
        candidates(z, cord["t1"], cord["cord"], voxel_mm=VOXEL_MM, connectivity=8)


# ----------------------------------------------------------------------------- phantom cohort

PHANTOM_SEED = 7
_COHORTS: dict[int, Path] = {}


def phantom_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One control and two patients with follow-up (written once per test session)."""
    if PHANTOM_SEED not in _COHORTS:
        from service.phantom import PhantomOptions, write_cohort

        out = tmp_path_factory.mktemp("lesion-cohort")
        write_cohort(
            out,
            controls=1,
            patients=2,
            follow_up=True,
            seed=PHANTOM_SEED,
            options=PhantomOptions(matrix=160, slices_per_slab=6, slabs=2),
        )
        _COHORTS[PHANTOM_SEED] = out
    return _COHORTS[PHANTOM_SEED]


def load_exam(exam_dir: Path) -> tuple[dict, list[dict[str, NDArray]]]:
    """truth.json and every slab's truth volumes (``[k, j, i]``) plus ``affine``."""
    from service.inputs.nifti import from_nifti

    truth = json.loads((exam_dir / "truth" / "truth.json").read_text())
    slabs = []
    for slab in truth["slabs"]:
        volumes: dict[str, NDArray] = {}
        for name in ("cord", "gm", "wm", "lesions", "levels", "t1_true_ms"):
            path = exam_dir / "truth" / f"slab{slab['slab']}_{name}.nii.gz"
            volumes[name], volumes["affine"] = from_nifti(nib.load(path))
        for name in ("cord", "gm", "wm"):
            volumes[name] = volumes[name].astype(bool)
        volumes["lesions"] = volumes["lesions"].astype(np.int32)
        slabs.append(volumes)
    return truth, slabs


def characterise_exam(slabs: list[dict[str, NDArray]]) -> list[LesionStats]:
    out = []
    for v in slabs:
        out += characterise(
            v["lesions"], v["t1_true_ms"], gm=v["gm"], wm=v["wm"], cord=v["cord"],
            affine_lps=v["affine"], levels=v["levels"],
        )  # fmt: skip
    return out


@pytest.fixture(scope="session")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return phantom_cohort(tmp_path_factory)


def patient_exams(cohort: Path) -> list[Path]:
    return sorted(cohort.glob("patient-*/exam-*"))


@pytest.mark.slow
def test_characterise_reproduces_the_phantom_truth(cohort: Path) -> None:
    checked = 0
    for exam_dir in patient_exams(cohort):
        truth, slabs = load_exam(exam_dir)
        measured = {s.id: s for s in characterise_exam(slabs)}
        assert set(measured) == {t["id"] for t in truth["lesions"]}
        for t in truth["lesions"]:
            s = measured[t["id"]]
            assert s.volume_mm3 == pytest.approx(t["volume_mm3"], abs=0.01)
            assert s.extent_mm == pytest.approx(t["extent_mm"], abs=1e-3)
            assert s.gm_percent == pytest.approx(t["gm_percent"], abs=0.01)
            assert s.composition == t["composition"]
            assert s.mean_t1_ms == pytest.approx(t["mean_t1_ms"], abs=0.05)
            assert s.centre_lps_mm == pytest.approx(t["centre"], abs=0.01)
            assert (s.location, s.side) == (t["location"], t["side"]), t["id"]
            assert s.dropped_voxels == 0
            checked += 1
        summary = patient_lesion_summary(
            list(measured.values()), [v["gm"] for v in slabs], [v["wm"] for v in slabs]
        )
        assert summary["count"] == len(truth["lesions"])
        assert summary["load_mm3"] == pytest.approx(
            sum(t["volume_mm3"] for t in truth["lesions"]), abs=0.05
        )
    assert checked >= 5


def phantom_z(v: dict[str, NDArray], seed: int) -> tuple[NDArray, NDArray]:
    rng = np.random.default_rng(seed)
    t1 = v["t1_true_ms"] + rng.normal(0.0, NOISE_MS, v["t1_true_ms"].shape)
    mean = np.where(v["gm"], GM_T1_MS, WM_T1_MS)
    return t1, np.where(v["cord"], (t1 - mean) / NORM_SD_MS, np.nan)


@pytest.mark.slow
def test_candidates_find_the_phantom_lesions_and_spare_the_control(cohort: Path) -> None:
    lesions_seen, lesions_found = 0, 0
    for exam_dir in patient_exams(cohort):
        _, slabs = load_exam(exam_dir)
        for index, v in enumerate(slabs):
            t1, z = phantom_z(v, index)
            labels = candidates(z, t1, v["cord"], voxel_mm=(4.0, 0.3, 0.3))
            for lesion_id in np.unique(v["lesions"][v["lesions"] > 0]):
                lesions_seen += 1
                lesions_found += bool(np.any(labels[v["lesions"] == lesion_id] > 0))
            # candidates are labelled apart from reader lesions and measurable as such
            stats = characterise(
                labels, t1, gm=v["gm"], wm=v["wm"], cord=v["cord"], affine_lps=v["affine"],
                source="candidate",
            )  # fmt: skip
            assert all(s.source == "candidate" for s in stats)
    assert lesions_seen >= 5
    assert lesions_found == lesions_seen
    [control] = sorted(cohort.glob("control-*/exam-1"))
    _, slabs = load_exam(control)
    for index, v in enumerate(slabs):
        t1, z = phantom_z(v, 50 + index)
        assert candidates(z, t1, v["cord"], voxel_mm=(4.0, 0.3, 0.3)).max() == 0
