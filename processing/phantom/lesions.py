"""Multiple-sclerosis-like cord lesions: placement, follow-up change, rendering.

A lesion is an ellipsoid attached to the cord centre line (it follows the cord's drift),
limited to white matter (``wm_only``) or to the whole cord (``mixed`` GM+WM).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from processing.phantom.anatomy import N_BASE_MATERIALS, Material
from processing.phantom.protocol import Anatomy

__all__ = [
    "Lesion",
    "apply_lesions",
    "draw_lesions",
    "evolve_lesions",
    "lesion_material",
]

Location = Literal["posterior", "lateral", "anterior"]
Composition = Literal["wm_only", "mixed"]

#: Normalised cord coordinates (|u|, v) of lesion centres per location and composition.
_TARGETS: dict[tuple[str, str], tuple[float, float]] = {
    ("posterior", "wm_only"): (0.12, 0.62),
    ("posterior", "mixed"): (0.24, 0.42),
    ("lateral", "wm_only"): (0.74, 0.05),
    ("lateral", "mixed"): (0.50, -0.05),
    ("anterior", "wm_only"): (0.22, -0.74),
    ("anterior", "mixed"): (0.36, -0.42),
}


@dataclass(frozen=True)
class Lesion:
    """One lesion, in patient mm relative to the cord centre line.

    Parameters
    ----------
    lesion_id : int
        1-based id, stable across follow-up exams.
    z_mm : float
        Cranio-caudal centre (patient z).
    offset_x_mm, offset_y_mm : float
        Centre relative to the cord centre line at ``z_mm``.
    radius_x_mm, radius_y_mm, radius_z_mm : float
        Ellipsoid semi-axes.
    location, side, composition : str
        Design labels (``composition`` decides whether grey matter may be involved).
    t1_factor : float
        Lesion T1 relative to the surrounding normal-appearing tissue.
    slab : int
        1-based slab that contains the lesion.
    """

    lesion_id: int
    z_mm: float
    offset_x_mm: float
    offset_y_mm: float
    radius_x_mm: float
    radius_y_mm: float
    radius_z_mm: float
    location: Location
    side: Literal["left", "right", "midline"]
    composition: Composition
    t1_factor: float
    slab: int

    def __post_init__(self) -> None:
        if self.lesion_id < 1:
            raise ValueError("lesion_id must be >= 1")
        if min(self.radius_x_mm, self.radius_y_mm, self.radius_z_mm) <= 0:
            raise ValueError("lesion radii must be positive")
        if self.t1_factor <= 1.0:
            raise ValueError("lesion t1_factor must exceed 1 (lesions raise T1)")

    def contains(self, points_mm: NDArray[np.float64], anatomy: Anatomy) -> NDArray:
        """Boolean mask of points inside the ellipsoid (tissue limits not applied)."""
        p = np.asarray(points_mm, dtype=float)
        xc, yc = anatomy.centreline(p[..., 2])
        dx = (p[..., 0] - xc - self.offset_x_mm) / self.radius_x_mm
        dy = (p[..., 1] - yc - self.offset_y_mm) / self.radius_y_mm
        dz = (p[..., 2] - self.z_mm) / self.radius_z_mm
        return dx * dx + dy * dy + dz * dz <= 1.0


def lesion_material(index: int, in_grey_matter: bool) -> int:
    """Material code of the ``index``-th lesion (0-based) in white or grey matter."""
    return N_BASE_MATERIALS + 2 * index + int(in_grey_matter)


def apply_lesions(
    points_mm: NDArray[np.float64],
    materials: NDArray[np.uint8],
    anatomy: Anatomy,
    lesions: tuple[Lesion, ...],
) -> NDArray[np.uint8]:
    """Replace cord tissue inside lesions by lesion materials (see :func:`lesion_material`)."""
    out = materials.copy()
    for index, lesion in enumerate(lesions):
        inside = lesion.contains(points_mm, anatomy)
        wm = inside & (materials == Material.WM)
        out[wm] = lesion_material(index, False)
        if lesion.composition == "mixed":
            out[inside & (materials == Material.GM)] = lesion_material(index, True)
    return out


def _one_lesion(
    rng: np.random.Generator,
    anatomy: Anatomy,
    lesion_id: int,
    z_range_mm: tuple[float, float],
    slab: int,
) -> Lesion:
    location: Location = rng.choice(["posterior", "lateral", "anterior"], p=[0.6, 0.3, 0.1])
    composition: Composition = "mixed" if rng.random() < 0.4 else "wm_only"
    if composition == "mixed":
        r_xy = rng.uniform(1.7, 2.6)
        r_z = rng.uniform(5.0, 9.0)
        t1_factor = rng.uniform(1.42, 1.60)
    else:
        r_xy = rng.uniform(1.0, 1.6)
        r_z = rng.uniform(3.0, 6.0)
        t1_factor = rng.uniform(1.25, 1.45)
    low, high = z_range_mm
    margin = min(r_z, 0.45 * (high - low))
    z = rng.uniform(low + margin, high - margin)
    tu, tv = _TARGETS[(location, composition)]
    sign = rng.choice([-1.0, 1.0])
    midline = location == "posterior" and composition == "wm_only" and rng.random() < 0.4
    u = 0.0 if midline else sign * tu
    a, b = anatomy.semi_axes(np.asarray(z))
    side = "midline" if midline else ("left" if u > 0 else "right")  # LPS: +x = left
    return Lesion(
        lesion_id=lesion_id,
        z_mm=float(z),
        offset_x_mm=float(u * a),
        offset_y_mm=float(tv * b),
        radius_x_mm=float(r_xy * rng.uniform(0.85, 1.15)),
        radius_y_mm=float(r_xy * rng.uniform(0.7, 1.0)),
        radius_z_mm=float(r_z),
        location=location,
        side=side,
        composition=composition,
        t1_factor=float(t1_factor),
        slab=slab,
    )


def _overlaps(new: Lesion, others: tuple[Lesion, ...]) -> bool:
    for other in others:
        gap_z = abs(new.z_mm - other.z_mm) - new.radius_z_mm - other.radius_z_mm
        gap_xy = np.hypot(new.offset_x_mm - other.offset_x_mm, new.offset_y_mm - other.offset_y_mm)
        if gap_z < 1.0 and gap_xy < new.radius_x_mm + other.radius_x_mm + 0.5:
            return True
    return False


def draw_lesions(
    rng: np.random.Generator,
    anatomy: Anatomy,
    slab_z_ranges_mm: list[tuple[float, float]],
    count: int,
    first_id: int = 1,
    existing: tuple[Lesion, ...] = (),
) -> tuple[Lesion, ...]:
    """Draw ``count`` non-overlapping lesions inside the given slabs' z ranges.

    Parameters
    ----------
    rng : numpy.random.Generator
    anatomy : Anatomy
    slab_z_ranges_mm : list of (low, high)
        Cranio-caudal coverage of each slab (index + 1 = slab number).
    count : int
        Number of lesions to add.
    first_id : int
        Id of the first new lesion.
    existing : tuple of Lesion
        Lesions that the new ones must not overlap.

    Returns
    -------
    tuple of Lesion
        The new lesions only.
    """
    if count < 0:
        raise ValueError("count must be >= 0")
    if not slab_z_ranges_mm:
        raise ValueError("at least one slab z range is needed")
    new: list[Lesion] = []
    for offset in range(count):
        for _attempt in range(200):
            slab = int(rng.integers(len(slab_z_ranges_mm)))
            candidate = _one_lesion(
                rng, anatomy, first_id + offset, slab_z_ranges_mm[slab], slab + 1
            )
            if not _overlaps(candidate, existing + tuple(new)):
                new.append(candidate)
                break
        else:
            raise ValueError("could not place a non-overlapping lesion; slabs too small")
    return tuple(new)


def evolve_lesions(
    rng: np.random.Generator,
    anatomy: Anatomy,
    lesions: tuple[Lesion, ...],
    slab_z_ranges_mm: list[tuple[float, float]],
) -> tuple[tuple[Lesion, ...], list[int], list[int]]:
    """Follow-up: enlarge one lesion and/or add a new one (at least one change).

    Returns
    -------
    lesions : tuple of Lesion
        All lesions at follow-up.
    new_ids, enlarged_ids : list of int
    """
    mode = rng.choice(["new", "enlarged", "both"], p=[0.4, 0.3, 0.3]) if lesions else "new"
    out = list(lesions)
    enlarged: list[int] = []
    if mode in ("enlarged", "both"):
        index = int(rng.integers(len(out)))
        old = out[index]
        low, high = slab_z_ranges_mm[old.slab - 1]
        room_z = min(old.z_mm - low, high - old.z_mm)
        grown = replace(
            old,
            radius_x_mm=old.radius_x_mm * 1.4,
            radius_y_mm=old.radius_y_mm * 1.4,
            radius_z_mm=max(old.radius_z_mm, min(old.radius_z_mm * 1.3, room_z)),
            t1_factor=old.t1_factor * 1.03,
        )
        out[index] = grown
        enlarged.append(old.lesion_id)
    new_ids: list[int] = []
    if mode in ("new", "both"):
        first = max((lesion.lesion_id for lesion in out), default=0) + 1
        added = draw_lesions(rng, anatomy, slab_z_ranges_mm, 1, first, tuple(out))
        out.extend(added)
        new_ids = [lesion.lesion_id for lesion in added]
    return tuple(out), new_ids, enlarged
