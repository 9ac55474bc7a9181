"""Cord, grey-matter and white-matter masks given with the exam, used instead of our own
segmentation (issue 4: "accept masks given with the exam instead when present").

They come as segments of a reader SEG (:func:`masks_from_seg`; which segment is what is
decided by :func:`service.inputs.reader_lesions.segment_kind`) or offline as NIfTI files named
``*cord*``, ``*gm*``, ``*wm*`` or as the Spinal Cord Toolbox names them (``*_seg``,
``*_gmseg``, ``*_wmseg``, ``*label-SC_seg``, ...; :func:`mask_kind_of_file`,
:func:`mask_from_nifti`).

How given masks replace the automatic ones on a slab (:class:`GivenMasks`):

- cord: the given cord; without it, GM | WM when both are given; otherwise automatic;
- GM: the given GM within the cord; without it, the cord minus the given WM; otherwise the
  automatic split; WM is always the cord minus GM (so GM and WM never overlap and their union
  is the cord, as in the automatic path);
- partial input: a slice counts as given for the cord when the given cord (or GM | WM) has a
  voxel on it, and for GM when the given GM (or WM) has one. Given slices use the given
  masks, the others the automatic segmentation, and the summary names those slices
  (:meth:`GivenMasks.describe`). A slab without any given voxel keeps the automatic path.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from numpy.typing import NDArray

from processing.segmentation import CordSegmentation, segmentation_with_given_cord
from service.inputs.reader_lesions import (
    ReaderLesionError,
    ReaderSeg,
    SegmentKind,
    integer_nifti_on_grid,
    kind_from_text,
)
from service.inputs.volumes import SeriesVolume

__all__ = [
    "TISSUE_KINDS",
    "GivenMasks",
    "mask_from_nifti",
    "mask_kind_of_file",
    "masks_from_seg",
]

BoolArray = NDArray[np.bool_]

#: The tissue kinds, in the order the summary names them.
TISSUE_KINDS: tuple[SegmentKind, ...] = (SegmentKind.CORD, SegmentKind.GM, SegmentKind.WM)


def _slices(mask: BoolArray) -> BoolArray:
    return mask.any(axis=(1, 2))


@dataclass(frozen=True)
class GivenMasks:
    """Tissue masks given for one slab (``[k, j, i]``, bool), each None when not given.

    Attributes
    ----------
    cord, gm, wm : ndarray of bool or None
        The given masks, on the slab's reference grid.
    origin : str
        Where they came from, e.g. ``"reader SEG"`` or ``"reader NIfTI"``.
    ids : tuple of str
        SOP instance UIDs of the SEGs or names of the files.
    """

    cord: BoolArray | None = None
    gm: BoolArray | None = None
    wm: BoolArray | None = None
    origin: str = "reader SEG"
    ids: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        given = [m for m in (self.cord, self.gm, self.wm) if m is not None]
        if not given:
            raise ValueError("GivenMasks needs at least one of cord, gm, wm")
        for mask in given:
            if not isinstance(mask, np.ndarray) or mask.dtype != bool or mask.ndim != 3:
                raise TypeError("given masks must be 3-D boolean numpy arrays [k, j, i]")
            if mask.shape != given[0].shape:
                raise ValueError(f"given masks differ in shape: {mask.shape} vs {given[0].shape}")

    @property
    def shape(self) -> tuple[int, ...]:
        """``[k, j, i]`` shape of the masks."""
        return next(m for m in (self.cord, self.gm, self.wm) if m is not None).shape

    @property
    def kinds(self) -> tuple[str, ...]:
        """Names of the given masks, in cord, gm, wm order."""
        return tuple(
            str(kind)
            for kind, mask in zip(TISSUE_KINDS, (self.cord, self.gm, self.wm), strict=True)
            if mask is not None
        )

    def merged(self, other: GivenMasks) -> GivenMasks:
        """Both sets together: masks of one kind united, ids appended."""
        if other.shape != self.shape:
            raise ValueError(f"given masks differ in shape: {other.shape} vs {self.shape}")

        def union(a: BoolArray | None, b: BoolArray | None) -> BoolArray | None:
            return b if a is None else a if b is None else a | b

        return GivenMasks(
            cord=union(self.cord, other.cord),
            gm=union(self.gm, other.gm),
            wm=union(self.wm, other.wm),
            origin=self.origin,
            ids=self.ids + tuple(i for i in other.ids if i not in self.ids),
        )

    def whole_cord(self) -> BoolArray | None:
        """The given cord, or GM | WM when both are given; None otherwise."""
        if self.cord is not None:
            return self.cord
        if self.gm is not None and self.wm is not None:
            return self.gm | self.wm
        return None

    def cord_slices(self) -> BoolArray:
        """Per slice: the cord is given there."""
        cord = self.whole_cord()
        return _slices(cord) if cord is not None else np.zeros(self.shape[0], dtype=bool)

    def grey_matter_slices(self) -> BoolArray:
        """Per slice: GM is given there (directly, or as the cord minus the given WM)."""
        out = np.zeros(self.shape[0], dtype=bool)
        for mask in (self.gm, self.wm):
            if mask is not None:
                out |= _slices(mask)
        return out

    def cord_segmentation(self, automatic: Callable[[], CordSegmentation]) -> CordSegmentation:
        """The slab's cord segmentation; ``automatic()`` runs only if some slice lacks cord."""
        cord = self.whole_cord()
        if cord is None:
            return automatic()
        needs_automatic = not _slices(cord).all()
        return segmentation_with_given_cord(cord, automatic() if needs_automatic else None)

    def grey_matter(self, cord: BoolArray) -> tuple[BoolArray, BoolArray] | None:
        """GM within ``cord`` on the slices it is given, and which slices those are.

        None when neither GM nor WM is given.
        """
        if self.gm is None and self.wm is None:
            return None
        slices = self.grey_matter_slices() & _slices(cord)
        gm = cord & self.gm if self.gm is not None else cord & ~self.wm  # type: ignore[operator]
        gm = gm & slices[:, None, None]
        return gm, slices

    def covers_grey_matter(self, cord: BoolArray) -> bool:
        """GM is given on every slice that has cord (no automatic split needed)."""
        found = _slices(cord)
        return bool(
            (self.gm is not None or self.wm is not None)
            and not np.any(found & ~self.grey_matter_slices())
        )

    def describe(self) -> str:
        """``slabs[].segmentation_source``: e.g. ``"reader SEG 1.2.3 (cord, gm, wm)"``.

        Slices left to the automatic segmentation are appended: ``"; automatic on slice(s)
        k = 4, 5"`` (``k`` is the slab's slice index, from 0).
        """
        text = f"{self.origin} {', '.join(self.ids)} ({', '.join(self.kinds)})"
        automatic = ~self.cord_slices()
        if self.gm is not None or self.wm is not None:
            automatic |= ~self.grey_matter_slices()
        if automatic.any():
            text += "; automatic on slice(s) k = " + ", ".join(
                str(int(k)) for k in np.flatnonzero(automatic)
            )
        return text


