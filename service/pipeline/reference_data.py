"""The reference data cordt1 ships (``service/data``): the PAM50 cervical template and atlas,
and one real neck for the phantom. See ``service/data/README.md`` for what each array holds.

Arrays come back in NIfTI voxel order ``(i, j, k)`` with their RAS affine, exactly as stored;
the modules that use them convert to the project's ``[k, j, i]`` / LPS convention.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "DATA_DIR",
    "NeckReference",
    "Pam50Reference",
    "load_neck",
    "load_pam50",
    "read_pam50",
]

DATA_DIR = Path(__file__).resolve().parents[1] / "data"


@dataclass(frozen=True)
class Pam50Reference:
    """PAM50 cut to C1-T1 (0.5 mm iso, NIfTI order, RAS affine).

    Attributes
    ----------
    cord, csf : ndarray of bool
    gm, wm : ndarray of float32
        Probabilities in [0, 1].
    levels : ndarray of uint8
        Vertebral level of each cord voxel (1 = C1 .. 8 = T1), 0 outside.
    regions : ndarray of float32, shape (12, i, j, k)
        Probability of each reporting region, named in ``region_keys``.
    region_keys : tuple of str
        ``wm_dorsal_columns_left`` ... ``gm_dorsal_horns_right``.
    affine_ras : ndarray, shape (4, 4)
    """

    cord: NDArray[np.bool_]
    csf: NDArray[np.bool_]
    gm: NDArray[np.float32]
    wm: NDArray[np.float32]
    levels: NDArray[np.uint8]
    regions: NDArray[np.float32]
    region_keys: tuple[str, ...]
    affine_ras: NDArray[np.float64]


@dataclass(frozen=True)
class NeckReference:
    """One real neck (axial T2*-weighted GRE, NIfTI order, RAS affine).

    Attributes
    ----------
    image : ndarray of uint8
    gm : ndarray of bool
        The expert's grey-matter outline (no whole-cord outline exists on this grid).
    affine_ras : ndarray, shape (4, 4)
    """

    image: NDArray[np.uint8]
    gm: NDArray[np.bool_]
    affine_ras: NDArray[np.float64]

    @property
    def gm_outlined(self) -> NDArray[np.bool_]:
        """Slices (k) with a grey-matter outline."""
        return self.gm.any(axis=(0, 1))


def _load(name: str | Path) -> dict[str, NDArray]:
    path = DATA_DIR / name
    if not path.is_file():
        raise FileNotFoundError(
            f"cordt1's reference data {path} is missing; reinstall cordt1 (the file ships with it)"
        )
    with np.load(path) as archive:
        return {key: archive[key] for key in archive.files}


@cache
def load_pam50() -> Pam50Reference:
    """The shipped PAM50 cervical template and atlas (loaded once per process)."""
    return read_pam50(DATA_DIR / "pam50_cervical.npz")


def read_pam50(path: Path) -> Pam50Reference:
    """A PAM50 file in the shipped format (e.g. one just made by the build script)."""
    a = _load(path)
    return Pam50Reference(
        cord=a["cord"] > 0,
        csf=a["csf"] > 0,
        gm=a["gm"].astype(np.float32) / 255,
        wm=a["wm"].astype(np.float32) / 255,
        levels=a["levels"],
        regions=a["regions"].astype(np.float32) / 255,
        region_keys=tuple(str(k) for k in a["region_keys"]),
        affine_ras=a["affine_ras"],
    )


@cache
def load_neck() -> NeckReference:
    """The shipped real neck (loaded once per process)."""
    a = _load("neck_t2s.npz")
    return NeckReference(
        image=a["image"],
        gm=a["gm"],
        affine_ras=a["affine_ras"],
    )
