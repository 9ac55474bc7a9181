"""MP2RAGE signal model and UNI -> T1 lookup (Marques et al., NeuroImage 2010;49:1271).

Plain functions on numpy arrays: no file, network or database access.

The longitudinal magnetisation (M0 = 1) runs through one TR_MP2RAGE cycle:
inversion (efficiency ``eff``), free recovery TD1, readout block 1 (``n`` pulses of
angle a1, each followed by TR_ro of recovery), free recovery TD2, block 2 (angle a2),
free recovery TD3. Every step maps Mz affinely (``m -> a*m + b``), so the whole cycle
is one affine map whose fixed point is the steady state. The signals are
``sin(a) * Mz`` at the k-space centre of each block, and
``UNI = S1*S2 / (S1**2 + S2**2)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "MP2RAGEProtocol",
    "T1LookupTable",
    "signals",
    "stored_to_uni",
    "t1_from_uni",
    "uni_from_signals",
    "uni_from_t1",
    "uni_to_stored",
]

UNI_STORED_MAX = 4095


@dataclass(frozen=True)
class MP2RAGEProtocol:
    """Timing and flip angles of one MP2RAGE acquisition.

    Parameters
    ----------
    tr_mp2rage_s : float
        Time between two successive inversions (s).
    ti1_s, ti2_s : float
        Inversion times to the k-space centre of readout blocks 1 and 2 (s).
    flip1_deg, flip2_deg : float
        Nominal excitation flip angles of blocks 1 and 2 (degrees).
    echo_spacing_s : float
        Time between two excitations inside a readout block (TR_ro, s).
    n_excitations : int
        Excitations per readout block (partitions x partial Fourier).
    efficiency : float
        Inversion efficiency, 0 < eff <= 1 (about 0.96 for an adiabatic pulse).
    n_before_centre : int or None
        Excitations before the k-space centre; ``None`` means ``n_excitations // 2``
        (linear ordering).

    Raises
    ------
    ValueError
        If a value is out of range or the timing does not fit into TR_MP2RAGE.
    """

    tr_mp2rage_s: float
    ti1_s: float
    ti2_s: float
    flip1_deg: float
    flip2_deg: float
    echo_spacing_s: float
    n_excitations: int
    efficiency: float = 0.96
    n_before_centre: int | None = None

    def __post_init__(self) -> None:
        for name in ("tr_mp2rage_s", "ti1_s", "ti2_s", "echo_spacing_s"):
            value = getattr(self, name)
            if not np.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        for name in ("flip1_deg", "flip2_deg"):
            value = getattr(self, name)
            if not 0 < value < 180:
                raise ValueError(f"{name} must be within (0, 180) degrees, got {value!r}")
        if int(self.n_excitations) != self.n_excitations or self.n_excitations < 1:
            raise ValueError(
                f"n_excitations must be a positive integer, got {self.n_excitations!r}"
            )
        if not 0 < self.efficiency <= 1:
            raise ValueError(f"efficiency must be within (0, 1], got {self.efficiency!r}")
        if self.n_before_centre is not None and int(self.n_before_centre) != self.n_before_centre:
            raise ValueError(f"n_before_centre must be an integer, got {self.n_before_centre!r}")
        n_before = self.n_before
        if not 0 <= n_before <= self.n_excitations:
            raise ValueError(
                f"n_before_centre must be within [0, n_excitations], got {self.n_before_centre!r}"
            )
        for name, gap in (("TD1", self.td1_s), ("TD2", self.td2_s), ("TD3", self.td3_s)):
            if gap < 0:
                raise ValueError(
                    f"protocol timing does not fit: {name} = {gap * 1000:.1f} ms < 0 "
                    f"(TR={self.tr_mp2rage_s}s, TI={self.ti1_s}/{self.ti2_s}s, "
                    f"{self.n_excitations} x {self.echo_spacing_s * 1000:.2f} ms)"
                )

    @property
    def n_before(self) -> int:
        """Excitations before the k-space centre of each block."""
        if self.n_before_centre is None:
            return int(self.n_excitations) // 2
        return int(self.n_before_centre)

    @property
    def n_after(self) -> int:
        """Excitations after the k-space centre (the centre one included)."""
        return int(self.n_excitations) - self.n_before

    @property
    def td1_s(self) -> float:
        """Free recovery between inversion and the first block (s)."""
        return self.ti1_s - self.n_before * self.echo_spacing_s

    @property
    def td2_s(self) -> float:
        """Free recovery between the two readout blocks (s)."""
        return self.ti2_s - self.ti1_s - self.n_excitations * self.echo_spacing_s

    @property
    def td3_s(self) -> float:
        """Free recovery between the second block and the next inversion (s)."""
        return self.tr_mp2rage_s - self.ti2_s - self.n_after * self.echo_spacing_s

    def as_dict(self) -> dict[str, float | int | list[float]]:
        """The acquisition numbers, JSON-ready (TIs and flip angles as pairs)."""
        return {
            "tr_mp2rage_s": self.tr_mp2rage_s,
            "ti_s": [self.ti1_s, self.ti2_s],
            "flip_deg": [self.flip1_deg, self.flip2_deg],
            "echo_spacing_s": self.echo_spacing_s,
            "n_excitations": self.n_excitations,
            "efficiency": self.efficiency,
        }


_Affine = tuple[NDArray[np.float64], NDArray[np.float64]]


def _then(first: _Affine, second: _Affine) -> _Affine:
    """Compose two affine maps of Mz: apply ``first``, then ``second``."""
    a1, b1 = first
    a2, b2 = second
    return a2 * a1, a2 * b1 + b2


def _recovery(duration_s: float, t1_s: NDArray[np.float64]) -> _Affine:
    e = np.exp(-duration_s / t1_s)
    return e, 1.0 - e


def _pulses(count: int, cos_a: NDArray[np.float64], e_ro: NDArray[np.float64]) -> _Affine:
    """``count`` repetitions of (pulse of angle a, recovery TR_ro), in closed form."""
    q = cos_a * e_ro
    q_n = q**count
    with np.errstate(divide="ignore", invalid="ignore"):
        geometric = np.where(np.abs(1.0 - q) < 1e-12, float(count), (1.0 - q_n) / (1.0 - q))
    return q_n, (1.0 - e_ro) * geometric


def signals(
    t1_s: ArrayLike,
    protocol: MP2RAGEProtocol,
    b1: ArrayLike = 1.0,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Steady-state MP2RAGE signals of the two readout blocks (M0 = 1, no T2* decay).

    Parameters
    ----------
    t1_s : array_like
        Longitudinal relaxation time(s) in seconds.
    protocol : MP2RAGEProtocol
        Acquisition timing and flip angles.
    b1 : array_like
        Relative transmit field (actual / nominal flip angle), broadcast with ``t1_s``.

    Returns
    -------
    s1, s2 : ndarray
        Signed signals ``sin(a) * Mz`` at the k-space centre of blocks 1 and 2.

    Examples
    --------
    >>> p = MP2RAGEProtocol(5.0, 0.8, 2.7, 4.0, 5.0, 0.0067, 48)
    >>> s1, s2 = signals([0.5, 3.0], p)
    >>> bool(s1[0] > 0 > s1[1])
    True
    """
    t1 = np.asarray(t1_s, dtype=np.float64)
    b1_arr = np.asarray(b1, dtype=np.float64)
    t1, b1_arr = np.broadcast_arrays(t1, b1_arr)
    if np.any(t1 <= 0):
        raise ValueError("T1 must be positive")
    if np.any(b1_arr <= 0):
        raise ValueError("B1 must be positive")
    a1 = np.deg2rad(protocol.flip1_deg) * b1_arr
    a2 = np.deg2rad(protocol.flip2_deg) * b1_arr
    e_ro = np.exp(-protocol.echo_spacing_s / t1)
    ones = np.ones_like(t1)

    inversion: _Affine = (-protocol.efficiency * ones, 0.0 * ones)
    to_centre1 = _then(_recovery(protocol.td1_s, t1), _pulses(protocol.n_before, np.cos(a1), e_ro))
    rest1 = _pulses(protocol.n_after, np.cos(a1), e_ro)
    to_centre2 = _then(_recovery(protocol.td2_s, t1), _pulses(protocol.n_before, np.cos(a2), e_ro))
    rest2 = _pulses(protocol.n_after, np.cos(a2), e_ro)

    to_ti1 = _then(inversion, to_centre1)
    to_ti2 = _then(_then(to_ti1, rest1), to_centre2)
    cycle = _then(_then(to_ti2, rest2), _recovery(protocol.td3_s, t1))

    mz_start = cycle[1] / (1.0 - cycle[0])
    mz_ti1 = to_ti1[0] * mz_start + to_ti1[1]
    mz_ti2 = to_ti2[0] * mz_start + to_ti2[1]
    return np.sin(a1) * mz_ti1, np.sin(a2) * mz_ti2


