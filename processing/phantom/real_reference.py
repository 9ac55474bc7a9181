"""Reference shapes of the real-anatomy phantom, prepared once from the shipped arrays.

Two sources (arrays in NIfTI order ``(i, j, k)`` with a RAS affine, as
``service.pipeline.reference_data`` loads them):

- the PAM50 cervical template: cord, grey matter and CSF on 0.5 mm axial slices from C1 to T1,
  which give the cord outline, the GM butterfly and the canal along the whole cervical cord;
- one real neck (axial T2*-weighted GRE, manual GM outlines): its slices are classified into the
  phantom's materials (muscle, fat, bone, marrow, vessels, airway, air, the canal) to give the
  surroundings of the canal.

Everything is re-laid out as ``[slice, y, x]`` with x and y increasing toward patient left and
posterior (LPS), so the anatomy can look points up by index.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from processing.phantom.anatomy import Material

__all__ = ["RealReference", "classify_neck", "prepare_real_reference"]

#: Label codes of the PAM50 lookup table ``pam_labels``.
PAM_OUTSIDE, PAM_CSF, PAM_WM, PAM_GM = 0, 1, 2, 3

# Neck classification (intensities relative to the median of the neck on each slice).
_BODY_THRESHOLD = 20.0
_DARK_RATIO = 0.5
_BRIGHT_RATIO = 1.5
_SPINE_RADIUS_MM = 30.0
_CANAL_SEARCH_MM = 11.0
_MIN_CANAL_RADIUS_MM = 4.5
_SUBCUTANEOUS_MM = 4.0
_AIRWAY_MIN_MM2 = 40.0
_VESSEL_MIN_MM2 = 6.0
_VESSEL_MAX_MM2 = 150.0
_VESSEL_MIN_FILL = 0.5
_VESSEL_RATIO = 1.8
#: The neck's large vessels (carotid, jugular, vertebral) run within this distance of the cord.
_VESSEL_MAX_RADIUS_MM = 45.0
_MARROW_EROSION_MM = 1.5
_BODY_FRONT_MM = 6.0
_CENTRE_SMOOTHING_SLICES = 6.0
#: In-plane Gaussian (template pixels) that rounds the template's staircase outlines.
_OUTLINE_SMOOTHING_PX = 0.6


@dataclass(frozen=True)
class RealReference:
    """Prepared reference arrays (see the module docstring).

    Attributes
    ----------
    pam_labels : ndarray of uint8, shape (k, y, x)
        0 outside the canal, 1 CSF, 2 cord WM, 3 cord GM (PAM50, k increasing toward the head;
        outlines smoothed and resampled to half the template's in-plane spacing).
    pam_centre_mm : ndarray, shape (k, 2)
        Cord centroid (x, y) of each PAM50 slice in grid mm (index * spacing).
    pam_semi_axes_mm : ndarray, shape (k, 2)
        Half the cord's left-right and antero-posterior extent on each PAM50 slice.
    pam_level_k : ndarray, shape (8,)
        PAM50 slice coordinate of the top of C1..C7 and the bottom of C7 (decreasing).
    pam_inplane_mm, pam_slice_mm : float
        In-plane and slice spacing of ``pam_labels`` (in-plane: half the template's).
    neck_materials : ndarray of uint8, shape (s, y, x)
        :class:`Material` of every pixel of the real neck's slices (the canal is CSF).
    neck_vertebral_body : ndarray of bool, shape (s, y, x)
        Pixels of the vertebral bodies (where discs appear between levels).
    neck_centre_mm : ndarray, shape (s, 2)
        Cord centre (x, y) of each neck slice in grid mm.
    neck_spacing_mm : float
        In-plane spacing of the neck grid.
    """

    pam_labels: NDArray[np.uint8]
    pam_centre_mm: NDArray[np.float64]
    pam_semi_axes_mm: NDArray[np.float64]
    pam_level_k: NDArray[np.float64]
    pam_inplane_mm: float
    pam_slice_mm: float
    neck_materials: NDArray[np.uint8]
    neck_vertebral_body: NDArray[np.bool_]
    neck_centre_mm: NDArray[np.float64]
    neck_spacing_mm: float

    def __post_init__(self) -> None:
        if self.pam_labels.ndim != 3 or self.neck_materials.ndim != 3:
            raise ValueError("pam_labels and neck_materials must be 3-D [slice, y, x] arrays")
        if self.neck_vertebral_body.shape != self.neck_materials.shape:
            raise ValueError("neck_vertebral_body must match neck_materials")
        if self.pam_centre_mm.shape != (self.pam_labels.shape[0], 2):
            raise ValueError("pam_centre_mm needs one (x, y) per PAM50 slice")
        if self.neck_centre_mm.shape != (self.neck_materials.shape[0], 2):
            raise ValueError("neck_centre_mm needs one (x, y) per neck slice")
        if np.asarray(self.pam_level_k).shape != (8,) or np.any(np.diff(self.pam_level_k) >= 0):
            raise ValueError("pam_level_k needs 8 decreasing slice coordinates")
        if min(self.pam_inplane_mm, self.pam_slice_mm, self.neck_spacing_mm) <= 0:
            raise ValueError("spacings must be positive")

    @property
    def pam_cord_area_mm2(self) -> NDArray[np.float64]:
        """Cord area of each PAM50 slice (mm^2)."""
        return (self.pam_labels >= PAM_WM).sum(axis=(1, 2)) * self.pam_inplane_mm**2


def _to_lps_slices(volume: NDArray) -> NDArray:
    """NIfTI ``(i, j, k)`` re-laid out as ``[k, y, x]`` (x toward patient left, y posterior).

    Assumes the usual axial RAS layout: i runs toward patient left (x_RAS decreasing) and j
    toward anterior (y_RAS increasing); the j axis is flipped so y increases toward posterior.
    """
    return np.ascontiguousarray(np.flip(volume, axis=1).transpose(2, 1, 0))


def _check_axial(affine_ras: NDArray[np.float64], name: str) -> tuple[float, float]:
    a = np.asarray(affine_ras, dtype=float)
    if a.shape != (4, 4):
        raise ValueError(f"{name} affine must be 4x4")
    if not (a[0, 0] < 0 and a[1, 1] > 0 and a[2, 2] > 0):
        raise ValueError(f"{name} must be axial with i toward patient left, j anterior, k up")
    inplane = float(np.linalg.norm(a[:3, 0]))
    if abs(inplane - float(np.linalg.norm(a[:3, 1]))) > 1e-3:
        raise ValueError(f"{name} needs square pixels")
    return inplane, float(np.linalg.norm(a[:3, 2]))


def _largest_component(mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def _classify_slice(
    image: NDArray[np.float64], centre_px: tuple[float, float], spacing_mm: float
) -> tuple[NDArray[np.uint8], NDArray[np.bool_]]:
    """Materials and vertebral body of one neck slice (``[y, x]``, LPS)."""
    smooth = ndimage.gaussian_filter(image, 0.7)
    body = _largest_component(ndimage.binary_opening(smooth > _BODY_THRESHOLD, iterations=2))
    body = ndimage.binary_fill_holes(body)
    reference = float(np.median(smooth[body]))
    yy, xx = np.indices(image.shape, dtype=float)
    radius_mm = np.hypot(yy - centre_px[0], xx - centre_px[1]) * spacing_mm
    out = np.full(image.shape, Material.MUSCLE, dtype=np.uint8)
    out[~body] = Material.AIR

    dark = body & (smooth < _DARK_RATIO * reference)
    bright = body & (smooth > _BRIGHT_RATIO * reference)
    depth_mm = ndimage.distance_transform_edt(body) * spacing_mm
    out[body & (depth_mm < _SUBCUTANEOUS_MM) & ~dark] = Material.FAT

    # Bright tissue away from the canal: large, compact, very bright blobs are vessels (flow
    # makes them bright; long T1, coded as CSF), the rest fat (septa, intermuscular fat).
    labels, _ = ndimage.label(bright & (radius_mm > _CANAL_SEARCH_MM + 3.0))
    pixel_mm2 = spacing_mm**2
    for index, region in enumerate(ndimage.find_objects(labels), start=1):
        if region is None:
            continue
        blob = labels[region] == index
        area = blob.sum() * pixel_mm2
        compact = blob.mean() >= _VESSEL_MIN_FILL
        brightest = float(smooth[region][blob].max())
        vessel = (
            _VESSEL_MIN_MM2 <= area <= _VESSEL_MAX_MM2
            and compact
            and brightest > _VESSEL_RATIO * reference
            and float(radius_mm[region][blob].min()) < _VESSEL_MAX_RADIUS_MM
        )
        out[region][blob] = Material.CSF if vessel else Material.FAT

    # Dark tissue: bone near the spine (vertebral body with marrow inside), airway or fascia
    # elsewhere.
    labels, _ = ndimage.label(dark)
    vertebral_body = np.zeros(image.shape, dtype=bool)
    for index, region in enumerate(ndimage.find_objects(labels), start=1):
        if region is None:
            continue
        blob = np.zeros(image.shape, dtype=bool)
        blob[region] = labels[region] == index
        near_spine = radius_mm[blob].min() < _SPINE_RADIUS_MM
        if near_spine:
            out[blob] = Material.BONE
            # the part in front of the canal is the vertebral body (pedicles and laminae,
            # often connected to it, stay cortical bone)
            vertebral_body |= blob & (yy < centre_px[0] - _BODY_FRONT_MM / spacing_mm)
        elif blob.sum() * pixel_mm2 >= _AIRWAY_MIN_MM2:
            out[blob] = Material.AIR
    erosion = max(1, round(_MARROW_EROSION_MM / spacing_mm))
    vertebral_body = ndimage.binary_closing(vertebral_body, iterations=2) & body
    vertebral_body = ndimage.binary_fill_holes(vertebral_body)
    marrow = ndimage.binary_erosion(vertebral_body, iterations=erosion)
    out[vertebral_body] = Material.BONE
    out[marrow] = Material.MARROW

    # The canal: bright CSF around the cord centre, holes (the cord) filled.
    near = radius_mm <= _CANAL_SEARCH_MM
    csf = ndimage.binary_closing(bright & near, iterations=3)
    canal = ndimage.binary_fill_holes(csf) | (radius_mm <= _MIN_CANAL_RADIUS_MM)
    canal = _largest_component(canal & near)
    out[canal] = Material.CSF
    vertebral_body &= ~canal
    return out, vertebral_body


def classify_neck(
    image: NDArray, gm: NDArray[np.bool_], affine_ras: NDArray[np.float64]
) -> tuple[NDArray[np.uint8], NDArray[np.bool_], NDArray[np.float64], float]:
    """Classify a real axial neck (NIfTI order, RAS affine) into phantom materials.

    Parameters
    ----------
    image : ndarray, shape (i, j, k)
        T2*-weighted GRE (CSF bright, bone dark).
    gm : ndarray of bool, shape (i, j, k)
        Grey-matter outlines (their centroid on each slice is the cord centre).
    affine_ras : ndarray, shape (4, 4)

    Returns
    -------
    materials : ndarray of uint8, shape (k, y, x)
    vertebral_body : ndarray of bool, shape (k, y, x)
    centre_mm : ndarray, shape (k, 2)
        Cord centre (x, y) per slice in grid mm.
    spacing_mm : float
    """
    if image.ndim != 3 or image.shape != gm.shape:
        raise ValueError("image and gm must be 3-D arrays of the same shape")
    spacing, _ = _check_axial(affine_ras, "the neck")
    img = _to_lps_slices(np.asarray(image, dtype=float))
    grey = _to_lps_slices(np.asarray(gm, dtype=bool))
    if not grey.any(axis=(1, 2)).all():
        raise ValueError("every neck slice needs a grey-matter outline (it locates the cord)")
    materials = np.empty(img.shape, dtype=np.uint8)
    body = np.empty(img.shape, dtype=bool)
    centre = np.empty((img.shape[0], 2))
    for s in range(img.shape[0]):
        cy, cx = ndimage.center_of_mass(grey[s])
        centre[s] = (cx * spacing, cy * spacing)
        materials[s], body[s] = _classify_slice(img[s], (cy, cx), spacing)
    return materials, body, centre, spacing


def _upsampled(volume: NDArray, smoothing_px: float) -> NDArray[np.float32]:
    """``[k, y, x]`` volume smoothed in-plane and resampled to half the in-plane spacing.

    New in-plane index ``m`` sits at old index ``m / 2`` (same origin, ``2 n - 1`` samples),
    so smooth outlines replace the template's 0.5 mm staircase.
    """
    v = np.asarray(volume, dtype=np.float32)
    if smoothing_px > 0:
        v = ndimage.gaussian_filter(v, (0.0, smoothing_px, smoothing_px))
    _, ny, nx = v.shape
    return ndimage.zoom(v, (1.0, (2 * ny - 1) / ny, (2 * nx - 1) / nx), order=1)


def _pam_layout(
    cord: NDArray[np.bool_],
    csf: NDArray[np.bool_],
    gm: NDArray[np.float32],
    wm: NDArray[np.float32],
) -> NDArray[np.uint8]:
    """PAM50 labels as ``[k, y, x]`` at half the template's in-plane spacing."""
    canal = _upsampled(_to_lps_slices(cord | csf), _OUTLINE_SMOOTHING_PX) > 0.5
    in_cord = _upsampled(_to_lps_slices(cord), _OUTLINE_SMOOTHING_PX) > 0.5
    grey = _upsampled(_to_lps_slices(np.asarray(gm) - np.asarray(wm)), 0.0) > 0.0
    labels = np.zeros(canal.shape, dtype=np.uint8)
    labels[canal] = PAM_CSF
    labels[in_cord] = PAM_WM
    labels[in_cord & grey] = PAM_GM
    return labels


def prepare_real_reference(
    neck_image: NDArray,
    neck_gm: NDArray[np.bool_],
    neck_affine_ras: NDArray[np.float64],
    pam_cord: NDArray[np.bool_],
    pam_csf: NDArray[np.bool_],
    pam_gm: NDArray[np.float32],
    pam_wm: NDArray[np.float32],
    pam_levels: NDArray[np.uint8],
    pam_affine_ras: NDArray[np.float64],
) -> RealReference:
    """Build the :class:`RealReference` from the real neck and the PAM50 arrays.

    Parameters
    ----------
    neck_image, neck_gm, neck_affine_ras
        The real neck (see :func:`classify_neck`).
    pam_cord, pam_csf : ndarray of bool, shape (i, j, k)
    pam_gm, pam_wm : ndarray of float32
        Probabilities in [0, 1].
    pam_levels : ndarray of uint8
        Vertebral level of each cord voxel (1 = C1 .. 8 = T1), 0 outside.
    pam_affine_ras : ndarray, shape (4, 4)
    """
    shapes = {np.shape(a) for a in (pam_cord, pam_csf, pam_gm, pam_wm, pam_levels)}
    if len(shapes) != 1:
        raise ValueError("the PAM50 arrays must share one shape")
    template_mm, step = _check_axial(pam_affine_ras, "PAM50")
    if abs(template_mm - step) > 1e-3:
        raise ValueError("PAM50 must be isotropic")
    labels = _pam_layout(pam_cord, pam_csf, pam_gm, pam_wm)
    inplane = template_mm / 2.0
    cord = labels >= PAM_WM
    present = cord.any(axis=(1, 2))
    if not present.any():
        raise ValueError("the PAM50 cord is empty")
    # Fill slices without cord (ends) from their nearest slice with cord.
    valid = np.flatnonzero(present)
    nearest = valid[np.abs(np.arange(labels.shape[0])[:, None] - valid[None, :]).argmin(axis=1)]
    labels = labels[nearest]
    cord = cord[nearest]
    yy, xx = np.indices(labels.shape[1:], dtype=float)
    area = cord.sum(axis=(1, 2)).astype(float)
    cx = (cord * xx).sum(axis=(1, 2)) / area
    cy = (cord * yy).sum(axis=(1, 2)) / area
    # The template's centre jitters by a fraction of a voxel between slices: smooth it so the
    # cord outline does not step sideways from one 0.5 mm slice to the next.
    cx = ndimage.gaussian_filter1d(cx, _CENTRE_SMOOTHING_SLICES, mode="nearest")
    cy = ndimage.gaussian_filter1d(cy, _CENTRE_SMOOTHING_SLICES, mode="nearest")
    x_any = cord.any(axis=1)
    y_any = cord.any(axis=2)
    width = x_any.sum(axis=1) * inplane / 2.0
    depth = y_any.sum(axis=1) * inplane / 2.0
    tops = []
    levels = _to_lps_slices(np.asarray(pam_levels))
    slices_of = [np.flatnonzero((levels == level).any(axis=(1, 2))) for level in range(1, 8)]
    if any(s.size == 0 for s in slices_of):
        raise ValueError("PAM50 levels must cover C1..C7")
    tops = [float(s.max()) + 0.5 for s in slices_of] + [float(slices_of[-1].min()) - 0.5]
    neck_materials, body, neck_centre, neck_spacing = classify_neck(
        neck_image, neck_gm, neck_affine_ras
    )
    return RealReference(
        pam_labels=labels,
        pam_centre_mm=np.stack([cx, cy], axis=1) * inplane,
        pam_semi_axes_mm=np.stack([width, depth], axis=1),
        pam_level_k=np.asarray(tops),
        pam_inplane_mm=inplane,
        pam_slice_mm=step,
        neck_materials=neck_materials,
        neck_vertebral_body=body,
        neck_centre_mm=neck_centre,
        neck_spacing_mm=neck_spacing,
    )
