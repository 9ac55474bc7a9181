"""Run one exam end to end on files: T1, segmentation, template, Z-scores, lesions, QC, and
every output (result DICOM objects, NIfTI maps and masks, summary.json).

The same function serves the offline CLI (`cordt1 process`) and the Celery worker, so both
produce identical outputs. Its parts live beside it: T1 of a slab in :mod:`service.inputs.t1_map`,
reader outlines and masks in :mod:`service.inputs.reader_inputs`, the quantitative stages in
:mod:`service.pipeline.quantify`, writing the results in :mod:`service.pipeline.result_writer`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from processing.lesions import patient_lesion_summary
from processing.mp2rage import MP2RAGEProtocol
from processing.qc import QcVerdict, cord_coverage
from processing.stats import DEFAULT_Z_THRESHOLD
from reports.figures import SlabImages
from reports.identity import ResultIdentity
from reports.parametric_map import MapKind
from reports.segmentation import lesion_label, segment_specs
from service.inputs.exam import ExamError, ExamSeries, Slab, match_slabs, slab_foreground
from service.inputs.partners import describe_grid, partner_on_grid
from service.inputs.protocol import (
    ProtocolError,
    SiteProtocol,
    protocol_from_profile,
)
from service.inputs.reader_inputs import (
    ReaderInput,
    reader_input_from_exam,
    reader_lesions_from_files,
    reader_masks_from_files,
)
from service.inputs.reader_masks import GivenMasks
from service.inputs.t1_map import slab_t1
from service.pipeline.atlas import pam50_gm_prior
from service.pipeline.history import follow_up_block
from service.pipeline.quantify import (
    SlabAnatomy,
    SlabScores,
    T2StarSampler,
    assess_exam,
    lesion_template_centres,
    normal_appearing_statistics,
    pool_region_statistics,
    score_slab,
    segment_slab,
    split_tissues,
    stats_to_summary,
)
from service.pipeline.result_writer import (
    T1_SERIES_NUMBER,
    Z_SERIES_NUMBER,
    ExamOutputs,
    ResultWriter,
    exam_lesion_ids,
)

if TYPE_CHECKING:
    from service.pipeline.model_build import ScoringModel

__all__ = ["ExamOutputs", "process_exam"]

log = logging.getLogger(__name__)


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


def _t2star_sampler(slab: Slab) -> T2StarSampler | None:
    """The slab's T2*-weighted image resampled onto a box of its reference grid, on demand."""
    t2star = slab.t2star
    if t2star is None:
        return None

    def on_box(box: tuple[slice, slice, slice]) -> NDArray[np.float64]:
        return partner_on_grid(t2star, slab.reference, box=box)[0]

    return on_box


def _evidence_summary(anatomy: SlabAnatomy, slab: Slab) -> dict[str, Any]:
    """What the GM/WM split rested on, with the T2* series' identity and echoes."""
    info = dict(anatomy.evidence.info)
    if slab.t2star is not None:
        info["t2star_series_instance_uid"] = slab.t2star.series_uid
        info["t2star_grid"] = describe_grid(slab.t2star)
        if slab.t2star.echo_times_ms:
            info["t2star_echo_times_ms"] = [round(t, 2) for t in slab.t2star.echo_times_ms]
    return info


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
        "study_time": str(ds.get("StudyTime", "") or ""),
        "accession_number": str(ds.get("AccessionNumber", "") or ""),
        "protocol_name": str(ds.get("ProtocolName", "") or ""),
    }


