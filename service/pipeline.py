"""Run one exam end to end on files: T1, segmentation, template, Z-scores, lesions, QC, and
every output (result DICOM objects, NIfTI maps and masks, summary.json).

The same function serves the offline CLI (`cordt1 process`) and the Celery worker, so both
produce identical outputs.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom.dataset import Dataset

from dicom_node.components import Component
from processing.lesions import patient_lesion_summary
from processing.mp2rage import MP2RAGEProtocol, T1LookupTable, stored_to_uni, t1_from_uni
from processing.stats import DEFAULT_Z_THRESHOLD
from processing.template import geometric_gm_prior
from reports.codes import REGION_CONCEPTS
from reports.encapsulated_pdf import build_encapsulated_pdf
from reports.figures import SlabImages, render_exam_figures, render_pdf_report
from reports.identity import ResultIdentity
from reports.parametric_map import MapKind, build_parametric_map
from reports.secondary_capture import build_secondary_captures
from reports.segmentation import SegmentSpec, build_segmentation, segment_numbers, segment_specs
from reports.structured_report import build_measurement_report
from service.exam import ExamError, ExamSeries, Slab, match_slabs
from service.history import follow_up_block
from service.nifti import to_nifti
from service.partners import describe_grid, partner_on_grid
from service.protocol import (
    ProtocolError,
    SiteProtocol,
    match_profile,
    protocol_from_headers,
    protocol_from_profile,
)
from service.quantify import (
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
from service.reader_lesions import (
    ReaderLesionError,
    SegmentKind,
    lesion_labels,
    lesions_from_nifti,
    read_seg,
)
from service.reader_masks import GivenMasks, mask_from_nifti, mask_kind_of_file, masks_from_seg
from service.volumes import SeriesVolume, same_grid

if TYPE_CHECKING:
    from service.model_build import ScoringModel

__all__ = ["ExamOutputs", "process_exam", "slab_t1"]

log = logging.getLogger(__name__)

T1_SERIES_NUMBER = 9100
Z_SERIES_NUMBER = 9200
SEG_SERIES_NUMBER = 9300
SR_SERIES_NUMBER = 9400
SC_SERIES_NUMBER = 9500
PDF_SERIES_NUMBER = 9600
#: Summary key -> label of its segment in our SEG (see reports.segmentation.segment_specs).
REGION_SEGMENT_LABELS: dict[str, str] = {
    "cord": "Spinal cord",
    "gm": "Grey matter",
    "wm": "White matter",
    **{concept.key: concept.label for concept in REGION_CONCEPTS.values()},
}


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


#: Relative B1 values of the 2-D (T1 x B1) table: 0.5 to 1.5 in steps of 0.025.
B1_TABLE_VALUES = tuple(np.round(np.arange(0.5, 1.5001, 0.025), 3))


@lru_cache(maxsize=8)
def _b1_lookup_table(protocol: MP2RAGEProtocol) -> T1LookupTable:
    return T1LookupTable.build(protocol, b1=B1_TABLE_VALUES)


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


def slab_t1(
    slab: Slab, profiles: list[SiteProtocol]
) -> tuple[NDArray[np.float64], dict[str, Any], MP2RAGEProtocol | None]:
    """T1 (ms) of one slab from UNI and the protocol, or the scanner's map without UNI.

    Returns
    -------
    t1_ms, info, protocol
        ``protocol`` is None when the scanner's T1 map was used.

    Raises
    ------
    ExamError
        If the protocol values are missing or inconsistent.
    """
    if slab.uni is None:
        assert slab.t1map is not None
        return slab.t1map.array.astype(np.float64), {"t1_source": "scanner T1 map"}, None
    try:
        protocol, sources = protocol_from_headers(
            uni=slab.uni.datasets[0],
            inv1=slab.inv1.datasets[0] if slab.inv1 else None,
            inv2=slab.inv2.datasets[0] if slab.inv2 else None,
            profiles=profiles,
        )
    except ProtocolError as exc:
        raise ExamError(str(exc)) from exc
    table = _lookup_table(protocol)
    uni = stored_to_uni(slab.uni.array)
    t1_ms = t1_from_uni(uni, table) * 1000.0
    t1_ms, b1_corrected, b1_note = _b1_correct(slab, uni, t1_ms, protocol, profiles)
    info = {
        "t1_source": "UNI + protocol lookup table",
        "b1_corrected": b1_corrected,
        "b1_note": b1_note,
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
    if slab.notes:
        info["partner_notes"] = list(slab.notes)
    return t1_ms, info, protocol


def _b1_correct(
    slab: Slab,
    uni: NDArray[np.float64],
    t1_ms: NDArray[np.float64],
    protocol: MP2RAGEProtocol,
    profiles: list[SiteProtocol],
) -> tuple[NDArray[np.float64], bool, str]:
    """T1 corrected for B1+ where the slab's B1 map gives a value; the note says how much.

    A B1 map on another grid is resampled onto the UNI grid (trilinear, antialiased); stored
    values <= 0 mean "not measured". Voxels the map does not cover, or whose B1 is outside the
    2-D table, keep the uncorrected T1.
    """
    assert slab.uni is not None
    if slab.b1map is None:
        unused = [note for note in slab.notes if note.startswith("B1 map")]
        if unused:
            return t1_ms, False, "; ".join(unused) + "; T1 not corrected for B1+"
        return t1_ms, False, "T1 not corrected for B1+ (no B1 map)"
    profile = match_profile(profiles, str(slab.uni.datasets[0].get("ProtocolName", "")))
    scale = profile.b1_map_scale if profile else None
    if scale is None:
        return (
            t1_ms,
            False,
            "B1 map received but not used: b1_map_scale is not set in the site protocol "
            "profile; T1 not corrected for B1+",
        )
    stored = slab.b1map.array
    measured = np.where(stored > 0, stored, np.nan)
    relative_b1, covered = partner_on_grid(slab.b1map, slab.uni, values=measured)
    relative_b1 /= scale
    corrected = t1_from_uni(uni, _b1_lookup_table(protocol), b1=relative_b1) * 1000.0
    usable = np.isfinite(corrected)
    has_b1 = np.isfinite(relative_b1)
    inside = float(usable[has_b1].mean()) if has_b1.any() else 0.0
    if not usable.any():
        return (
            t1_ms,
            False,
            f"B1 map received but not used: it gives no usable B1 value on the slab "
            f"({100 * covered:.0f} % of voxels covered); T1 not corrected for B1+",
        )
    grid = (
        "same grid"
        if same_grid(slab.b1map, slab.uni)
        else f"resampled from {describe_grid(slab.b1map)}"
    )
    note = (
        f"T1 corrected for B1+ with the B1 map ({grid}; {100 * covered:.0f} % of voxels "
        f"covered, {100 * inside:.0f} % of those inside the table's range)"
    )
    if covered < 0.995:
        note += "; voxels outside the B1 map are not corrected"
    return np.where(usable, corrected, t1_ms), True, note


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
        "accession_number": str(ds.get("AccessionNumber", "") or ""),
        "protocol_name": str(ds.get("ProtocolName", "") or ""),
    }


@dataclass
class _ReaderInput:
    """What readers sent with the exam or gave offline, per slab (None: nothing given)."""

    lesions: list[NDArray[np.int32]] | None = None
    masks: list[GivenMasks | None] = field(default_factory=list)


def _reader_segs_from_exam(exam: ExamSeries, slabs: list[Slab]) -> _ReaderInput:
    """Lesions and cord/GM/WM masks outlined by readers and sent as DICOM SEG with the exam.

    Lesions of several SEGs are merged per slab (ids offset); masks of one kind are united.
    ``lesions`` is None when no SEG holds a lesion segment.
    """
    files = [path for paths in exam.series(Component.SEG).values() for path in paths]
    found = _ReaderInput(masks=[None] * len(slabs))
    if not files:
        return found
    merged = [np.zeros(slab.reference.array.shape, np.int32) for slab in slabs]
    any_lesion_segment = False
    for path in sorted(files):
        try:
            reader_seg = read_seg(pydicom.dcmread(path), [s.reference for s in slabs])
        except ReaderLesionError as exc:
            raise ExamError(f"reader SEG cannot be used: {exc}") from exc
        any_lesion_segment |= bool(reader_seg.numbers(SegmentKind.LESION))
        offset = max(int(m.max()) for m in merged)
        for target, labels in zip(merged, lesion_labels(reader_seg), strict=True):
            target[labels > 0] = labels[labels > 0] + offset
        for i, given in enumerate(masks_from_seg(reader_seg)):
            if given is not None:
                known = found.masks[i]
                found.masks[i] = given if known is None else known.merged(given)
    if any_lesion_segment:
        found.lesions = merged
    return found


def _slab_of_file(
    path: Path, slabs: list[Slab], read: Callable[[Any, SeriesVolume], Any], what: str
) -> tuple[int, Any]:
    """The slab a reader NIfTI lies on, and what ``read`` made of it there.

    A name containing ``slab<k>`` must agree with the grid; without it the grid decides alone.
    """
    try:
        image = nib.load(path)
    except Exception as exc:
        raise ExamError(f"reader {what} file {path.name} cannot be read: {exc}") from exc
    matches: dict[int, Any] = {}
    errors: list[str] = []
    for slab in slabs:
        try:
            matches[slab.index] = read(image, slab.reference)
        except ReaderLesionError as exc:
            errors.append(f"slab {slab.index}: {exc}")
    named = re.search(r"slab(\d+)", path.name)
    if not matches:
        raise ExamError(f"reader {what} file {path.name} matches no slab: {'; '.join(errors)}")
    if named and int(named.group(1)) not in matches:
        raise ExamError(
            f"reader {what} file {path.name} is named for slab {named.group(1)} but lies on "
            f"the grid of slab(s) {sorted(matches)}"
        )
    if not named and len(matches) > 1:
        raise ExamError(
            f"reader {what} file {path.name} fits slabs {sorted(matches)}: put slab<k> in its name"
        )
    index = int(named.group(1)) if named else next(iter(matches))
    return index, matches[index]


def _reader_lesions_from_files(files: list[Path], slabs: list[Slab]) -> list[NDArray[np.int32]]:
    """Reader lesion NIfTI masks (one per slab at most), each matched to its slab by grid."""
    found: dict[int, tuple[Path, NDArray[np.int32]]] = {}
    for path in files:
        index, labels = _slab_of_file(path, slabs, lesions_from_nifti, "lesion")
        if index in found:
            raise ExamError(
                f"two reader lesion files for slab {index}: {found[index][0].name} and "
                f"{path.name} (give one NIfTI per slab)"
            )
        found[index] = (path, labels)
    return [
        found[s.index][1] if s.index in found else np.zeros(s.reference.array.shape, np.int32)
        for s in slabs
    ]


def _reader_masks_from_files(files: list[Path], slabs: list[Slab]) -> list[GivenMasks | None]:
    """Reader cord/GM/WM NIfTI masks (``*cord*``, ``*gm*``, ``*wm*``; at most one of each kind
    per slab), each matched to its slab by grid."""
    found: dict[tuple[int, str], tuple[Path, NDArray[np.bool_]]] = {}
    for path in files:
        try:
            kind = mask_kind_of_file(path)
        except ReaderLesionError as exc:
            raise ExamError(str(exc)) from exc

        def read(image: Any, volume: SeriesVolume, kind: Any = kind) -> NDArray[np.bool_]:
            return mask_from_nifti(image, volume, kind)

        index, mask = _slab_of_file(path, slabs, read, str(kind))
        if (index, str(kind)) in found:
            raise ExamError(
                f"two {kind} mask files for slab {index}: {found[index, str(kind)][0].name} "
                f"and {path.name}"
            )
        found[index, str(kind)] = (path, mask)
    out: list[GivenMasks | None] = []
    for slab in slabs:
        given = {
            kind: found[slab.index, kind]
            for kind in ("cord", "gm", "wm")
            if (slab.index, kind) in found
        }
        out.append(
            GivenMasks(
                **{kind: mask for kind, (_, mask) in given.items()},
                origin="reader NIfTI",
                ids=tuple(path.name for path, _ in given.values()),
            )
            if given
            else None
        )
    return out


def _check_model(
    scoring: ScoringModel,
    slabs: list[Slab],
    protocol: MP2RAGEProtocol | None,
    profiles: list[SiteProtocol],
) -> str | None:
    """Refuse an exam the normative model cannot score.

    An exam with UNI is checked with the protocol from its headers. An exam with only the
    scanner's T1 map is checked with the protocol its site profile entry gives in full
    (:func:`service.protocol.protocol_from_profile`).

    Returns
    -------
    str or None
        For a T1-map-only exam, the ``t1_source`` text saying which protocol was checked;
        ``None`` for an exam with UNI.
    """
    from service.model_store import ProtocolMismatch, check_protocol

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


@contextmanager
def _writing(what: str) -> Iterator[None]:
    """Turn any failure of a result writer into an ExamError naming the object."""
    try:
        yield
    except ExamError:
        raise
    except Exception as exc:
        log.exception("writing the %s failed", what)
        raise ExamError(
            f"writing the {what} failed ({type(exc).__name__}: {exc}); no result was sent"
        ) from exc


class _Writer:
    """Writes one exam's files and remembers them; a failing writer fails the whole exam."""

    def __init__(self, out: ExamOutputs) -> None:
        self.out = out
        self.segmentations: list[hd.seg.Segmentation] = []
        self.parametric_maps: list[Dataset] = []
        (out.out_dir / "dicom").mkdir(parents=True, exist_ok=True)
        (out.out_dir / "nifti").mkdir(parents=True, exist_ok=True)

    def nifti(self, name: str, array: NDArray[Any], affine_lps: NDArray[np.float64]) -> None:
        path = self.out.out_dir / "nifti" / name
        nib.save(to_nifti(array, affine_lps), path)
        self.out.nifti_files.append(path)

    def parametric_map(
        self,
        slab: Slab,
        values: NDArray[np.float64],
        kind: MapKind,
        series_number: int,
        identity: ResultIdentity,
        name: str,
    ) -> str:
        reference = slab.reference
        with _writing(f"{kind} parametric map"):
            pm = self._parametric_map(reference, values, kind, series_number, identity)
        path = self.out.out_dir / "dicom" / name
        pm.save_as(path, enforce_file_format=True)
        self.out.dicom_files.append(path)
        self.parametric_maps.append(pm)
        return str(pm.SOPInstanceUID)

    @staticmethod
    def _parametric_map(
        reference: SeriesVolume,
        values: NDArray[np.float64],
        kind: MapKind,
        series_number: int,
        identity: ResultIdentity,
    ) -> hd.pm.ParametricMap:
        return build_parametric_map(
            reference.datasets,
            reference.to_source_order(np.where(np.isfinite(values), values, 0.0)),
            kind,
            series_number=series_number,
            identity=identity,
        )

    def report(self, summary: dict[str, Any], slabs: list[Slab], identity: ResultIdentity) -> str:
        """The TID 1500 Structured Report of the whole exam."""
        numbers = {
            str(entry["seg_sop_instance_uid"]): entry.get("segment_numbers", {})
            for entry in summary["slabs"]
            if entry.get("seg_sop_instance_uid")
        }

        def lookup(key: str, seg: Dataset) -> int | None:
            label = REGION_SEGMENT_LABELS.get(key)
            return numbers.get(str(seg.SOPInstanceUID), {}).get(label) if label else None

        with _writing("structured report"):
            sr = self._build_report(summary, slabs, identity, lookup)
        path = self.out.out_dir / "dicom" / "report_sr.dcm"
        sr.save_as(path, enforce_file_format=True)
        self.out.dicom_files.append(path)
        return str(sr.SOPInstanceUID)

    def _build_report(
        self,
        summary: dict[str, Any],
        slabs: list[Slab],
        identity: ResultIdentity,
        lookup: Callable[[str, Dataset], int | None],
    ) -> hd.sr.Comprehensive3DSR:
        return build_measurement_report(
            summary,
            source_images=[ds for slab in slabs for ds in slab.reference.datasets],
            segmentations=self.segmentations,
            segment_numbers=lookup,
            parametric_maps=self.parametric_maps,
            series_number=SR_SERIES_NUMBER,
            identity=identity,
        )

    def rendered_report(
        self,
        summary: dict[str, Any],
        slabs: list[Slab],
        images: list[SlabImages],
        identity: ResultIdentity,
        history: list[dict[str, Any]],
    ) -> dict[str, Any]:
        """Charts and overlays as Secondary Captures, the one-page report as Encapsulated PDF."""
        sources = [ds for slab in slabs for ds in slab.reference.datasets]
        figures_dir = self.out.out_dir / "figures"
        figures_dir.mkdir(exist_ok=True)
        with _writing("rendered figures"):
            figures = render_exam_figures(summary, images, history)
            pdf = render_pdf_report(summary, figures)
        for figure in figures:
            (figures_dir / f"{figure.name}.png").write_bytes(figure.png())
        (figures_dir / "report.pdf").write_bytes(pdf)
        with _writing("secondary captures"):
            captures = build_secondary_captures(
                figures, sources, series_number=SC_SERIES_NUMBER, identity=identity
            )
        with _writing("encapsulated PDF report"):
            document = build_encapsulated_pdf(
                pdf,
                sources,
                document_title="cordt1 spinal cord T1 report",
                series_number=PDF_SERIES_NUMBER,
                identity=identity,
            )
        uids = []
        for number, capture in enumerate(captures, start=1):
            path = self.out.out_dir / "dicom" / f"figure{number}_sc.dcm"
            capture.save_as(path, enforce_file_format=True)
            self.out.dicom_files.append(path)
            uids.append(str(capture.SOPInstanceUID))
        path = self.out.out_dir / "dicom" / "report_pdf.dcm"
        document.save_as(path, enforce_file_format=True)
        self.out.dicom_files.append(path)
        return {
            "figures": [f.name for f in figures],
            "sc_sop_instance_uids": uids,
            "pdf_sop_instance_uid": str(document.SOPInstanceUID),
        }

    def segmentation(
        self,
        slab: Slab,
        specs: list[SegmentSpec],
        series_number: int,
        identity: ResultIdentity,
        name: str,
    ) -> tuple[str, dict[str, int]]:
        reference = slab.reference
        multiframe = len(reference.datasets) == 1 and reference.frame_sources[0][1] is not None
        order = [frame - 1 for _, frame in reference.frame_sources] if multiframe else None
        with _writing("segmentation"):
            seg = build_segmentation(
                reference.datasets,
                specs,
                series_number=series_number,
                identity=identity,
                slice_order=order,  # type: ignore[arg-type]
            )
        path = self.out.out_dir / "dicom" / name
        seg.save_as(path, enforce_file_format=True)
        self.out.dicom_files.append(path)
        self.segmentations.append(seg)
        return str(seg.SOPInstanceUID), segment_numbers(specs)


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
        (:mod:`service.reader_masks`). Without them, cord/GM/WM segments of a reader SEG sent
        with the exam are used.

    Raises
    ------
    ExamError
        If the exam cannot be processed (missing series or protocol values, bad geometry,
        protocol or slab count not the model's).
    """
    started = time.perf_counter()
    try:
        slabs = match_slabs(exam)
    except ValueError as exc:
        raise ExamError(f"cannot read the exam's images: {exc}") from exc
    loaded = time.perf_counter()
    if reader_lesion_files is not None:
        if reader_lesions is not None:
            raise ValueError("give reader_lesions or reader_lesion_files, not both")
        reader_lesions = _reader_lesions_from_files(reader_lesion_files, slabs)
    from_exam = (
        _reader_segs_from_exam(exam, slabs)
        if reader_lesions is None or reader_mask_files is None
        else _ReaderInput(masks=[None] * len(slabs))
    )
    if reader_lesions is None:
        reader_lesions = from_exam.lesions
    given_masks = (
        _reader_masks_from_files(reader_mask_files, slabs)
        if reader_mask_files is not None
        else from_exam.masks
    )
    if reader_lesions is not None and len(reader_lesions) != len(slabs):
        raise ExamError(f"{len(reader_lesions)} reader lesion map(s) for {len(slabs)} slab(s)")
    t1_maps, infos, protocols = zip(*(slab_t1(slab, profiles) for slab in slabs), strict=True)
    if model is not None:
        t1_source = _check_model(model, slabs, protocols[0], profiles)
        if t1_source is not None:
            for info in infos:
                info["t1_source"] = t1_source
    out = ExamOutputs(out_dir=out_dir, summary={})
    writer = _Writer(out)
    n_slabs = len(slabs)
    prior = model.gm_prior if model is not None else geometric_gm_prior(n_slabs)

    anatomies: list[SlabAnatomy] = []
    scores: list[SlabScores] = []
    foregrounds = []
    slab_summaries = []
    for i, slab in enumerate(slabs):
        t1_ms, reference = t1_maps[i], slab.reference
        voxel_mm, affine = reference.voxel_mm, reference.affine_lps
        foreground = _foreground(slab)
        foregrounds.append(foreground)
        reader = reader_lesions[i] if reader_lesions is not None else None
        anatomy = segment_slab(
            t1_ms,
            index=slab.index,
            n_slabs=n_slabs,
            voxel_mm=voxel_mm,
            affine_lps=affine,
            gm_prior_template=prior,
            inv2=slab.inv2.array if slab.inv2 is not None else None,
            lesions=reader > 0 if reader is not None else None,
            t2star=_t2star_sampler(slab),
            given=given_masks[i],
        )
        scoring_model = model.model if model else None
        slab_scores = score_slab(
            t1_ms,
            anatomy,
            model=scoring_model,
            voxel_mm=voxel_mm,
            affine_lps=affine,
            reader_lesions=reader,
        )
        if slab_scores.candidate_lesions is not None and slab_scores.candidate_lesions.any():
            # Second pass: candidate voxels must not vote for GM with their raised T1.
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
                gm_prior_template=prior,
                lesions=known,
                evidence=anatomy.evidence,
                given=given_masks[i],
            )
            slab_scores = score_slab(
                t1_ms,
                anatomy,
                model=scoring_model,
                voxel_mm=voxel_mm,
                affine_lps=affine,
                reader_lesions=reader,
                reuse=slab_scores,
            )
        anatomies.append(anatomy)
        scores.append(slab_scores)
        finite = np.isfinite(t1_ms)
        slab_summaries.append(
            {
                "slab": slab.index,
                "series_instance_uid": reference.series_uid,
                "shape": list(reference.array.shape),
                "voxel_mm": [round(v, 4) for v in reference.voxel_mm],
                "components": sorted(
                    name
                    for name in ("uni", "inv1", "inv2", "t1map", "b1map", "t2star")
                    if getattr(slab, name) is not None
                ),
                **infos[i],
                "foreground_t1_ms": _t1_statistics(t1_ms, foreground),
                "outside_lookup_percent": round(100.0 * float(np.mean(~finite[foreground])), 2)
                if foreground.any()
                else 100.0,
                "scanner_t1_agreement": _scanner_agreement(t1_ms, slab, foreground),
                "cord_slices_found": int(anatomy.segmentation.found.sum()),
                "segmentation_source": given_masks[i].describe()
                if given_masks[i] is not None
                else "automatic",
                "estimated_levels": sorted({f"C{int(x)}" for x in anatomy.levels if x > 0}),
                "gm_wm_evidence": _evidence_summary(anatomy, slab),
            }
        )

    if not any(a.segmentation.found.any() for a in anatomies):
        raise ExamError(
            "no spinal cord found on any slice (is this a cervical cord MP2RAGE? "
            "check the field of view and the T1 map)"
        )
    cord_t1 = np.concatenate([t[a.cord] for t, a in zip(t1_maps, anatomies, strict=True)])
    outside_in_cord = float(np.mean(~np.isfinite(cord_t1))) if cord_t1.size else None
    qc = assess_exam(
        anatomies=anatomies,
        inv2=[s.inv2.array if s.inv2 is not None else None for s in slabs],
        foregrounds=foregrounds,
        outside_lookup_in_cord=outside_in_cord,
        voxel_mm=[s.reference.voxel_mm for s in slabs],
        model_valid=[s.model_valid for s in scores] if model is not None else [],
        protocol_matches_model=True if model is not None else None,
        b1_corrected=all(info.get("b1_corrected", False) for info in infos),
    )
    scored = model is not None and qc.verdict != "fail"
    computed = time.perf_counter()

    for slab, t1_ms, anatomy, slab_scores, slab_summary in zip(
        slabs, t1_maps, anatomies, scores, slab_summaries, strict=True
    ):
        affine = slab.reference.affine_lps
        k = slab.index
        slab_summary["result_sop_instance_uid"] = writer.parametric_map(
            slab, t1_ms, MapKind.T1_MS, T1_SERIES_NUMBER + k, identity, f"t1map_slab{k}.dcm"
        )
        writer.nifti(f"slab{k}_t1_ms.nii.gz", np.nan_to_num(t1_ms).astype(np.float32), affine)
        for name, mask in (("cord", anatomy.cord), ("gm", anatomy.gm), ("wm", anatomy.wm)):
            writer.nifti(f"slab{k}_{name}.nii.gz", mask.astype(np.uint8), affine)
        writer.nifti(f"slab{k}_labels.nii.gz", anatomy.labels.astype(np.int16), affine)
        if scored and slab_scores.z is not None:
            slab_summary["z_sop_instance_uid"] = writer.parametric_map(
                slab,
                slab_scores.z,
                MapKind.Z_SCORE,
                Z_SERIES_NUMBER + k,
                identity,
                f"zmap_slab{k}.dcm",
            )
            writer.nifti(
                f"slab{k}_z.nii.gz", np.nan_to_num(slab_scores.z).astype(np.float32), affine
            )
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
        )
        if specs:
            seg_uid, numbers = writer.segmentation(
                slab, specs, SEG_SERIES_NUMBER + k, identity, f"seg_slab{k}.dcm"
            )
            slab_summary["seg_sop_instance_uid"] = seg_uid
            slab_summary["segment_numbers"] = numbers
        for name, labels in (
            ("lesions_reader", slab_scores.reader_lesions),
            ("lesions_candidates", slab_scores.candidate_lesions if scored else None),
        ):
            if labels is not None:
                writer.nifti(f"slab{k}_{name}.nii.gz", labels.astype(np.int16), affine)

    summary = _summary(
        slabs, slab_summaries, t1_maps, anatomies, scores, scored, z_threshold, identity
    )
    summary["qc"] = {"verdict": qc.verdict, "reasons": list(qc.reasons), "metrics": qc.metrics}
    if model is not None:
        summary["model"] = model.summary()
    if prior_summary is not None and scored:
        summary["follow_up"] = follow_up_block(prior_summary, summary)
    if writer.segmentations:
        summary["sr_sop_instance_uid"] = writer.report(summary, slabs, identity)
    images = [
        SlabImages(
            slab=slab.index,
            t1_ms=t1_ms,
            affine_lps=slab.reference.affine_lps,
            cord=anatomy.cord,
            z=slab_scores.z if scored else None,
            lesions=_lesion_overlay(slab_scores, scored),
        )
        for slab, t1_ms, anatomy, slab_scores in zip(
            slabs, t1_maps, anatomies, scores, strict=True
        )
    ]
    history = [prior_summary] if prior_summary is not None else []
    summary["rendered"] = writer.rendered_report(summary, slabs, images, identity, history)
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
    for slab, anatomy, slab_scores in zip(slabs, anatomies, scores, strict=True):
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
            entry["id"] = len(lesions) + 1
            entry["slab"] = slab.index
            tracking = "Lesion {} (reader)" if lesion.source == "reader" else "Lesion candidate {}"
            numbers = summaries_by_slab[slab.index].get("segment_numbers", {})
            entry["segment_number"] = numbers.get(tracking.format(lesion.id))
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
