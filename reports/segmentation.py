"""DICOM Segmentation (BINARY) of the cord, its tissues, regions, lesions and abnormal voxels.

One Segmentation instance per source series (slab): every segment is a boolean mask on the
grid of that series, ``[k, j, i]`` in slice order (docs/CONVENTIONS.md). The codes of every
segment come from :mod:`reports.codes`; :func:`segment_specs` builds the standard list in a
fixed order (cord, GM, WM, regions by code, reader lesions, lesion candidates, abnormal
voxels) and leaves out empty masks, so segment numbers are the 1-based positions in that list
(:func:`segment_numbers`, which the SR uses to reference a segment).

Choices (all visible in the written object):

- SegmentationType BINARY (Segmentation Storage 1.2.840.10008.5.1.4.1.1.66.4, which every
  PACS we tested accepts; LABELMAP cannot hold overlapping segments such as cord and GM),
  Explicit VR Little Endian, frames without any voxel of a segment are omitted (highdicom's
  ``omit_empty_frames``); a segment without any voxel is refused.
- Segment algorithm type MANUAL for reader lesions (no algorithm identification), AUTOMATIC
  otherwise, with an algorithm identification naming the software and its version and a
  family from CID 7162 matching the method (see :data:`SEGMENT_STYLES`).
- Sub-regions carry a left/right SegmentedPropertyTypeModifier (CID 244); lesions and abnormal
  voxels carry AnatomicRegion "Spinal cord". Lesions are named by their exam-wide id
  (:func:`lesion_label`, e.g. ``"Lesion 2 (automatic candidate)"``), as label and TrackingID
  (with a fresh TrackingUID): the same text as the SR's tracking identifier.
- Two layers (:func:`split_layers`), written as two SEGs of a slab by the service: the
  clinical layer (cord, lesions, abnormal voxels) in saturated, distinct colours (cord green,
  reader lesions red, candidates orange, abnormal voxels magenta) and the anatomy layer (GM,
  WM, 12 regions) in muted, low-saturation colours, so that lesions stay visible when a viewer
  shows every segment at once.
- References to every source instance (and frame), BodyPartExamined copied from the source or
  ``CSPINE``, ContentQualification RESEARCH while a research-use text is set, identity via
  :func:`reports.identity.apply_identity`, header-only copies of the sources (the caller's
  datasets are never changed), missing Type 2 patient/study attributes written empty.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

import highdicom as hd
import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import SegmentationStorage

from reports import codes
from reports.common import body_part_examined, instance_header, prepare_sources
from reports.identity import ResultIdentity, apply_identity

__all__ = [
    "CLINICAL_KINDS",
    "SEGMENT_STYLES",
    "SegmentKind",
    "SegmentSpec",
    "SegmentStyle",
    "build_segmentation",
    "lesion_label",
    "segment_numbers",
    "segment_specs",
    "segmentation_header",
    "split_layers",
]

_LO_MAX = 64
_CONTENT_LABEL = "CORD_SEGMENTS"
_SERIES_DESCRIPTION = "cord segmentation"


class SegmentKind(StrEnum):
    """What a segment holds."""

    CORD = "CORD"
    GM = "GM"
    WM = "WM"
    REGION = "REGION"
    LESION_READER = "LESION_READER"
    LESION_CANDIDATE = "LESION_CANDIDATE"
    ABNORMAL = "ABNORMAL"


@dataclass(frozen=True)
class SegmentStyle:
    """Coding and colour of one kind of segment.

    ``property_type`` is None for regions: it depends on the region code
    (:func:`reports.codes.region_concept`). ``family`` is None for manual segments.
    """

    category: Code
    property_type: Code | None
    family: Code | None
    step: str
    rgb: tuple[int, int, int]
    in_cord: bool


SEGMENT_STYLES: dict[SegmentKind, SegmentStyle] = {
    SegmentKind.CORD: SegmentStyle(
        codes.ANATOMICAL_STRUCTURE,
        codes.SPINAL_CORD,
        codes.FAMILY_MORPHOLOGICAL,
        "cord segmentation",
        (60, 200, 110),
        in_cord=False,
    ),
    SegmentKind.GM: SegmentStyle(
        codes.ANATOMICAL_STRUCTURE,
        codes.SPINAL_CORD_GRAY_MATTER,
        codes.FAMILY_CLUSTER_ANALYSIS,
        "grey/white matter split",
        (170, 150, 140),
        in_cord=False,
    ),
    SegmentKind.WM: SegmentStyle(
        codes.ANATOMICAL_STRUCTURE,
        codes.SPINAL_CORD_WHITE_MATTER,
        codes.FAMILY_CLUSTER_ANALYSIS,
        "grey/white matter split",
        (175, 185, 195),
        in_cord=False,
    ),
    SegmentKind.REGION: SegmentStyle(
        codes.ANATOMICAL_STRUCTURE,
        None,
        codes.FAMILY_DEFORMABLE_MODELS,
        "regions in cord template coordinates",
        (150, 170, 190),
        in_cord=False,
    ),
    SegmentKind.LESION_READER: SegmentStyle(
        codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
        codes.LESION,
        None,
        "reader",
        (255, 0, 0),
        in_cord=True,
    ),
    SegmentKind.LESION_CANDIDATE: SegmentStyle(
        codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
        codes.LESION,
        codes.FAMILY_HISTOGRAM_ANALYSIS,
        "lesion candidates from Z-scores",
        (255, 150, 0),
        in_cord=True,
    ),
    SegmentKind.ABNORMAL: SegmentStyle(
        codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
        codes.ABNORMAL,
        codes.FAMILY_HISTOGRAM_ANALYSIS,
        "Z-score threshold against the normative model",
        (255, 0, 255),
        in_cord=True,
    ),
}

# Muted colours for the twelve regions (WM blues/greens, GM warm tones, all low saturation so
# that they never hide a lesion); left and right of one region share a hue and differ in
# lightness.
_REGION_RGB: dict[int, tuple[int, int, int]] = {
    1: (120, 145, 185),
    2: (155, 175, 205),
    3: (110, 160, 150),
    4: (150, 190, 180),
    5: (140, 130, 180),
    6: (170, 165, 200),
    11: (175, 145, 115),
    12: (205, 180, 150),
    13: (160, 135, 125),
    14: (195, 175, 165),
    15: (170, 125, 140),
    16: (200, 165, 175),
}

#: What a reader looks at first: the cord outline, the lesions and the abnormal voxels. The
#: other kinds (GM, WM, regions) are the anatomy layer; each layer goes into its own SEG.
CLINICAL_KINDS = frozenset(
    {
        SegmentKind.CORD,
        SegmentKind.LESION_READER,
        SegmentKind.LESION_CANDIDATE,
        SegmentKind.ABNORMAL,
    }
)
_LESION_SOURCES = {"reader": "reader", "candidate": "automatic candidate"}


def lesion_label(lesion_id: int, source: str) -> str:
    """Segment label, SEG TrackingID and SR tracking text of exam lesion ``lesion_id``.

    One text for one lesion everywhere: the SEG, the SR, the PDF's ``#`` column and
    ``summary.json`` use the exam-wide lesion id.

    Examples
    --------
    >>> lesion_label(3, "candidate")
    'Lesion 3 (automatic candidate)'
    """
    if source not in _LESION_SOURCES:
        raise ValueError(f"lesion source must be 'reader' or 'candidate', got {source!r}")
    if isinstance(lesion_id, bool) or not isinstance(lesion_id, int) or lesion_id < 1:
        raise ValueError(f"lesion id must be a positive int, got {lesion_id!r}")
    return f"Lesion {lesion_id} ({_LESION_SOURCES[source]})"


def split_layers(segments: Sequence[SegmentSpec]) -> tuple[list[SegmentSpec], list[SegmentSpec]]:
    """(clinical layer, anatomy layer) of a segment list, each in the list's order.

    Clinical: cord, lesions, abnormal voxels (:data:`CLINICAL_KINDS`); anatomy: GM, WM and
    the regions. Either list may be empty.
    """
    clinical = [spec for spec in segments if spec.kind in CLINICAL_KINDS]
    anatomy = [spec for spec in segments if spec.kind not in CLINICAL_KINDS]
    return clinical, anatomy


def _check_lo(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{name} must not be empty")
    if len(value) > _LO_MAX or "\\" in value or any(ord(c) < 32 for c in value):
        raise ValueError(
            f"{name} must be at most {_LO_MAX} characters without backslash or control "
            f"characters, got {value!r}"
        )
    return value


@dataclass(frozen=True, eq=False)
class SegmentSpec:
    """One segment to write.

    Parameters
    ----------
    label : str
        SegmentLabel shown in viewers (LO, at most 64 characters), e.g. ``"Grey matter"``.
    mask : numpy.ndarray of bool
        ``[k, j, i]`` on the source grid, in slice order.
    kind : SegmentKind or str
        What the segment holds; decides its codes.
    region_code : int or None
        For ``REGION`` only: the design-doc code (1-6 WM, 11-16 GM).
    tracking_id : str or None
        TrackingID (LO), e.g. ``"Lesion 1 (reader)"``; a TrackingUID is generated with it.

    Raises
    ------
    TypeError
        For a mask that is not a boolean numpy array, or a label that is not a str.
    ValueError
        For an empty or too long label, a mask that is not 3-D, an unknown kind, or a
        region code missing for a region (or given for anything else).
    """

    label: str
    mask: NDArray[np.bool_]
    kind: SegmentKind
    region_code: int | None = None
    tracking_id: str | None = None

    def __post_init__(self) -> None:
        _check_lo("segment label", self.label)
        if not isinstance(self.mask, np.ndarray):
            raise TypeError(
                f"mask of segment {self.label!r} must be a numpy array, "
                f"got {type(self.mask).__name__}"
            )
        if self.mask.dtype != np.bool_:
            raise TypeError(
                f"mask of segment {self.label!r} must be boolean, got dtype {self.mask.dtype}"
            )
        if self.mask.ndim != 3:
            raise ValueError(
                f"mask of segment {self.label!r} must be 3-D [k, j, i], "
                f"got shape {self.mask.shape}"
            )
        try:
            object.__setattr__(self, "kind", SegmentKind(self.kind))
        except ValueError:
            allowed = ", ".join(k.value for k in SegmentKind)
            raise ValueError(
                f"unknown segment kind {self.kind!r}; expected one of {allowed}"
            ) from None
        if self.kind is SegmentKind.REGION:
            if self.region_code is None:
                raise ValueError(f"region segment {self.label!r} needs a region_code")
            codes.region_concept(self.region_code)
        elif self.region_code is not None:
            raise ValueError(
                f"segment {self.label!r} of kind {self.kind.value} must not have a region_code"
            )
        if self.tracking_id is not None:
            _check_lo("tracking_id", self.tracking_id)


def _check_mask(name: str, value: object, shape: tuple[int, ...] | None) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(value).__name__}")
    if value.ndim != 3:
        raise ValueError(f"{name} must be 3-D [k, j, i], got shape {value.shape}")
    if shape is not None and value.shape != shape:
        raise ValueError(f"{name} has shape {value.shape}, the other masks {shape}")
    return value


def _check_labels(name: str, value: np.ndarray) -> np.ndarray:
    if not np.issubdtype(value.dtype, np.integer):
        raise TypeError(f"{name} must be an integer label image, got dtype {value.dtype}")
    return value


def segment_specs(
    *,
    cord: NDArray[np.bool_] | None,
    gm: NDArray[np.bool_] | None,
    wm: NDArray[np.bool_] | None,
    region_labels: NDArray[np.integer] | None,
    lesion_labels_reader: NDArray[np.integer] | None,
    lesion_labels_candidate: NDArray[np.integer] | None,
    abnormal: NDArray[np.bool_] | None,
    z_threshold: float | None,
    lesion_ids: Mapping[tuple[str, int], int] | None = None,
) -> list[SegmentSpec]:
    """The standard list of segments of one slab, without empty masks.

    Order: spinal cord, grey matter, white matter, the regions by code (1-6, 11-16), reader
    lesions by id, lesion candidates by id, abnormal voxels. Pass None for what the exam does
    not have (e.g. ``abnormal`` without a normative model).

    Parameters
    ----------
    cord, gm, wm : numpy.ndarray of bool or None
        ``[k, j, i]`` masks of the slab.
    region_labels : numpy.ndarray of int or None
        Region code per voxel (0 outside; codes of :data:`processing.regions.REGIONS`).
    lesion_labels_reader, lesion_labels_candidate : numpy.ndarray of int or None
        Lesion id per voxel (0 = no lesion); the id appears in the segment label.
    abnormal : numpy.ndarray of bool or None
        Voxels with Z above ``z_threshold``.
    z_threshold : float or None
        Threshold used for ``abnormal`` (required with it), shown in its label.
    lesion_ids : Mapping of (source, id in the label image) to int, optional
        The exam-wide lesion id (``summary.json``'s ``lesions[].id``) of each lesion of this
        slab, keyed by ``("reader" | "candidate", label value)``; it names the segment
        (:func:`lesion_label`). A lesion missing from it is not a lesion of the report (e.g.
        an outline wholly outside the cord) and gets no segment. Default: the label value.

    Returns
    -------
    list of SegmentSpec

    Raises
    ------
    TypeError
        For masks that are not boolean or label images that are not integer arrays.
    ValueError
        For arrays of different shapes, unknown region codes, negative lesion ids, or
        ``abnormal`` without a finite ``z_threshold``.

    Examples
    --------
    >>> cord = np.zeros((2, 4, 4), dtype=bool); cord[:, 1:3, 1:3] = True
    >>> specs = segment_specs(cord=cord, gm=None, wm=np.zeros_like(cord), region_labels=None,
    ...     lesion_labels_reader=None, lesion_labels_candidate=None, abnormal=cord,
    ...     z_threshold=1.96)
    >>> [s.label for s in specs]
    ['Spinal cord', 'Abnormal voxels (Z > 1.96)']
    """
    shape: tuple[int, ...] | None = None
    tissues: list[tuple[str, SegmentKind, np.ndarray]] = []
    for name, label, kind, value in (
        ("cord", "Spinal cord", SegmentKind.CORD, cord),
        ("gm", "Grey matter", SegmentKind.GM, gm),
        ("wm", "White matter", SegmentKind.WM, wm),
    ):
        if value is None:
            continue
        value = _check_mask(name, value, shape)
        shape = value.shape
        if value.dtype != np.bool_:
            raise TypeError(f"{name} must be a boolean mask, got dtype {value.dtype}")
        tissues.append((label, kind, value))
    label_images = {}
    for name, value in (
        ("region_labels", region_labels),
        ("lesion_labels_reader", lesion_labels_reader),
        ("lesion_labels_candidate", lesion_labels_candidate),
    ):
        if value is not None:
            label_images[name] = _check_labels(name, _check_mask(name, value, shape))
            shape = value.shape
    if abnormal is not None:
        abnormal = _check_mask("abnormal", abnormal, shape)
        if abnormal.dtype != np.bool_:
            raise TypeError(f"abnormal must be a boolean mask, got dtype {abnormal.dtype}")
        if z_threshold is None or not np.isfinite(z_threshold):
            raise ValueError(f"abnormal needs a finite z_threshold, got {z_threshold!r}")

    specs = [SegmentSpec(label, m, kind) for label, kind, m in tissues if m.any()]
    regions = label_images.get("region_labels")
    if regions is not None:
        present = {int(c) for c in np.unique(regions)} - {0}
        unknown = sorted(present - set(codes.REGION_CONCEPTS))
        if unknown:
            raise ValueError(f"region_labels holds unknown region codes {unknown}")
        for code in sorted(present):
            concept = codes.region_concept(code)
            specs.append(
                SegmentSpec(concept.label, regions == code, SegmentKind.REGION, region_code=code)
            )
    for name, kind in (
        ("lesion_labels_reader", SegmentKind.LESION_READER),
        ("lesion_labels_candidate", SegmentKind.LESION_CANDIDATE),
    ):
        lesions = label_images.get(name)
        if lesions is None:
            continue
        ids = [int(i) for i in np.unique(lesions) if i != 0]
        if ids and ids[0] < 0:
            raise ValueError(f"{name} holds negative lesion ids")
        source = "reader" if kind is SegmentKind.LESION_READER else "candidate"
        for lesion_id in ids:
            number = lesion_id if lesion_ids is None else lesion_ids.get((source, lesion_id))
            if number is None:
                continue
            label = lesion_label(number, source)
            specs.append(SegmentSpec(label, lesions == lesion_id, kind, tracking_id=label))
    if abnormal is not None and abnormal.any():
        label = f"Abnormal voxels (Z > {float(z_threshold):g})"  # type: ignore[arg-type]
        specs.append(SegmentSpec(label, abnormal, SegmentKind.ABNORMAL))
    return specs


def _check_segments(segments: Sequence[SegmentSpec]) -> None:
    if isinstance(segments, SegmentSpec) or not isinstance(segments, Sequence):
        raise TypeError("segments must be a sequence of SegmentSpec")
    if len(segments) == 0:
        raise ValueError("at least one segment is required")
    seen: set[str] = set()
    for spec in segments:
        if not isinstance(spec, SegmentSpec):
            raise TypeError(f"segments holds a {type(spec).__name__}, not a SegmentSpec")
        if spec.label in seen:
            raise ValueError(f"segment label {spec.label!r} is used twice")
        seen.add(spec.label)


def segment_numbers(segments: Sequence[SegmentSpec]) -> dict[str, int]:
    """SegmentNumber of every segment label, as :func:`build_segmentation` writes them.

    Parameters
    ----------
    segments : sequence of SegmentSpec
        The list given to :func:`build_segmentation`.

    Returns
    -------
    dict of str to int
        Label -> 1-based segment number (the position in ``segments``).

    Raises
    ------
    ValueError
        For an empty list or a label used twice.
    """
    _check_segments(segments)
    return {spec.label: number for number, spec in enumerate(segments, start=1)}


def _description(
    number: int, spec: SegmentSpec, identity: ResultIdentity
) -> hd.seg.SegmentDescription:
    style = SEGMENT_STYLES[spec.kind]
    property_type = style.property_type
    rgb = style.rgb
    modifier = None
    if spec.kind is SegmentKind.REGION:
        concept = codes.region_concept(spec.region_code)  # type: ignore[arg-type]
        property_type, modifier = concept.property_type, concept.laterality
        rgb = _REGION_RGB[concept.code]
    algorithm = None
    if style.family is not None:
        algorithm = hd.AlgorithmIdentificationSequence(
            name=identity.software_name,
            family=style.family,
            version=identity.software_version,
            parameters={"step": style.step},
        )
    description = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=spec.label,
        segmented_property_category=style.category,
        segmented_property_type=property_type,  # type: ignore[arg-type]
        algorithm_type=(
            hd.seg.SegmentAlgorithmTypeValues.MANUAL
            if style.family is None
            else hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
        ),
        algorithm_identification=algorithm,
        tracking_id=spec.tracking_id,
        tracking_uid=hd.UID() if spec.tracking_id is not None else None,
        anatomic_regions=[codes.SPINAL_CORD] if style.in_cord else None,
        display_color=hd.color.CIELabColor.from_rgb(*rgb),
    )
    if modifier is not None:
        # the modifier belongs inside the property type item (PS3.3 Segment Description)
        type_item = description.SegmentedPropertyTypeCodeSequence[0]
        type_item.SegmentedPropertyTypeModifierCodeSequence = [
            hd.sr.CodedConcept.from_code(modifier)
        ]
    return description


def _source_order(slice_order: Sequence[int] | None, n_planes: int) -> np.ndarray:
    if slice_order is None:
        return np.arange(n_planes)
    if isinstance(slice_order, str | bytes) or not isinstance(slice_order, Sequence | np.ndarray):
        raise TypeError("slice_order must be a sequence of int")
    order = np.asarray(slice_order)
    if order.ndim != 1 or not np.issubdtype(order.dtype, np.integer):
        raise TypeError("slice_order must be a sequence of int")
    if order.shape[0] != n_planes or not np.array_equal(np.sort(order), np.arange(n_planes)):
        raise ValueError(
            f"slice_order must be a permutation of 0..{n_planes - 1} (one source plane per "
            f"mask slice), got {order.tolist()}"
        )
    return order


def _pixel_array(
    segments: Sequence[SegmentSpec], shape: tuple[int, int, int], order: np.ndarray
) -> np.ndarray:
    """Masks as one ``(source plane, row, column, segment)`` array in source order.

    The array is a view of a segment-major buffer: highdicom reads one segment of one plane
    at a time, which is then a contiguous block (about twice as fast as plane-major).
    """
    pixels = np.zeros((len(segments), *shape), dtype=bool)
    for index, spec in enumerate(segments):
        if spec.mask.shape != shape:
            raise ValueError(
                f"mask of segment {spec.label!r} has shape {spec.mask.shape}; the sources "
                f"have (frames, rows, columns) = {shape}"
            )
        if not spec.mask.any():
            raise ValueError(f"segment {spec.label!r} is empty; leave it out")
        pixels[index, order] = spec.mask
    return np.moveaxis(pixels, 0, -1)


def build_segmentation(
    source_images: Sequence[Dataset],
    segments: Sequence[SegmentSpec],
    *,
    series_number: int,
    identity: ResultIdentity,
    slice_order: Sequence[int] | None = None,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    series_description: str = _SERIES_DESCRIPTION,
    content_label: str = _CONTENT_LABEL,
    content_description: str = "Spinal cord segments",
) -> hd.seg.Segmentation:
    """Build a BINARY Segmentation of ``segments`` derived from one source series.

    Parameters
    ----------
    source_images : sequence of pydicom.dataset.Dataset
        The single-frame images of one series in slice order (``SeriesVolume.datasets``), or
        the one multi-frame image. Headers are enough; pixel data is never read.
    segments : sequence of SegmentSpec
        Segment ``n`` of the object is ``segments[n - 1]`` (see :func:`segment_numbers`).
        Labels must be unique; no mask may be empty.
    series_number : int
        SeriesNumber of the result series (positive).
    identity : ResultIdentity
        Manufacturer, software name/version and research-use text.
    slice_order : sequence of int, optional
        ``slice_order[k]`` is the 0-based source plane that mask slice ``k`` lies on: the
        index into ``source_images`` (single-frame), or frame number - 1 of the multi-frame
        image (for a ``SeriesVolume``: ``[frame - 1 for _, frame in volume.frame_sources]``).
        Default: the masks are already in source order.
    series_instance_uid, sop_instance_uid : str, optional
        New UIDs are generated when omitted.
    series_description : str
        SeriesDescription stem; the software name goes in front, the research-use text after.
    content_label : str
        ContentLabel (CS, upper case, at most 16 characters).
    content_description : str
        ContentDescription (LO) before the research-use text.

    Returns
    -------
    highdicom.seg.Segmentation
        Ready for ``save_as``.

    Raises
    ------
    TypeError
        For wrong argument types (sources, segments, slice order, identity).
    ValueError
        For no segments, duplicate labels, empty masks, masks whose shape differs from the
        sources, a slice order that is not a permutation, sources from several series, or
        sources without the geometry a segmentation needs.
    """
    if not isinstance(identity, ResultIdentity):
        raise TypeError(f"identity must be a ResultIdentity, got {type(identity).__name__}")
    if isinstance(series_number, bool) or not isinstance(series_number, int | np.integer):
        raise TypeError(f"series_number must be an int, got {type(series_number).__name__}")
    if series_number < 1:
        raise ValueError(f"series_number must be positive, got {series_number}")
    _check_lo("series_description", series_description)
    _check_segments(segments)
    sources, n_planes, rows, columns = prepare_sources(source_images, what="segmentation")
    order = _source_order(slice_order, n_planes)
    pixels = _pixel_array(segments, (n_planes, rows, columns), order)
    descriptions = [
        _description(number, spec, identity) for number, spec in enumerate(segments, start=1)
    ]
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=series_instance_uid or hd.UID(),
        series_number=int(series_number),
        sop_instance_uid=sop_instance_uid or hd.UID(),
        instance_number=1,
        **identity.device_arguments(),
        content_label=content_label,
        content_description=_check_lo("content_description", content_description),
        omit_empty_frames=True,
    )
    seg.ContentQualification = identity.content_qualification
    seg.BodyPartExamined = body_part_examined(sources[0])
    seg.SeriesDescription = f"{identity.software_name} {series_description}"
    apply_identity(seg, identity)
    return seg


def segmentation_header(
    source_images: Sequence[Dataset],
    segments: Sequence[SegmentSpec],
    *,
    series_instance_uid: str,
    sop_instance_uid: str,
) -> Dataset:
    """What a report reads of the SEG that :func:`build_segmentation` makes with these UIDs.

    SOP class, study, series and instance UIDs, the source series (ReferencedSeriesSequence)
    and the segments' numbers and labels: enough to reference its segments and list it as
    evidence while the SEG itself is still being written (in another process).

    Raises
    ------
    ValueError
        For no segments, duplicate or invalid labels, sources of several series, or empty
        UIDs.
    """
    _check_segments(segments)
    series = {str(ds.SeriesInstanceUID) for ds in source_images}
    if len(series) != 1:
        raise ValueError(f"the sources must be one series, got {len(series)}")
    head = instance_header(
        source_images[0],
        sop_class_uid=SegmentationStorage,
        series_instance_uid=series_instance_uid,
        sop_instance_uid=sop_instance_uid,
    )
    referenced = Dataset()
    referenced.SeriesInstanceUID = series.pop()
    head.ReferencedSeriesSequence = [referenced]
    items = []
    for number, spec in enumerate(segments, start=1):
        item = Dataset()
        item.SegmentNumber = number
        item.SegmentLabel = spec.label
        items.append(item)
    head.SegmentSequence = items
    return head