def uni_from_signals(s1: ArrayLike, s2: ArrayLike) -> NDArray[np.float64]:
    """UNI = Re(conj(S1) * S2) / (|S1|^2 + |S2|^2), in [-0.5, 0.5]; 0 where both are 0."""
    a = np.asarray(s1)
    b = np.asarray(s2)
    num = np.real(np.conj(a) * b)
    den = np.abs(a) ** 2 + np.abs(b) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)


def uni_from_t1(t1_s: ArrayLike, protocol: MP2RAGEProtocol, b1: ArrayLike = 1.0) -> NDArray:
    """Noise-free UNI value of tissue with the given T1 (s).

    Examples
    --------
    >>> p = MP2RAGEProtocol(5.0, 0.8, 2.7, 4.0, 5.0, 0.0067, 48)
    >>> u = uni_from_t1([0.8, 1.2, 3.5], p)
    >>> bool(u[0] > u[1] > u[2])
    True
    """
    s1, s2 = signals(t1_s, protocol, b1)
    return uni_from_signals(s1, s2)


def stored_to_uni(stored: ArrayLike, stored_max: float = UNI_STORED_MAX) -> NDArray[np.float64]:
    """Map a stored UNI value (0..stored_max) to [-0.5, 0.5]."""
    return np.asarray(stored, dtype=np.float64) / float(stored_max) - 0.5