def _check_model(
    scoring: ScoringModel,
    slabs: list[Slab],
    protocol: MP2RAGEProtocol | None,
    profiles: list[SiteProtocol],
) -> str | None:
    """Refuse an exam the normative model cannot score.

    An exam with UNI is checked with the protocol from its headers. An exam with only the
    scanner's T1 map is checked with the protocol its site profile entry gives in full
    (:func:`service.inputs.protocol.protocol_from_profile`).

    Returns
    -------
    str or None
        For a T1-map-only exam, the ``t1_source`` text saying which protocol was checked;
        ``None`` for an exam with UNI.
    """
    from service.pipeline.model_store import ProtocolMismatch, check_protocol

    if len(slabs) != scoring.n_slabs:
        raise ExamError(
            f"exam has {len(slabs)} slab(s); normative model {scoring.metadata.model_version} "
            f"was built for {scoring.n_slabs}: a missing or extra slab cannot be scored"
        )
    t1_source = None
    if protocol is None:
        t1map = slabs[0].t1map
        if t1map is None:
            raise ExamError("exam has neither UNI nor a T1 map: it cannot be scored")
        try:
            protocol, profile = protocol_from_profile(t1map.datasets[0], profiles)
        except ProtocolError as exc:
            raise ExamError(
                f"exam has no UNI series, so its protocol cannot be checked against normative "
                f"model {scoring.metadata.model_version} from the headers: {exc}"
            ) from exc
        t1_source = (
            f"scanner T1 map; protocol from site profile entry {profile.protocol_name!r}, "
            f"checked against normative model {scoring.metadata.model_version} (built from "
            "T1 computed from UNI with the same protocol)"
        )
    try:
        check_protocol(scoring.metadata, protocol)
    except ProtocolMismatch as exc:
        raise ExamError(str(exc)) from exc
    return t1_source


@dataclass
class _ExamInputs:
    """What one exam brings: its slabs, and what readers gave for each slab."""

    slabs: list[Slab]
    reader_lesions: list[NDArray[np.int32]] | None
    given_masks: list[GivenMasks | None]


@dataclass
class _SlabAnalysis:
    """One slab after T1, segmentation and scoring, with its summary block."""

    slab: Slab
    t1_ms: NDArray[np.float64]
    foreground: NDArray[np.bool_]
    anatomy: SlabAnatomy
    scores: SlabScores
    summary: dict[str, Any]


def _read_inputs(
    exam: ExamSeries,
    reader_lesions: list[NDArray[np.int32]] | None,
    reader_lesion_files: list[Path] | None,
    reader_mask_files: list[Path] | None,
) -> _ExamInputs:
    """Stage 1: the exam's slabs, reader lesions and masks (files win over the exam's SEGs)."""
    try:
        slabs = match_slabs(exam)
    except ValueError as exc:
        raise ExamError(f"cannot read the exam's images: {exc}") from exc
    if reader_lesion_files is not None:
        if reader_lesions is not None:
            raise ValueError("give reader_lesions or reader_lesion_files, not both")
        reader_lesions = reader_lesions_from_files(reader_lesion_files, slabs)
    from_exam = (
        reader_input_from_exam(exam, slabs)
        if reader_lesions is None or reader_mask_files is None
        else ReaderInput(masks=[None] * len(slabs))
    )
    if reader_lesions is None:
        reader_lesions = from_exam.lesions
    given_masks = (
        reader_masks_from_files(reader_mask_files, slabs)
        if reader_mask_files is not None
        else from_exam.masks
    )
    if reader_lesions is not None and len(reader_lesions) != len(slabs):
        raise ExamError(f"{len(reader_lesions)} reader lesion map(s) for {len(slabs)} slab(s)")
    return _ExamInputs(slabs=slabs, reader_lesions=reader_lesions, given_masks=given_masks)


