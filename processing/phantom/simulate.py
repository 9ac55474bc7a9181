"""MP2RAGE images and ground-truth masks of one slab, from material fractions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from processing.mp2rage import MP2RAGEProtocol, signals, uni_from_signals
from processing.phantom.anatomy import Material
from processing.phantom.fields import FieldParameters
from processing.phantom.geometry import SlabGeometry
from processing.phantom.lesions import Lesion, lesion_material
from processing.phantom.protocol import Anatomy
from processing.phantom.render import render_slice_fractions
from processing.phantom.tissues import PROTON_DENSITY, TissueT1, material_table

__all__ = ["SlabImages", "noise_sigma", "simulate_slab"]

#: Reference tissue of the SNR definition: nominal WM (T1 1190 ms) at B1 = 1.
_REFERENCE_T1_S = 1.19
_B1_GRID = np.linspace(0.5, 1.5, 401)


@dataclass(frozen=True)
class SlabImages:
    """Simulated images and truth of one slab, arrays shaped ``(n_slices, rows, cols)``.

    Attributes
    ----------
    s1, s2 : complex ndarray
        Noisy complex signals of the two inversion blocks (M0 = 1 units).
    b1 : ndarray
        Relative transmit field at the voxel centres.
    t1_true_ms : ndarray
        Fraction-weighted T1 of the non-air materials in each voxel (0 in air).
    cord, gm, wm, csf : bool ndarray
        Masks: cord fraction > 0.5; within the cord GM where GM exceeds half of the cord
        tissue, WM otherwise; CSF fraction > 0.5.
    lesions : int16 ndarray
        Lesion id where one lesion fills more than half of the voxel, else 0.
    levels : int16 ndarray
        Vertebral level 1..7 inside the cord, 0 outside.
    """

    s1: NDArray[np.complex128]
    s2: NDArray[np.complex128]
    b1: NDArray[np.float64]
    t1_true_ms: NDArray[np.float64]
    cord: NDArray[np.bool_]
    gm: NDArray[np.bool_]
    wm: NDArray[np.bool_]
    csf: NDArray[np.bool_]
    lesions: NDArray[np.int16]
    levels: NDArray[np.int16]

    @property
    def uni(self) -> NDArray[np.float64]:
        """UNI image in [-0.5, 0.5] from the noisy complex signals."""
        return uni_from_signals(self.s1, self.s2)


def noise_sigma(snr: float, protocol: MP2RAGEProtocol) -> float:
    """Per-channel noise SD for an INV2 SNR of ``snr`` in nominal white matter.

    Examples
    --------
    >>> p = MP2RAGEProtocol(5.0, 0.8, 2.7, 4.0, 5.0, 0.0067, 48)
    >>> bool(noise_sigma(20.0, p) < noise_sigma(10.0, p))
    True
    """
    if not np.isfinite(snr) or snr <= 0:
        raise ValueError(f"snr must be a positive number, got {snr!r}")
    _, s2 = signals(_REFERENCE_T1_S, protocol)
    return float(abs(s2) * PROTON_DENSITY[Material.WM] / snr)


def _signal_tables(
    t1_ms: NDArray[np.float64], protocol: MP2RAGEProtocol
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Signals of every material on a B1 grid, shape (n_b1, n_materials)."""
    t1_s = np.where(t1_ms > 0, t1_ms, 1000.0) / 1000.0
    s1, s2 = signals(t1_s[None, :], protocol, _B1_GRID[:, None])
    return s1, s2


def _interp_rows(table: NDArray[np.float64], b1: NDArray[np.float64]) -> NDArray[np.float64]:
    position = np.clip((b1 - _B1_GRID[0]) / (_B1_GRID[1] - _B1_GRID[0]), 0, _B1_GRID.size - 1)
    low = np.minimum(position.astype(int), _B1_GRID.size - 2)
    weight = (position - low)[..., None]
    return (1.0 - weight) * table[low] + weight * table[low + 1]


