"""Reader (radiologist) segmentations: a SEG's frames placed on the slabs, and its lesions as
integer label images on each slab's grid.

Readers outline MS lesions (and possibly the cord, GM or WM:
:mod:`service.inputs.reader_masks`) and
send them as a DICOM Segmentation (SEG) that references the exam's images, or offline as
NIfTI. Lesions become ``int32`` label images indexed ``[k, j, i]`` on the grid of a
:class:`~service.inputs.volumes.SeriesVolume` (docs/CONVENTIONS.md), with 0 = background and lesion
ids 1..N.

What a segment is (:func:`segment_kind`): spinal cord, grey matter, white matter or lesion,
decided by its SegmentedPropertyTypeCodeSequence first, then by the words of its
SegmentLabel / SegmentDescription; anything else is a lesion (see :data:`TISSUE_CODES`).

SEG rules (:func:`read_seg`, :func:`lesions_from_seg`):

- Only Segmentation Storage (BINARY or FRACTIONAL) is read; a FRACTIONAL pixel counts as lesion
  when ``value / MaximumFractionalValue >= FRACTIONAL_THRESHOLD`` (0.5).
- Lesion segments sorted by SegmentNumber become lesion ids 1..N (the k-th lesion segment is
  lesion k). Where they overlap, the later segment (higher SegmentNumber) wins. Cord, GM and
  WM segments are never lesions; a SEG holding only those gives empty label images.
- A frame is placed on a slice through its DerivationImageSequence/SourceImageSequence
  (ReferencedSOPInstanceUID, plus ReferencedFrameNumber for multi-frame sources). A frame
  without source references is placed by geometry: same FrameOfReferenceUID (when both are
  known), orientation within ``ORIENTATION_TOL``, pixel spacing within ``SPACING_RTOL``, and
  ImagePositionPatient within ``POSITION_TOL_MM`` of a slice position.
- Empty frames that match no slice are ignored; a frame holding pixels (of any segment) that
  matches no slice is an error, so no outlined voxel is silently dropped.
- Every instance the SEG references (Referenced Series Sequence and per-frame references) must
  belong to one of the given volumes.

Error messages name UIDs only, never patient data.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from enum import StrEnum

import nibabel as nib
import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from scipy import ndimage

from service.inputs.nifti import from_nifti
from service.inputs.volumes import SeriesVolume

__all__ = [
    "FRACTIONAL_THRESHOLD",
    "LESION_CATEGORY_CODES",
    "LESION_CODES",
    "ORIENTATION_TOL",
    "POSITION_TOL_MM",
    "SEGMENTATION_STORAGE",
    "SPACING_RTOL",
    "TISSUE_CODES",
    "ReaderLesionError",
    "ReaderSeg",
    "SegmentKind",
    "integer_nifti_on_grid",
    "kind_from_text",
    "lesion_labels",
    "lesions_from_nifti",
    "lesions_from_seg",
    "read_seg",
    "segment_kind",
]

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
FRACTIONAL_THRESHOLD = 0.5
ORIENTATION_TOL = 1e-4
SPACING_RTOL = 1e-3
POSITION_TOL_MM = 0.05
_LABEL_MAP_STORAGE = "1.2.840.10008.5.1.4.1.1.66.7"
_INT32_MAX = int(np.iinfo(np.int32).max)


class ReaderLesionError(ValueError):
    """A reader mask (lesion, cord, GM or WM) cannot be used; the message says why in terms a
    user can act on."""


class SegmentKind(StrEnum):
    """What a reader's segment outlines."""

    CORD = "cord"
    GM = "gm"
    WM = "wm"
    LESION = "lesion"


