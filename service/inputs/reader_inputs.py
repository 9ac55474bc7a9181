"""What readers give with an exam: lesion outlines and cord/GM/WM masks, from the exam's SEG
instances or (offline) NIfTI files, matched to the slabs."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
from numpy.typing import NDArray

from dicom_node.components import Component
from service.inputs.exam import ExamError, ExamSeries, Slab
from service.inputs.reader_lesions import (
    ReaderLesionError,
    SegmentKind,
    lesion_labels,
    lesions_from_nifti,
    read_seg,
)
from service.inputs.reader_masks import (
    GivenMasks,
    mask_from_nifti,
    mask_kind_of_file,
    masks_from_seg,
)
from service.inputs.volumes import SeriesVolume

__all__ = [
    "ReaderInput",
    "reader_input_from_exam",
    "reader_lesions_from_files",
    "reader_masks_from_files",
]


@dataclass
class ReaderInput:
    """What readers sent with the exam or gave offline, per slab (None: nothing given)."""

    lesions: list[NDArray[np.int32]] | None = None
    masks: list[GivenMasks | None] = field(default_factory=list)


def reader_input_from_exam(exam: ExamSeries, slabs: list[Slab]) -> ReaderInput:
    """Lesions and cord/GM/WM masks outlined by readers and sent as DICOM SEG with the exam.

    Lesions of several SEGs are merged per slab (ids offset); masks of one kind are united.
    ``lesions`` is None when no SEG holds a lesion segment.
    """
    files = [path for paths in exam.series(Component.SEG).values() for path in paths]
    found = ReaderInput(masks=[None] * len(slabs))
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


def reader_lesions_from_files(files: list[Path], slabs: list[Slab]) -> list[NDArray[np.int32]]:
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


def reader_masks_from_files(files: list[Path], slabs: list[Slab]) -> list[GivenMasks | None]:
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
