"""Run one exam end to end on files: T1 maps, result objects, NIfTI copies, summary.json.

The same function serves the offline CLI (`cordt1 process`) and the Celery worker, so both
produce identical outputs.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from numpy.typing import NDArray

from processing.mp2rage import MP2RAGEProtocol, T1LookupTable, stored_to_uni, t1_from_uni
from reports.identity import ResultIdentity
from reports.parametric_map import MapKind, build_parametric_map
from service.exam import ExamError, ExamSeries, Slab, match_slabs
from service.nifti import to_nifti
from service.protocol import ProtocolError, SiteProtocol, protocol_from_headers

__all__ = ["ExamOutputs", "process_exam"]

log = logging.getLogger(__name__)

RESULT_SERIES_NUMBER = 9100


@dataclass
class ExamOutputs:
    """What one exam produced."""

    out_dir: Path
    summary: dict[str, Any]
    dicom_files: list[Path] = field(default_factory=list)
    nifti_files: list[Path] = field(default_factory=list)


@lru_cache(maxsize=16)
def _lookup_table(protocol: MP2RAGEProtocol) -> T1LookupTable:
    return T1LookupTable.build(protocol)


def _foreground(slab: Slab) -> NDArray[np.bool_]:
    """Voxels with signal: INV2 above a tenth of its robust maximum (all voxels without INV2)."""
    reference = slab.reference.array
    if slab.inv2 is None:
        return np.isfinite(reference)
    inv2 = slab.inv2.array
    return inv2 > 0.1 * float(np.percentile(inv2, 99.5))


def _t1_statistics(t1_ms: NDArray[np.float64], mask: NDArray[np.bool_]) -> dict[str, float]:
    values = t1_ms[mask & np.isfinite(t1_ms)]
    if values.size == 0:
        return {"voxels": 0}
    return {
        "voxels": int(values.size),
        "median": round(float(np.median(values)), 1),
        "mean": round(float(values.mean()), 1),
        "p05": round(float(np.percentile(values, 5)), 1),
        "p95": round(float(np.percentile(values, 95)), 1),
    }


def _slab_t1(
    slab: Slab, profiles: list[SiteProtocol]
) -> tuple[NDArray[np.float64], dict[str, Any]]:
    """T1 (ms) of one slab from UNI and the protocol, or the scanner's map without UNI."""
    if slab.uni is None:
        assert slab.t1map is not None
        return slab.t1map.array.astype(np.float64), {"t1_source": "scanner T1 map"}
    protocol, sources = protocol_from_headers(
        uni=slab.uni.datasets[0],
        inv1=slab.inv1.datasets[0] if slab.inv1 else None,
        inv2=slab.inv2.datasets[0] if slab.inv2 else None,
        profiles=profiles,
    )
    table = _lookup_table(protocol)
    t1_ms = t1_from_uni(stored_to_uni(slab.uni.array), table) * 1000.0
    info = {
        "t1_source": "UNI + protocol lookup table",
        "protocol": {
            "tr_mp2rage_s": protocol.tr_mp2rage_s,
            "ti_s": [protocol.ti1_s, protocol.ti2_s],
            "flip_deg": [protocol.flip1_deg, protocol.flip2_deg],
            "echo_spacing_s": protocol.echo_spacing_s,
            "n_excitations": protocol.n_excitations,
            "efficiency": protocol.efficiency,
            "sources": sources,
        },
        "lookup_t1_range_ms": [
            round(float(v) * 1000, 1) for v in table.monotonic_part()[0][[0, -1]]
        ],
    }
    return t1_ms, info


def _scanner_agreement(
    t1_ms: NDArray[np.float64], slab: Slab, mask: NDArray[np.bool_]
) -> dict[str, float] | None:
    """How far our T1 is from the scanner's map (same grid), in the foreground."""
    if slab.uni is None or slab.t1map is None:
        return None
    scanner = slab.t1map.array
    valid = mask & np.isfinite(t1_ms) & (scanner > 0)
    if not valid.any():
        return None
    difference = t1_ms[valid] - scanner[valid]
    return {
        "median_difference_ms": round(float(np.median(difference)), 1),
        "median_abs_difference_ms": round(float(np.median(np.abs(difference))), 1),
    }