#: Segmented property types read as tissue, (scheme, code) -> kind. All checked against DICOM
#: PS3.16 2024 as shipped in pydicom 3.0.2 (``pydicom.sr._concepts_dict``):
#:
#: - SCT 2748008 "Spinal cord", SCT 12958003 "Spinal cord gray matter" and SCT 27088001
#:   "Spinal cord white matter" (CID 7151, 7153 "CNS Segmentation Types", 7192): the codes our
#:   own SEG writer uses (reports/codes.py), so what we write could be read back;
#: - SCT 389081007 "Gray Matter" and SCT 389080008 "White Matter" (CID 7151, 7153, 7192): the
#:   generic CNS tissue codes a workstation offers when it has no spinal-cord-specific one.
#:
#: Not accepted: brain codes (SCT 68523003 "Cerebral White Matter", SCT 33060004 "Cerebellar
#: White Matter", SCT 40146001 "Cerebral Gray Matter"), which cannot describe a cord slab.
#: Legacy SRT codes (before SNOMED CT) fall through to the label text.
TISSUE_CODES: dict[tuple[str, str], SegmentKind] = {
    ("SCT", "2748008"): SegmentKind.CORD,
    ("SCT", "12958003"): SegmentKind.GM,
    ("SCT", "389081007"): SegmentKind.GM,
    ("SCT", "27088001"): SegmentKind.WM,
    ("SCT", "389080008"): SegmentKind.WM,
}
#: Property types that are lesions whatever the label says ("WM lesion" stays a lesion): the
#: lesion types of CID 7159 "Lesion Segmentation Types" that MS lesions are drawn as: SCT
#: 52988006 "Lesion" (also CID 7151, what our writer uses), NCIt C113842 "Enhancing Lesion",
#: NCIt C81175 "Non-Enhancing Lesion", SCT 79654002 "Edema", SCT 409774005 "Inflammation".
#: SCT 24700007 is in no PS3.16 context group (checked), so it is not listed; a segment coded
#: with it, like any other unknown code without tissue words in its label, is a lesion anyway.
LESION_CODES: frozenset[tuple[str, str]] = frozenset(
    {
        ("SCT", "52988006"),
        ("NCIt", "C113842"),
        ("NCIt", "C81175"),
        ("SCT", "79654002"),
        ("SCT", "409774005"),
    }
)
#: Segmented property categories that make a segment a lesion: SCT 49755003 "Morphologically
#: Abnormal Structure" (CID 7150).
LESION_CATEGORY_CODES: frozenset[tuple[str, str]] = frozenset({("SCT", "49755003")})

_LESION_WORDS = re.compile(r"^(lesions?|plaques?|demyelinat\w*|ms|candidates?)$")
_TISSUE_WORDS: tuple[tuple[SegmentKind, re.Pattern[str]], ...] = (
    (SegmentKind.GM, re.compile(r"\b(gm|gr[ae]y ?matter|gr[ae]ymatter)\b")),
    (SegmentKind.WM, re.compile(r"\b(wm|white ?matter|whitematter)\b")),
    (SegmentKind.CORD, re.compile(r"\b(cord|spinal ?cord|spinalcord)\b")),
)


def kind_from_text(text: str) -> SegmentKind | None:
    """The tissue or lesion a label, description or file name names, or None.

    Case and separators do not matter (``"Spinal_Cord"``, ``"slab1-gm"``, ``"GreyMatter"``).
    A lesion word ("lesion", "plaque", "demyelination", "MS", "candidate") makes it a lesion
    whatever else it says; GM or WM wins over "cord" ("spinal cord grey matter" is GM).

    Raises
    ------
    ReaderLesionError
        If the text names both grey and white matter (e.g. ``"GM/WM"``): that cannot be used
        as either.

    Examples
    --------
    >>> [kind_from_text(t) for t in ("SpinalCord", "slab1_gm", "WM lesion 2", "CSF")]
    [<SegmentKind.CORD: 'cord'>, <SegmentKind.GM: 'gm'>, <SegmentKind.LESION: 'lesion'>, None]
    """
    spaced = re.sub(r"([a-z])([A-Z])", r"\1 \2", text)
    words = re.sub(r"[^a-z0-9]+", " ", spaced.lower()).split()
    if any(_LESION_WORDS.match(word) for word in words):
        return SegmentKind.LESION
    joined = " ".join(words)
    found = [kind for kind, pattern in _TISSUE_WORDS if pattern.search(joined)]
    if SegmentKind.GM in found and SegmentKind.WM in found:
        raise ReaderLesionError(
            f"{text!r} names both grey and white matter: outline them as separate segments"
        )
    return found[0] if found else None


def _codes(item: Dataset, keyword: str) -> set[tuple[str, str]]:
    return {
        (str(code.get("CodingSchemeDesignator", "")), str(code.get("CodeValue", "")))
        for code in item.get(keyword) or []
    }