def uni_to_stored(uni: ArrayLike, stored_max: int = UNI_STORED_MAX) -> NDArray[np.uint16]:
    """Map UNI in [-0.5, 0.5] to the stored integer range 0..stored_max (rounded)."""
    scaled = np.rint((np.asarray(uni, dtype=np.float64) + 0.5) * stored_max)
    return np.clip(scaled, 0, stored_max).astype(np.uint16)


@dataclass(frozen=True)
class T1LookupTable:
    """Monotonic UNI -> T1 table of one protocol (and, optionally, several B1 values).

    Build it with :meth:`build`; ``uni[i, j]`` is the UNI of ``t1_s[j]`` at ``b1[i]``,
    and each row is restricted to its strictly decreasing part.
    """

    protocol: MP2RAGEProtocol
    t1_s: NDArray[np.float64]
    b1: NDArray[np.float64]
    uni: NDArray[np.float64]

    @classmethod
    def build(
        cls,
        protocol: MP2RAGEProtocol,
        t1_min_s: float = 0.05,
        t1_max_s: float = 5.0,
        t1_step_s: float = 0.0005,
        b1: ArrayLike = (1.0,),
    ) -> T1LookupTable:
        """Tabulate UNI over a T1 grid (and B1 values) for ``protocol``.

        Raises
        ------
        ValueError
            If the grid is empty or B1 values are not positive and increasing.
        """
        if not 0 < t1_min_s < t1_max_s or t1_step_s <= 0:
            raise ValueError("T1 grid needs 0 < t1_min_s < t1_max_s and t1_step_s > 0")
        b1_arr = np.atleast_1d(np.asarray(b1, dtype=np.float64))
        if np.any(b1_arr <= 0) or np.any(np.diff(b1_arr) <= 0):
            raise ValueError("B1 values must be positive and strictly increasing")
        t1 = np.arange(t1_min_s, t1_max_s + t1_step_s / 2, t1_step_s)
        uni = uni_from_t1(t1[None, :], protocol, b1_arr[:, None])
        return cls(protocol=protocol, t1_s=t1, b1=b1_arr, uni=uni)

    def monotonic_part(self, row: int = 0) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """T1 and UNI of the longest strictly decreasing run of one B1 row."""
        start, stop = self._runs[row]
        return self.t1_s[start:stop], self.uni[row, start:stop]

    @cached_property
    def _runs(self) -> list[tuple[int, int]]:
        return [_longest_decreasing_run(u) for u in self.uni]

    def uni_range(self, row: int = 0) -> tuple[float, float]:
        """Smallest and largest UNI the table can invert for one B1 row."""
        _, u = self.monotonic_part(row)
        return float(u.min()), float(u.max())