def _segment_and_score(
    slab: Slab,
    t1_ms: NDArray[np.float64],
    *,
    n_slabs: int,
    gm_prior: NDArray[np.float64],
    model: ScoringModel | None,
    reader: NDArray[np.int32] | None,
    given: GivenMasks | None,
) -> tuple[SlabAnatomy, SlabScores]:
    """Stage 3 on one slab: cord/GM/WM and regions, then Z-scores and lesions.

    When candidate lesions are found, GM/WM are split again without them (their raised T1
    must not vote for GM) and the slab is scored again.
    """
    reference = slab.reference
    voxel_mm, affine = reference.voxel_mm, reference.affine_lps
    anatomy = segment_slab(
        t1_ms,
        index=slab.index,
        n_slabs=n_slabs,
        voxel_mm=voxel_mm,
        affine_lps=affine,
        gm_prior_template=gm_prior,
        inv2=slab.inv2.array if slab.inv2 is not None else None,
        lesions=reader > 0 if reader is not None else None,
        t2star=_t2star_sampler(slab),
        given=given,
    )
    score = partial(
        score_slab,
        t1_ms,
        model=model.model if model else None,
        voxel_mm=voxel_mm,
        affine_lps=affine,
        reader_lesions=reader,
    )
    slab_scores = score(anatomy)
    if slab_scores.candidate_lesions is None or not slab_scores.candidate_lesions.any():
        return anatomy, slab_scores
    known = slab_scores.candidate_lesions > 0
    if reader is not None:
        known |= reader > 0
    anatomy = split_tissues(
        t1_ms,
        anatomy.segmentation,
        anatomy.coords,
        index=slab.index,
        n_slabs=n_slabs,
        voxel_mm=voxel_mm,
        gm_prior_template=gm_prior,
        lesions=known,
        evidence=anatomy.evidence,
        given=given,
    )
    slab_scores = score(anatomy, reuse=slab_scores)
    return anatomy, slab_scores


def _slab_summary(
    slab: Slab,
    t1_ms: NDArray[np.float64],
    t1_info: dict[str, Any],
    foreground: NDArray[np.bool_],
    anatomy: SlabAnatomy,
    given: GivenMasks | None,
) -> dict[str, Any]:
    """The slab's block of summary.json (before its regions and result UIDs are added)."""
    reference = slab.reference
    finite = np.isfinite(t1_ms)
    return {
        "slab": slab.index,
        "series_instance_uid": reference.series_uid,
        "shape": list(reference.array.shape),
        "voxel_mm": [round(v, 4) for v in reference.voxel_mm],
        "components": sorted(
            name
            for name in ("uni", "inv1", "inv2", "t1map", "b1map", "t2star")
            if getattr(slab, name) is not None
        ),
        **t1_info,
        "foreground_t1_ms": _t1_statistics(t1_ms, foreground),
        "outside_lookup_percent": round(100.0 * float(np.mean(~finite[foreground])), 2)
        if foreground.any()
        else 100.0,
        "scanner_t1_agreement": _scanner_agreement(t1_ms, slab, foreground),
        "cord_slices_found": int(anatomy.segmentation.found.sum()),
        "cord_missing_slices": [int(i) + 1 for i in np.flatnonzero(~anatomy.segmentation.found)],
        "segmentation_source": given.describe() if given is not None else "automatic",
        "estimated_levels": sorted({f"C{int(x)}" for x in anatomy.levels if x > 0}),
        "gm_wm_evidence": _evidence_summary(anatomy, slab),
        "series_notes": list(slab.qc_notes),
    }


def _assess(
    analyses: list[_SlabAnalysis], model: ScoringModel | None, b1_corrected: bool
) -> QcVerdict:
    """Stage 4: the exam's QC verdict (a failed QC leaves the exam unscored)."""
    if not any(a.anatomy.segmentation.found.any() for a in analyses):
        raise ExamError(
            "no spinal cord found on any slice (is this a cervical cord MP2RAGE? "
            "check the field of view and the T1 map)"
        )
    cord_t1 = np.concatenate([a.t1_ms[a.anatomy.cord] for a in analyses])
    outside_in_cord = float(np.mean(~np.isfinite(cord_t1))) if cord_t1.size else None
    verdict = assess_exam(
        anatomies=[a.anatomy for a in analyses],
        inv2=[a.slab.inv2.array if a.slab.inv2 is not None else None for a in analyses],
        foregrounds=[a.foreground for a in analyses],
        outside_lookup_in_cord=outside_in_cord,
        voxel_mm=[a.slab.reference.voxel_mm for a in analyses],
        model_valid=[a.scores.model_valid for a in analyses] if model is not None else [],
        protocol_matches_model=True if model is not None else None,
        b1_corrected=b1_corrected,
    )
    return with_series_notes(verdict, [note for a in analyses for note in a.slab.qc_notes])