def segment_kind(item: Dataset) -> SegmentKind:
    """What one item of a SEG's SegmentSequence outlines.

    The property type code decides first (:data:`TISSUE_CODES`, :data:`LESION_CODES`,
    :data:`LESION_CATEGORY_CODES`); otherwise the words of SegmentLabel, then of
    SegmentDescription (:func:`kind_from_text`); otherwise it is a lesion, as every segment
    of a reader SEG was before tissue outlines were accepted.

    Raises
    ------
    ReaderLesionError
        If the segment's label or description names both grey and white matter.
    """
    types = _codes(item, "SegmentedPropertyTypeCodeSequence")
    tissues = {TISSUE_CODES[code] for code in types if code in TISSUE_CODES}
    if len(tissues) == 1:
        return tissues.pop()
    if types & LESION_CODES or _codes(item, "SegmentedPropertyCategoryCodeSequence") & (
        LESION_CATEGORY_CODES
    ):
        return SegmentKind.LESION
    for keyword in ("SegmentLabel", "SegmentDescription"):
        try:
            kind = kind_from_text(str(item.get(keyword) or ""))
        except ReaderLesionError as exc:
            raise ReaderLesionError(
                f"segment {item.get('SegmentNumber', '?')}: {exc}; or code it with "
                "SegmentedPropertyTypeCodeSequence"
            ) from exc
        if kind is not None:
            return kind
    return SegmentKind.LESION


@dataclass(frozen=True)
class _Frame:
    """What a SEG frame says about itself (1-based ``number``)."""

    number: int
    segment_number: int
    references: tuple[tuple[str, int | None], ...]
    position_mm: NDArray[np.float64] | None
    orientation: NDArray[np.float64] | None
    spacing_mm: NDArray[np.float64] | None


@dataclass(frozen=True)
class _Grid:
    """Geometry of one volume, prepared for matching SEG frames."""

    shape: tuple[int, int, int]
    origin_mm: NDArray[np.float64]
    step_mm: NDArray[np.float64]
    orientation: NDArray[np.float64]
    spacing_mm: NDArray[np.float64]
    frame_of_reference_uid: str | None

    @classmethod
    def of(cls, volume: SeriesVolume) -> _Grid:
        affine = volume.affine_lps
        n_slices, rows, columns = volume.array.shape
        col_step, row_step = affine[:3, 1], affine[:3, 2]
        row_mm, col_mm = float(np.linalg.norm(col_step)), float(np.linalg.norm(row_step))
        return cls(
            shape=(int(n_slices), int(rows), int(columns)),
            origin_mm=affine[:3, 3],
            step_mm=affine[:3, 0],
            orientation=np.concatenate([row_step / col_mm, col_step / row_mm]),
            spacing_mm=np.array([row_mm, col_mm]),
            frame_of_reference_uid=volume.frame_of_reference_uid,
        )

    def slice_at(self, frame: _Frame, frame_of_reference_uid: str | None) -> int | None:
        """Index k of the slice ``frame`` lies on, or None."""
        if frame.position_mm is None or frame.orientation is None or frame.spacing_mm is None:
            return None
        if (
            frame_of_reference_uid
            and self.frame_of_reference_uid
            and frame_of_reference_uid != self.frame_of_reference_uid
        ):
            return None
        if np.max(np.abs(frame.orientation - self.orientation)) > ORIENTATION_TOL:
            return None
        if not np.allclose(frame.spacing_mm, self.spacing_mm, rtol=SPACING_RTOL, atol=0):
            return None
        offset = frame.position_mm - self.origin_mm
        k = round(float(np.dot(offset, self.step_mm) / np.dot(self.step_mm, self.step_mm)))
        if not 0 <= k < self.shape[0]:
            return None
        if np.linalg.norm(offset - k * self.step_mm) > POSITION_TOL_MM:
            return None
        return k


def _item(ds: Dataset, keyword: str) -> Dataset | None:
    sequence = ds.get(keyword)
    return sequence[0] if sequence else None


def _group(frame: Dataset, shared: Dataset | None, keyword: str) -> Dataset | None:
    item = _item(frame, keyword)
    if item is None and shared is not None:
        item = _item(shared, keyword)
    return item


