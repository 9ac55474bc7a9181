"""Series loading time: ``load_series`` now (highdicom stacks) against before, and highdicom alone.

``python -m benchmarks.bench_volumes --out benchmarks/results/volumes.json [--matrix 448]
[--repeat 3] [--baseline-rev a75f84c]``

Writes one phantom control exam twice (legacy single-frame and Enhanced MR; 2 slabs of 12 x
4 mm, 15 degrees oblique, scanner T1 map, multi-echo GRE with 4 echoes) and loads every series
of it with:

- ``current``: :func:`service.inputs.volumes.load_series` of this checkout;
- ``baseline``: ``load_series`` of ``--baseline-rev`` (read with ``git show``; default the
  commit before highdicom took over slice sorting and the affine);
- peer ``highdicom``: highdicom's own volume construction on the single-echo series
  (``highdicom.get_volume_from_series`` for legacy, ``highdicom.imread(...).get_volume()``
  for Enhanced MR; it cannot load the multi-echo series);
- peer ``pydicom``: ``dcmread`` and ``pixel_array`` of every file (plain reading and decoding).

Timings are the best of ``--repeat`` rounds, the variants interleaved within each round. The
report also holds the largest difference between the baseline's and the current arrays and
affines over all series (they should agree within 1e-6).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
from pydicom import dcmread

from service.inputs import volumes as current
from service.phantom import PhantomOptions, write_cohort

DEFAULT_BASELINE_REV = "a75f84c"
_MODULE_PATH = "service/inputs/volumes.py"


def load_baseline(rev: str, directory: Path) -> ModuleType:
    """Import ``service/inputs/volumes.py`` as it was at git revision ``rev``.

    Parameters
    ----------
    rev : str
        A git revision of this repository.
    directory : Path
        Where to write the module's source.

    Returns
    -------
    module
        The baseline module (registered as ``baseline_volumes``).
    """
    root = Path(__file__).resolve().parent.parent
    source = subprocess.run(
        ["git", "show", f"{rev}:{_MODULE_PATH}"],
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = directory / "baseline_volumes.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("baseline_volumes", path)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["baseline_volumes"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def write_exams(root: Path, matrix: int) -> dict[str, dict[str, list[Path]]]:
    """Write the legacy and the Enhanced MR exam; return their files by series UID."""
    exams = {}
    for name, enhanced in (("legacy", False), ("enhanced", True)):
        options = PhantomOptions(matrix=matrix, enhanced=enhanced, oblique_deg=15.0, t2star=True)
        out = root / name
        write_cohort(out, controls=1, patients=0, follow_up=False, seed=5, options=options)
        files = [path for path in out.rglob("*.dcm")]
        if not files:
            raise ValueError(f"the phantom wrote no .dcm files under {out}")
        exams[name] = current.group_by_series(files)
    return exams


def _highdicom_volume(files: list[Path]) -> np.ndarray:
    if len(files) == 1:
        return hd.imread(files[0]).get_volume(apply_real_world_transform=False).array
    datasets = [dcmread(path) for path in files]
    return hd.get_volume_from_series(datasets, apply_real_world_transform=False).array


def _pydicom_read(files: list[Path]) -> np.ndarray:
    return np.stack([dcmread(path).pixel_array for path in files])


def _each(load: Callable[[list[Path]], object], groups: list[list[Path]]) -> None:
    for files in groups:
        load(files)


def _best_times(variants: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    best = {name: float("inf") for name in variants}
    for _ in range(repeat):
        for name, run in variants.items():
            started = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - started)
    return {name: round(seconds, 4) for name, seconds in best.items()}


def run(work: Path, matrix: int, repeat: int, baseline_rev: str) -> dict[str, Any]:
    """Write the exams, check the loaders agree and time them; return the report."""
    baseline = load_baseline(baseline_rev, work)
    exams = write_exams(work / "exams", matrix)
    result: dict[str, Any] = {}
    for name, series in exams.items():
        single_echo = {}
        largest_affine_mm, largest_value = 0.0, 0.0
        for uid, files in series.items():
            before, after = baseline.load_series(files), current.load_series(files)
            largest_affine_mm = max(
                largest_affine_mm, float(np.max(np.abs(before.affine_lps - after.affine_lps)))
            )
            largest_value = max(largest_value, float(np.max(np.abs(before.array - after.array))))
            if after.n_echoes == 1:
                single_echo[uid] = files
        every = list(series.values())
        some = list(single_echo.values())
        times = _best_times(
            {
                "current_all_series_s": partial(_each, current.load_series, every),
                "baseline_all_series_s": partial(_each, baseline.load_series, every),
                "current_single_echo_s": partial(_each, current.load_series, some),
                "highdicom_single_echo_s": partial(_each, _highdicom_volume, some),
                "pydicom_read_all_series_s": partial(_each, _pydicom_read, every),
            },
            repeat,
        )
        result[name] = {
            "series": len(series),
            "single_echo_series": len(single_echo),
            "files": sum(len(files) for files in every),
            "max_abs_affine_diff_mm": largest_affine_mm,
            "max_abs_value_diff": largest_value,
            **times,
            "ratio_current_vs_baseline": round(
                times["current_all_series_s"] / times["baseline_all_series_s"], 3
            ),
            "ratio_current_vs_highdicom_single_echo": round(
                times["current_single_echo_s"] / times["highdicom_single_echo_s"], 3
            ),
            "ratio_current_vs_pydicom_read": round(
                times["current_all_series_s"] / times["pydicom_read_all_series_s"], 3
            ),
        }
    return {
        "benchmark": "bench_volumes",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "pydicom": pydicom.__version__,
            "highdicom": hd.__version__,
            "load_average": [round(v, 2) for v in os.getloadavg()],
        },
        "matrix": matrix,
        "repeat": repeat,
        "baseline_rev": baseline_rev,
        "exams": result,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the numbers")
    parser.add_argument("--matrix", type=int, default=448)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--baseline-rev", default=DEFAULT_BASELINE_REV)
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    with tempfile.TemporaryDirectory(prefix="cordt1-bench-volumes-") as tmp:
        result = run(Path(tmp), args.matrix, args.repeat, args.baseline_rev)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for name, numbers in result["exams"].items():
        print(
            f"{name}: all {numbers['series']} series {numbers['current_all_series_s']} s "
            f"(before {numbers['baseline_all_series_s']} s, ratio "
            f"{numbers['ratio_current_vs_baseline']}); single-echo vs highdicom ratio "
            f"{numbers['ratio_current_vs_highdicom_single_echo']}; max affine diff "
            f"{numbers['max_abs_affine_diff_mm']:.1e} mm"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