def simulate_slab(
    geometry: SlabGeometry,
    anatomy: Anatomy,
    lesions: tuple[Lesion, ...],
    tissues: TissueT1,
    fields: FieldParameters,
    protocol: MP2RAGEProtocol,
    sigma: float,
    rng: np.random.Generator,
) -> SlabImages:
    """Render one slab and simulate its noisy MP2RAGE signals.

    Parameters
    ----------
    geometry : SlabGeometry
    anatomy : Anatomy
    lesions : tuple of Lesion
        Lesions present at this exam (all slabs; those outside the slab do nothing).
    tissues : TissueT1
        Subject T1 values including the diffuse rise.
    fields : FieldParameters
        B1, receive and phase fields.
    protocol : MP2RAGEProtocol
    sigma : float
        Complex Gaussian noise SD per channel (see :func:`noise_sigma`); 0 disables noise.
    rng : numpy.random.Generator
        Source of the noise.

    Returns
    -------
    SlabImages
    """
    if sigma < 0:
        raise ValueError("sigma must be >= 0")
    t1_ms, pd = material_table(tissues, lesions)
    n_mat = t1_ms.size
    tab1, tab2 = _signal_tables(t1_ms, protocol)
    tab1, tab2 = tab1 * pd, tab2 * pd
    shape = geometry.shape
    out = {
        name: np.zeros(shape, dtype=dtype)
        for name, dtype in (
            ("s1", np.complex128),
            ("s2", np.complex128),
            ("b1", np.float64),
            ("t1_true_ms", np.float64),
            ("cord", bool),
            ("gm", bool),
            ("wm", bool),
            ("csf", bool),
            ("lesions", np.int16),
            ("levels", np.int16),
        )
    }
    lesion_wm = [lesion_material(n, False) for n in range(len(lesions))]
    lesion_gm = [lesion_material(n, True) for n in range(len(lesions))]
    rows, cols = shape[1:]
    jj, ii = np.meshgrid(np.arange(rows, dtype=float), np.arange(cols, dtype=float), indexing="ij")
    for k in range(shape[0]):
        f = render_slice_fractions(geometry, k, anatomy, lesions, n_mat)
        centres = geometry.points_mm(k, jj, ii)
        b1 = fields.b1(centres)
        coil = fields.receive(centres) * np.exp(1j * fields.phase(centres))
        s1 = coil * np.einsum("rcm,rcm->rc", f, _interp_rows(tab1, b1))
        s2 = coil * np.einsum("rcm,rcm->rc", f, _interp_rows(tab2, b1))
        if sigma > 0:
            s1 = s1 + sigma * (rng.standard_normal(s1.shape) + 1j * rng.standard_normal(s1.shape))
            s2 = s2 + sigma * (rng.standard_normal(s2.shape) + 1j * rng.standard_normal(s2.shape))
        tissue_fraction = 1.0 - f[..., Material.AIR]
        with np.errstate(invalid="ignore", divide="ignore"):
            t1_true = np.where(tissue_fraction > 1e-6, (f @ t1_ms) / tissue_fraction, 0.0)
        gm_frac = f[..., Material.GM] + f[..., lesion_gm].sum(-1)
        cord_frac = f[..., Material.WM] + gm_frac + f[..., lesion_wm].sum(-1)
        cord = cord_frac > 0.5
        gm = cord & (gm_frac > 0.5 * cord_frac)
        lesion_frac = f[..., lesion_wm] + f[..., lesion_gm]
        labels = np.zeros((rows, cols), dtype=np.int16)
        if lesions:
            best = np.argmax(lesion_frac, axis=-1)
            filled = np.take_along_axis(lesion_frac, best[..., None], -1)[..., 0] > 0.5
            ids = np.asarray([lesion.lesion_id for lesion in lesions], dtype=np.int16)
            labels[filled] = ids[best[filled]]
        out["s1"][k], out["s2"][k], out["b1"][k] = s1, s2, b1
        out["t1_true_ms"][k] = t1_true
        out["cord"][k], out["gm"][k], out["wm"][k] = cord, gm, cord & ~gm
        out["csf"][k] = f[..., Material.CSF] > 0.5
        out["lesions"][k] = labels
        out["levels"][k] = np.where(cord, anatomy.level_at(centres[..., 2]), 0)
    return SlabImages(**out)