def _floats(item: Dataset | None, keyword: str) -> NDArray[np.float64] | None:
    if item is None or not item.get(keyword):
        return None
    return np.asarray([float(v) for v in item.get(keyword)], dtype=float)


def _frame_references(frame: Dataset) -> tuple[tuple[str, int | None], ...]:
    references: list[tuple[str, int | None]] = []
    for derivation in frame.get("DerivationImageSequence") or []:
        for source in derivation.get("SourceImageSequence") or []:
            uid = str(source.get("ReferencedSOPInstanceUID") or "")
            if not uid:
                continue
            numbers = source.get("ReferencedFrameNumber")
            if numbers is None or numbers == "":
                references.append((uid, None))
            elif isinstance(numbers, MultiValue | list | tuple):
                references.extend((uid, int(n)) for n in numbers)
            else:
                references.append((uid, int(numbers)))
    return tuple(references)


def _frames(seg: Dataset, seg_uid: str) -> list[_Frame]:
    per_frame = seg.get("PerFrameFunctionalGroupsSequence")
    n_frames = int(seg.get("NumberOfFrames") or 1)
    if not per_frame or len(per_frame) != n_frames:
        raise ReaderLesionError(
            f"reader SEG {seg_uid}: {len(per_frame or [])} per-frame functional groups for "
            f"{n_frames} frames (tiled or incomplete SEGs are not supported)"
        )
    shared = _item(seg, "SharedFunctionalGroupsSequence")
    frames = []
    for number, item in enumerate(per_frame, start=1):
        identification = _group(item, shared, "SegmentIdentificationSequence")
        if identification is None or "ReferencedSegmentNumber" not in identification:
            raise ReaderLesionError(f"reader SEG {seg_uid}: frame {number} names no segment")
        frames.append(
            _Frame(
                number=number,
                segment_number=int(identification.ReferencedSegmentNumber),
                references=_frame_references(item),
                position_mm=_floats(
                    _group(item, shared, "PlanePositionSequence"), "ImagePositionPatient"
                ),
                orientation=_floats(
                    _group(item, shared, "PlaneOrientationSequence"), "ImageOrientationPatient"
                ),
                spacing_mm=_floats(_group(item, shared, "PixelMeasuresSequence"), "PixelSpacing"),
            )
        )
    return frames


def _segments(seg: Dataset, seg_uid: str) -> dict[int, SegmentKind]:
    items = list(seg.get("SegmentSequence") or [])
    numbers = [int(item.SegmentNumber) for item in items]
    if not numbers:
        raise ReaderLesionError(f"reader SEG {seg_uid} has no segments")
    if len(set(numbers)) != len(numbers):
        raise ReaderLesionError(f"reader SEG {seg_uid} repeats segment numbers {numbers}")
    try:
        return {number: segment_kind(item) for number, item in zip(numbers, items, strict=True)}
    except ReaderLesionError as exc:
        raise ReaderLesionError(f"reader SEG {seg_uid}: {exc}") from exc


def _masks(seg: Dataset, seg_uid: str, n_frames: int) -> NDArray[np.bool_]:
    seg_type = str(seg.get("SegmentationType", "")).upper()
    if seg_type not in ("BINARY", "FRACTIONAL"):
        raise ReaderLesionError(
            f"reader SEG {seg_uid}: SegmentationType {seg_type or '(missing)'} is not "
            "supported (BINARY or FRACTIONAL)"
        )
    try:
        pixels = np.asarray(seg.pixel_array)
    except (AttributeError, ValueError, RuntimeError, NotImplementedError) as exc:
        raise ReaderLesionError(f"reader SEG {seg_uid}: pixel data cannot be read: {exc}") from exc
    rows, columns = int(seg.Rows), int(seg.Columns)
    pixels = pixels.reshape((n_frames, rows, columns))
    if seg_type == "BINARY":
        return pixels > 0
    maximum = int(seg.get("MaximumFractionalValue") or 0)
    if maximum <= 0:
        raise ReaderLesionError(f"reader SEG {seg_uid}: FRACTIONAL without MaximumFractionalValue")
    return pixels.astype(np.float64) / maximum >= FRACTIONAL_THRESHOLD


def _referenced_instances(seg: Dataset) -> set[str]:
    uids = set()
    for series in seg.get("ReferencedSeriesSequence") or []:
        for instance in series.get("ReferencedInstanceSequence") or []:
            uid = instance.get("ReferencedSOPInstanceUID")
            if uid:
                uids.add(str(uid))
    return uids