def _exam_identity(slab: Slab) -> dict[str, Any]:
    ds = slab.reference.datasets[0]
    return {
        "study_instance_uid": str(ds.get("StudyInstanceUID", "")),
        "study_date": str(ds.get("StudyDate", "") or ""),
        "accession_number": str(ds.get("AccessionNumber", "") or ""),
        "protocol_name": str(ds.get("ProtocolName", "") or ""),
    }


def process_exam(
    exam: ExamSeries,
    out_dir: Path,
    *,
    profiles: list[SiteProtocol],
    identity: ResultIdentity,
) -> ExamOutputs:
    """Compute and write every result of one exam into ``out_dir``.

    Parameters
    ----------
    exam : ExamSeries
        The exam's files by component (see :func:`service.exam.find_exam_series`).
    out_dir : Path
        Created if needed; receives ``dicom/``, ``nifti/`` and ``summary.json``.
    profiles : list of SiteProtocol
        The site protocol profile (values the headers lack).
    identity : ResultIdentity
        Software name, version and research-use text every result carries.

    Raises
    ------
    ExamError
        If the exam cannot be processed (missing series, protocol values, bad geometry).
    """
    try:
        slabs = match_slabs(exam)
    except ValueError as exc:
        raise ExamError(f"cannot read the exam's images: {exc}") from exc
    out = ExamOutputs(out_dir=out_dir, summary={})
    (out_dir / "dicom").mkdir(parents=True, exist_ok=True)
    (out_dir / "nifti").mkdir(parents=True, exist_ok=True)
    slab_summaries = []
    all_t1 = []
    for slab in slabs:
        try:
            t1_ms, info = _slab_t1(slab, profiles)
        except ProtocolError as exc:
            raise ExamError(str(exc)) from exc
        mask = _foreground(slab)
        reference = slab.reference
        finite = np.isfinite(t1_ms)
        outside = float(np.mean(~finite[mask])) if mask.any() else 1.0
        pm = build_parametric_map(
            reference.datasets,
            reference.to_source_order(np.where(finite, t1_ms, 0.0)),
            MapKind.T1_MS,
            series_number=RESULT_SERIES_NUMBER + slab.index,
            identity=identity,
        )
        pm_path = out_dir / "dicom" / f"t1map_slab{slab.index}.dcm"
        pm.save_as(pm_path, enforce_file_format=True)
        out.dicom_files.append(pm_path)
        nifti_path = out_dir / "nifti" / f"slab{slab.index}_t1_ms.nii.gz"
        nib.save(
            to_nifti(np.where(finite, t1_ms, 0.0).astype(np.float32), reference.affine_lps),
            nifti_path,
        )
        out.nifti_files.append(nifti_path)
        all_t1.append(t1_ms[mask])
        slab_summaries.append(
            {
                "slab": slab.index,
                "series_instance_uid": reference.series_uid,
                "shape": list(reference.array.shape),
                "voxel_mm": [round(v, 4) for v in reference.voxel_mm],
                "components": sorted(
                    name
                    for name in ("uni", "inv1", "inv2", "t1map", "b1map")
                    if getattr(slab, name) is not None
                ),
                **info,
                "b1_corrected": False,
                "foreground_t1_ms": _t1_statistics(t1_ms, mask),
                "outside_lookup_percent": round(100.0 * outside, 2),
                "scanner_t1_agreement": _scanner_agreement(t1_ms, slab, mask),
                "result_sop_instance_uid": str(pm.SOPInstanceUID),
            }
        )
    pooled = np.concatenate(all_t1) if all_t1 else np.empty(0)
    out.summary = {
        "software": {"name": identity.software_name, "version": identity.software_version},
        "exam": _exam_identity(slabs[0]),
        "slabs": slab_summaries,
        "t1_ms": {"foreground": _t1_statistics(pooled, np.ones(pooled.shape, bool))},
        "b1_corrected": False,
        "b1_note": "T1 not corrected for B1+ (no B1 map used)",
        "research_use": identity.research_use_text,
        "outputs": {
            "dicom": [p.name for p in out.dicom_files],
            "nifti": [p.name for p in out.nifti_files],
        },
    }
    (out_dir / "summary.json").write_text(json.dumps(out.summary, indent=2, sort_keys=True))
    log.info("exam processed: %d slab(s), %d result object(s)", len(slabs), len(out.dicom_files))
    return out
