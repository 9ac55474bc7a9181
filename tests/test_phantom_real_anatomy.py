"""The phantom on real anatomy: what a reader of its images would notice about the shapes."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner
from scipy import ndimage

from processing.phantom import (
    Anatomy,
    Material,
    RealAnatomy,
    draw_anatomy,
    draw_lesions,
    draw_real_anatomy,
    prepare_real_reference,
)
from processing.phantom.lesions import apply_lesions, lesion_material
from processing.phantom.real_reference import RealReference
from service.cli import cli
from service.phantom import PhantomOptions, write_cohort
from service.phantom.anatomy import real_reference
from service.pipeline.reference_data import load_neck, load_pam50

STEP_MM = 0.2
SEEDS = (0, 1, 2, 3)


@pytest.fixture(scope="module")
def reference() -> RealReference:
    return real_reference()


def _subject(seed: int, reference: RealReference) -> RealAnatomy:
    return draw_real_anatomy(np.random.default_rng(seed), reference)


def _slice(anatomy: Anatomy, z_mm: float, half_mm: float = 40.0) -> np.ndarray:
    """Materials on an axial 0.2 mm grid centred on the cord (rows: y, columns: x)."""
    grid = np.arange(-half_mm, half_mm + 1e-9, STEP_MM)
    xc, yc = anatomy.centreline(np.asarray(z_mm))
    yy, xx = np.meshgrid(grid + yc, grid + xc, indexing="ij")
    return anatomy.materials(np.stack([xx, yy, np.full_like(xx, z_mm)], axis=-1))


def _cord_levels(anatomy: Anatomy, count: int = 20) -> np.ndarray:
    """z positions spread over C1 (below its top) to C7."""
    tops = anatomy.level_tops_mm
    return np.linspace(tops[0] - 3.0, tops[-1] + 1.0, count)


def _cord(materials: np.ndarray) -> np.ndarray:
    return (materials == Material.WM) | (materials == Material.GM)


def _canal(materials: np.ndarray) -> np.ndarray:
    canal = _cord(materials) | (materials == Material.CSF)
    labels, _ = ndimage.label(canal)
    return labels == labels[tuple(np.argwhere(_cord(materials)).mean(axis=0).astype(int))]


def _ellipse_dice(mask: np.ndarray) -> float:
    """Dice of a mask with the ellipse of the same centroid and second moments."""
    yy, xx = np.nonzero(mask)
    inverse = np.linalg.inv(np.cov(np.stack([xx, yy])))
    rows, cols = np.indices(mask.shape)
    d = np.stack([cols.ravel() - xx.mean(), rows.ravel() - yy.mean()])
    ellipse = (np.einsum("in,ij,jn->n", d, inverse, d) <= 4.0).reshape(mask.shape)
    return float(2 * (ellipse & mask).sum() / (ellipse.sum() + mask.sum()))


def _csf_in_front_and_behind_mm(materials: np.ndarray) -> tuple[float, float]:
    """CSF thickness on the antero-posterior line through the cord centroid."""
    cord = _cord(materials)
    canal = _canal(materials)
    column = round(float(np.argwhere(cord)[:, 1].mean()))
    line, in_cord = canal[:, column], cord[:, column]
    rows = np.flatnonzero(in_cord)
    front = 0
    row = rows.min() - 1
    while row >= 0 and line[row] and not in_cord[row]:
        front, row = front + 1, row - 1
    back = 0
    row = rows.max() + 1
    while row < line.size and line[row] and not in_cord[row]:
        back, row = back + 1, row + 1
    return front * STEP_MM, back * STEP_MM


def test_both_anatomies_satisfy_the_protocol(reference: RealReference) -> None:
    assert isinstance(_subject(0, reference), Anatomy)
    assert isinstance(draw_anatomy(np.random.default_rng(0)), Anatomy)
    assert PhantomOptions().anatomy == "real"
    with pytest.raises(ValueError, match="anatomy"):
        PhantomOptions(anatomy="cartoon")


def test_cord_area_is_adult_and_changes_along_the_cord(reference: RealReference) -> None:
    for seed in SEEDS:
        anatomy = _subject(seed, reference)
        areas = np.array(
            [_cord(_slice(anatomy, z, 12.0)).sum() * STEP_MM**2 for z in _cord_levels(anatomy)]
        )
        assert np.all((areas >= 50.0) & (areas <= 130.0)), areas.round(1)
        assert areas.max() / areas.min() > 1.15  # C1 vs the cervical enlargement
        # the enlargement lies in the lower cervical cord
        z = _cord_levels(anatomy)
        assert anatomy.level_at(np.asarray(z[int(np.argmax(areas))])) >= 4


def test_grey_matter_share_is_close_to_pam50(reference: RealReference) -> None:
    pam = load_pam50()
    cervical = (pam.levels >= 1) & (pam.levels <= 7)
    pam_share = float(pam.gm[cervical].sum() / cervical.sum())
    for seed in SEEDS[:2]:
        anatomy = _subject(seed, reference)
        shares = []
        for z in _cord_levels(anatomy):
            m = _slice(anatomy, z, 12.0)
            shares.append((m == Material.GM).sum() / _cord(m).sum())
        assert abs(np.mean(shares) - pam_share) < 0.03, (np.mean(shares), pam_share)
        assert min(shares) > 0.1 and max(shares) < 0.32


def test_cord_outline_is_not_an_ellipse(reference: RealReference) -> None:
    real = _subject(0, reference)
    simple = draw_anatomy(np.random.default_rng(0))
    real_dice = [_ellipse_dice(_cord(_slice(real, z, 12.0))) for z in _cord_levels(real, 8)]
    simple_dice = [_ellipse_dice(_cord(_slice(simple, z, 12.0))) for z in _cord_levels(simple, 8)]
    assert np.median(real_dice) < 0.975
    assert np.median(real_dice) < np.median(simple_dice)


def test_cord_sits_off_centre_in_a_canal_with_thin_csf(reference: RealReference) -> None:
    touching = 0
    for seed in SEEDS:
        anatomy = _subject(seed, reference)
        offsets, thinnest = [], []
        for z in _cord_levels(anatomy):
            m = _slice(anatomy, z, 20.0)
            cord_centre = np.argwhere(_cord(m)).mean(axis=0)
            canal_centre = np.argwhere(_canal(m)).mean(axis=0)
            offsets.append(np.hypot(*(cord_centre - canal_centre)) * STEP_MM)
            thinnest.append(min(_csf_in_front_and_behind_mm(m)))
        assert max(offsets) > 1.0
        assert min(thinnest) < 1.0  # CSF in front of or behind the cord thinner than 1 mm
        assert max(thinnest) > 1.0  # ... but not everywhere
        touching += min(thinnest) == 0.0
    assert touching >= 1  # the cord touches the canal wall on some slices


def test_canal_is_surrounded_by_muscle_fat_and_bone(reference: RealReference) -> None:
    anatomy = _subject(1, reference)
    fractions = {m: [] for m in (Material.MUSCLE, Material.FAT, Material.AIR)}
    bone = []
    near_bone = []
    for z in _cord_levels(anatomy, 10):
        m = _slice(anatomy, z, 40.0)
        rows, cols = np.indices(m.shape)
        radius = np.hypot(rows - m.shape[0] // 2, cols - m.shape[1] // 2) * STEP_MM
        ring = (radius > 15.0) & (radius < 40.0)
        for material, values in fractions.items():
            values.append(np.mean(m[ring] == material))
        bony = np.isin(m, (Material.BONE, Material.MARROW, Material.DISC))
        bone.append(np.mean(bony[ring]))
        near_bone.append(np.mean(bony[(radius > 6.0) & (radius < 20.0)]))
    assert np.median(fractions[Material.MUSCLE]) > 0.4
    assert np.median(fractions[Material.FAT]) > 0.01
    assert np.median(bone) > 0.02
    assert np.median(near_bone) > 0.05  # vertebra and laminae around the canal
    # not a disc: the real neck is not centred on the cord and has air or ends in the field
    assert max(fractions[Material.AIR]) > 0.0


def test_lesions_land_in_the_real_cord_with_their_composition(reference: RealReference) -> None:
    locations = []
    for seed in range(8):
        rng = np.random.default_rng(100 + seed)
        anatomy = draw_real_anatomy(rng, reference)
        lesions = draw_lesions(rng, anatomy, [(-45.0, -5.0), (-90.0, -50.0)], 4)
        for lesion in lesions:
            grid = np.arange(-4.0, 4.01, STEP_MM)
            z = lesion.z_mm + np.arange(-lesion.radius_z_mm, lesion.radius_z_mm + 0.01, 0.5)
            zz, yy, xx = np.meshgrid(z, grid, grid, indexing="ij")
            xc, yc = anatomy.centreline(zz)
            points = np.stack([xx + xc + lesion.offset_x_mm, yy + yc + lesion.offset_y_mm, zz], -1)
            out = apply_lesions(points, anatomy.materials(points), anatomy, (lesion,))
            in_wm = int((out == lesion_material(0, False)).sum())
            in_gm = int((out == lesion_material(0, True)).sum())
            inside = int(lesion.contains(points, anatomy).sum())
            assert (in_wm + in_gm) / inside > 0.7  # the lesion lies in the cord
            if lesion.composition == "mixed":
                assert in_gm > 0 and in_wm > 0
            else:
                assert in_gm == 0 and in_wm > 0
            locations.append(lesion.location)
    assert locations.count("posterior") > len(locations) / 3


def test_subjects_differ(reference: RealReference) -> None:
    a, b = _subject(0, reference), _subject(1, reference)
    assert a.as_dict() != b.as_dict()
    z = 0.5 * (a.level_tops_mm[2] + a.level_tops_mm[3])
    cord_a, cord_b = _cord(_slice(a, z, 12.0)), _cord(_slice(b, z, 12.0))
    assert 2 * (cord_a & cord_b).sum() / (cord_a.sum() + cord_b.sum()) < 0.95


def test_reference_and_anatomy_validate_their_inputs(reference: RealReference) -> None:
    neck, pam = load_neck(), load_pam50()
    with pytest.raises(ValueError, match="same shape"):
        prepare_real_reference(
            neck.image[..., :3], neck.gm, neck.affine_ras,
            pam.cord, pam.csf, pam.gm, pam.wm, pam.levels, pam.affine_ras,
        )  # fmt: skip
    with pytest.raises(ValueError, match="share one shape"):
        prepare_real_reference(
            neck.image, neck.gm, neck.affine_ras,
            pam.cord[..., :5], pam.csf, pam.gm, pam.wm, pam.levels, pam.affine_ras,
        )  # fmt: skip
    anatomy = _subject(0, reference)
    with pytest.raises(ValueError, match="cord scale"):
        replace(anatomy, cord_scale=3.0)
    with pytest.raises(ValueError, match="level_tops_mm"):
        replace(anatomy, level_tops_mm=(0.0, -1.0))
    with pytest.raises(ValueError, match="points_mm"):
        anatomy.materials(np.zeros((4, 2)))


def _exam_files(root: Path) -> dict[str, bytes]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


def test_exam_on_real_anatomy_is_deterministic_and_off_centre(tmp_path: Path) -> None:
    options = PhantomOptions(matrix=128, slices_per_slab=4, slabs=1)
    for name in ("a", "b"):
        write_cohort(
            tmp_path / name, controls=0, patients=1, follow_up=False, seed=4, options=options
        )
    first, second = _exam_files(tmp_path / "a"), _exam_files(tmp_path / "b")
    assert first == second  # same seed, same bytes
    exam = tmp_path / "a" / "patient-001" / "exam-1"
    truth = json.loads((exam / "truth" / "truth.json").read_text())
    assert truth["anatomy"]["kind"] == "real"
    cord = np.asarray(nib.load(exam / "truth" / "slab1_cord.nii.gz").dataobj) > 0
    assert cord.any(axis=(0, 1)).all()
    i, j, _ = np.nonzero(cord)
    centre = (np.array(cord.shape[:2]) - 1) / 2.0
    distance_mm = np.hypot(i.mean() - centre[0], j.mean() - centre[1]) * options.voxel_mm
    assert distance_mm > 2.0  # the cord is not in the middle of the field of view
    for lesion in truth["lesions"]:
        assert lesion["voxels"] > 0
        assert lesion["composition"] == lesion["designed_composition"] or (
            lesion["designed_composition"] == "mixed" and lesion["voxels"] < 30
        )


def test_cli_anatomy_option(tmp_path: Path) -> None:
    runner = CliRunner()
    for kind in ("simple", "real"):
        result = runner.invoke(
            cli,
            [
                "phantom", "--out", str(tmp_path / kind), "--controls", "1", "--patients", "0",
                "--matrix", "32", "--slices", "2", "--slabs", "1", "--anatomy", kind,
            ],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        truth = next((tmp_path / kind).rglob("truth.json")).read_text()
        assert ('"kind": "real"' in truth) == (kind == "real")
    bad = runner.invoke(cli, ["phantom", "--out", str(tmp_path / "x"), "--anatomy", "cartoon"])
    assert bad.exit_code != 0


def test_gre_on_real_anatomy_shows_cord_and_grey_matter(tmp_path: Path) -> None:
    options = PhantomOptions(matrix=96, slices_per_slab=3, slabs=1, t2star=True)
    write_cohort(tmp_path, controls=1, patients=0, follow_up=False, seed=2, options=options)
    truth = json.loads(next(tmp_path.rglob("truth.json")).read_text())
    record = truth["slabs"][0]["t2star"]
    voxel_mm2 = options.t2star_voxel_mm**2
    slices = record["shape"][0]
    # adult cord cross-sections, about a fifth of it grey matter
    assert 50.0 < record["cord_voxels"] * voxel_mm2 / slices < 130.0
    assert 0.1 < record["gm_voxels"] / record["cord_voxels"] < 0.32


def test_rootlets_cross_the_csf_behind_the_cord_on_part_of_each_level(
    reference: RealReference,
) -> None:
    anatomy = _subject(2, reference)
    crossed = []
    for z in _cord_levels(anatomy, 30):
        m = _slice(anatomy, z, 10.0)
        behind = np.zeros(m.shape, dtype=bool)
        behind[m.shape[0] // 2 + 5 :, :] = True  # posterior of the cord centre (y > 1 mm)
        crossed.append(bool(np.any(behind & (m == Material.DISC))))
    assert 0 < sum(crossed) < len(crossed)  # some slices, not all


def test_cord_coordinates_follow_the_subjects_cord(reference: RealReference) -> None:
    anatomy = _subject(3, reference)
    z = np.full(4, 0.5 * (anatomy.level_tops_mm[3] + anatomy.level_tops_mm[4]))
    u, v = np.array([0.0, 0.12, -0.5, 0.7]), np.array([0.62, -0.74, 0.0, 0.1])
    dx, dy = anatomy.cord_offset_mm(u, v, z)
    xc, yc = anatomy.centreline(z)
    points = np.stack([xc + dx, yc + dy, z], axis=-1)
    back_u, back_v = anatomy.cord_coordinates(points)
    assert np.allclose(back_u, u) and np.allclose(back_v, v)
    # the dorsal-column point is cord white matter, behind the centre
    assert anatomy.materials(points[:1])[0] == Material.WM and dy[0] > 1.0