def _check_volumes(volumes: Sequence[SeriesVolume]) -> None:
    if isinstance(volumes, SeriesVolume) or not isinstance(volumes, Sequence):
        raise TypeError("volumes must be a sequence of SeriesVolume (one per slab)")
    if not volumes:
        raise ValueError("volumes is empty: give the reference volume of every slab")
    for volume in volumes:
        if not isinstance(volume, SeriesVolume):
            raise TypeError(f"volumes holds a {type(volume).__name__}, not a SeriesVolume")


def _check_seg(seg: Dataset) -> str:
    if not isinstance(seg, Dataset):
        raise TypeError(f"seg must be a pydicom Dataset, got {type(seg).__name__}")
    seg_uid = str(seg.get("SOPInstanceUID") or "(no SOPInstanceUID)")
    sop_class = str(seg.get("SOPClassUID") or "")
    if sop_class == _LABEL_MAP_STORAGE:
        raise ReaderLesionError(
            f"reader SEG {seg_uid} is a Label Map Segmentation; send BINARY or FRACTIONAL"
        )
    if sop_class != SEGMENTATION_STORAGE:
        raise ReaderLesionError(
            f"instance {seg_uid} is not a Segmentation (SOP class {sop_class or 'missing'})"
        )
    return seg_uid


def _check_study(seg: Dataset, seg_uid: str, volumes: Sequence[SeriesVolume]) -> None:
    exam_studies = {
        str(ds.StudyInstanceUID)
        for volume in volumes
        for ds in volume.datasets[:1]
        if ds.get("StudyInstanceUID")
    }
    seg_study = str(seg.get("StudyInstanceUID") or "")
    if exam_studies and seg_study not in exam_studies:
        raise ReaderLesionError(
            f"reader SEG {seg_uid} references images of another exam (study "
            f"{seg_study or 'missing'}; this exam is study {', '.join(sorted(exam_studies))})"
        )


def _unknown_error(seg_uid: str, unknown: Sequence[str], where: str) -> ReaderLesionError:
    return ReaderLesionError(
        f"reader SEG {seg_uid} references {len(unknown)} image(s) not in the exam "
        f"({where}, e.g. SOP instance {sorted(unknown)[0]}); the SEG must be drawn on this "
        "exam's slab series"
    )


def _size_error(
    seg_uid: str, rows: int, columns: int, volumes: Sequence[SeriesVolume]
) -> ReaderLesionError:
    sizes = ", ".join(
        f"series {v.series_uid}: {v.array.shape[1]}x{v.array.shape[2]}" for v in volumes
    )
    return ReaderLesionError(
        f"reader SEG {seg_uid} frames are {rows}x{columns} pixels (rows x columns) but the "
        f"slabs are {sizes}"
    )


class _Placer:
    """Find the (volume index, slice index) of SEG frames."""

    def __init__(self, seg: Dataset, seg_uid: str, volumes: Sequence[SeriesVolume]) -> None:
        self.seg_uid = seg_uid
        self.volumes = volumes
        self.grids = [_Grid.of(v) for v in volumes]
        self.rows, self.columns = int(seg.Rows), int(seg.Columns)
        self.frame_of_reference_uid = str(seg.get("FrameOfReferenceUID") or "") or None
        self.by_frame: dict[tuple[str, int | None], tuple[int, int]] = {}
        self.instance_volume: dict[str, int] = {}
        for v, volume in enumerate(volumes):
            for k, (uid, number) in enumerate(volume.frame_sources):
                self.by_frame[(uid, number)] = (v, k)
                self.instance_volume[uid] = v
            for ds in volume.datasets:
                self.instance_volume.setdefault(str(ds.get("SOPInstanceUID", "")), v)

    def _check_size(self, v: int) -> None:
        shape = self.volumes[v].array.shape
        if (shape[1], shape[2]) != (self.rows, self.columns):
            raise _size_error(self.seg_uid, self.rows, self.columns, [self.volumes[v]])

    def by_reference(self, frame: _Frame) -> tuple[int, int] | None:
        known = [ref for ref in frame.references if ref[0] in self.instance_volume]
        if not known:
            unknown = [uid for uid, _ in frame.references]
            raise _unknown_error(self.seg_uid, unknown, f"frame {frame.number}")
        for uid, number in known:
            v = self.instance_volume[uid]
            self._check_size(v)
            if (uid, number) in self.by_frame:
                return self.by_frame[(uid, number)]
            if number == 1 and (uid, None) in self.by_frame:  # frame 1 of a single-frame image
                return self.by_frame[(uid, None)]
            if number is None:  # whole multi-frame instance: the position picks the frame
                k = self.grids[v].slice_at(frame, self.frame_of_reference_uid)
                if k is not None:
                    return v, k
        return None

    def by_geometry(self, frame: _Frame) -> tuple[int, int] | None:
        for v, grid in enumerate(self.grids):
            if grid.shape[1:] != (self.rows, self.columns):
                continue
            k = grid.slice_at(frame, self.frame_of_reference_uid)
            if k is not None:
                return v, k
        return None

    def place(self, frame: _Frame) -> tuple[int, int] | None:
        if frame.references:
            return self.by_reference(frame)
        if not any(g.shape[1:] == (self.rows, self.columns) for g in self.grids):
            raise _size_error(self.seg_uid, self.rows, self.columns, self.volumes)
        return self.by_geometry(frame)


