"""The PAM50 priors the pipeline uses: GM probability and reporting regions per level.

Built from the shipped PAM50 template and atlas
(:func:`service.pipeline.reference_data.load_pam50`) by
:func:`processing.atlas.pam50_priors_from_atlas`. Building takes about a second, so the result
ships precomputed (``service/data/pam50_priors.npz``, made by
``scripts/make_reference_data.py``) and is loaded once per process.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from processing.atlas import Pam50Priors, pam50_priors_from_atlas
from service.pipeline.reference_data import DATA_DIR, Pam50Reference, load_pam50

__all__ = [
    "PRIORS_FILE",
    "build_pam50_priors",
    "load_pam50_priors",
    "pam50_gm_prior",
    "pam50_lps",
    "save_pam50_priors",
]

PRIORS_FILE = DATA_DIR / "pam50_priors.npz"

#: NIfTI (i, j, k) -> the project's (k, j, i) voxel order.
_KJI_TO_IJK = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def pam50_lps(
    reference: Pam50Reference,
) -> tuple[NDArray[np.bool_], NDArray[np.float32], NDArray[np.float32], NDArray, NDArray]:
    """PAM50 arrays in the project's ``[k, j, i]`` order with their LPS affine.

    Returns
    -------
    cord, gm, regions (12, k, j, i), levels, affine_lps
    """
    affine_lps = _RAS_TO_LPS @ np.asarray(reference.affine_ras, dtype=float) @ _KJI_TO_IJK
    return (
        reference.cord.transpose(2, 1, 0),
        reference.gm.transpose(2, 1, 0),
        reference.regions.transpose(0, 3, 2, 1),
        reference.levels.transpose(2, 1, 0),
        affine_lps,
    )


def build_pam50_priors(reference: Pam50Reference | None = None) -> Pam50Priors:
    """Compute the PAM50 priors from the shipped template and atlas."""
    reference = reference if reference is not None else load_pam50()
    cord, gm, regions, levels, affine_lps = pam50_lps(reference)
    return pam50_priors_from_atlas(cord, gm, regions, levels, affine_lps, reference.region_keys)


def save_pam50_priors(priors: Pam50Priors, path: Path = PRIORS_FILE) -> None:
    """Store priors as probabilities x 255 (uint8), the shipped file's format."""

    def u8(values: NDArray) -> NDArray[np.uint8]:
        return np.clip(np.rint(values * 255), 0, 255).astype(np.uint8)

    np.savez_compressed(
        path,
        gm=u8(priors.gm),
        regions=u8(priors.regions),
        region_codes=np.asarray(priors.region_codes, dtype=np.int16),
    )


@cache
def load_pam50_priors() -> Pam50Priors:
    """The shipped PAM50 priors (loaded once per process)."""
    if not PRIORS_FILE.is_file():
        raise FileNotFoundError(
            f"cordt1's reference data {PRIORS_FILE} is missing; reinstall cordt1 "
            "(the file ships with it)"
        )
    with np.load(PRIORS_FILE) as a:
        return Pam50Priors(
            gm=a["gm"].astype(np.float64) / 255,
            regions=a["regions"].astype(np.float64) / 255,
            region_codes=tuple(int(c) for c in a["region_codes"]),
        )


@cache
def _gm_prior(n_slabs: int) -> NDArray[np.float64]:
    prior = load_pam50_priors().gm_prior_template(n_slabs)
    prior.setflags(write=False)
    return prior


def pam50_gm_prior(n_slabs: int) -> NDArray[np.float64]:
    """PAM50 GM prior on the template grid of an ``n_slabs`` protocol (a fresh copy)."""
    return _gm_prior(n_slabs).copy()
