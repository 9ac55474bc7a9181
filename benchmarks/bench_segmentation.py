"""Benchmark of cord / GM / WM segmentation on phantom exams against simple peers.

Run from the repository root::

    python -m benchmarks.bench_segmentation --out benchmarks/results/segmentation.json

For a small phantom cohort (default 6 exams: 3 seeds x control + patient, matrix 448,
2 slabs, the last seed oblique by 15 degrees) it measures Dice of cord, GM and WM against the
phantom truth and the run time per exam (segmentation + coordinates + PAM50 prior warp +
GM/WM split + atlas labels), and compares in the same run with peers: a plain T1 threshold +
largest connected component for the cord, prior-only GM (template prior > 0.5),
intensity-only GM (per-voxel mixture threshold) and the same GM/WM split with the geometric
(textbook butterfly) prior instead of the PAM50 one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import scipy
from numpy.typing import NDArray
from scipy import ndimage

from processing.atlas import fit_prior_warp, label_regions_atlas
from processing.mp2rage import T1LookupTable, stored_to_uni, t1_from_uni
from processing.regions import estimate_levels
from processing.segmentation import fit_tissue_mixture, segment_cord, split_gm_wm
from processing.template import cord_coordinates, geometric_gm_prior
from service.inputs.exam import find_exam_series, match_slabs
from service.inputs.nifti import from_nifti
from service.inputs.protocol import load_site_protocols, protocol_from_headers
from service.phantom import PhantomOptions, write_cohort
from service.pipeline.atlas import load_pam50_priors, pam50_gm_prior

__all__ = ["PhantomSlab", "dice", "load_phantom_exam", "main"]

TRUTH_NAMES = ("cord", "gm", "wm", "csf", "levels")


@dataclass
class PhantomSlab:
    """One slab of a phantom exam: T1 from UNI, INV2, geometry and truth masks."""

    index: int
    n_slabs: int
    t1_ms: NDArray[np.float64]
    inv2: NDArray[np.float64] | None
    affine_lps: NDArray[np.float64]
    voxel_mm: tuple[float, float, float]
    truth: dict[str, NDArray[Any]]


def dice(a: NDArray[np.bool_], b: NDArray[np.bool_]) -> float:
    """Dice overlap of two masks (1 when both are empty)."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * float((a & b).sum()) / total


def load_phantom_exam(exam_dir: Path, site_protocols: Path) -> list[PhantomSlab]:
    """Load a phantom exam's slabs: T1 (ms) from UNI + protocol, INV2 and the truth NIfTIs.

    Raises
    ------
    ValueError
        If the truth grid differs from the UNI series' grid.
    """
    profiles = load_site_protocols(site_protocols)
    paths = sorted((exam_dir / "dicom").rglob("*.dcm"))
    (exam,) = find_exam_series(paths).values()
    slabs = match_slabs(exam)
    out = []
    for slab in slabs:
        assert slab.uni is not None
        protocol, _ = protocol_from_headers(
            uni=slab.uni.datasets[0],
            inv1=slab.inv1.datasets[0] if slab.inv1 else None,
            inv2=slab.inv2.datasets[0] if slab.inv2 else None,
            profiles=profiles,
        )
        t1_ms = t1_from_uni(stored_to_uni(slab.uni.array), T1LookupTable.build(protocol)) * 1e3
        truth = {}
        for name in TRUTH_NAMES:
            path = exam_dir / "truth" / f"slab{slab.index}_{name}.nii.gz"
            array, affine = from_nifti(nib.load(path))
            if np.abs(affine - slab.uni.affine_lps).max() > 1e-3:
                raise ValueError(f"truth grid of slab {slab.index} differs from the UNI grid")
            truth[name] = array.astype(bool) if name != "levels" else array.astype(np.int16)
        out.append(
            PhantomSlab(
                index=slab.index,
                n_slabs=len(slabs),
                t1_ms=t1_ms,
                inv2=slab.inv2.array if slab.inv2 is not None else None,
                affine_lps=slab.uni.affine_lps,
                voxel_mm=slab.uni.voxel_mm,
                truth=truth,
            )
        )
    return out


def _peer_cord(t1_ms: NDArray[np.float64]) -> NDArray[np.bool_]:
    """Peer: T1 within 0.9-1.8 s, largest connected component nearest the image centre."""
    cord = np.zeros(t1_ms.shape, dtype=bool)
    for k, t1 in enumerate(np.nan_to_num(t1_ms)):
        labels, count = ndimage.label((t1 > 900) & (t1 < 1800))
        if count == 0:
            continue
        sizes = np.bincount(labels.ravel())[1:]
        # the largest blob is usually muscle: take the largest within 15 mm of the centre
        centre = np.array(t1.shape) / 2
        best, best_size = 0, 0
        for label, (box, size) in enumerate(zip(ndimage.find_objects(labels), sizes, strict=True)):
            mid = np.array([(b.start + b.stop) / 2 for b in box])
            if np.hypot(*(mid - centre)) * 0.3 < 15 and size > best_size:
                best, best_size = label + 1, size
        cord[k] = labels == best if best else False
    return cord


