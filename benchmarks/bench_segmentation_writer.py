"""Benchmark of the DICOM Segmentation writer on a full-size phantom exam.

Run from the repository root::

    python -m benchmarks.bench_segmentation_writer --out benchmarks/results/seg_writer.json

Writes one phantom patient exam (default matrix 448, 2 slabs of 12 slices, legacy MR), loads
each slab's UNI series header-only with ``service.inputs.volumes.load_series`` and builds the
standard segment list per slab with :func:`reports.segmentation.segment_specs` from the
phantom truth: cord, GM, WM, the twelve regions (split of the truth GM/WM around the cord
centre per slice, the same sizes as the real labels), the truth lesions as reader lesions and
again as candidates, and abnormal voxels (cord voxels with a simulated Z above 1.96, i.e.
scattered like real Z-score maps). It then times, per slab, ``build_segmentation`` (build)
and ``save_as`` to a file (write). The first run in the process (cold: imports and caches)
is reported separately; ``best_*`` is the best of ``--repeat`` warm runs for the whole exam.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
from numpy.typing import NDArray

from reports.identity import ResultIdentity
from reports.segmentation import SegmentSpec, build_segmentation, segment_specs
from service.inputs.nifti import from_nifti
from service.inputs.volumes import SeriesVolume, load_series
from service.phantom import PhantomOptions, write_cohort

__all__ = ["geometric_regions", "main"]

_Z_THRESHOLD = 1.96


def geometric_regions(
    cord: NDArray[np.bool_], gm: NDArray[np.bool_], wm: NDArray[np.bool_]
) -> NDArray[np.int16]:
    """Region codes from a split of GM/WM around the cord centre of each slice.

    Rows below the centre are taken as posterior and columns right of it as patient left
    (the phantom's axial grid); bands at +-30 % of the cord's radius split dorsal, lateral /
    intermediate and ventral parts. Only for timing: sizes match real region labels.
    """
    labels = np.zeros(cord.shape, dtype=np.int16)
    rows, cols = np.mgrid[: cord.shape[1], : cord.shape[2]]
    for k in range(cord.shape[0]):
        if not cord[k].any():
            continue
        centre_row, centre_col = (float(v.mean()) for v in np.nonzero(cord[k]))
        radius = np.sqrt(cord[k].sum() / np.pi)
        v = (rows - centre_row) / radius
        left = cols >= centre_col
        band = np.where(v > 0.3, 0, np.where(v < -0.3, 2, 1))  # dorsal, middle, ventral
        for tissue, base in ((wm[k], 1), (gm[k], 11)):
            for part in range(3):
                for side, offset in ((left, 0), (~left, 1)):
                    labels[k][tissue & (band == part) & side] = base + 2 * part + offset
    return labels


def _slab_specs(exam_dir: Path, slab: int, rng: np.random.Generator) -> list[SegmentSpec]:
    truth = {}
    for name in ("cord", "gm", "wm", "lesions"):
        array, _ = from_nifti(nib.load(exam_dir / "truth" / f"slab{slab}_{name}.nii.gz"))
        truth[name] = array
    cord, gm, wm = (truth[n].astype(bool) for n in ("cord", "gm", "wm"))
    lesions = truth["lesions"].astype(np.int32)
    abnormal = cord & (rng.standard_normal(cord.shape) > _Z_THRESHOLD)
    return segment_specs(
        cord=cord,
        gm=gm,
        wm=wm,
        region_labels=geometric_regions(cord, gm, wm),
        lesion_labels_reader=lesions,
        lesion_labels_candidate=lesions,
        abnormal=abnormal,
        z_threshold=_Z_THRESHOLD,
    )


def _run(
    slabs: list[tuple[SeriesVolume, list[SegmentSpec]]], out_dir: Path
) -> list[dict[str, Any]]:
    identity = ResultIdentity()
    results = []
    for index, (volume, specs) in enumerate(slabs, start=1):
        started = time.perf_counter()
        seg = build_segmentation(
            volume.datasets, specs, series_number=950 + index, identity=identity
        )
        built = time.perf_counter()
        path = out_dir / f"seg_slab{index}.dcm"
        seg.save_as(path, enforce_file_format=True)
        written = time.perf_counter()
        results.append(
            {
                "slab": index,
                "segments": len(specs),
                "frames": int(seg.NumberOfFrames),
                "megabytes": round(path.stat().st_size / 1e6, 2),
                "build_s": round(built - started, 4),
                "write_s": round(written - built, 4),
            }
        )
    return results


def _get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/seg_writer.json"))
    parser.add_argument("--matrix", type=int, default=448)
    parser.add_argument("--slices", type=int, default=12)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument("--work", type=Path, default=None, help="keep the phantom here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and write the JSON report."""
    args = _get_parser().parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch) / "phantom"
        options = PhantomOptions(
            matrix=args.matrix, slices_per_slab=args.slices, slabs=2, scanner_t1_map=False
        )
        if not (work / "cohort.json").exists():
            write_cohort(work, controls=0, patients=1, follow_up=False, seed=args.seed,
                         options=options)  # fmt: skip
        exam_dir = next(work.glob("patient-*/exam-1"))
        rng = np.random.default_rng(args.seed)
        slabs = []
        for slab in (1, 2):
            (folder,) = (exam_dir / "dicom").glob(f"*_UNI_slab{slab}")
            volume = load_series(sorted(folder.glob("*.dcm")))
            slabs.append((volume, _slab_specs(exam_dir, slab, rng)))
        out_dir = Path(scratch) / "out"
        out_dir.mkdir()
        cold = _run(slabs, out_dir)
        warm = [_run(slabs, out_dir) for _ in range(args.repeat)]

    def total(run: list[dict[str, Any]], key: str) -> float:
        return round(sum(r[key] for r in run), 4)

    best = min(warm, key=lambda run: total(run, "build_s") + total(run, "write_s"))
    report = {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": {
            "matrix": args.matrix,
            "slices_per_slab": args.slices,
            "slabs": 2,
            "repeat": args.repeat,
            "seed": args.seed,
        },
        "cold": {"build_s": total(cold, "build_s"), "write_s": total(cold, "write_s")},
        "best_build_s": total(best, "build_s"),
        "best_write_s": total(best, "write_s"),
        "best_total_s": round(total(best, "build_s") + total(best, "write_s"), 4),
        "median_total_s": round(
            float(np.median([total(r, "build_s") + total(r, "write_s") for r in warm])), 4
        ),
        "per_slab_best": best,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "pydicom": pydicom.__version__,
            "highdicom": hd.__version__,
            "load_average": list(os.getloadavg()),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("cold", "best_total_s", "median_total_s")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