def with_series_notes(verdict: QcVerdict, notes: list[str]) -> QcVerdict:
    """The QC verdict with what the exam's series lacked as warnings (at least ``warn``).

    Notes come from reading the series (``Slab.qc_notes``): a scanner T1 map not used and
    why, a series the site profile stood in for.
    """
    if not notes:
        return verdict
    return QcVerdict(
        verdict="fail" if verdict.verdict == "fail" else "warn",
        reasons=tuple(verdict.reasons) + tuple(f"warn: {note}" for note in notes),
        metrics=verdict.metrics,
    )


def _write_slab_results(
    writer: ResultWriter,
    analysis: _SlabAnalysis,
    lesion_ids: dict[tuple[str, int], int],
    *,
    scored: bool,
    z_threshold: float,
) -> None:
    """Stage 5 on one slab: queue its maps, derived images, SEGs and NIfTI files.

    The UIDs of what is written go into the slab's summary block.
    """
    slab, t1_ms, anatomy, slab_scores = (
        analysis.slab,
        analysis.t1_ms,
        analysis.anatomy,
        analysis.scores,
    )
    slab_summary = analysis.summary
    affine = slab.reference.affine_lps
    k = slab.index
    slab_summary["result_sop_instance_uid"] = writer.parametric_map(
        slab, t1_ms, MapKind.T1_MS, T1_SERIES_NUMBER + k, f"t1map_slab{k}.dcm"
    )
    slab_summary["t1_image_series_instance_uid"] = writer.derived_images(
        slab, t1_ms, MapKind.T1_MS
    )
    writer.nifti(f"slab{k}_t1_ms.nii.gz", t1_ms, affine, np.float32)
    for name, mask in (("cord", anatomy.cord), ("gm", anatomy.gm), ("wm", anatomy.wm)):
        writer.nifti(f"slab{k}_{name}.nii.gz", mask, affine, np.uint8)
    writer.nifti(f"slab{k}_labels.nii.gz", anatomy.labels, affine, np.int16)
    if scored and slab_scores.z is not None:
        slab_summary["z_sop_instance_uid"] = writer.parametric_map(
            slab, slab_scores.z, MapKind.Z_SCORE, Z_SERIES_NUMBER + k, f"zmap_slab{k}.dcm"
        )
        slab_summary["z_image_series_instance_uid"] = writer.derived_images(
            slab, slab_scores.z, MapKind.Z_SCORE
        )
        writer.nifti(f"slab{k}_z.nii.gz", slab_scores.z, affine, np.float32)
    specs = segment_specs(
        cord=anatomy.cord,
        gm=anatomy.gm,
        wm=anatomy.wm,
        region_labels=anatomy.labels,
        lesion_labels_reader=slab_scores.reader_lesions,
        lesion_labels_candidate=slab_scores.candidate_lesions if scored else None,
        abnormal=(np.nan_to_num(slab_scores.z) > z_threshold) & anatomy.cord
        if scored and slab_scores.z is not None
        else None,
        z_threshold=z_threshold if scored else None,
        lesion_ids=lesion_ids,
    )
    if specs:
        slab_summary.update(writer.segmentations(slab, specs))
    for name, labels in (
        ("lesions_reader", slab_scores.reader_lesions),
        ("lesions_candidates", slab_scores.candidate_lesions if scored else None),
    ):
        if labels is not None:
            writer.nifti(f"slab{k}_{name}.nii.gz", labels, affine, np.int16)