def _longest_decreasing_run(u: NDArray[np.float64]) -> tuple[int, int]:
    """Start and stop (exclusive) of the longest strictly decreasing run of ``u``."""
    decreasing = np.concatenate(([False], np.diff(u) < 0, [False])).astype(np.int8)
    edges = np.diff(decreasing)
    starts = np.flatnonzero(edges == 1)
    stops = np.flatnonzero(edges == -1)
    if starts.size == 0:
        return 0, 1
    best = int(np.argmax(stops - starts))
    return int(starts[best]), int(stops[best]) + 1


def _invert_row(table: T1LookupTable, row: int, uni: NDArray[np.float64]) -> NDArray[np.float64]:
    t1, u = table.monotonic_part(row)
    # np.interp needs increasing x: UNI decreases with T1, so reverse.
    out = np.interp(uni, u[::-1], t1[::-1], left=np.nan, right=np.nan)
    return out


def t1_from_uni(
    uni: ArrayLike,
    table: T1LookupTable,
    b1: ArrayLike | None = None,
) -> NDArray[np.float64]:
    """T1 (s) for each UNI value; NaN where UNI is outside the table's monotonic range.

    Parameters
    ----------
    uni : array_like
        UNI values in [-0.5, 0.5] (see :func:`stored_to_uni`).
    table : T1LookupTable
        Table of the protocol the images were acquired with.
    b1 : array_like or None
        Relative B1 per voxel (same shape as ``uni``). Requires a table built with
        several B1 values; T1 is interpolated linearly between adjacent B1 rows.
        ``None`` uses the row with B1 closest to 1.

    Examples
    --------
    >>> p = MP2RAGEProtocol(5.0, 0.8, 2.7, 4.0, 5.0, 0.0067, 48)
    >>> table = T1LookupTable.build(p)
    >>> t1 = t1_from_uni(uni_from_t1([1.2], p), table)
    >>> bool(abs(t1[0] - 1.2) < 1e-3)
    True
    """
    u = np.asarray(uni, dtype=np.float64)
    if b1 is None:
        row = int(np.argmin(np.abs(table.b1 - 1.0)))
        return _invert_row(table, row, u)
    b1_arr = np.broadcast_to(np.asarray(b1, dtype=np.float64), u.shape)
    if table.b1.size < 2:
        raise ValueError("B1 correction needs a lookup table built with several B1 values")
    finite_b1 = np.where(np.isfinite(b1_arr), b1_arr, table.b1[0])
    position = np.interp(finite_b1, table.b1, np.arange(table.b1.size))
    lower = np.clip(np.floor(position).astype(int), 0, table.b1.size - 2)
    weight = position - lower
    out = np.full(u.shape, np.nan)
    outside = (b1_arr < table.b1[0]) | (b1_arr > table.b1[-1]) | ~np.isfinite(b1_arr)
    for row in np.unique(lower):
        sel = (lower == row) & ~outside
        if not sel.any():
            continue
        low = _invert_row(table, int(row), u[sel])
        high = _invert_row(table, int(row) + 1, u[sel])
        out[sel] = (1.0 - weight[sel]) * low + weight[sel] * high
    return out
