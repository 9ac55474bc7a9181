"""Options of the synthetic exam generator."""

from __future__ import annotations

import math
from dataclasses import dataclass

from processing.phantom.gre import GREProtocol
from service.phantom.protocols import PRESETS

__all__ = ["ANATOMY_KINDS", "B1_GRIDS", "TRANSFER_SYNTAXES", "PhantomOptions"]

TRANSFER_SYNTAXES = ("explicit", "implicit", "j2k", "rle", "jpegls")
B1_GRIDS = ("same", "coarse")
ANATOMY_KINDS = ("real", "simple")


@dataclass(frozen=True)
class PhantomOptions:
    """What the phantom writes.

    Parameters
    ----------
    matrix : int
        In-plane matrix (square).
    voxel_mm : float
        In-plane pixel spacing (mm).
    slice_mm : float
        Slice thickness = slice spacing (mm).
    slices_per_slab : int
        Slices of each slab.
    slabs : int
        1 (about C1-C4) or 2 (plus about C4-C7); each slab is its own set of series.
    oblique_deg : float
        Rotation of the slice plane about the left-right axis (degrees).
    enhanced : bool
        Write Enhanced MR Image Storage (one multi-frame instance per series).
    transfer_syntax : str
        One of ``explicit``, ``implicit``, ``j2k``, ``rle``, ``jpegls``.
    scanner_t1_map : bool
        Also write the scanner's T1 map series.
    b1_map : bool
        Also write a B1 map series (relative flip angle x 1000).
    b1_grid : str
        ``same``: one B1 map per slab on the slab's grid; ``coarse``: one B1 map for the
        exam on its own coarse grid (3.5 mm pixels, 5 mm slices) covering every slab.
    snr : float
        INV2 signal-to-noise ratio of nominal white matter; 35 gives about 70 ms T1 noise
        per voxel in cord WM/GM.
    protocol : str
        Name of a protocol preset (see ``service.phantom.protocols.PRESETS``).
    t2star : bool
        Also write a T2*-weighted multi-echo spoiled 2D GRE series per slab, on its own grid
        (same frame of reference, same obliquity and coverage as the slab).
    t2star_echo_times_ms : tuple of float
        Echo times of the GRE.
    t2star_voxel_mm, t2star_slice_mm : float
        GRE pixel spacing and slice thickness (= spacing).
    t2star_matrix : int or None
        GRE in-plane matrix; None covers the MP2RAGE field of view.
    t2star_combined : bool
        Write one root-sum-of-squares image over the echoes (like Siemens MEDIC) instead
        of every echo.
    t2star_shift_mm : tuple of float
        Subject displacement (x, y, z LPS mm) during the GRE relative to the MP2RAGE.
    t2star_snr : float
        First-echo signal-to-noise ratio of nominal cord white matter.
    t2star_description : str
        SeriesDescription (and ProtocolName) of the GRE series.
    anatomy : str
        ``real``: cord, grey matter and canal from the PAM50 template inside a real neck's
        surroundings, deformed per subject; ``simple``: the analytic elliptic cord in a
        disc-shaped neck (for tests that need a trivial case).
    """

    matrix: int = 448
    voxel_mm: float = 0.3
    slice_mm: float = 4.0
    slices_per_slab: int = 12
    slabs: int = 2
    oblique_deg: float = 0.0
    enhanced: bool = False
    transfer_syntax: str = "explicit"
    scanner_t1_map: bool = True
    b1_map: bool = False
    snr: float = 35.0
    protocol: str = "siemens-7t-cspine"
    b1_grid: str = "same"
    t2star: bool = False
    t2star_echo_times_ms: tuple[float, ...] = (5.0, 10.0, 15.0, 20.0)
    t2star_voxel_mm: float = 0.22
    t2star_slice_mm: float = 3.0
    t2star_matrix: int | None = None
    t2star_combined: bool = False
    t2star_shift_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    t2star_snr: float = 20.0
    t2star_description: str = "t2star_me_gre_tra"
    anatomy: str = "real"

    def __post_init__(self) -> None:
        # sequences from the command line or JSON: store as tuples of float
        for name in ("t2star_echo_times_ms", "t2star_shift_mm"):
            try:
                object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{name} must be a sequence of numbers") from exc
        if not isinstance(self.matrix, int) or not 16 <= self.matrix <= 1024:
            raise ValueError(f"matrix must be an integer within 16..1024, got {self.matrix!r}")
        if not 0.1 <= self.voxel_mm <= 2.0:
            raise ValueError(f"voxel_mm must be within 0.1..2.0 mm, got {self.voxel_mm!r}")
        if not 1.0 <= self.slice_mm <= 10.0:
            raise ValueError(f"slice_mm must be within 1..10 mm, got {self.slice_mm!r}")
        if not isinstance(self.slices_per_slab, int) or not 1 <= self.slices_per_slab <= 64:
            raise ValueError(
                f"slices_per_slab must be an integer within 1..64, got {self.slices_per_slab!r}"
            )
        if self.slabs not in (1, 2):
            raise ValueError(f"slabs must be 1 or 2, got {self.slabs!r}")
        if not -30.0 <= self.oblique_deg <= 30.0:
            raise ValueError(f"oblique_deg must be within -30..30, got {self.oblique_deg!r}")
        if self.transfer_syntax not in TRANSFER_SYNTAXES:
            raise ValueError(
                f"transfer_syntax must be one of {TRANSFER_SYNTAXES}, got {self.transfer_syntax!r}"
            )
        if not 1.0 <= self.snr <= 10000.0:
            raise ValueError(f"snr must be within 1..10000, got {self.snr!r}")
        if self.protocol not in PRESETS:
            raise ValueError(
                f"unknown protocol preset {self.protocol!r}; known: {sorted(PRESETS)}"
            )
        if self.slices_per_slab * self.slice_mm < 8.0:
            raise ValueError("a slab must cover at least 8 mm (slices_per_slab * slice_mm)")
        if self.b1_grid not in B1_GRIDS:
            raise ValueError(f"b1_grid must be one of {B1_GRIDS}, got {self.b1_grid!r}")
        if self.b1_grid == "coarse" and not self.b1_map:
            raise ValueError("b1_grid='coarse' needs b1_map=True")
        if self.anatomy not in ANATOMY_KINDS:
            raise ValueError(f"anatomy must be one of {ANATOMY_KINDS}, got {self.anatomy!r}")
        self._check_t2star()

    def _check_t2star(self) -> None:
        try:
            GREProtocol(tuple(float(te) for te in self.t2star_echo_times_ms))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"t2star_echo_times_ms: {exc}") from exc
        if not 0.1 <= self.t2star_voxel_mm <= 2.0:
            raise ValueError(
                f"t2star_voxel_mm must be within 0.1..2.0 mm, got {self.t2star_voxel_mm!r}"
            )
        if not 1.0 <= self.t2star_slice_mm <= 10.0:
            raise ValueError(
                f"t2star_slice_mm must be within 1..10 mm, got {self.t2star_slice_mm!r}"
            )
        if self.t2star_matrix is not None and (
            not isinstance(self.t2star_matrix, int) or not 16 <= self.t2star_matrix <= 1024
        ):
            raise ValueError(
                f"t2star_matrix must be an integer within 16..1024, got {self.t2star_matrix!r}"
            )
        if not 16 <= self.t2star_grid_matrix <= 1024:
            raise ValueError("the GRE matrix covering the field of view must be within 16..1024")
        shift = tuple(self.t2star_shift_mm)
        if len(shift) != 3 or not all(math.isfinite(v) and abs(v) <= 5.0 for v in shift):
            raise ValueError(f"t2star_shift_mm must be 3 values within +-5 mm, got {shift!r}")
        if not 1.0 <= self.t2star_snr <= 10000.0:
            raise ValueError(f"t2star_snr must be within 1..10000, got {self.t2star_snr!r}")
        if not self.t2star_description or len(self.t2star_description) > 64:
            raise ValueError("t2star_description must be 1..64 characters")

    @property
    def t2star_grid_matrix(self) -> int:
        """GRE in-plane matrix: ``t2star_matrix`` or the one covering the MP2RAGE field."""
        if self.t2star_matrix is not None:
            return self.t2star_matrix
        return round(self.matrix * self.voxel_mm / self.t2star_voxel_mm)

    @property
    def t2star_slices(self) -> int:
        """GRE slices per slab: about the slab's cranio-caudal coverage."""
        return max(1, round(self.slices_per_slab * self.slice_mm / self.t2star_slice_mm))
