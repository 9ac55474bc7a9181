"""Benchmark of the TID 1500 Structured Report writer on a full-size exam.

Run from the repository root::

    python -m benchmarks.bench_sr_writer --out benchmarks/results/sr_writer.json

Writes a phantom patient exam (default: 2 slabs of 12 x 448 x 448, legacy MR), loads both
UNI series, builds one BINARY SEG per slab with highdicom (cord, WM, GM, the 12 sub-regions
and 2 lesions: 17 segments; not timed) and a summary with every region (exam values and, with
2 slabs, each slab's own: 15 TID 1501 plus 30 TID 1411 region groups), two lesions and a
follow-up, then times ``build_measurement_report`` and writing the result (``save_as`` to a
file) as the best of ``--repeat`` runs. The target is at most 0.5 s per exam for both.
Every group carries an image anchor as the service writes it (a SCOORD point in each NUM, on
a UNI slice; issue 11); ``build_without_anchors_s`` is the same build without them.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom

from benchmarks.bench_mp2rage import best_time, machine_info
from processing.regions import REGIONS
from reports import codes
from reports.common import prepare_sources
from reports.identity import ResultIdentity
from reports.sr.anchors import ImageAnchor
from reports.structured_report import build_measurement_report
from service.inputs.volumes import SeriesVolume, load_series
from service.phantom import PhantomOptions, write_cohort

__all__ = ["build_inputs", "main", "run"]

TARGET_S = 0.5
_REGION_KEYS = ["cord", "wm", "gm", *(info.key for info in REGIONS.values())]


def _seg(volume: SeriesVolume, n_segments: int) -> hd.seg.Segmentation:
    sources, n_frames, rows, columns = prepare_sources(volume.datasets, what="segmentation")
    masks = np.zeros((n_frames, rows, columns, n_segments), dtype=bool)
    centre = rows // 2
    for s in range(n_segments):
        masks[:, centre - 20 + s : centre + s, centre - 20 : centre, s] = True
    algorithm = hd.AlgorithmIdentificationSequence(
        name="cordt1", version="bench", family=codes.FAMILY_MORPHOLOGICAL
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=s + 1,
            segment_label=f"segment {s + 1}",
            segmented_property_category=codes.ANATOMICAL_STRUCTURE,
            segmented_property_type=codes.SPINAL_CORD,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for s in range(n_segments)
    ]
    return hd.seg.Segmentation(
        source_images=sources,
        pixel_array=masks,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=300,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="cordt1",
        manufacturer_model_name="cordt1",
        software_versions="bench",
        device_serial_number="0",
    )


def _region_block(rng: np.random.Generator) -> dict[str, dict[str, float]]:
    return {
        key: {
            "mean_t1_ms": round(float(rng.uniform(1150, 1350)), 1),
            "mean_z": round(float(rng.normal(0.5, 0.3)), 2),
            "abnormal_percent": round(float(rng.uniform(2, 25)), 1),
        }
        for key in _REGION_KEYS
    }


def _summary(volumes: Sequence[SeriesVolume], first_lesion_segment: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    regions = _region_block(rng)
    own = [_region_block(rng) for _ in volumes] if len(volumes) > 1 else [regions]
    lesion = {
        "source": "reader",
        "volume_mm3": 27.0,
        "extent_mm": 8.0,
        "location": "posterior",
        "side": "right",
        "level_name": "C3",
        "composition": "mixed",
        "gm_percent": 30.0,
        "mean_t1_ms": 1725.8,
        "max_t1_ms": 1890.2,
    }
    lesions = [
        {
            **lesion,
            "id": i + 1,
            "slab": i % len(volumes) + 1,
            "segment_number": first_lesion_segment + i // len(volumes),
        }
        for i in range(2)
    ]
    return {
        "exam": {"study_instance_uid": str(volumes[0].datasets[0].StudyInstanceUID)},
        "slabs": [
            {"slab": i + 1, "series_instance_uid": v.series_uid, "regions": own[i]}
            for i, v in enumerate(volumes)
        ],
        "b1_corrected": False,
        "regions": regions,
        "z_threshold": 1.96,
        "lesions": lesions,
        "lesion_summary": {"count": 2, "load_mm3": 54.0, "gm_share_percent": 30.0},
        "follow_up": {
            "prior_study_date": "20250101",
            "trend": "stable",
            "regions": {k: {"delta_mean_t1_ms": 1.0, "delta_mean_z": 0.01} for k in regions},
        },
        "model": {"model_version": "nm-bench"},
        "qc": {"verdict": "pass", "reasons": []},
    }


def build_inputs(work: Path, options: PhantomOptions) -> dict[str, Any]:
    """Phantom exam, its UNI volumes, one SEG per slab and a summary (not timed)."""
    write_cohort(work, controls=0, patients=1, follow_up=False, seed=21, options=options)
    folders = sorted((work / "patient-001" / "exam-1" / "dicom").glob("*_UNI_slab*"))
    volumes = [load_series(sorted(folder.glob("*.dcm"))) for folder in folders]
    n_segments = len(_REGION_KEYS) + 2
    segs = [_seg(volume, n_segments) for volume in volumes]
    return {
        "volumes": volumes,
        "segs": segs,
        "segment_numbers": {key: i + 1 for i, key in enumerate(_REGION_KEYS)},
        "summary": _summary(volumes, len(_REGION_KEYS) + 1),
    }


def run(options: PhantomOptions, repeat: int, work: Path) -> dict[str, Any]:
    """Time building and writing the SR of one exam."""
    started = time.perf_counter()
    inputs = build_inputs(work, options)
    prepare_s = time.perf_counter() - started
    sources = [ds for volume in inputs["volumes"] for ds in volume.datasets]
    identity = ResultIdentity(software_version="bench")

    def anchor(_key: str, slab: int | None) -> ImageAnchor:
        volume = inputs["volumes"][(slab or 1) - 1]
        uid, frame = volume.frame_sources[len(volume.frame_sources) // 2]
        (source,) = [ds for ds in volume.datasets if str(ds.SOPInstanceUID) == uid]
        return ImageAnchor(str(source.SOPClassUID), uid, frame, 214.5, 220.5)

    def build(anchored: bool = True) -> hd.sr.Comprehensive3DSR:
        return build_measurement_report(
            inputs["summary"],
            source_images=sources,
            segmentations=inputs["segs"],
            segment_numbers=inputs["segment_numbers"],
            series_number=950,
            identity=identity,
            anchors=anchor if anchored else None,
        )

    plain_s, _ = best_time(lambda: build(anchored=False), repeat)
    build_s, sr = best_time(build, repeat)
    path = work / "sr.dcm"
    write_s, _ = best_time(lambda: sr.save_as(path, enforce_file_format=True) or True, repeat)
    total_s, _ = best_time(lambda: build().save_as(path, enforce_file_format=True) or True, repeat)
    (measurements,) = [
        item
        for item in sr.ContentSequence
        if item.ConceptNameCodeSequence[0].CodeValue == "126010"  # Imaging Measurements
    ]
    return {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {**machine_info(), "pydicom": pydicom.__version__, "highdicom": hd.__version__},
        "config": {
            "matrix": options.matrix,
            "slices_per_slab": options.slices_per_slab,
            "slabs": options.slabs,
            "source_instances": len(sources),
            "segments_per_seg": len(inputs["segment_numbers"]) + 2,
            "repeat": repeat,
        },
        "prepare_inputs_s": round(prepare_s, 2),
        "build_s": round(build_s, 4),
        "build_without_anchors_s": round(plain_s, 4),
        "write_s": round(write_s, 4),
        "build_and_write_s": round(total_s, 4),
        "target_s": TARGET_S,
        "meets_target": total_s <= TARGET_S,
        "measurement_groups": len(measurements.ContentSequence),
        "sr_bytes": path.stat().st_size,
    }


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/sr_writer.json"))
    parser.add_argument("--matrix", type=int, default=448)
    parser.add_argument("--slices", type=int, default=12)
    parser.add_argument("--slabs", type=int, default=2, choices=(1, 2))
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--work", type=Path, default=None, help="keep the phantom here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark and write the JSON report."""
    args = _parse(argv)
    options = PhantomOptions(matrix=args.matrix, slices_per_slab=args.slices, slabs=args.slabs)
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
        result = run(options, args.repeat, args.work)
    else:
        with tempfile.TemporaryDirectory() as scratch:
            result = run(options, args.repeat, Path(scratch))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("build_s", "write_s", "build_and_write_s")}))
    return result


if __name__ == "__main__":
    main()