def _summary_and_report(
    writer: ResultWriter,
    analyses: list[_SlabAnalysis],
    qc: QcVerdict,
    *,
    scored: bool,
    z_threshold: float,
    identity: ResultIdentity,
    model: ScoringModel | None,
    prior_summary: dict[str, Any] | None,
) -> dict[str, Any]:
    """Stage 6: the exam's summary (regions, lesions, QC, coverage, follow-up), its SR and the
    rendered report, queued on ``writer``."""
    anatomies = [a.anatomy for a in analyses]
    scores = [a.scores for a in analyses]
    summary = _summary(
        [a.slab for a in analyses],
        [a.summary for a in analyses],
        tuple(a.t1_ms for a in analyses),
        anatomies,
        scores,
        scored,
        z_threshold,
        identity,
    )
    summary["qc"] = {"verdict": qc.verdict, "reasons": list(qc.reasons), "metrics": qc.metrics}
    summary["coverage"] = cord_coverage(
        {a.coords.slab: a.segmentation.found for a in anatomies}
    ).as_dict()
    if model is not None:
        summary["model"] = model.summary()
    if prior_summary is not None and scored:
        summary["follow_up"] = follow_up_block(prior_summary, summary)
    if writer.has_segmentations:
        summary["sr_sop_instance_uid"] = writer.report(summary, [a.slab for a in analyses])
    images = [
        SlabImages(
            slab=a.slab.index,
            t1_ms=a.t1_ms,
            affine_lps=a.slab.reference.affine_lps,
            cord=a.anatomy.cord,
            z=a.scores.z if scored else None,
            lesions=_lesion_overlay(a.scores, scored),
        )
        for a in analyses
    ]
    history = [prior_summary] if prior_summary is not None else []
    writer.rendered_report(summary, [a.slab for a in analyses], images, history)
    return summary


