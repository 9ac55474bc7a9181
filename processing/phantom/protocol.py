"""What the renderer, lesions, GRE and exam writer need from a subject's anatomy."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

__all__ = ["Anatomy"]

FloatArray = NDArray[np.float64]


@runtime_checkable
class Anatomy(Protocol):
    """A subject's neck in patient mm (DICOM LPS): cord centre line, levels, tissue classes.

    Satisfied by the analytic :class:`~processing.phantom.anatomy.SubjectAnatomy` and by the
    real-shape :class:`~processing.phantom.real_anatomy.RealAnatomy`.
    """

    @property
    def level_tops_mm(self) -> tuple[float, ...]:
        """z (mm) of the top of C1..C7 followed by the bottom of C7 (8 values, decreasing)."""
        ...

    @property
    def enlargement_z_mm(self) -> float:
        """z (mm) of the centre of the cervical enlargement."""
        ...

    @property
    def fov_offset_mm(self) -> tuple[float, float]:
        """Where a planner centres the field of view, relative to the cord centre (x, y mm)."""
        ...

    def centreline(self, z_mm: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Cord centre ``(x, y)`` in mm at each z."""
        ...

    def semi_axes(self, z_mm: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Cord left-right and antero-posterior semi-axes (mm) at each z."""
        ...

    def level_at(self, z_mm: FloatArray) -> NDArray[np.int16]:
        """Vertebral level 1..7 (C1..C7) at each z, clipped at the ends."""
        ...

    def cord_coordinates(self, points_mm: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Normalised cord coordinates ``(u, v)``: u left-right, v anterior(-)..posterior(+)."""
        ...

    def materials(self, points_mm: FloatArray) -> NDArray[np.uint8]:
        """Tissue class (:class:`~processing.phantom.anatomy.Material`) of each point."""
        ...

    def as_dict(self) -> dict[str, object]:
        """The subject's drawn parameters (JSON-ready) for the ground truth."""
        ...
