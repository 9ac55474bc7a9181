"""Benchmark of the MP2RAGE UNI -> T1 lookup against a naive per-voxel root finder.

Run from the repository root::

    python -m benchmarks.bench_mp2rage --out benchmarks/results/mp2rage.json

Measures (best of ``--repeat`` runs):

- lookup table build time, plain (one B1 row) and with 61 B1 rows (0.4..1.6,
  ``--b1-rows``);
- T1 inversion throughput (voxels/s) on a synthetic UNI volume (default 24 x 448 x 448),
  without and with a voxel-wise B1 map;
- the peer: :func:`scipy.optimize.brentq` on the same signal model, voxel by voxel, on a
  random subsample; reported as throughput, speed-up ratio and largest T1 difference.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import scipy
from numpy.typing import NDArray
from scipy.optimize import brentq

from processing.mp2rage import MP2RAGEProtocol, T1LookupTable, t1_from_uni, uni_from_t1

T = TypeVar("T")

CORD_PROTOCOL = MP2RAGEProtocol(
    tr_mp2rage_s=5.0,
    ti1_s=0.8,
    ti2_s=2.7,
    flip1_deg=4.0,
    flip2_deg=5.0,
    echo_spacing_s=0.0067,
    n_excitations=48,
)
B1_RANGE = (0.4, 1.6)
DEFAULT_B1_ROWS = 61
DEFAULT_SHAPE = (24, 448, 448)


def best_time(func: Callable[[], T], repeat: int) -> tuple[float, T]:
    """Smallest wall time (s) of ``repeat`` calls of ``func`` and the last result.

    Raises
    ------
    ValueError
        If ``repeat`` is smaller than 1.
    """
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    best_s = float("inf")
    result: T | None = None
    for _ in range(repeat):
        start = time.perf_counter()
        result = func()
        best_s = min(best_s, time.perf_counter() - start)
    assert result is not None
    return best_s, result


def synthetic_volume(
    shape: tuple[int, int, int], protocol: MP2RAGEProtocol, seed: int = 0
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Noise-free UNI volumes of random tissue T1 (0.3..4 s) and a smooth B1 field.

    Returns
    -------
    uni_b1_1, uni_with_b1, b1_map : ndarray
        UNI at B1 = 1, UNI under ``b1_map`` (0.75..1.25, smooth in-plane), and the map.
    """
    rng = np.random.default_rng(seed)
    t1_s = rng.uniform(0.3, 4.0, size=shape)
    _, rows, cols = shape
    y = np.linspace(-1.0, 1.0, rows)[:, None]
    x = np.linspace(-1.0, 1.0, cols)[None, :]
    b1_plane = 1.25 - 0.25 * (x**2 + y**2)
    b1_map = np.broadcast_to(b1_plane, shape).copy()
    uni_plain = uni_from_t1(t1_s, protocol)
    uni_b1 = uni_from_t1(t1_s, protocol, b1_map)
    return uni_plain, uni_b1, b1_map


def brentq_t1(
    uni: NDArray[np.float64], protocol: MP2RAGEProtocol, t1_min_s: float, t1_max_s: float
) -> NDArray[np.float64]:
    """Naive peer: solve ``uni_from_t1(t1) = u`` per voxel with Brent's method (s)."""
    out = np.full(uni.shape, np.nan)
    f_min = float(uni_from_t1(t1_min_s, protocol))
    f_max = float(uni_from_t1(t1_max_s, protocol))
    for index, u in enumerate(uni):
        if not f_max <= u <= f_min:
            continue
        out[index] = brentq(
            lambda t, target=u: float(uni_from_t1(t, protocol)) - target,
            t1_min_s,
            t1_max_s,
            xtol=1e-7,
        )
    return out


