"""Smooth 7 T fields: transmit B1 (relative flip angle), receive sensitivity, phase."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

__all__ = ["FieldParameters", "draw_fields"]

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class FieldParameters:
    """Per-exam smooth field parameters (patient mm).

    Parameters
    ----------
    b1_peak : float
        Relative B1 at the field's centre (about 1.0-1.05).
    b1_centre_mm : tuple of float
        Centre (x, y, z) of the transmit field.
    b1_radius_mm : float
        Distance over which B1 falls by ``b1_drop``.
    b1_drop : float
        Fractional B1 drop at ``b1_radius_mm`` from the centre.
    coil_y_mm : float
        y of the posterior receive array (patient is lying on it).
    phase_gradient_rad_per_mm : tuple of float
        Linear receive phase (x, y, z).
    """

    b1_peak: float
    b1_centre_mm: tuple[float, float, float]
    b1_radius_mm: float
    b1_drop: float
    coil_y_mm: float
    phase_gradient_rad_per_mm: tuple[float, float, float]

    def __post_init__(self) -> None:
        if not 0.5 < self.b1_peak < 1.5 or not 0 <= self.b1_drop < 0.5:
            raise ValueError("B1 field parameters out of range")
        if self.b1_radius_mm <= 0:
            raise ValueError("b1_radius_mm must be positive")

    def b1(self, points_mm: FloatArray) -> FloatArray:
        """Relative transmit field (actual / nominal flip angle) at each point."""
        p = np.asarray(points_mm, dtype=float) - np.asarray(self.b1_centre_mm)
        r2 = (p[..., 0] ** 2 + p[..., 1] ** 2 + 0.5 * p[..., 2] ** 2) / self.b1_radius_mm**2
        return self.b1_peak * (1.0 - self.b1_drop * np.minimum(r2, 1.0))

    def receive(self, points_mm: FloatArray) -> FloatArray:
        """Receive sensitivity (posterior array: brighter toward the patient's back)."""
        p = np.asarray(points_mm, dtype=float)
        depth = np.clip(self.coil_y_mm - p[..., 1], 0.0, None)
        return 0.55 + 0.75 * np.exp(-depth / 45.0)

    def phase(self, points_mm: FloatArray) -> FloatArray:
        """Smooth receive phase (rad), common to both inversion images."""
        p = np.asarray(points_mm, dtype=float)
        g = np.asarray(self.phase_gradient_rad_per_mm)
        return p @ g + 0.3


def draw_fields(
    rng: np.random.Generator, cord_centre_mm: tuple[float, float, float]
) -> FieldParameters:
    """Draw a B1 field that varies about 0.85..1.05 over a neck-sized field of view."""
    x, y, z = cord_centre_mm
    return FieldParameters(
        b1_peak=float(rng.uniform(1.00, 1.05)),
        b1_centre_mm=(
            float(x + rng.uniform(-8, 8)),
            float(y - rng.uniform(30, 45)),
            float(z + rng.uniform(-20, 20)),
        ),
        b1_radius_mm=float(rng.uniform(65.0, 80.0)),
        b1_drop=float(rng.uniform(0.17, 0.20)),
        coil_y_mm=float(y + 45.0),
        phase_gradient_rad_per_mm=(
            float(rng.uniform(-0.02, 0.02)),
            float(rng.uniform(-0.02, 0.02)),
            float(rng.uniform(-0.01, 0.01)),
        ),
    )