def process_exam(
    exam: ExamSeries,
    out_dir: Path,
    *,
    profiles: list[SiteProtocol],
    identity: ResultIdentity,
    model: ScoringModel | None = None,
    reader_lesions: list[NDArray[np.int32]] | None = None,
    z_threshold: float = DEFAULT_Z_THRESHOLD,
    prior_summary: dict[str, Any] | None = None,
    reader_lesion_files: list[Path] | None = None,
    reader_mask_files: list[Path] | None = None,
    write_nifti: bool = True,
    writer_processes: int = 1,
) -> ExamOutputs:
    """Compute and write every result of one exam into ``out_dir``.

    The stages, each a function of this module: read the inputs (:func:`_read_inputs`), T1 per
    slab (:func:`service.inputs.t1_map.slab_t1`) checked against the model, segmentation and
    scores per slab (:func:`_segment_and_score`), QC (:func:`_assess`), the result objects
    (:func:`_write_slab_results`, then the summary, SR and rendered report), and writing.

    Parameters
    ----------
    exam : ExamSeries
        The exam's files by component (see :func:`service.inputs.exam.find_exam_series`).
    out_dir : Path
        Created if needed; receives ``dicom/``, ``nifti/`` and ``summary.json``.
    profiles : list of SiteProtocol
        The site protocol profile (values the headers lack).
    identity : ResultIdentity
        Software name, version and research-use text every result carries.
    model : ScoringModel or None
        Normative model; without it T1, segmentation and regional T1 are still written.
    reader_lesions : list of ndarray or None
        Reader lesion labels per slab (on each slab's grid).
    z_threshold : float
        One-sided threshold for abnormal voxels.
    prior_summary : dict or None
        summary.json of the same patient's previous exam, for the follow-up comparison.
    reader_lesion_files : list of Path or None
        Reader lesion masks as NIfTI, at most one per slab, each matched to its slab by grid
        (instead of ``reader_lesions``; a file matching no slab fails the exam).
    reader_mask_files : list of Path or None
        Cord, GM and WM masks as NIfTI (names containing ``cord``, ``gm``, ``wm``; at most
        one of each per slab, matched by grid), used instead of our segmentation
        (:mod:`service.inputs.reader_masks`). Without them, cord/GM/WM segments of a reader
        SEG sent with the exam are used.
    write_nifti : bool
        Also write the maps and masks as NIfTI into ``out_dir/nifti`` (the research export).
    writer_processes : int
        Processes that write the result files, this one included (see
        :mod:`service.pipeline.task_lanes`); 1 writes them here, one after another.

    Returns
    -------
    ExamOutputs
        The files written and the summary (also in ``out_dir/summary.json``).

    Raises
    ------
    ExamError
        If the exam cannot be processed (missing series or protocol values, bad geometry,
        protocol or slab count not the model's).
    """
    started = time.perf_counter()
    inputs = _read_inputs(exam, reader_lesions, reader_lesion_files, reader_mask_files)
    slabs = inputs.slabs
    loaded = time.perf_counter()
    t1_maps, infos, protocols = zip(*(slab_t1(slab, profiles) for slab in slabs), strict=True)
    if model is not None:
        t1_source = _check_model(model, slabs, protocols[0], profiles)
        if t1_source is not None:
            for info in infos:
                info["t1_source"] = t1_source
    gm_prior = model.gm_prior if model is not None else pam50_gm_prior(len(slabs))
    analyses = []
    for i, slab in enumerate(slabs):
        reader = inputs.reader_lesions[i] if inputs.reader_lesions is not None else None
        anatomy, slab_scores = _segment_and_score(
            slab,
            t1_maps[i],
            n_slabs=len(slabs),
            gm_prior=gm_prior,
            model=model,
            reader=reader,
            given=inputs.given_masks[i],
        )
        foreground = slab_foreground(slab)
        analyses.append(
            _SlabAnalysis(
                slab=slab,
                t1_ms=t1_maps[i],
                foreground=foreground,
                anatomy=anatomy,
                scores=slab_scores,
                summary=_slab_summary(
                    slab, t1_maps[i], infos[i], foreground, anatomy, inputs.given_masks[i]
                ),
            )
        )
    qc = _assess(analyses, model, all(info.get("b1_corrected", False) for info in infos))
    scored = model is not None and qc.verdict != "fail"
    lesion_ids = exam_lesion_ids([a.scores.lesions for a in analyses], scored=scored)

    out = ExamOutputs(out_dir=out_dir, summary={})
    writer = ResultWriter(out, identity, write_nifti=write_nifti)
    for analysis, slab_lesion_ids in zip(analyses, lesion_ids, strict=True):
        _write_slab_results(
            writer, analysis, slab_lesion_ids, scored=scored, z_threshold=z_threshold
        )
    summary = _summary_and_report(
        writer,
        analyses,
        qc,
        scored=scored,
        z_threshold=z_threshold,
        identity=identity,
        model=model,
        prior_summary=prior_summary,
    )
    # Statistics, segments and the summary are computed; what follows only writes files.
    computed = time.perf_counter()
    summary["rendered"] = writer.write(processes=writer_processes)
    summary["timings_s"] = {
        "load": round(loaded - started, 3),
        "compute": round(computed - loaded, 3),
        "write_results": round(time.perf_counter() - computed, 3),
    }
    summary["outputs"] = {
        "dicom": [p.name for p in out.dicom_files],
        "nifti": [p.name for p in out.nifti_files],
    }
    out.summary = summary
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    log.info(
        "exam processed: %d slab(s), QC %s, %d result object(s)",
        len(slabs),
        qc.verdict,
        len(out.dicom_files),
    )
    return out


def _lesion_overlay(scores: SlabScores, scored: bool) -> NDArray[np.bool_] | None:
    """Lesion voxels to outline on the overlay: reader outlines, else candidates."""
    if scores.reader_lesions is not None and scores.reader_lesions.any():
        return scores.reader_lesions > 0
    if scored and scores.candidate_lesions is not None and scores.candidate_lesions.any():
        return scores.candidate_lesions > 0
    return None