def run_exam(slabs: list[PhantomSlab]) -> dict[str, Any]:
    """Segment one exam, time it, and score it and the peers against the truth."""
    scores: dict[str, list[float]] = {}
    elapsed = 0.0
    for slab in slabs:
        start = time.perf_counter()
        seg = segment_cord(slab.t1_ms, slab.voxel_mm, inv2=slab.inv2)
        coords = cord_coordinates(
            seg.cord, seg.centre_ji, slab.affine_lps, slab=slab.index, n_slabs=slab.n_slabs
        )
        atlas = pam50_gm_prior(slab.n_slabs)
        warp = fit_prior_warp(slab.t1_ms, seg.cord, coords, atlas, voxel_mm=slab.voxel_mm)
        prior = warp.apply(coords).sample(atlas)
        gm, wm = split_gm_wm(slab.t1_ms, seg.cord, prior, voxel_mm=slab.voxel_mm)
        levels = estimate_levels(coords, slab.n_slabs)
        label_regions_atlas(coords, gm, wm, levels, load_pam50_priors())
        elapsed += time.perf_counter() - start
        t = slab.truth
        # peer: the same split with the geometric (textbook butterfly) prior
        geometric = coords.sample(geometric_gm_prior(slab.n_slabs))
        gm_geo, _ = split_gm_wm(slab.t1_ms, seg.cord, geometric, voxel_mm=slab.voxel_mm)
        peer_cord = _peer_cord(slab.t1_ms)
        inside = seg.cord & np.isfinite(prior)
        mixture = fit_tissue_mixture(slab.t1_ms[inside], prior[inside])
        cut = 0.5 * (mixture.gm_ms + mixture.wm_ms)
        intensity_gm = seg.cord & (slab.t1_ms > cut)
        prior_gm = seg.cord & (np.nan_to_num(prior) > 0.5)
        for key, value in (
            ("cord", dice(seg.cord, t["cord"])),
            ("gm", dice(gm, t["gm"])),
            ("wm", dice(wm, t["wm"])),
            ("peer_cord_threshold", dice(peer_cord, t["cord"])),
            ("peer_gm_prior_only", dice(prior_gm, t["gm"])),
            ("peer_gm_geometric_prior", dice(gm_geo, t["gm"])),
            ("peer_gm_intensity_only", dice(intensity_gm, t["gm"])),
        ):
            scores.setdefault(key, []).append(value)
    return {"seconds": elapsed, **{k: float(np.mean(v)) for k, v in scores.items()}}


def _get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON report path")
    parser.add_argument("--seeds", type=int, nargs="+", default=[11, 12, 13])
    parser.add_argument("--matrix", type=int, default=448)
    parser.add_argument("--slices", type=int, default=12, help="slices per slab")
    parser.add_argument("--work", type=Path, help="keep generated phantoms here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Generate the cohort, run the benchmark and write the JSON report."""
    args = _get_parser().parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        exams = []
        for n, seed in enumerate(args.seeds):
            oblique = 15.0 if n == len(args.seeds) - 1 and len(args.seeds) > 1 else 0.0
            options = PhantomOptions(
                matrix=args.matrix, slices_per_slab=args.slices, slabs=2, oblique_deg=oblique,
                scanner_t1_map=False,
            )  # fmt: skip
            root = work / f"seed{seed}"
            write_cohort(root, controls=1, patients=1, follow_up=False, seed=seed, options=options)
            for exam_dir in sorted(root.glob("*/exam-1")):
                slabs = load_phantom_exam(exam_dir, root / "site-protocols.toml")
                result = run_exam(slabs)
                result.update(seed=seed, subject=exam_dir.parent.name, oblique_deg=oblique)
                exams.append(result)
                print(json.dumps(result), file=sys.stderr)
    keys = ["cord", "gm", "wm", "peer_cord_threshold", "peer_gm_prior_only"]
    keys += ["peer_gm_intensity_only", "peer_gm_geometric_prior"]
    mean = {k: float(np.mean([e[k] for e in exams])) for k in keys}
    report = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "scipy": scipy.__version__,
        },
        "cohort": {"seeds": args.seeds, "matrix": args.matrix, "slices_per_slab": args.slices},
        "exams": exams,
        "mean_dice": mean,
        "mean_seconds_per_exam": float(np.mean([e["seconds"] for e in exams])),
        "ratios": {
            "cord_vs_threshold_peer": mean["cord"] / max(mean["peer_cord_threshold"], 1e-9),
            "gm_vs_prior_only": mean["gm"] / max(mean["peer_gm_prior_only"], 1e-9),
            "gm_vs_intensity_only": mean["gm"] / max(mean["peer_gm_intensity_only"], 1e-9),
            "gm_vs_geometric_prior": mean["gm"] / max(mean["peer_gm_geometric_prior"], 1e-9),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({"mean_dice": mean, "ratios": report["ratios"]}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