@dataclass(frozen=True)
class ReaderSeg:
    """A reader SEG, checked, with every frame that holds pixels placed on a slab slice.

    Attributes
    ----------
    uid : str
        SOPInstanceUID of the SEG.
    kinds : dict of int to SegmentKind
        SegmentNumber -> what the segment outlines.
    shapes : tuple of tuple of int
        ``[k, j, i]`` shape of each volume, in the order the volumes were given.
    placed : tuple
        ``(segment number, volume index, slice index, mask [j, i])`` per placed frame, in
        frame order.
    """

    uid: str
    kinds: dict[int, SegmentKind]
    shapes: tuple[tuple[int, int, int], ...]
    placed: tuple[tuple[int, int, int, NDArray[np.bool_]], ...]

    def numbers(self, kind: SegmentKind) -> list[int]:
        """Segment numbers of one kind, ascending."""
        return sorted(number for number, k in self.kinds.items() if k == kind)

    def union(self, numbers: Collection[int]) -> list[NDArray[np.bool_]]:
        """One mask per volume: the voxels of any of the segments ``numbers``."""
        wanted = set(numbers)
        masks = [np.zeros(shape, dtype=bool) for shape in self.shapes]
        for number, v, k, mask in self.placed:
            if number in wanted:
                masks[v][k] |= mask
        return masks


def read_seg(seg: Dataset, volumes: Sequence[SeriesVolume]) -> ReaderSeg:
    """Check a reader's Segmentation, classify its segments and place its frames on the slabs.

    Parameters
    ----------
    seg : pydicom.dataset.Dataset
        Segmentation Storage instance (BINARY or FRACTIONAL), with pixel data.
    volumes : sequence of SeriesVolume
        The volume of every slab the SEG may refer to (usually ``Slab.reference``).

    Returns
    -------
    ReaderSeg

    Raises
    ------
    ReaderLesionError
        If the instance is not a BINARY/FRACTIONAL SEG, belongs to another study, references
        images that are in none of ``volumes``, has frames of another size than the slab it
        refers to, has no frame matching a slice of any slab, has a frame with pixels that
        matches no slice, or a segment naming both grey and white matter.
    TypeError
        If ``seg`` is not a Dataset or ``volumes`` not a sequence of SeriesVolume.
    ValueError
        If ``volumes`` is empty.
    """
    seg_uid = _check_seg(seg)
    _check_volumes(volumes)
    _check_study(seg, seg_uid, volumes)
    placer = _Placer(seg, seg_uid, volumes)
    unknown = _referenced_instances(seg) - set(placer.instance_volume)
    if unknown:
        raise _unknown_error(seg_uid, sorted(unknown), "Referenced Series Sequence")
    kinds = _segments(seg, seg_uid)
    frames = _frames(seg, seg_uid)
    for frame in frames:
        if frame.segment_number not in kinds:
            raise ReaderLesionError(
                f"reader SEG {seg_uid}: frame {frame.number} refers to segment "
                f"{frame.segment_number}, which the SEG does not describe"
            )
    masks = _masks(seg, seg_uid, len(frames))
    places = [placer.place(frame) for frame in frames]
    if all(place is None for place in places):
        raise ReaderLesionError(
            f"reader SEG {seg_uid}: none of its {len(frames)} frames matches a slice of any "
            f"of the {len(volumes)} slab(s) (orientation, pixel spacing or position differ)"
        )
    placed = []
    for frame, place in zip(frames, places, strict=True):
        mask = masks[frame.number - 1]
        if place is None and mask.any():
            where = (
                "at LPS " + ", ".join(f"{x:.2f}" for x in frame.position_mm) + " mm"
                if frame.position_mm is not None
                else "without a position"
            )
            raise ReaderLesionError(
                f"reader SEG {seg_uid}: frame {frame.number} (segment {frame.segment_number}) "
                f"{where} holds outlined pixels but lies on no slice of any slab"
            )
        if place is not None and mask.any():
            placed.append((frame.segment_number, place[0], place[1], mask))
    return ReaderSeg(
        uid=seg_uid,
        kinds=kinds,
        shapes=tuple(tuple(int(n) for n in v.array.shape) for v in volumes),  # type: ignore[misc]
        placed=tuple(placed),
    )


