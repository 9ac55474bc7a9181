"""Analytic anatomy of the cervical neck around the spinal cord, in patient mm (DICOM LPS).

x points to the patient's left, y to the posterior, z to the head. The cord follows a smooth
centre line ``(x_c(z), y_c(z))``; every structure is defined relative to it, so any slice
plane (axial or oblique) and any matrix can be rendered by sampling points.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import IntEnum

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "N_BASE_MATERIALS",
    "Material",
    "SubjectAnatomy",
    "draw_anatomy",
]

FloatArray = NDArray[np.float64]

#: Typical heights (mm, vertebra + disc) of C1..C7.
_LEVEL_HEIGHTS_MM = (12.0, 20.0, 15.0, 15.0, 15.0, 15.0, 16.0)


class Material(IntEnum):
    """Tissue classes of the phantom (lesions are added after these, see ``lesions``)."""

    AIR = 0
    FAT = 1
    MUSCLE = 2
    BONE = 3
    MARROW = 4
    DISC = 5
    CSF = 6
    WM = 7
    GM = 8


N_BASE_MATERIALS = len(Material)


def _in_ellipse(
    u: FloatArray, v: FloatArray, cu: float, cv: float, au: float, av: float, angle_rad: float
) -> NDArray[np.bool_]:
    """Points inside a rotated ellipse (centre, semi-axes, rotation of the ``au`` axis)."""
    du, dv = u - cu, v - cv
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    p = c * du + s * dv
    q = -s * du + c * dv
    return (p / au) ** 2 + (q / av) ** 2 <= 1.0


@dataclass(frozen=True)
class SubjectAnatomy:
    """Per-subject shape parameters of cord, canal, vertebrae and neck.

    Parameters
    ----------
    level_tops_mm : tuple of float
        z (mm) of the top of C1..C7 followed by the bottom of C7 (8 values, decreasing).
    cord_halfwidth_mm, cord_halfdepth_mm : float
        Left-right and antero-posterior semi-axes of the cord at C2-C4.
    enlargement : float
        Relative widening of the cord at the cervical enlargement (C5-C6).
    centre_x_mm, centre_y_mm : float
        Cord centre line at the top of C1.
    drift_x_mm, drift_y_mm, drift_period_mm, drift_phase_x, drift_phase_y : float
        Smooth sinusoidal drift of the centre line along z.
    lordosis_mm : float
        Anterior bowing of the centre line at mid-cervical level.
    csf_lr_mm, csf_ant_mm, csf_post_mm : float
        CSF thickness left/right, anterior and posterior of the cord.
    gm_scale : float
        Scale of the grey-matter horns (1 = average).
    """

    level_tops_mm: tuple[float, ...]
    cord_halfwidth_mm: float
    cord_halfdepth_mm: float
    enlargement: float
    centre_x_mm: float
    centre_y_mm: float
    drift_x_mm: float
    drift_y_mm: float
    drift_period_mm: float
    drift_phase_x: float
    drift_phase_y: float
    lordosis_mm: float
    csf_lr_mm: float
    csf_ant_mm: float
    csf_post_mm: float
    gm_scale: float

    def __post_init__(self) -> None:
        tops = np.asarray(self.level_tops_mm, dtype=float)
        if tops.shape != (8,) or np.any(np.diff(tops) >= 0):
            raise ValueError("level_tops_mm needs 8 strictly decreasing z values (C1 top..C7 end)")
        if not 4.0 <= self.cord_halfwidth_mm <= 9.0 or not 3.0 <= self.cord_halfdepth_mm <= 6.0:
            raise ValueError("cord semi-axes out of the anatomical range")
        if min(self.csf_lr_mm, self.csf_ant_mm, self.csf_post_mm) <= 0:
            raise ValueError("CSF thickness must be positive")

    # ---- centre line and cord size -------------------------------------------------------
    @property
    def fov_offset_mm(self) -> tuple[float, float]:
        """The field of view is centred on the cord."""
        return (0.0, 0.0)

    def as_dict(self) -> dict[str, object]:
        """The drawn parameters (JSON-ready) for the ground truth."""
        return asdict(self)

    @property
    def enlargement_z_mm(self) -> float:
        """z of the centre of the cervical enlargement (C5/C6 boundary)."""
        return float(self.level_tops_mm[5])

    def centreline(self, z_mm: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Cord centre ``(x, y)`` in mm at each z."""
        z = np.asarray(z_mm, dtype=float)
        top, bottom = self.level_tops_mm[0], self.level_tops_mm[-1]
        w = 2 * np.pi / self.drift_period_mm
        mid = 0.5 * (top + bottom)
        half = 0.5 * (top - bottom)
        x = self.centre_x_mm + self.drift_x_mm * np.sin(w * (z - top) + self.drift_phase_x)
        y = (
            self.centre_y_mm
            + self.drift_y_mm * np.sin(w * (z - top) + self.drift_phase_y)
            + self.lordosis_mm * (((z - mid) / half) ** 2 - 1.0)
        )
        return x, y

    def enlargement_profile(self, z_mm: FloatArray) -> FloatArray:
        """0..1 bump that peaks at the cervical enlargement."""
        z = np.asarray(z_mm, dtype=float)
        return np.exp(-0.5 * ((z - self.enlargement_z_mm) / 14.0) ** 2)

    def semi_axes(self, z_mm: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Cord left-right and antero-posterior semi-axes (mm) at each z."""
        g = self.enlargement_profile(z_mm)
        a = self.cord_halfwidth_mm * (1.0 + self.enlargement * g)
        b = self.cord_halfdepth_mm * (1.0 + 0.3 * self.enlargement * g)
        return a, b

    def level_at(self, z_mm: FloatArray) -> NDArray[np.int16]:
        """Vertebral level 1..7 (C1..C7) at each z, clipped at the ends."""
        z = np.asarray(z_mm, dtype=float)
        tops = np.asarray(self.level_tops_mm[1:-1])
        # tops is decreasing; count how many level boundaries lie above z.
        level = 1 + np.sum(z[..., None] < tops, axis=-1)
        return level.astype(np.int16)

    def cord_coordinates(self, points_mm: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Normalised cord coordinates ``(u, v)``: u left-right, v anterior(-)..posterior(+)."""
        p = np.asarray(points_mm, dtype=float)
        xc, yc = self.centreline(p[..., 2])
        a, b = self.semi_axes(p[..., 2])
        return (p[..., 0] - xc) / a, (p[..., 1] - yc) / b

    # ---- tissue classes ------------------------------------------------------------------
    def grey_matter(self, u: FloatArray, v: FloatArray, z_mm: FloatArray) -> NDArray[np.bool_]:
        """Butterfly-shaped grey matter in normalised cord coordinates."""
        g = self.enlargement_profile(z_mm)
        s = self.gm_scale
        au = np.abs(u)
        ventral_w = 0.19 * s * (1.0 + 0.3 * g)
        ventral = _in_ellipse(au, v, 0.40, -0.36, ventral_w, 0.23 * s, np.deg2rad(-25.0))
        intermediate = _in_ellipse(au, v, 0.20, -0.03, 0.17 * s, 0.14 * s, 0.0)
        dorsal = _in_ellipse(au, v, 0.30, 0.45, 0.075 * s, 0.41, np.deg2rad(-17.0))
        commissure = (au <= 0.24) & (np.abs(v + 0.03) <= 0.065)
        return ventral | intermediate | dorsal | commissure

    def materials(self, points_mm: FloatArray) -> NDArray[np.uint8]:
        """Tissue class (:class:`Material`) of each point, lesions excluded.

        Parameters
        ----------
        points_mm : ndarray, shape (..., 3)
            Patient coordinates (LPS, mm).

        Returns
        -------
        ndarray of uint8, shape (...)
        """
        p = np.asarray(points_mm, dtype=float)
        if p.shape[-1] != 3:
            raise ValueError("points_mm must have a last axis of length 3 (x, y, z)")
        x, y, z = p[..., 0], p[..., 1], p[..., 2]
        xc, yc = self.centreline(z)
        a, b = self.semi_axes(z)
        dx, dy = x - xc, y - yc
        out = np.full(x.shape, Material.MUSCLE, dtype=np.uint8)

        # Neck outline with a subcutaneous fat layer; airway in front of the spine.
        neck_x, neck_y = (x - xc) / 60.0, (y - (yc - 14.0)) / 56.0
        neck_r = np.hypot(neck_x, neck_y)
        out[neck_r > 0.88] = Material.FAT
        out[neck_r > 1.0] = Material.AIR
        airway = np.hypot(dx / 9.0, (dy + 48.0) / 7.0) <= 1.0
        out[airway] = Material.AIR

        # Vertebral body (marrow with a cortical rim), discs at level boundaries.
        canal_a = a + self.csf_lr_mm
        canal_front = b + self.csf_ant_mm
        canal_back = b + self.csf_post_mm
        body_cy = -(canal_front + 1.5 + 8.0)
        body_r = np.hypot(dx / 9.5, (dy - body_cy) / 8.0)
        boundaries = np.asarray(self.level_tops_mm[1:-1])
        near_disc = np.min(np.abs(z[..., None] - boundaries), axis=-1) < 2.5
        out[(body_r <= 1.0) & near_disc] = Material.DISC
        out[(body_r <= 1.0) & ~near_disc] = Material.BONE
        out[(body_r <= 0.86) & ~near_disc] = Material.MARROW

        # Bony ring (pedicles, laminae) around the canal, open at the disc levels.
        canal_b = np.where(dy < 0, canal_front, canal_back)
        canal_r = np.hypot(dx / canal_a, dy / canal_b)
        ring_r = np.hypot(dx / (canal_a + 3.5), dy / (canal_b + 3.5))
        out[(ring_r <= 1.0) & (canal_r > 1.0) & ~near_disc] = Material.BONE

        # CSF-filled canal, cord with an anterior median fissure, grey matter.
        out[canal_r <= 1.0] = Material.CSF
        u, v = dx / a, dy / b
        v_shaped = np.where(v < 0, v * 1.06, v)  # slightly flatter anterior surface
        cord = np.hypot(u, v_shaped) <= 1.0
        fissure = (np.abs(dx) < 0.3) & (v < -0.72)
        cord &= ~fissure
        out[cord] = Material.WM
        idx = np.nonzero(cord)
        gm = self.grey_matter(u[idx], v[idx], z[idx])
        out[tuple(axis[gm] for axis in idx)] = Material.GM
        return out


def draw_anatomy(rng: np.random.Generator) -> SubjectAnatomy:
    """Draw one subject's anatomy (cord size, centre line, CSF, level heights).

    Examples
    --------
    >>> a = draw_anatomy(np.random.default_rng(0))
    >>> bool(12.0 <= 2 * a.cord_halfwidth_mm <= 14.0)
    True
    """
    heights = np.asarray(_LEVEL_HEIGHTS_MM) * rng.uniform(0.92, 1.08)
    heights *= rng.uniform(0.96, 1.04, size=heights.size)
    tops = np.concatenate([[0.0], -np.cumsum(heights)])
    return SubjectAnatomy(
        level_tops_mm=tuple(float(t) for t in tops),
        cord_halfwidth_mm=float(rng.uniform(6.0, 6.8)),
        cord_halfdepth_mm=float(rng.uniform(4.2, 4.7)),
        enlargement=float(rng.uniform(0.06, 0.14)),
        centre_x_mm=float(rng.uniform(-1.5, 1.5)),
        centre_y_mm=float(rng.uniform(8.0, 14.0)),
        drift_x_mm=float(rng.uniform(0.5, 2.0)),
        drift_y_mm=float(rng.uniform(0.5, 2.0)),
        drift_period_mm=float(rng.uniform(90.0, 160.0)),
        drift_phase_x=float(rng.uniform(0, 2 * np.pi)),
        drift_phase_y=float(rng.uniform(0, 2 * np.pi)),
        lordosis_mm=float(rng.uniform(2.0, 5.0)),
        csf_lr_mm=float(rng.uniform(2.5, 3.5)),
        csf_ant_mm=float(rng.uniform(2.0, 3.0)),
        csf_post_mm=float(rng.uniform(2.5, 4.0)),
        gm_scale=float(rng.uniform(0.93, 1.07)),
    )
