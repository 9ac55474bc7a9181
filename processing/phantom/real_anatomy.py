"""A subject's neck on real shapes: PAM50 cord, GM and canal inside a real neck's surroundings.

Each subject deforms the shared :class:`RealReference` (see ``real_reference``): the PAM50 cord
is scaled, rotated and sheared in-plane; the canal gets its own shape and is displaced from the
cord (the cord sits off-centre in the canal, with thin or no CSF in front of or behind it on some
slices); the real neck's surroundings follow the canal. Along z the PAM50 slices are mapped
level by level onto the subject's level heights, so the cervical enlargement sits where the
subject's C5-C6 are, and the centre line drifts smoothly with a lordosis, as in the analytic
anatomy. Coordinates are patient mm (DICOM LPS): x left, y posterior, z head.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from processing.phantom.anatomy import _LEVEL_HEIGHTS_MM, Material
from processing.phantom.real_reference import PAM_CSF, PAM_GM, PAM_WM, RealReference

__all__ = ["RealAnatomy", "draw_real_anatomy"]

FloatArray = NDArray[np.float64]

#: Half-width (mm) of the vertebral-body band around a level boundary drawn as disc.
_DISC_HALF_MM = 2.5


def _affine_2x2(scale: float, aspect: float, rotation_deg: float, shear: float) -> FloatArray:
    """In-plane map from reference mm to subject mm: rotation @ shear @ scale."""
    t = np.deg2rad(rotation_deg)
    rotation = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    shear_m = np.array([[1.0, shear], [0.0, 1.0]])
    return rotation @ shear_m @ np.diag([scale, scale * aspect])


@dataclass(frozen=True)
class RealAnatomy:
    """One subject's real-shape anatomy (interface of :class:`~processing.phantom.Anatomy`).

    Parameters
    ----------
    reference : RealReference
        Shared prepared PAM50 and neck arrays (not part of the subject's parameters).
    level_tops_mm : tuple of float
        z (mm) of the top of C1..C7 followed by the bottom of C7 (8 values, decreasing).
    cord_scale, cord_aspect, cord_rotation_deg, cord_shear : float
        In-plane deformation of the PAM50 cord (scale of both axes, extra antero-posterior
        factor, rotation, shear of x along y).
    canal_scale, canal_aspect : float
        In-plane scale of the canal (PAM50 canal and the real neck's canal).
    canal_offset_x_mm, canal_offset_y_mm : float
        Mean displacement of the canal centre from the cord centre.
    canal_wobble_x_mm, canal_wobble_y_mm, canal_wobble_period_mm, canal_wobble_phase : float
        Smooth change of that displacement along z.
    neck_scale, neck_rotation_deg : float
        In-plane scale and rotation of the real neck's surroundings.
    centre_x_mm, centre_y_mm, drift_x_mm, drift_y_mm, drift_period_mm, drift_phase_x,
    drift_phase_y, lordosis_mm : float
        Cord centre line (as in the analytic anatomy).
    fov_offset_x_mm, fov_offset_y_mm : float
        Where a planner centres the field of view relative to the cord.
    """

    reference: RealReference = field(repr=False, compare=False)
    level_tops_mm: tuple[float, ...]
    cord_scale: float
    cord_aspect: float
    cord_rotation_deg: float
    cord_shear: float
    canal_scale: float
    canal_aspect: float
    canal_offset_x_mm: float
    canal_offset_y_mm: float
    canal_wobble_x_mm: float
    canal_wobble_y_mm: float
    canal_wobble_period_mm: float
    canal_wobble_phase: float
    neck_scale: float
    neck_rotation_deg: float
    centre_x_mm: float
    centre_y_mm: float
    drift_x_mm: float
    drift_y_mm: float
    drift_period_mm: float
    drift_phase_x: float
    drift_phase_y: float
    lordosis_mm: float
    fov_offset_x_mm: float
    fov_offset_y_mm: float

    def __post_init__(self) -> None:
        tops = np.asarray(self.level_tops_mm, dtype=float)
        if tops.shape != (8,) or np.any(np.diff(tops) >= 0):
            raise ValueError("level_tops_mm needs 8 strictly decreasing z values (C1 top..C7 end)")
        if not 0.7 <= self.cord_scale <= 1.5 or not 0.7 <= self.cord_aspect <= 1.4:
            raise ValueError("cord scale/aspect out of the anatomical range")
        if not 0.7 <= self.canal_scale <= 1.5 or not 0.7 <= self.canal_aspect <= 1.4:
            raise ValueError("canal scale/aspect out of the anatomical range")
        if not 0.7 <= self.neck_scale <= 1.3:
            raise ValueError("neck_scale out of range")
        if abs(self.cord_shear) > 0.3:
            raise ValueError("cord_shear must be within +-0.3")
        if self.drift_period_mm <= 0 or self.canal_wobble_period_mm <= 0:
            raise ValueError("periods must be positive")

    # ---- parameters ----------------------------------------------------------------------
    def as_dict(self) -> dict[str, object]:
        """The drawn parameters (JSON-ready) for the ground truth."""
        out: dict[str, object] = {"kind": "real"}
        for name in self.__dataclass_fields__:
            if name != "reference":
                value = getattr(self, name)
                out[name] = list(value) if isinstance(value, tuple) else value
        return out

    @property
    def fov_offset_mm(self) -> tuple[float, float]:
        """Field-of-view centre relative to the cord centre (x, y mm)."""
        return (self.fov_offset_x_mm, self.fov_offset_y_mm)

    # ---- z mapping -----------------------------------------------------------------------
    def _pam_k(self, z_mm: FloatArray) -> NDArray[np.intp]:
        """Nearest PAM50 slice of each z (levels mapped onto the subject's level heights)."""
        ref = self.reference
        z = np.asarray(z_mm, dtype=float)
        tops = np.asarray(self.level_tops_mm)
        k_tops = ref.pam_level_k
        step = ref.pam_spacing_mm
        # np.interp needs increasing x: reverse both; extrapolate linearly with the PAM50 step.
        k = np.interp(z, tops[::-1], k_tops[::-1])
        k = np.where(z > tops[0], k_tops[0] + (z - tops[0]) / step, k)
        k = np.where(z < tops[-1], k_tops[-1] + (z - tops[-1]) / step, k)
        n = ref.pam_labels.shape[0]
        return np.clip(np.rint(k), 0, n - 1).astype(np.intp)

    def _neck_slice(self, z_mm: FloatArray) -> NDArray[np.intp]:
        """Neck slice of each z: the subject's C1-C7 spread over the neck's slices."""
        z = np.asarray(z_mm, dtype=float)
        n = self.reference.neck_materials.shape[0]
        top, bottom = self.level_tops_mm[0], self.level_tops_mm[-1]
        s = (z - bottom) / (top - bottom) * (n - 1)
        return np.clip(np.rint(s), 0, n - 1).astype(np.intp)

    @property
    def enlargement_z_mm(self) -> float:
        """z of the largest cord cross-section between C4 and C7 (cervical enlargement)."""
        z = np.linspace(self.level_tops_mm[3], self.level_tops_mm[-1], 200)
        area = self.reference.pam_cord_area_mm2[self._pam_k(z)]
        return float(z[int(np.argmax(area))])

    # ---- centre line and cord size -------------------------------------------------------
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

    def semi_axes(self, z_mm: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Cord left-right and antero-posterior semi-axes (mm) at each z."""
        axes = self.reference.pam_semi_axes_mm[self._pam_k(z_mm)]
        return (
            axes[..., 0] * self.cord_scale,
            axes[..., 1] * self.cord_scale * self.cord_aspect,
        )

    def level_at(self, z_mm: FloatArray) -> NDArray[np.int16]:
        """Vertebral level 1..7 (C1..C7) at each z, clipped at the ends."""
        z = np.asarray(z_mm, dtype=float)
        tops = np.asarray(self.level_tops_mm[1:-1])
        level = 1 + np.sum(z[..., None] < tops, axis=-1)
        return level.astype(np.int16)

    def cord_coordinates(self, points_mm: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Normalised cord coordinates ``(u, v)``: u left-right, v anterior(-)..posterior(+)."""
        p = np.asarray(points_mm, dtype=float)
        xc, yc = self.centreline(p[..., 2])
        a, b = self.semi_axes(p[..., 2])
        return (p[..., 0] - xc) / a, (p[..., 1] - yc) / b

    def canal_offset(self, z_mm: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Canal centre relative to the cord centre (x, y mm) at each z."""
        z = np.asarray(z_mm, dtype=float)
        phase = 2 * np.pi * z / self.canal_wobble_period_mm + self.canal_wobble_phase
        return (
            self.canal_offset_x_mm + self.canal_wobble_x_mm * np.sin(phase),
            self.canal_offset_y_mm + self.canal_wobble_y_mm * np.cos(phase),
        )

    # ---- tissue classes ------------------------------------------------------------------
    @staticmethod
    def _lookup(
        table: NDArray, slices: NDArray[np.intp], x_mm: FloatArray, y_mm: FloatArray, step: float
    ) -> tuple[NDArray, NDArray[np.bool_]]:
        """Nearest-neighbour values of ``table[slice, y, x]`` and whether inside the grid."""
        _, ny, nx = table.shape
        xi = np.rint(x_mm / step).astype(np.intp)
        yi = np.rint(y_mm / step).astype(np.intp)
        inside = (xi >= 0) & (xi < nx) & (yi >= 0) & (yi < ny)
        values = table[slices, np.clip(yi, 0, ny - 1), np.clip(xi, 0, nx - 1)]
        return values, inside

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
        ref = self.reference
        z = p[..., 2]
        xc, yc = self.centreline(z)
        dx, dy = p[..., 0] - xc, p[..., 1] - yc
        ox, oy = self.canal_offset(z)
        ex, ey = dx - ox, dy - oy  # relative to the canal centre

        # Surroundings: the real neck, centred on its canal, scaled and rotated.
        neck_inv = np.linalg.inv(_affine_2x2(self.neck_scale, 1.0, self.neck_rotation_deg, 0.0))
        s = self._neck_slice(z)
        centre = ref.neck_centre_mm[s]
        nx = centre[..., 0] + neck_inv[0, 0] * ex + neck_inv[0, 1] * ey
        ny = centre[..., 1] + neck_inv[1, 0] * ex + neck_inv[1, 1] * ey
        out, inside = self._lookup(ref.neck_materials, s, nx, ny, ref.neck_spacing_mm)
        out = np.where(inside, out, np.uint8(Material.AIR))
        body, _ = self._lookup(ref.neck_vertebral_body, s, nx, ny, ref.neck_spacing_mm)
        boundaries = np.asarray(self.level_tops_mm[1:-1])
        near_disc = np.min(np.abs(z[..., None] - boundaries), axis=-1) < _DISC_HALF_MM
        out[body & inside & near_disc] = Material.DISC

        # Canal (PAM50 cord + CSF), shaped per subject, displaced from the cord.
        k = self._pam_k(z)
        pam_centre = ref.pam_centre_mm[k]
        step = ref.pam_spacing_mm
        canal_inv = np.linalg.inv(_affine_2x2(self.canal_scale, self.canal_aspect, 0.0, 0.0))
        qx = pam_centre[..., 0] + canal_inv[0, 0] * ex + canal_inv[0, 1] * ey
        qy = pam_centre[..., 1] + canal_inv[1, 0] * ex + canal_inv[1, 1] * ey
        label, inside = self._lookup(ref.pam_labels, k, qx, qy, step)
        out[inside & (label >= PAM_CSF)] = Material.CSF

        # Cord and grey matter (PAM50), deformed per subject.
        cord_inv = np.linalg.inv(
            _affine_2x2(self.cord_scale, self.cord_aspect, self.cord_rotation_deg, self.cord_shear)
        )
        qx = pam_centre[..., 0] + cord_inv[0, 0] * dx + cord_inv[0, 1] * dy
        qy = pam_centre[..., 1] + cord_inv[1, 0] * dx + cord_inv[1, 1] * dy
        label, inside = self._lookup(ref.pam_labels, k, qx, qy, step)
        out[inside & (label == PAM_WM)] = Material.WM
        out[inside & (label == PAM_GM)] = Material.GM
        return out


def draw_real_anatomy(rng: np.random.Generator, reference: RealReference) -> RealAnatomy:
    """Draw one subject's real-shape anatomy on the shared reference.

    Parameters
    ----------
    rng : numpy.random.Generator
    reference : RealReference
        Prepared PAM50 and neck arrays (``real_reference.prepare_real_reference``).
    """
    heights = np.asarray(_LEVEL_HEIGHTS_MM) * rng.uniform(0.92, 1.08)
    heights *= rng.uniform(0.94, 1.06, size=heights.size)
    tops = np.concatenate([[0.0], -np.cumsum(heights)])
    return RealAnatomy(
        reference=reference,
        level_tops_mm=tuple(float(t) for t in tops),
        cord_scale=float(rng.uniform(1.08, 1.2)),
        cord_aspect=float(rng.uniform(0.9, 1.1)),
        cord_rotation_deg=float(rng.uniform(-8.0, 8.0)),
        cord_shear=float(rng.uniform(-0.08, 0.08)),
        canal_scale=float(rng.uniform(0.95, 1.1)),
        canal_aspect=float(rng.uniform(0.85, 1.05)),
        canal_offset_x_mm=float(rng.uniform(-1.0, 1.0)),
        canal_offset_y_mm=float(rng.uniform(-1.0, 1.0)),
        canal_wobble_x_mm=float(rng.uniform(0.3, 1.0)),
        canal_wobble_y_mm=float(rng.uniform(1.5, 2.5)),
        canal_wobble_period_mm=float(rng.uniform(40.0, 80.0)),
        canal_wobble_phase=float(rng.uniform(0, 2 * np.pi)),
        neck_scale=float(rng.uniform(0.9, 1.1)),
        neck_rotation_deg=float(rng.uniform(-5.0, 5.0)),
        centre_x_mm=float(rng.uniform(-1.5, 1.5)),
        centre_y_mm=float(rng.uniform(8.0, 14.0)),
        drift_x_mm=float(rng.uniform(0.5, 2.0)),
        drift_y_mm=float(rng.uniform(0.5, 2.0)),
        drift_period_mm=float(rng.uniform(90.0, 160.0)),
        drift_phase_x=float(rng.uniform(0, 2 * np.pi)),
        drift_phase_y=float(rng.uniform(0, 2 * np.pi)),
        lordosis_mm=float(rng.uniform(2.0, 5.0)),
        fov_offset_x_mm=float(rng.uniform(-8.0, 8.0)),
        fov_offset_y_mm=float(rng.uniform(-15.0, -4.0)),
    )