def lesion_labels(reader_seg: ReaderSeg) -> list[NDArray[np.int32]]:
    """The lesions of a read SEG as one ``int32`` label image per volume.

    Lesion segments sorted by SegmentNumber are lesions 1..N; where they overlap, the higher
    segment number wins. Cord, GM and WM segments are left out.
    """
    lesion_ids = {
        number: lesion_id
        for lesion_id, number in enumerate(reader_seg.numbers(SegmentKind.LESION), start=1)
    }
    labels = [np.zeros(shape, dtype=np.int32) for shape in reader_seg.shapes]
    ordered = sorted(
        (
            (lesion_ids[number], order, v, k)
            for order, (number, v, k, _) in enumerate(reader_seg.placed)
            if number in lesion_ids
        ),
    )
    for lesion_id, order, v, k in ordered:
        labels[v][k][reader_seg.placed[order][3]] = lesion_id
    return labels


def lesions_from_seg(seg: Dataset, volumes: Sequence[SeriesVolume]) -> list[NDArray[np.int32]]:
    """Turn the lesion segments of a reader's Segmentation into one label image per slab.

    Parameters
    ----------
    seg : pydicom.dataset.Dataset
        Segmentation Storage instance (BINARY or FRACTIONAL), with pixel data.
    volumes : sequence of SeriesVolume
        The volume of every slab the SEG may refer to (usually ``Slab.reference``).

    Returns
    -------
    list of numpy.ndarray
        One ``int32`` array per volume, shaped like ``volume.array`` and indexed
        ``[k, j, i]``: 0 where the SEG has no lesion (all zeros for a slab the SEG does not
        cover, or a SEG of cord/GM/WM only), otherwise the lesion id. Lesion segments
        (:func:`segment_kind`) sorted by SegmentNumber are lesions 1..N; where they overlap,
        the higher segment number wins.

    Raises
    ------
    ReaderLesionError, TypeError, ValueError
        As :func:`read_seg`.
    """
    return lesion_labels(read_seg(seg, volumes))


def _describe_grid(shape: Sequence[int], affine_lps: NDArray[np.float64]) -> str:
    voxel = np.linalg.norm(affine_lps[:3, :3], axis=0)
    origin = affine_lps[:3, 3]
    return (
        f"[k, j, i] shape {tuple(int(n) for n in shape)}, voxel "
        f"{voxel[0]:.3f} x {voxel[1]:.3f} x {voxel[2]:.3f} mm, first voxel at LPS "
        f"({origin[0]:.2f}, {origin[1]:.2f}, {origin[2]:.2f}) mm"
    )


def _grid_distance_mm(
    shape: Sequence[int], affine_a: NDArray[np.float64], affine_b: NDArray[np.float64]
) -> float:
    last = np.asarray(shape) - 1
    corners = np.array(
        [[k, j, i, 1.0] for k in (0, last[0]) for j in (0, last[1]) for i in (0, last[2])]
    )
    difference = (corners @ affine_a.T - corners @ affine_b.T)[:, :3]
    return float(np.max(np.linalg.norm(difference, axis=1)))


