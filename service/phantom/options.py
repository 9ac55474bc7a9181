"""Options of the synthetic exam generator."""

from __future__ import annotations

from dataclasses import dataclass

from service.phantom.protocols import PRESETS

__all__ = ["TRANSFER_SYNTAXES", "PhantomOptions"]

TRANSFER_SYNTAXES = ("explicit", "implicit", "j2k", "rle", "jpegls")


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
    snr : float
        INV2 signal-to-noise ratio of nominal white matter; 35 gives about 70 ms T1 noise
        per voxel in cord WM/GM.
    protocol : str
        Name of a protocol preset (see ``service.phantom.protocols.PRESETS``).
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

    def __post_init__(self) -> None:
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
