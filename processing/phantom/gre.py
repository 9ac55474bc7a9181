"""Multi-echo spoiled gradient echo (T2*-weighted) magnitude images of a slab on its own grid.

Signal of a material with proton density PD, T1 and T2* at echo time TE, repetition time TR
and actual flip angle ``a = B1 * nominal``: the spoiled steady state
``PD * sin(a) * (1 - E1) / (1 - cos(a) * E1) * exp(-TE / T2*)`` with ``E1 = exp(-TR / T1)``,
weighted by the receive field and the material fractions of each voxel. Rician noise: complex
Gaussian noise added to the signal, magnitude taken.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from processing.phantom.anatomy import Material
from processing.phantom.fields import FieldParameters
from processing.phantom.geometry import SlabGeometry
from processing.phantom.lesions import Lesion, lesion_material
from processing.phantom.protocol import Anatomy
from processing.phantom.render import render_slice_fractions
from processing.phantom.t2star import TissueT2Star, t2star_material_table
from processing.phantom.tissues import PROTON_DENSITY, TissueT1, material_table

__all__ = [
    "GREImages",
    "GREProtocol",
    "gre_noise_sigma",
    "gre_signal",
    "root_sum_of_squares",
    "simulate_gre_slab",
]

FloatArray = NDArray[np.float64]

_B1_GRID = np.linspace(0.5, 1.5, 201)
#: Reference tissue of the SNR definition: nominal cord WM at B1 = 1, first echo.
_REFERENCE = {"pd": PROTON_DENSITY[Material.WM], "t1_ms": 1190.0, "t2star_ms": 30.0}


@dataclass(frozen=True)
class GREProtocol:
    """Timing of a multi-echo spoiled GRE.

    Parameters
    ----------
    echo_times_ms : tuple of float
        Strictly increasing echo times (ms).
    repetition_time_ms : float
        TR (ms), longer than the last echo.
    flip_deg : float
        Nominal flip angle (degrees).
    """

    echo_times_ms: tuple[float, ...] = (5.0, 10.0, 15.0, 20.0)
    repetition_time_ms: float = 600.0
    flip_deg: float = 20.0

    def __post_init__(self) -> None:
        te = np.asarray(self.echo_times_ms, dtype=float)
        if te.ndim != 1 or te.size < 1 or te.size > 16:
            raise ValueError("echo_times_ms must hold 1..16 echo times")
        if np.any(te <= 0) or np.any(np.diff(te) <= 0):
            raise ValueError(f"echo_times_ms must be positive and increasing, got {te.tolist()}")
        if not self.repetition_time_ms > te[-1]:
            raise ValueError("repetition_time_ms must exceed the last echo time")
        if not 0.0 < self.flip_deg <= 90.0:
            raise ValueError(f"flip_deg must be within (0, 90], got {self.flip_deg!r}")


def gre_signal(
    pd: FloatArray,
    t1_ms: FloatArray,
    t2star_ms: FloatArray,
    protocol: GREProtocol,
    b1: FloatArray | float = 1.0,
) -> FloatArray:
    """Noise-free magnitude of every echo, shape ``(n_echoes, *broadcast shape)``.

    Examples
    --------
    >>> p = GREProtocol((5.0, 20.0))
    >>> wm, gm = gre_signal(np.array([0.7, 0.8]), np.array([1190.0, 1310.0]),
    ...                     np.array([30.0, 37.5]), p)[1]
    >>> bool(gm > 1.15 * wm)
    True
    """
    pd, t1, t2s, b1 = np.broadcast_arrays(
        np.asarray(pd, float), np.asarray(t1_ms, float), np.asarray(t2star_ms, float),
        np.asarray(b1, float),
    )  # fmt: skip
    flip = np.deg2rad(protocol.flip_deg) * b1
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        e1 = np.where(t1 > 0, np.exp(-protocol.repetition_time_ms / np.where(t1 > 0, t1, 1.0)), 0)
        steady = pd * np.sin(flip) * (1.0 - e1) / (1.0 - np.cos(flip) * e1)
        te = np.asarray(protocol.echo_times_ms).reshape((-1,) + (1,) * pd.ndim)
        decay = np.where(t2s > 0, np.exp(-te / np.where(t2s > 0, t2s, 1.0)), 0.0)
    return np.nan_to_num(steady * decay)


def gre_noise_sigma(snr: float, protocol: GREProtocol) -> float:
    """Per-channel noise SD for a first-echo SNR of ``snr`` in nominal cord white matter.

    Examples
    --------
    >>> p = GREProtocol()
    >>> bool(gre_noise_sigma(40.0, p) < gre_noise_sigma(20.0, p))
    True
    """
    if not np.isfinite(snr) or snr <= 0:
        raise ValueError(f"snr must be a positive number, got {snr!r}")
    reference = gre_signal(
        _REFERENCE["pd"], _REFERENCE["t1_ms"], _REFERENCE["t2star_ms"], protocol
    )
    return float(reference[0] / snr)


def root_sum_of_squares(echoes: FloatArray) -> FloatArray:
    """Root-sum-of-squares over the echo axis (axis 0), like a MEDIC combined image."""
    values = np.asarray(echoes, dtype=np.float64)
    return np.sqrt(np.sum(values * values, axis=0))


@dataclass(frozen=True)
class GREImages:
    """Simulated multi-echo GRE of one slab on its own grid.

    Attributes
    ----------
    echoes : ndarray, shape (n_echoes, n_slices, rows, cols)
        Noisy magnitudes (M0 = 1 units, receive field included).
    cord, gm : bool ndarray, shape (n_slices, rows, cols)
        Truth on the GRE grid (same definitions as :class:`SlabImages`).
    """

    echoes: FloatArray
    cord: NDArray[np.bool_]
    gm: NDArray[np.bool_]

    @property
    def combined(self) -> FloatArray:
        """Root-sum-of-squares of the echoes, shape (n_slices, rows, cols)."""
        return root_sum_of_squares(self.echoes)


def _moved(geometry: SlabGeometry, motion_mm: FloatArray) -> SlabGeometry:
    """Grid whose points sample the anatomy as if the subject had moved by ``motion_mm``."""
    affine = geometry.affine_lps.copy()
    affine[:3, 3] -= motion_mm
    return SlabGeometry(geometry.shape, affine)


def simulate_gre_slab(
    geometry: SlabGeometry,
    anatomy: Anatomy,
    lesions: tuple[Lesion, ...],
    tissues: TissueT1,
    t2star: TissueT2Star,
    fields: FieldParameters,
    protocol: GREProtocol,
    sigma: float,
    rng: np.random.Generator,
    *,
    motion_mm: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> GREImages:
    """Render one slab on its own grid and simulate its noisy multi-echo GRE magnitudes.

    Parameters
    ----------
    geometry : SlabGeometry
        The GRE grid (as written in the headers).
    anatomy : Anatomy
    lesions : tuple of Lesion
    tissues : TissueT1
        T1 and proton density (steady-state weighting).
    t2star : TissueT2Star
    fields : FieldParameters
        B1 (actual flip angle) and receive field, fixed to the scanner.
    protocol : GREProtocol
    sigma : float
        Complex Gaussian noise SD per channel (:func:`gre_noise_sigma`); 0 disables noise.
    rng : numpy.random.Generator
    motion_mm : tuple of float
        Displacement (LPS mm) of the subject relative to the other series of the exam:
        the anatomy moves, the grid and the coil fields do not.

    Returns
    -------
    GREImages
    """
    if sigma < 0:
        raise ValueError("sigma must be >= 0")
    motion = np.asarray(motion_mm, dtype=float)
    if motion.shape != (3,) or not np.all(np.isfinite(motion)):
        raise ValueError("motion_mm must be 3 finite numbers (x, y, z)")
    t1_ms, pd = material_table(tissues, lesions)
    t2s_ms = t2star_material_table(t2star, lesions)
    n_mat = t1_ms.size
    # (n_echoes, n_b1, n_materials) signal table, interpolated in B1 per voxel
    table = gre_signal(pd[None, :], t1_ms[None, :], t2s_ms[None, :], protocol, _B1_GRID[:, None])
    render = _moved(geometry, motion)
    n_echoes = len(protocol.echo_times_ms)
    shape = geometry.shape
    echoes = np.zeros((n_echoes, *shape))
    cord = np.zeros(shape, dtype=bool)
    gm = np.zeros(shape, dtype=bool)
    lesion_wm = [lesion_material(n, False) for n in range(len(lesions))]
    lesion_gm = [lesion_material(n, True) for n in range(len(lesions))]
    rows, cols = shape[1:]
    jj, ii = np.meshgrid(np.arange(rows, dtype=float), np.arange(cols, dtype=float), indexing="ij")
    step = _B1_GRID[1] - _B1_GRID[0]
    for k in range(shape[0]):
        f = render_slice_fractions(render, k, anatomy, lesions, n_mat)
        centres = geometry.points_mm(k, jj, ii)
        position = np.clip((fields.b1(centres) - _B1_GRID[0]) / step, 0, _B1_GRID.size - 1)
        low = np.minimum(position.astype(int), _B1_GRID.size - 2)
        weight = (position - low)[..., None]
        receive = fields.receive(centres)
        for e in range(n_echoes):
            per_material = (1.0 - weight) * table[e][low] + weight * table[e][low + 1]
            signal = receive * np.einsum("rcm,rcm->rc", f, per_material)
            if sigma > 0:
                real = signal + sigma * rng.standard_normal(signal.shape)
                imag = sigma * rng.standard_normal(signal.shape)
                signal = np.hypot(real, imag)
            echoes[e, k] = signal
        gm_frac = f[..., Material.GM] + f[..., lesion_gm].sum(-1)
        cord_frac = f[..., Material.WM] + gm_frac + f[..., lesion_wm].sum(-1)
        cord[k] = cord_frac > 0.5
        gm[k] = cord[k] & (gm_frac > 0.5 * cord_frac)
    return GREImages(echoes=echoes, cord=cord, gm=gm)
