"""TID 1500 Measurement Report (Comprehensive 3D SR) of one exam's quantitative T1 results.

What the document holds (IHE AIR-style: it references the SEG segments and source series
the numbers were measured in):

- root: Imaging Measurement Report (TID 1500), language, observer context = device
  (software name, manufacturer, ``name version`` as model, device UID derived from name and
  version), procedure reported = LN 25056-3 "MRI unspecified body region" (TID 1500 allows
  one code, from CID 100, which has no cervical-spine MRI; the anatomy is in the finding
  sites);
- Imaging Measurements: region groups (below) for every summary region that has a segment
  in one of the SEGs (mean T1, mean Z, % abnormal voxels; the whole-exam ``cord`` group also
  the lesion count, load and GM share), one TID 1411 group per lesion (volume, extent,
  mean/max T1, GM share, coded location / side / level / composition / source), each
  referencing its segment in the SEG of its own slab (matched by the slab's series UID in
  ``summary['slabs']``); see :mod:`reports.sr.groups`;
- Qualitative Evaluations: QC verdict and reasons, B1 note, model version, Z threshold,
  follow-up changes, research-use text; see :mod:`reports.sr.evaluations`.

QC ``fail``: no Z-based number anywhere (mean Z, % abnormal, Z threshold, Z deltas), the QC
reasons instead. CurrentRequestedProcedureEvidenceSequence lists every source image, SEG and
Parametric Map given. CompletionFlag COMPLETE, VerificationFlag UNVERIFIED, PreliminaryFlag
PRELIMINARY: it is an automatic result no person has verified.

Region groups. Every number next to a segment reference is a statistic of that segment's
voxels, and no value is written twice:

- one slab (one entry in ``summary['slabs']`` and one SEG, or no slab list and one SEG): a
  TID 1411 group per region, tracking text ``Region <key>``, with the exam values
  (``summary['regions']``), referencing the region's segment;
- several slabs (more than one slab entry or SEG): a TID 1501 group per region without a
  segment reference, tracking text ``Region <key>, all slabs``, with the values pooled over
  all slabs (``summary['regions']``), followed by one TID 1411 group per slab, tracking text
  ``Region <key>, slab <k> of <n>``, with that slab's own values
  (``summary['slabs'][k]['regions']``) referencing the region's segment in that slab's SEG.
  A slab without its own region statistics, or without a SEG from its series, gets no
  per-slab groups.

The lesion burden joins the whole-exam ``cord`` group (TID 1411 for one slab, TID 1501 for
several); without one it becomes a text in the Qualitative Evaluations.

Image anchors: with ``anchors`` every measurement group also carries a point on a source
image inside its region or lesion (:mod:`reports.sr.anchors`), so that viewers such as OHIF
draw the group as a labelled annotation; ``anchors(key, slab)`` gives it for a region key or
``lesion_<id>`` on slab ``slab``, or (``slab`` None) for the whole exam (one-slab exams and
the pooled groups of several slabs). A group without an anchor is then an error.

Segment numbers: ``segment_numbers`` maps a region key (``cord``, ``wm``,
``gm_dorsal_horns_left``, ...) to its segment number in every SEG, or is a callable
``(key, segmentation) -> int | None``. Lesions use the key ``lesion_<id>`` first (exact when
a slab has several SEGs), else their ``segment_number`` from the summary.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from copy import deepcopy
from dataclasses import dataclass

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from reports.common import TYPE2_PATIENT_STUDY, header_copy
from reports.identity import ResultIdentity, apply_identity
from reports.sr import concepts as c
from reports.sr.anchors import ImageAnchor, anchor_measurements
from reports.sr.evaluations import evaluations_container
from reports.sr.groups import lesion_burden, lesion_group, pooled_region_group, region_group
from reports.sr.summary import ExamReport, LesionResult, read_summary

__all__ = [
    "SEGMENTATION_SOP_CLASSES",
    "AnchorLookup",
    "SegmentLookup",
    "build_measurement_report",
    "device_uid",
]

SEGMENTATION_SOP_CLASSES = frozenset(
    {"1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7"}
)
SERIES_DESCRIPTION = "T1 measurement report"

#: ``(region key, segmentation) -> segment number or None``.
SegmentLookup = Callable[[str, Dataset], "int | None"]
#: ``(region key or "lesion_<id>", slab number or None for the whole exam) -> anchor or None``.
AnchorLookup = Callable[[str, "int | None"], "ImageAnchor | None"]
_Group = (
    hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
    | hd.sr.MeasurementsAndQualitativeEvaluations
)


@dataclass(frozen=True)
class _Seg:
    dataset: Dataset
    source_series_uid: str
    segment_numbers: frozenset[int]

    def reference(self, number: int) -> hd.sr.ReferencedSegment:
        return hd.sr.ReferencedSegment(
            sop_class_uid=self.dataset.SOPClassUID,
            sop_instance_uid=self.dataset.SOPInstanceUID,
            segment_number=number,
            source_series=hd.sr.SourceSeriesForSegmentation(self.source_series_uid),
        )


def device_uid(identity: ResultIdentity) -> str:
    """A UID for the observer device, the same for every report of one software version."""
    return str(generate_uid(entropy_srcs=[identity.software_name, identity.software_version]))


def _check_datasets(items: object, name: str, *, required: bool) -> list[Dataset]:
    if isinstance(items, Dataset) or not isinstance(items, Sequence):
        raise TypeError(f"{name} must be a sequence of pydicom Datasets")
    if required and len(items) == 0:
        raise ValueError(f"at least one of {name} is required")
    for ds in items:
        if not isinstance(ds, Dataset):
            raise TypeError(f"{name} holds a {type(ds).__name__}, not a pydicom Dataset")
        for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
            if not ds.get(keyword):
                raise ValueError(
                    f"{name}: instance {ds.get('SOPInstanceUID', '?')} has no {keyword}"
                )
    return list(items)


def _lookup(segment_numbers: Mapping[str, int] | SegmentLookup) -> SegmentLookup:
    if callable(segment_numbers):
        return segment_numbers
    if not isinstance(segment_numbers, Mapping):
        raise TypeError("segment_numbers must be a mapping of region key -> number or a callable")
    for key, number in segment_numbers.items():
        if isinstance(number, bool) or not isinstance(number, int) or number < 1:
            raise ValueError(f"segment_numbers[{key!r}] must be a positive int, got {number!r}")
    return lambda key, _seg: segment_numbers.get(key)


def _segments(segmentations: Sequence[Dataset], source_series: set[str]) -> list[_Seg]:
    out = []
    for seg in segmentations:
        uid = seg.SOPInstanceUID
        if seg.SOPClassUID not in SEGMENTATION_SOP_CLASSES:
            raise ValueError(f"segmentation {uid} has SOP class {seg.SOPClassUID}, not a SEG")
        referenced = seg.get("ReferencedSeriesSequence")
        if not referenced:
            raise ValueError(f"segmentation {uid} has no ReferencedSeriesSequence")
        series_uid = str(referenced[0].SeriesInstanceUID)
        if series_uid not in source_series:
            raise ValueError(
                f"segmentation {uid} was made from series {series_uid}, which is not among "
                "the source images"
            )
        numbers = frozenset(int(item.SegmentNumber) for item in seg.get("SegmentSequence", []))
        out.append(_Seg(seg, series_uid, numbers))
    return out


def _checked_number(number: object, key: str) -> int | None:
    if number is None:
        return None
    if isinstance(number, bool) or not isinstance(number, int) or number < 1:
        raise ValueError(f"segment number of {key!r} must be a positive int, got {number!r}")
    return int(number)


def _region_segments(key: str, segs: list[_Seg], lookup: SegmentLookup) -> list[tuple[_Seg, int]]:
    found = []
    for seg in segs:
        number = _checked_number(lookup(key, seg.dataset), key)
        if number is not None and number in seg.segment_numbers:
            found.append((seg, number))
    return found


def _lesion_segment(
    lesion: LesionResult, report: ExamReport, segs: list[_Seg], lookup: SegmentLookup
) -> hd.sr.ReferencedSegment:
    name = f"lesion {lesion.lesion_id}"
    candidates = segs
    if lesion.slab is not None and lesion.slab in report.slab_series:
        series_uid = report.slab_series[lesion.slab]
        candidates = [seg for seg in segs if seg.source_series_uid == series_uid]
        if not candidates:
            raise ValueError(
                f"{name} is on slab {lesion.slab} (series {series_uid}) but no segmentation "
                "was made from that series"
            )
    key = f"lesion_{lesion.lesion_id}"
    for seg in candidates:
        number = _checked_number(lookup(key, seg.dataset), key)
        if number is not None and number in seg.segment_numbers:
            return seg.reference(number)
    for seg in candidates:
        number = lesion.segment_number
        if number is not None and number in seg.segment_numbers:
            return seg.reference(number)
    raise ValueError(
        f"{name}: segment {lesion.segment_number or 'lesion_' + str(lesion.lesion_id)} is in "
        "none of the segmentations of its slab"
    )


def _anchored(group: _Group | None, anchors: AnchorLookup | None, key: str, slab: int | None):
    """``group`` with its image anchor (see the module docstring); None stays None."""
    if group is None or anchors is None:
        return group
    anchor = anchors(key, slab)
    if anchor is None:
        where = "the whole exam" if slab is None else f"slab {slab}"
        raise ValueError(f"no image anchor for {key!r} on {where}: every group needs one")
    if not isinstance(anchor, ImageAnchor):
        raise TypeError(f"anchors must return an ImageAnchor, got {type(anchor).__name__}")
    anchor_measurements(group, anchor)
    return group


def _region_groups(
    report: ExamReport,
    segs: list[_Seg],
    lookup: SegmentLookup,
    burden: list[hd.sr.Measurement],
    n_slabs: int,
    anchors: AnchorLookup | None,
) -> tuple[list[_Group], bool]:
    """Region groups (see the module docstring) and whether the lesion burden is in one."""
    groups: list[_Group] = []
    burden_written = False
    own_stats = {
        number: {region.key: region for region in regions}
        for number, regions in sorted(report.slab_regions.items())
    }
    for region in report.regions:
        holders = _region_segments(region.key, segs, lookup)
        if not holders:
            continue
        extra = burden if region.key == "cord" else ()
        exam_group: _Group | None
        if n_slabs == 1:
            seg, number = holders[0]
            exam_group = region_group(region, seg.reference(number), extra=extra)
        else:
            exam_group = pooled_region_group(
                region, tracking_text=f"Region {region.key}, all slabs", extra=extra
            )
        exam_group = _anchored(exam_group, anchors, region.key, None)
        if exam_group is not None:
            groups.append(exam_group)
            burden_written = burden_written or bool(extra)
        if n_slabs == 1:
            continue
        for slab, stats in own_stats.items():
            own = stats.get(region.key)
            series_uid = report.slab_series[slab]
            at = [(seg, n) for seg, n in holders if seg.source_series_uid == series_uid]
            if own is None or not at:
                continue
            text = f"Region {region.key}, slab {slab} of {n_slabs}"
            group = region_group(own, at[0][0].reference(at[0][1]), tracking_text=text)
            group = _anchored(group, anchors, region.key, slab)
            if group is not None:
                groups.append(group)
    return groups, burden_written


def _evidence_head(source: Dataset) -> Dataset:
    """Header copy of the first source with the Type 2 patient/study attributes present."""
    head = header_copy(source)
    for keyword in TYPE2_PATIENT_STUDY:
        if keyword not in head:
            setattr(head, keyword, "")
    return head


def _observation_context(identity: ResultIdentity) -> hd.sr.ObservationContext:
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=device_uid(identity),
        name=identity.software_name,
        manufacturer_name=identity.manufacturer,
        model_name=f"{identity.software_name} {identity.software_version}"[:64],
        serial_number=identity.device_serial_number,
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.cid270.Device, observer_identifying_attributes=device
        )
    )


def build_measurement_report(
    summary: Mapping,
    *,
    source_images: Sequence[Dataset],
    segmentations: Sequence[hd.seg.Segmentation],
    segment_numbers: Mapping[str, int] | SegmentLookup,
    parametric_maps: Sequence[Dataset] = (),
    series_number: int,
    identity: ResultIdentity,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    anchors: AnchorLookup | None = None,
) -> hd.sr.Comprehensive3DSR:
    """Build the TID 1500 Measurement Report of one exam.

    Parameters
    ----------
    summary : Mapping
        The per-exam summary (docs/summary-contract.md); see :mod:`reports.sr.summary` for
        what is read and how absent keys are handled. With several slabs the per-slab
        groups take their values from ``summary['slabs'][k]['regions']``.
    source_images : sequence of pydicom.dataset.Dataset
        The source images (headers are enough) of every slab, all of one study.
    segmentations : sequence of highdicom.seg.Segmentation (or SEG datasets)
        The SEGs (one per slab) whose segments the groups reference.
    segment_numbers : Mapping[str, int] or callable
        Region key -> segment number (same in every SEG), or ``(key, seg) -> int | None``.
    parametric_maps : sequence of pydicom.dataset.Dataset
        T1 / Z maps of the exam; listed as evidence.
    series_number : int
        SeriesNumber of the SR (positive).
    identity : ResultIdentity
        Software name/version, manufacturer, research-use text.
    series_instance_uid, sop_instance_uid : str, optional
        New UIDs are generated when omitted.
    anchors : callable, optional
        ``(key, slab) -> ImageAnchor``: the point on a source image of every group (see the
        module docstring); without it the groups carry no image coordinates.

    Returns
    -------
    highdicom.sr.Comprehensive3DSR
        Ready for ``save_as``.

    Raises
    ------
    TypeError
        For arguments of the wrong type.
    ValueError
        For an invalid summary value (the message names the key), objects from another
        study, a SEG not made from the sources, a lesion whose segment is missing, or (with
        ``anchors``) a group without an anchor.
    """
    if not isinstance(identity, ResultIdentity):
        raise TypeError(f"identity must be a ResultIdentity, got {type(identity).__name__}")
    if isinstance(series_number, bool) or not isinstance(series_number, int):
        raise TypeError(f"series_number must be an int, got {type(series_number).__name__}")
    if series_number < 1:
        raise ValueError(f"series_number must be positive, got {series_number}")
    sources = _check_datasets(source_images, "source_images", required=True)
    segs = _check_datasets(segmentations, "segmentations", required=True)
    maps = _check_datasets(parametric_maps, "parametric_maps", required=False)
    report = read_summary(summary)
    lookup = _lookup(segment_numbers)
    study_uid = str(sources[0].StudyInstanceUID)
    if report.study_instance_uid is not None and report.study_instance_uid != study_uid:
        raise ValueError(
            f"the summary is of study {report.study_instance_uid}, the source images of "
            f"study {study_uid}"
        )
    for ds in [*sources, *segs, *maps]:
        if str(ds.StudyInstanceUID) != study_uid:
            raise ValueError(
                f"instance {ds.SOPInstanceUID} belongs to study {ds.StudyInstanceUID}, not to "
                f"the exam's study {study_uid}"
            )
    seg_infos = _segments(segs, {str(ds.SeriesInstanceUID) for ds in sources})

    burden = lesion_burden(report)
    n_slabs = max(report.n_slabs, len({seg.source_series_uid for seg in seg_infos}))
    if anchors is not None and not callable(anchors):
        raise TypeError("anchors must be a callable (key, slab) -> ImageAnchor")
    groups, burden_written = _region_groups(report, seg_infos, lookup, burden, n_slabs, anchors)
    for lesion in report.lesions:
        segment = _lesion_segment(lesion, report, seg_infos, lookup)
        group = lesion_group(lesion, segment)
        groups.append(_anchored(group, anchors, f"lesion_{lesion.lesion_id}", lesion.slab))
    if not groups:
        raise ValueError(
            "nothing to measure: no region of the summary has a segment in the segmentations "
            "and there are no lesions"
        )
    notes = []
    if burden and not burden_written:
        notes.append(
            "Lesion burden: "
            + ", ".join(f"{m.name.meaning} {m.value:g} {m.unit.value}" for m in burden)
        )

    content = hd.sr.MeasurementReport(
        observation_context=_observation_context(identity),
        procedure_reported=c.PROCEDURE,
        imaging_measurements=groups,
    )
    content[0].ContentSequence.append(
        evaluations_container(report, research_use_text=identity.research_use_text, notes=notes)
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=[_evidence_head(sources[0]), *sources[1:], *segs, *maps],
        content=content[0],
        series_instance_uid=series_instance_uid or hd.UID(),
        series_number=int(series_number),
        sop_instance_uid=sop_instance_uid or hd.UID(),
        instance_number=1,
        manufacturer=identity.manufacturer,
        is_complete=True,
        institution_name=identity.institution,
    )
    sr.CodingSchemeIdentificationSequence = [deepcopy(c.PRIVATE_SCHEME_ITEM)]
    sr.SeriesDescription = f"{identity.software_name} {SERIES_DESCRIPTION}"
    apply_identity(sr, identity)
    return sr
