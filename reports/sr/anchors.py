"""Image coordinates of the report's measurement groups, so that viewers can show them.

A viewer such as OHIF draws an SR measurement group only when it carries a spatial coordinate
on an image it displays; a group that references just a SEG segment is skipped (and a report
of such groups only, breaks its SR viewport). So every group gets an *anchor*: one point on
one source image (the slab's UNI slice), inside the region or lesion the group describes.

- :func:`mask_anchor` picks the point: the slice nearest the mask's centroid that holds mask
  voxels, and on it the mask voxel nearest the in-plane centroid of that slice's voxels (so the
  point lies in the region even for a ring or a butterfly shape).
- :func:`anchor_measurements` writes it into every numeric measurement of a group, as
  ``NUM -> INFERRED FROM SCOORD (POINT, "Image Region") -> SELECTED FROM IMAGE`` (TID 300
  row "INFERRED FROM", TID 320 "Image or Spatial Coordinates"). Inside each NUM, because that
  is where viewers look: Cornerstone's SR adapter reads the first NUM's SCOORD, OHIF's SR
  viewport the SCOORD of each NUM that has child items.

SCOORD pixel coordinates are (column, row) with (0, 0) at the top left corner of the top left
pixel, so the centre of voxel ``[j, i]`` is ``(i + 0.5, j + 0.5)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import highdicom as hd
import numpy as np
from numpy.typing import NDArray
from pydicom.sr.coding import Code

__all__ = ["IMAGE_REGION", "ImageAnchor", "anchor_measurements", "mask_anchor"]

IMAGE_REGION = Code("111030", "DCM", "Image Region")


@dataclass(frozen=True)
class ImageAnchor:
    """One point on one source image.

    Parameters
    ----------
    sop_class_uid, sop_instance_uid : str
        The source image (a UNI slice, or the multi-frame UNI instance).
    frame_number : int or None
        1-based frame of a multi-frame source; None for a single-frame image.
    column, row : float
        SCOORD pixel coordinates on that image (see the module docstring).
    voxels : int
        Voxels of the mask the point was chosen in (to choose among slabs).
    """

    sop_class_uid: str
    sop_instance_uid: str
    frame_number: int | None
    column: float
    row: float
    voxels: int = 1

    def __post_init__(self) -> None:
        if not self.sop_class_uid or not self.sop_instance_uid:
            raise ValueError("an image anchor needs the SOP class and instance UIDs")
        if self.frame_number is not None and self.frame_number < 1:
            raise ValueError(f"frame_number must be 1 or more, got {self.frame_number}")
        if not (np.isfinite(self.column) and np.isfinite(self.row)):
            raise ValueError("anchor coordinates must be finite")
        if self.column < 0 or self.row < 0:
            raise ValueError(f"anchor ({self.column}, {self.row}) lies before the image")


def mask_anchor(mask: NDArray[np.bool_]) -> tuple[int, float, float, int] | None:
    """``(slice k, column, row, voxels)`` of a point inside a ``[k, j, i]`` mask; None if empty.

    Examples
    --------
    >>> m = np.zeros((4, 5, 5), dtype=bool); m[1:4, 1:4, 2] = True
    >>> mask_anchor(m)
    (2, 2.5, 2.5, 9)
    """
    if not isinstance(mask, np.ndarray) or mask.ndim != 3 or mask.dtype != np.bool_:
        raise ValueError("mask must be a 3-D boolean array [k, j, i]")
    per_slice = np.count_nonzero(mask.reshape(mask.shape[0], -1), axis=1)
    total = int(per_slice.sum())
    if total == 0:
        return None
    slices = np.flatnonzero(per_slice)
    centroid = float(np.dot(np.arange(mask.shape[0]), per_slice)) / total
    k = int(slices[np.argmin(np.abs(slices - centroid))])
    j, i = np.nonzero(mask[k])
    centre = np.array([j.mean(), i.mean()])
    nearest = int(np.argmin((j - centre[0]) ** 2 + (i - centre[1]) ** 2))
    return k, float(i[nearest]) + 0.5, float(j[nearest]) + 0.5, total


def _scoord(anchor: ImageAnchor) -> hd.sr.ScoordContentItem:
    point = hd.sr.ScoordContentItem(
        name=IMAGE_REGION,
        graphic_type=hd.sr.GraphicTypeValues.POINT,
        graphic_data=np.array([[anchor.column, anchor.row]]),
        relationship_type=hd.sr.RelationshipTypeValues.INFERRED_FROM,
    )
    frames = None if anchor.frame_number is None else [anchor.frame_number]
    point.ContentSequence = hd.sr.ContentSequence(
        [
            hd.sr.SourceImageForRegion(
                referenced_sop_class_uid=anchor.sop_class_uid,
                referenced_sop_instance_uid=anchor.sop_instance_uid,
                referenced_frame_numbers=frames,
            )
        ],
        is_root=False,
        is_sr=True,
    )
    return point


def anchor_measurements(group: hd.sr.Template, anchor: ImageAnchor) -> int:
    """Add the anchor point to every NUM of a measurement group (in place).

    Returns
    -------
    int
        How many NUM items received it.
    """
    container = group[0]
    point = _scoord(anchor)  # one item, referenced from every NUM (written out for each)
    count = 0
    for item in container.ContentSequence:
        if item.ValueType != "NUM":
            continue
        if "ContentSequence" in item:
            item.ContentSequence.append(point)
        else:
            item.ContentSequence = hd.sr.ContentSequence([point], is_root=False)
        count += 1
    return count