def masks_from_seg(reader_seg: ReaderSeg) -> list[GivenMasks | None]:
    """The cord, GM and WM segments of a read reader SEG, one entry per volume.

    Segments of one kind are united. A volume on which the SEG outlines no tissue gets None.
    """
    unions = {
        kind: reader_seg.union(numbers)
        for kind in TISSUE_KINDS
        if (numbers := reader_seg.numbers(kind))
    }
    out: list[GivenMasks | None] = []
    for v in range(len(reader_seg.shapes)):
        masks = {str(kind): union[v] for kind, union in unions.items() if union[v].any()}
        out.append(
            GivenMasks(**masks, origin="reader SEG", ids=(reader_seg.uid,)) if masks else None
        )
    return out


#: The Spinal Cord Toolbox's output names: ``sub-01_T2star_gmseg``, ``..._label-GM_seg``, and
#: the ``-manual`` corrections of spine-generic style datasets (``..._gmseg-manual``).
_MANUAL = r"(-manual)?$"
_SCT_NAMES: tuple[tuple[re.Pattern[str], SegmentKind], ...] = (
    (re.compile(r"(^|[_-])label-SC_seg" + _MANUAL, re.IGNORECASE), SegmentKind.CORD),
    (re.compile(r"(^|[_-])label-GM_seg" + _MANUAL, re.IGNORECASE), SegmentKind.GM),
    (re.compile(r"(^|[_-])label-WM_seg" + _MANUAL, re.IGNORECASE), SegmentKind.WM),
    (re.compile(r"(^|[_-])gmseg" + _MANUAL, re.IGNORECASE), SegmentKind.GM),
    (re.compile(r"(^|[_-])wmseg" + _MANUAL, re.IGNORECASE), SegmentKind.WM),
)
_SCT_CORD = re.compile(r"(^|[_-])seg" + _MANUAL, re.IGNORECASE)


def mask_kind_of_file(path: Path) -> SegmentKind:
    """Cord, GM or WM, from a NIfTI file's name.

    Our names (``slab1_cord.nii.gz``, ``sub-01_gm.nii``) and the Spinal Cord Toolbox's:
    ``*_gmseg`` / ``*label-GM_seg`` (GM), ``*_wmseg`` / ``*label-WM_seg`` (WM),
    ``*label-SC_seg`` and a plain ``*_seg`` naming no other tissue (cord); each also with
    ``-manual`` appended (``sub-01_T2star_gmseg-manual``).

    Raises
    ------
    ReaderLesionError
        If the name names no tissue, a lesion, or both grey and white matter.

    Examples
    --------
    >>> [str(mask_kind_of_file(Path(n))) for n in (
    ...     "sub-01_T2star_gmseg.nii.gz", "sub-01_T2w_seg.nii", "sub-01_label-WM_seg.nii.gz")]
    ['gm', 'cord', 'wm']
    """
    stem = path.name.removesuffix(".gz").removesuffix(".nii")
    for pattern, sct_kind in _SCT_NAMES:
        if pattern.search(stem):
            return sct_kind
    kind = kind_from_text(stem)
    if kind is None and _SCT_CORD.search(stem):
        kind = SegmentKind.CORD  # SCT's sct_deepseg_sc / sct_propseg output
    if kind not in TISSUE_KINDS:
        raise ReaderLesionError(
            f"mask file {path.name}: its name must say which tissue it holds (cord, gm or wm), "
            "or be a Spinal Cord Toolbox name (*_seg, *_gmseg, *_wmseg, *label-SC_seg, "
            "*label-GM_seg, *label-WM_seg)"
        )
    return kind  # type: ignore[return-value]


def mask_from_nifti(
    image: nib.Nifti1Image, volume: SeriesVolume, kind: SegmentKind, *, tol_mm: float = 0.1
) -> BoolArray:
    """A binary NIfTI tissue mask on a slab's grid, as bool ``[k, j, i]``.

    Raises
    ------
    ReaderLesionError
        If the image is on another grid or holds values other than 0 and 1.
    TypeError, ValueError
        As :func:`service.inputs.reader_lesions.integer_nifti_on_grid`.
    """
    values = integer_nifti_on_grid(image, volume, tol_mm=tol_mm, what=str(kind))
    if values.max(initial=0) > 1:
        raise ReaderLesionError(
            f"{kind} NIfTI holds values up to {values.max()}; send a binary mask (0 and 1)"
        )
    return values > 0
