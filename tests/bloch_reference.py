"""Independent step-by-step Bloch simulation of the MP2RAGE cycle (test reference only).

This module deliberately shares no code with :mod:`processing.mp2rage`: it has its own
parameter container, derives the pulse times from the inversion times itself, applies every
RF pulse one by one, and finds the steady state by running whole cycles from Mz = 1 until
the magnetisation repeats (no closed form for the pulse train, no fixed-point formula).

Timing (same definitions as the science brief): the k-space centre pulse of block b is at
TI_b after the inversion, with ``n_before`` pulses before it spaced TR_ro apart, so block b
runs from ``TI_b - n_before*TR_ro`` to ``TI_b + n_after*TR_ro`` with
``n_after = n - n_before``; each pulse is followed by TR_ro of recovery. The cycle
restarts (next inversion) at TR_MP2RAGE. The recorded signal is ``sin(a) * Mz`` just before
the centre pulse (transverse magnetisation right after that pulse).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["ReferenceSequence", "simulate_signals", "simulate_uni"]


@dataclass(frozen=True)
class ReferenceSequence:
    """MP2RAGE parameters for the reference simulation, in plain numbers.

    Parameters
    ----------
    tr_mp2rage_s : float
        Time between inversions (s).
    ti1_s, ti2_s : float
        Inversion to k-space centre of blocks 1 and 2 (s).
    flip1_deg, flip2_deg : float
        Nominal flip angles (degrees).
    echo_spacing_s : float
        Time between excitations (TR_ro, s).
    n_excitations : int
        Pulses per readout block.
    n_before_centre : int
        Pulses before the centre pulse in each block.
    efficiency : float
        Inversion efficiency: the inversion maps Mz to ``-efficiency * Mz``.
    """

    tr_mp2rage_s: float
    ti1_s: float
    ti2_s: float
    flip1_deg: float
    flip2_deg: float
    echo_spacing_s: float
    n_excitations: int
    n_before_centre: int
    efficiency: float

    def events(self, b1: float) -> list[tuple[float, str, float]]:
        """Time-ordered events of one cycle: ``(time_s, kind, flip_rad)``.

        ``kind`` is ``"inversion"``, ``"pulse"``, ``"centre1"`` or ``"centre2"``; the list
        ends with an ``"end"`` event at TR_MP2RAGE.

        Raises
        ------
        ValueError
            If a pulse falls before the inversion, the blocks overlap, or the second block
            runs past TR_MP2RAGE.
        """
        out: list[tuple[float, str, float]] = [(0.0, "inversion", 0.0)]
        for centre_s, flip_deg, label in (
            (self.ti1_s, self.flip1_deg, "centre1"),
            (self.ti2_s, self.flip2_deg, "centre2"),
        ):
            flip_rad = math.radians(flip_deg) * b1
            for k in range(self.n_excitations):
                offset = k - self.n_before_centre
                kind = label if offset == 0 else "pulse"
                out.append((centre_s + offset * self.echo_spacing_s, kind, flip_rad))
        out.append((self.tr_mp2rage_s, "end", 0.0))
        times = [t for t, _, _ in out]
        # Each pulse owns the TR_ro after it: block ends must not pass the next event.
        block1_end = self.ti1_s + (self.n_excitations - self.n_before_centre) * (
            self.echo_spacing_s
        )
        block2_start = self.ti2_s - self.n_before_centre * self.echo_spacing_s
        block2_end = self.ti2_s + (self.n_excitations - self.n_before_centre) * (
            self.echo_spacing_s
        )
        tol = 1e-12
        if times[1] < -tol or block1_end > block2_start + tol or block2_end > times[-1] + tol:
            raise ValueError("reference sequence: readout blocks do not fit in the cycle")
        return out


def _relax(mz: NDArray[np.float64], dt_s: float, t1_s: NDArray[np.float64]) -> NDArray:
    """Free T1 recovery towards M0 = 1 over ``dt_s`` (exact solution of dMz/dt)."""
    if dt_s <= 0:
        return mz
    decay = np.exp(-dt_s / t1_s)
    return 1.0 - (1.0 - mz) * decay


def simulate_signals(
    t1_s: ArrayLike,
    seq: ReferenceSequence,
    b1: float = 1.0,
    tol: float = 1e-15,
    max_cycles: int = 10_000,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Steady-state signals at the two k-space centres, by brute-force cycling.

    Parameters
    ----------
    t1_s : array_like
        T1 values (s); each is simulated independently.
    seq : ReferenceSequence
        Sequence parameters.
    b1 : float
        Relative transmit field scaling every flip angle.
    tol : float
        Convergence: stop when Mz at the start of a cycle moves less than this.
    max_cycles : int
        Give up (RuntimeError) after this many cycles.

    Returns
    -------
    s1, s2 : ndarray
        ``sin(a_b) * Mz`` just before the centre pulse of block b, same shape as ``t1_s``.
    """
    t1 = np.asarray(t1_s, dtype=np.float64)
    events = seq.events(b1)
    mz = np.ones_like(t1)
    s1 = np.full_like(t1, np.nan)
    s2 = np.full_like(t1, np.nan)
    for _ in range(max_cycles):
        start = mz.copy()
        now_s = 0.0
        for time_s, kind, flip_rad in events:
            mz = _relax(mz, time_s - now_s, t1)
            now_s = time_s
            if kind == "inversion":
                mz = -seq.efficiency * mz
            elif kind == "end":
                break
            else:
                if kind == "centre1":
                    s1 = math.sin(flip_rad) * mz
                elif kind == "centre2":
                    s2 = math.sin(flip_rad) * mz
                mz = mz * math.cos(flip_rad)
        if np.all(np.abs(mz - start) < tol):
            return s1, s2
    raise RuntimeError(f"reference simulation did not converge in {max_cycles} cycles")


def simulate_uni(t1_s: ArrayLike, seq: ReferenceSequence, b1: float = 1.0) -> NDArray:
    """UNI = S1*S2 / (S1^2 + S2^2) from :func:`simulate_signals` (real signals)."""
    s1, s2 = simulate_signals(t1_s, seq, b1)
    return s1 * s2 / (s1 * s1 + s2 * s2)
