"""Measurement groups of the report: TID 1411 groups per segment, TID 1501 for pooled regions.

- Region of one slab (TID 1411, volumetric ROI; :func:`region_group`): mean T1 (ms), mean Z
  (UCUM ``1``) and % abnormal voxels (UCUM ``%``), each only when known; the ROI is a SEG
  segment (Referenced Segment plus Source series for segmentation) and the values are those
  of that segment's voxels. Finding site: tissue / funiculus with laterality.
- Region over several slabs (TID 1501, :func:`pooled_region_group`): the same measurements
  and finding site, pooled over the voxels of every slab, without a segment reference (the
  voxels lie in several SEGs and a TID 1411 group can reference only one segment).
- Lesion (TID 1411): volume (mm3), cranio-caudal extent (mm), mean and max T1 (ms), GM share
  (%); coded evaluations: location (topographical modifier), side (laterality incl. midline),
  estimated vertebral level (C1..C7), composition (WM only / mixed GM+WM) and source (reader
  outline / automatic candidate). The tracking identifier is the lesion's SEG label
  (:func:`reports.segmentation.lesion_label`, e.g. ``Lesion 3 (automatic candidate)``).
- The exam's lesion burden (count, load, GM share of lesion tissue) joins the whole-exam
  ``cord`` group (:func:`lesion_burden`): the whole cord is the region it describes.

Software name and version are in the observer device context; model version and Z threshold
are report-level statements (:mod:`reports.sr.evaluations`), so the groups carry no
Algorithm Identification (it would repeat 3-4 items per group and cost build time).
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
from pydicom.sr.coding import Code

from reports.codes import LESION, REGION_CONCEPTS, SPINAL_CORD, TISSUE_CONCEPTS
from reports.segmentation import lesion_label
from reports.sr import concepts as c
from reports.sr.summary import ExamReport, LesionResult, RegionResult

__all__ = [
    "lesion_burden",
    "lesion_group",
    "pooled_region_group",
    "region_finding_site",
    "region_group",
]

_SIDE_SUFFIXES = {"_left": "left", "_right": "right"}
#: Region name without side -> anatomy (from the shared region table).
_REGION_ANATOMY: dict[str, Code] = {
    concept.key.rsplit("_", 1)[0]: concept.property_type for concept in REGION_CONCEPTS.values()
}


def region_finding_site(key: str) -> hd.sr.FindingSite:
    """Coded anatomy of a summary region key (``cord``, ``wm_lateral_funiculi_left``, ``C3``).

    Examples
    --------
    >>> site = region_finding_site("wm_dorsal_columns_right")
    >>> site.value.meaning, site.laterality.meaning
    ('dorsal funiculus', 'Right')
    """
    side = None
    base = key
    for suffix, name in _SIDE_SUFFIXES.items():
        if key.endswith(suffix):
            base, side = key[: -len(suffix)], name
    anatomy = TISSUE_CONCEPTS.get(base) or _REGION_ANATOMY.get(base) or SPINAL_CORD
    laterality = c.SIDES[side] if side else None
    return hd.sr.FindingSite(anatomic_location=anatomy, laterality=laterality)


def _tracking(text: str) -> hd.sr.TrackingIdentifier:
    return hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=text)


def _measurement(
    name: Code, value: float, unit: Code, derivation: Code | None = None
) -> hd.sr.Measurement:
    return hd.sr.Measurement(name=name, value=value, unit=unit, derivation=derivation)


def _region_measurements(
    region: RegionResult, extra: Sequence[hd.sr.Measurement]
) -> list[hd.sr.Measurement]:
    measurements = []
    if region.mean_t1_ms is not None:
        measurements.append(_measurement(c.T1, region.mean_t1_ms, c.UNIT_MS, c.DERIVATION_MEAN))
    if region.mean_z is not None:
        measurements.append(_measurement(c.Z_SCORE, region.mean_z, c.UNIT_NONE, c.DERIVATION_MEAN))
    if region.abnormal_percent is not None:
        measurements.append(
            _measurement(c.ABNORMAL_PERCENT, region.abnormal_percent, c.UNIT_PERCENT)
        )
    measurements.extend(extra)
    return measurements


def region_group(
    region: RegionResult,
    segment: hd.sr.ReferencedSegment,
    *,
    tracking_text: str | None = None,
    extra: Sequence[hd.sr.Measurement] = (),
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations | None:
    """The TID 1411 group of one region's ``segment``, ``None`` when it has no number.

    ``region`` must hold the statistics of exactly the voxels of ``segment``; the tracking
    text defaults to ``Region <key>``; ``extra`` measurements are appended.
    """
    measurements = _region_measurements(region, extra)
    if not measurements:
        return None
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(tracking_text or f"Region {region.key}"),
        referenced_segment=segment,
        finding_sites=[region_finding_site(region.key)],
        measurements=measurements,
    )


def pooled_region_group(
    region: RegionResult,
    *,
    tracking_text: str,
    extra: Sequence[hd.sr.Measurement] = (),
) -> hd.sr.MeasurementsAndQualitativeEvaluations | None:
    """The TID 1501 group of a region over several slabs (no segment), ``None`` without a number.

    Used when the region's voxels lie in more than one SEG: no single segment holds them.
    """
    measurements = _region_measurements(region, extra)
    if not measurements:
        return None
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(tracking_text),
        finding_sites=[region_finding_site(region.key)],
        measurements=measurements,
    )


def _lesion_evaluations(lesion: LesionResult) -> list[hd.sr.QualitativeEvaluation]:
    pairs: list[tuple[Code, Code]] = []
    if lesion.location is not None:
        pairs.append((c.LOCATION, c.LOCATIONS[lesion.location]))
    if lesion.side is not None:
        pairs.append((c.SIDE_CONCEPT, c.SIDES[lesion.side]))
    if lesion.level_name is not None:
        pairs.append((c.LEVEL, c.LEVEL_CODES[lesion.level_name]))
    if lesion.composition is not None:
        pairs.append((c.COMPOSITION, c.COMPOSITIONS[lesion.composition]))
    pairs.append((c.LESION_SOURCE, c.LESION_SOURCES[lesion.source]))
    return [hd.sr.QualitativeEvaluation(name=name, value=value) for name, value in pairs]


def lesion_group(
    lesion: LesionResult,
    segment: hd.sr.ReferencedSegment,
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    """The group of one lesion (reader outline or automatic candidate)."""
    numbers: list[tuple[Code, float | None, Code, Code | None]] = [
        (c.VOLUME, lesion.volume_mm3, c.UNIT_MM3, None),
        (c.CRANIO_CAUDAL_EXTENT, lesion.extent_mm, c.UNIT_MM, None),
        (c.T1, lesion.mean_t1_ms, c.UNIT_MS, c.DERIVATION_MEAN),
        (c.T1, lesion.max_t1_ms, c.UNIT_MS, c.DERIVATION_MAX),
        (c.GM_PERCENT, lesion.gm_percent, c.UNIT_PERCENT, None),
    ]
    measurements = [
        _measurement(name, value, unit, derivation)
        for name, value, unit, derivation in numbers
        if value is not None
    ]
    laterality = c.SIDES[lesion.side] if lesion.side in ("left", "right") else None
    modifier = c.LOCATIONS[lesion.location] if lesion.location else None
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(lesion_label(lesion.lesion_id, lesion.source)),
        referenced_segment=segment,
        finding_type=LESION,
        finding_sites=[
            hd.sr.FindingSite(
                anatomic_location=SPINAL_CORD,
                laterality=laterality,
                topographical_modifier=modifier,
            )
        ],
        measurements=measurements or None,
        qualitative_evaluations=_lesion_evaluations(lesion),
    )


def lesion_burden(report: ExamReport) -> list[hd.sr.Measurement]:
    """Lesion count, lesion load (mm3) and GM share of lesion tissue (%), where known."""
    numbers: list[tuple[Code, float | None, Code]] = [
        (
            c.LESION_COUNT,
            None if report.lesion_count is None else float(report.lesion_count),
            c.UNIT_COUNT,
        ),
        (c.LESION_LOAD, report.lesion_load_mm3, c.UNIT_MM3),
        (c.GM_PERCENT, report.lesion_gm_share_percent, c.UNIT_PERCENT),
    ]
    return [_measurement(name, value, unit) for name, value, unit in numbers if value is not None]