def integer_nifti_on_grid(
    image: nib.Nifti1Image, volume: SeriesVolume, *, tol_mm: float = 0.1, what: str = "lesion"
) -> NDArray[np.int32]:
    """Read a reader's NIfTI mask on a slab's grid as ``int32`` values indexed ``[k, j, i]``.

    Parameters
    ----------
    image : nibabel.Nifti1Image
        Mask on the grid of ``volume`` (RAS affine, ``(i, j, k)`` data, as written by
        :func:`service.inputs.nifti.to_nifti`).
    volume : SeriesVolume
        The slab's reference volume.
    tol_mm : float
        Largest allowed distance (mm) between corresponding corner voxel centres of the
        NIfTI grid and the slab grid.
    what : str
        What the mask holds, for messages ("lesion", "cord", ...).

    Raises
    ------
    ReaderLesionError
        If the image is on another grid (the message names both grids) or holds negative,
        non-integer or non-finite values.
    TypeError
        If ``image`` is not a Nifti1Image or ``volume`` not a SeriesVolume.
    ValueError
        If ``tol_mm`` is negative or not finite.
    """
    if not isinstance(volume, SeriesVolume):
        raise TypeError(f"volume must be a SeriesVolume, got {type(volume).__name__}")
    if not np.isfinite(tol_mm) or tol_mm < 0:
        raise ValueError(f"tol_mm must be a finite number >= 0, got {tol_mm!r}")
    try:
        data, affine_lps = from_nifti(image)
    except ValueError as exc:
        raise ReaderLesionError(f"{what} NIfTI cannot be read: {exc}") from exc
    if (
        data.shape != volume.array.shape
        or _grid_distance_mm(data.shape, affine_lps, volume.affine_lps) > tol_mm
    ):
        nifti_grid = _describe_grid(data.shape, affine_lps)
        slab_grid = _describe_grid(volume.array.shape, volume.affine_lps)
        raise ReaderLesionError(
            f"{what} NIfTI grid ({nifti_grid}) differs from the grid of series "
            f"{volume.series_uid} ({slab_grid}) by more than {tol_mm} mm"
        )
    values = np.asarray(data)
    if not np.all(np.isfinite(values)):
        raise ReaderLesionError(f"{what} NIfTI holds non-finite values")
    if values.size and (values.min() < 0 or values.max() > _INT32_MAX):
        raise ReaderLesionError(
            f"{what} NIfTI values must be within 0..{_INT32_MAX}, got "
            f"{values.min()}..{values.max()}"
        )
    if not np.array_equal(values, np.round(values)):
        raise ReaderLesionError(
            f"{what} NIfTI holds non-integer values; send a binary or integer label mask"
        )
    return values.astype(np.int32)


def lesions_from_nifti(
    image: nib.Nifti1Image, volume: SeriesVolume, *, tol_mm: float = 0.1
) -> NDArray[np.int32]:
    """Read a reader's NIfTI lesion mask on a slab's grid as a label image.

    Parameters
    ----------
    image : nibabel.Nifti1Image
        Binary mask (values 0/1) or integer label mask (0 = background) on the grid of
        ``volume`` (RAS affine, ``(i, j, k)`` data, as written by
        :func:`service.inputs.nifti.to_nifti`).
    volume : SeriesVolume
        The slab's reference volume.
    tol_mm : float
        Largest allowed distance (mm) between corresponding corner voxel centres of the
        NIfTI grid and the slab grid.

    Returns
    -------
    numpy.ndarray
        ``int32`` labels indexed ``[k, j, i]``, shaped like ``volume.array``. A binary mask is
        split into connected components (26-connectivity in voxel space), numbered 1..N in
        ``[k, j, i]`` raster order of their first voxel; a label mask keeps its labels.

    Raises
    ------
    ReaderLesionError, TypeError, ValueError
        As :func:`integer_nifti_on_grid`.
    """
    labels = integer_nifti_on_grid(image, volume, tol_mm=tol_mm, what="lesion")
    if labels.max(initial=0) <= 1:
        components, _ = ndimage.label(labels > 0, structure=np.ones((3, 3, 3), dtype=bool))
        return components.astype(np.int32)
    return labels