def machine_info() -> dict[str, Any]:
    """CPU count, library versions and platform of the current run."""
    return {
        "cpu_count": os.cpu_count(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
    }


def run(
    shape: tuple[int, int, int],
    peer_voxels: int,
    repeat: int,
    b1_rows: int = DEFAULT_B1_ROWS,
) -> dict[str, Any]:
    """Run all measurements and return the JSON-ready report.

    Parameters
    ----------
    shape : tuple of int
        UNI volume shape ``(n_slices, rows, cols)``.
    peer_voxels : int
        Size of the random subsample solved voxel by voxel with brentq.
    repeat : int
        Timed runs per measurement; the fastest is reported.
    b1_rows : int
        B1 rows (evenly spaced over 0.4..1.6) of the B1-corrected table.

    Raises
    ------
    ValueError
        If the shape, subsample size or B1 row count is not positive.
    """
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be three positive sizes, got {shape}")
    if peer_voxels < 1:
        raise ValueError(f"peer_voxels must be >= 1, got {peer_voxels}")
    if b1_rows < 2:
        raise ValueError(f"b1_rows must be >= 2, got {b1_rows}")
    protocol = CORD_PROTOCOL
    b1_values = np.linspace(*B1_RANGE, b1_rows)

    build_plain_s, table = best_time(lambda: T1LookupTable.build(protocol), repeat)
    build_b1_s, table_b1 = best_time(lambda: T1LookupTable.build(protocol, b1=b1_values), repeat)

    uni_plain, uni_b1, b1_map = synthetic_volume(shape, protocol)
    n_voxels = uni_plain.size
    plain_s, t1_plain = best_time(lambda: t1_from_uni(uni_plain, table), repeat)
    b1_s, t1_b1 = best_time(lambda: t1_from_uni(uni_b1, table_b1, b1_map), repeat)

    rng = np.random.default_rng(1)
    pick = rng.choice(n_voxels, size=min(peer_voxels, n_voxels), replace=False)
    sample = uni_plain.reshape(-1)[pick]
    t1_mono, _ = table.monotonic_part()
    lo_s, hi_s = float(t1_mono[0]), float(t1_mono[-1])
    peer_s, t1_peer = best_time(lambda: brentq_t1(sample, protocol, lo_s, hi_s), 1)
    lookup_sample = t1_plain.reshape(-1)[pick]
    both = np.isfinite(t1_peer) & np.isfinite(lookup_sample)
    max_diff_ms = float(np.max(np.abs(t1_peer[both] - lookup_sample[both])) * 1e3)

    plain_rate = n_voxels / plain_s
    peer_rate = pick.size / peer_s
    return {
        "benchmark": "mp2rage",
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "protocol": protocol.as_dict(),
        "repeat": repeat,
        "table_build": {
            "t1_points": int(table.t1_s.size),
            "plain_s": build_plain_s,
            "b1_rows": int(b1_values.size),
            "with_b1_rows_s": build_b1_s,
        },
        "inversion": {
            "shape": list(shape),
            "voxels": n_voxels,
            "plain_s": plain_s,
            "plain_voxels_per_s": plain_rate,
            "plain_nan_fraction": float(np.mean(np.isnan(t1_plain))),
            "b1_s": b1_s,
            "b1_voxels_per_s": n_voxels / b1_s,
            "b1_nan_fraction": float(np.mean(np.isnan(t1_b1))),
        },
        "peer_brentq": {
            "voxels": int(pick.size),
            "seconds": peer_s,
            "voxels_per_s": peer_rate,
            "speedup_plain_vs_peer": plain_rate / peer_rate,
            "max_abs_diff_ms": max_diff_ms,
        },
    }


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON report path")
    parser.add_argument(
        "--shape",
        type=int,
        nargs=3,
        default=list(DEFAULT_SHAPE),
        metavar=("SLICES", "ROWS", "COLS"),
        help="UNI volume shape (default: %(default)s)",
    )
    parser.add_argument(
        "--peer-voxels", type=int, default=2000, help="brentq subsample size (default: 2000)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per timing (best kept)")
    parser.add_argument(
        "--b1-rows",
        type=int,
        default=DEFAULT_B1_ROWS,
        help="B1 rows of the corrected table, 0.4..1.6 (default: %(default)s)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command-line entry point; writes the report to ``--out`` and returns it."""
    args = _parse(argv)
    report = run(tuple(args.shape), args.peer_voxels, args.repeat, args.b1_rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    inv = report["inversion"]
    peer = report["peer_brentq"]
    print(
        f"table build {report['table_build']['plain_s'] * 1e3:.1f} ms "
        f"({report['table_build']['with_b1_rows_s'] * 1e3:.1f} ms with "
        f"{report['table_build']['b1_rows']} B1 rows); "
        f"inversion {inv['plain_voxels_per_s']:.3g} vox/s "
        f"({inv['b1_voxels_per_s']:.3g} vox/s with B1); "
        f"brentq peer {peer['voxels_per_s']:.3g} vox/s, "
        f"speed-up x{peer['speedup_plain_vs_peer']:.0f}; written to {args.out}",
        file=sys.stderr,
    )
    return report


if __name__ == "__main__":
    main()