def _summary(
    slabs: list[Slab],
    slab_summaries: list[dict[str, Any]],
    t1_maps: tuple[NDArray[np.float64], ...],
    anatomies: list[SlabAnatomy],
    scores: list[SlabScores],
    scored: bool,
    z_threshold: float,
    identity: ResultIdentity,
) -> dict[str, Any]:
    z_maps = [s.z if scored else None for s in scores]
    masks = [a.masks for a in anatomies]
    stats = pool_region_statistics(t1_maps, z_maps, masks, threshold=z_threshold)
    regions = stats_to_summary(stats)
    # Each slab's own statistics: what the SR states next to that slab's SEG segments. One
    # slab: the exam block itself (a copy), no second computation.
    for k, entry in enumerate(slab_summaries):
        own = (
            pool_region_statistics(
                t1_maps[k : k + 1], z_maps[k : k + 1], masks[k : k + 1], threshold=z_threshold
            )
            if len(slab_summaries) > 1
            else stats
        )
        entry["regions"] = stats_to_summary(own)
    lesions = []
    summaries_by_slab = {entry["slab"]: entry for entry in slab_summaries}
    lesion_ids = exam_lesion_ids([s.lesions for s in scores], scored=scored)
    for slab, anatomy, slab_scores, slab_lesion_ids in zip(
        slabs, anatomies, scores, lesion_ids, strict=True
    ):
        centres: dict[str, dict[int, list[float]]] = {}
        for source, labels in (
            ("reader", slab_scores.reader_lesions),
            ("candidate", slab_scores.candidate_lesions),
        ):
            if labels is not None:
                centres[source] = lesion_template_centres(labels, anatomy.coords)
        for lesion in slab_scores.lesions:
            if lesion.source == "candidate" and not scored:
                continue
            entry = lesion.to_dict()
            entry["label_in_slab"] = lesion.id
            entry["id"] = slab_lesion_ids[(lesion.source, lesion.id)]
            entry["slab"] = slab.index
            numbers = summaries_by_slab[slab.index].get("segment_numbers", {})
            entry["segment_number"] = numbers.get(lesion_label(entry["id"], lesion.source))
            entry["centre_template"] = centres.get(lesion.source, {}).get(lesion.id)
            lesions.append(entry)
    summary: dict[str, Any] = {
        "software": {"name": identity.software_name, "version": identity.software_version},
        "exam": _exam_identity(slabs[0]),
        "slabs": slab_summaries,
        "b1_corrected": all(entry.get("b1_corrected", False) for entry in slab_summaries),
        "b1_note": "; ".join(
            sorted(
                {
                    str(entry.get("b1_note", "T1 from the scanner's map"))
                    for entry in slab_summaries
                }
            )
        ),
        "research_use": identity.research_use_text,
        "t1_ms": {key: block["mean_t1_ms"] for key, block in regions.items()},
        "regions": regions,
        "lesions": lesions,
    }
    lesion_masks = [
        (s.reader_lesions > 0) if s.reader_lesions is not None else np.zeros(t.shape, bool)
        for s, t in zip(scores, t1_maps, strict=True)
    ]
    if scored:
        summary["z_threshold"] = z_threshold
        summary["abnormal_percent"] = {k: b["abnormal_percent"] for k, b in regions.items()}
        summary["mean_z"] = {k: b["mean_z"] for k, b in regions.items()}
        summary["normal_appearing"] = stats_to_summary(
            normal_appearing_statistics(
                t1_maps,
                z_maps,
                [a.masks for a in anatomies],
                lesion_masks,
                threshold=z_threshold,
            )
        )
    for source in ("reader", "candidate"):
        chosen = [les for s in scores for les in s.lesions if les.source == source]
        if chosen and (source == "reader" or scored):
            summary["lesion_summary"] = {
                **patient_lesion_summary(
                    chosen, [a.gm for a in anatomies], [a.wm for a in anatomies]
                ),
                "source": source,
            }
            break
    return summary
