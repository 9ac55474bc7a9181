"""The quantitative stages of one exam, slab by slab: segmentation, template coordinates,
regions, Z-scores, lesions, and their pooling into the summary (issue 4).

Plain orchestration of `processing/` functions; no DICOM and no files here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray
from scipy.ndimage import binary_erosion

from processing.align import apply_inplane_shift, estimate_inplane_shift
from processing.atlas import fit_prior_warp, label_regions_atlas
from processing.lesions import LesionStats, candidates, characterise
from processing.normative import NormativeModel, z_scores
from processing.qc import QcVerdict, assess, estimate_snr
from processing.regions import estimate_levels, region_masks
from processing.segmentation import CordSegmentation, segment_cord, split_gm_wm
from processing.stats import DEFAULT_Z_THRESHOLD, RegionStats, normal_appearing, region_statistics
from processing.template import CordCoordinates, cord_coordinates
from service.pipeline.atlas import load_pam50_priors

if TYPE_CHECKING:
    from service.inputs.reader_masks import GivenMasks

__all__ = [
    "GreyWhiteEvidence",
    "SlabAnatomy",
    "SlabScores",
    "T2StarSampler",
    "assess_exam",
    "lesion_template_centres",
    "pool_region_statistics",
    "score_slab",
    "segment_slab",
    "split_tissues",
    "t2star_evidence",
]

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]


#: A lesion is "mixed GM+WM" from this share of GM voxels up. The GM outline is uncertain by
#: about one voxel, so a WM-only lesion touching a horn shows a few % of apparent GM (phantom
#: validation: up to 13 %); mixed lesions hold 20-55 %.
MIXED_MIN_GM_PERCENT = 15.0

#: One voxel in-plane: the cord's outer voxels share their volume with CSF (T1 ~ 3.7 s) and
#: are left out of regional statistics.
_IN_PLANE_CROSS = np.array([[[0, 1, 0], [1, 1, 1], [0, 1, 0]]], dtype=bool)

#: In-plane voxels kept around the cord's bounding box for the GM/WM split (it looks a few
#: voxels beyond the cord at most).
_TISSUE_MARGIN_VOX = 8
#: The T2*-weighted image is aligned to the T1 map only when their correlation around the cord
#: reaches this value; below it the two images do not show the same anatomy (wrong series,
#: strong artefact) and the T2* image is not used.
MIN_T2STAR_CORRELATION = 0.3
#: Residual shifts below this (mm) are left alone (interpolation would only blur).
_MIN_SHIFT_MM = 0.05
#: In-plane margin (mm) around the cord's box where the T2*-weighted image is resampled and
#: aligned: the correlation box (5 mm), the shift search (1.5 mm) and the smoothing.
_T2STAR_BOX_MARGIN_MM = 8.0

#: Gives the T2*-weighted image on a box (``[k, j, i]`` slices) of the T1 grid.
T2StarSampler = Callable[[tuple[slice, slice, slice]], FloatArray]


@dataclass
class GreyWhiteEvidence:
    """What the GM/WM split of one slab rested on.

    ``t2star`` is the T2*-weighted image on the T1 grid after the in-plane alignment (None
    when the exam has none or it could not be used); ``info`` goes into summary.json.
    """

    t2star: FloatArray | None = None
    info: dict[str, Any] = field(default_factory=lambda: {"source": "T1"})


@dataclass
class SlabAnatomy:
    """Segmentation and template mapping of one slab.

    ``masks`` (summary key -> mask) are for statistics and exclude the cord's outer voxel
    ring (partial volume with CSF); ``gm``/``wm`` are the full tissue masks.
    """

    index: int
    segmentation: CordSegmentation
    coords: CordCoordinates
    gm: BoolArray
    wm: BoolArray
    labels: NDArray[np.int16]
    levels: NDArray[np.int16]
    masks: dict[str, BoolArray]
    evidence: GreyWhiteEvidence = field(default_factory=GreyWhiteEvidence)

    @property
    def cord(self) -> BoolArray:
        """Whole cord (GM + WM)."""
        return self.gm | self.wm


@dataclass
class SlabScores:
    """Z-scores and lesions of one slab (``z`` is None without a model)."""

    z: FloatArray | None
    model_valid: BoolArray | None
    reader_lesions: NDArray[np.int32] | None
    candidate_lesions: NDArray[np.int32] | None
    lesions: list[LesionStats] = field(default_factory=list)


def segment_slab(
    t1_ms: FloatArray,
    *,
    index: int,
    n_slabs: int,
    voxel_mm: tuple[float, float, float],
    affine_lps: FloatArray,
    gm_prior_template: FloatArray,
    inv2: FloatArray | None = None,
    lesions: BoolArray | None = None,
    t2star: T2StarSampler | None = None,
    given: GivenMasks | None = None,
) -> SlabAnatomy:
    """Cord, GM/WM, template coordinates, region labels and levels of one slab.

    ``lesions`` (known lesion voxels) carry no GM/WM intensity evidence: damage raises T1
    and would otherwise look like grey matter. ``t2star`` gives a T2*-weighted image on a box
    of the T1 grid (NaN where not covered); it is asked for the box around the found cord
    only, aligned in-plane to the T1 map and adds its GM/WM contrast (see
    :func:`t2star_evidence`). ``given``: cord/GM/WM masks given with the exam, used instead of
    the automatic ones where given (:class:`service.inputs.reader_masks.GivenMasks`).
    """
    if given is None:
        segmentation = segment_cord(t1_ms, voxel_mm, inv2=inv2)
    else:
        segmentation = given.cord_segmentation(lambda: segment_cord(t1_ms, voxel_mm, inv2=inv2))
    if given is not None and given.covers_grey_matter(segmentation.cord):
        evidence = GreyWhiteEvidence(info={"source": "given masks"})
    elif t2star is not None:
        evidence = t2star_evidence(t1_ms, t2star, segmentation, voxel_mm)
    else:
        evidence = GreyWhiteEvidence()
    coords = cord_coordinates(
        segmentation.cord, segmentation.centre_ji, affine_lps, slab=index, n_slabs=n_slabs
    )
    return split_tissues(
        t1_ms,
        segmentation,
        coords,
        index=index,
        n_slabs=n_slabs,
        voxel_mm=voxel_mm,
        gm_prior_template=gm_prior_template,
        lesions=lesions,
        evidence=evidence,
        given=given,
    )


def t2star_evidence(
    t1_ms: FloatArray,
    t2star: T2StarSampler,
    segmentation: CordSegmentation,
    voxel_mm: tuple[float, float, float],
) -> GreyWhiteEvidence:
    """Align a T2*-weighted image (on the T1 grid) to the T1 map in-plane around the cord.

    Both images show bright CSF around a darker cord, so a small residual shift (subject
    motion between the series) is found by correlation around the cord and undone. An image
    that does not correlate with the T1 map, or a cord too small to align on, is not used;
    ``info`` says why. Only the box around the cord is resampled and aligned (the GM/WM split
    looks nowhere else); the rest of the returned image is NaN.
    """
    cord = segmentation.cord
    margin_vox = int(np.ceil(_T2STAR_BOX_MARGIN_MM / min(voxel_mm[1:])))
    box = segmentation.box(margin_vox)
    if box is None:
        return GreyWhiteEvidence(info={"source": "T1"})
    on_grid = np.full(t1_ms.shape, np.nan)  # the T2*-weighted image, NaN outside the box
    on_grid[box] = t2star(box)
    covered = np.isfinite(on_grid) & cord
    info: dict[str, Any] = {
        "source": "T1",
        "t2star_cord_covered_percent": round(100.0 * float(covered.sum() / max(cord.sum(), 1)), 1),
    }
    if not covered.any():
        info["t2star_note"] = "T2*-weighted series does not cover the cord: not used"
        return GreyWhiteEvidence(info=info)
    try:
        shift = estimate_inplane_shift(t1_ms, on_grid, cord, voxel_mm=voxel_mm[1:])
    except ValueError as exc:
        info["t2star_note"] = f"T2*-weighted series not aligned ({exc}): not used"
        return GreyWhiteEvidence(info=info)
    info["t2star_alignment"] = {
        "shift_mm": [round(v, 2) for v in shift.shift_mm],
        "correlation": round(shift.correlation, 3),
    }
    if not np.isfinite(shift.correlation) or shift.correlation < MIN_T2STAR_CORRELATION:
        info["t2star_note"] = (
            f"T2*-weighted series does not match the T1 map around the cord (correlation "
            f"{shift.correlation:.2f} < {MIN_T2STAR_CORRELATION}): not used"
        )
        return GreyWhiteEvidence(info=info)
    if shift.at_limit:
        info["t2star_note"] = (
            "T2*-weighted series is shifted by more than the alignment range against the T1 "
            "map: not used"
        )
        return GreyWhiteEvidence(info=info)
    if max(abs(v) for v in shift.shift_mm) >= _MIN_SHIFT_MM:
        on_grid[box] = apply_inplane_shift(on_grid[box], shift.shift_mm, voxel_mm=voxel_mm[1:])
    info["source"] = "T1 + T2*-weighted GRE"
    return GreyWhiteEvidence(t2star=on_grid, info=info)


def split_tissues(
    t1_ms: FloatArray,
    segmentation: CordSegmentation,
    coords: CordCoordinates,
    *,
    index: int,
    n_slabs: int,
    voxel_mm: tuple[float, float, float],
    gm_prior_template: FloatArray,
    lesions: BoolArray | None = None,
    evidence: GreyWhiteEvidence | None = None,
    given: GivenMasks | None = None,
) -> SlabAnatomy:
    """GM/WM split, region labels and levels on a given cord segmentation.

    ``evidence`` carries the aligned T2*-weighted image when the exam has one. ``given``:
    slices with GM (or WM) given with the exam take it (WM = cord minus GM); the automatic
    split runs only if some cord slice has none.
    """
    evidence = evidence or GreyWhiteEvidence()
    # The split and the rim erosion only look at the cord and its surroundings: crop.
    gm = np.zeros(segmentation.cord.shape, dtype=bool)
    wm = np.zeros(segmentation.cord.shape, dtype=bool)
    interior = np.zeros(segmentation.cord.shape, dtype=bool)
    box = segmentation.box(_TISSUE_MARGIN_VOX)
    if box is not None:
        cord = segmentation.cord[box]
        if given is None or not given.covers_grey_matter(segmentation.cord):
            t1 = t1_ms if lesions is None else np.where(lesions, np.nan, t1_ms)
            # the prior's butterfly fitted in-plane to this slab's GM/WM contrast
            warp = fit_prior_warp(
                t1, segmentation.cord, coords, gm_prior_template, voxel_mm=voxel_mm
            )
            evidence = replace(evidence, info={**evidence.info, "gm_prior_warp": warp.as_dict()})
            prior = warp.apply(coords).sample(gm_prior_template)[box]
            t2star = evidence.t2star[box] if evidence.t2star is not None else None
            gm[box], wm[box] = split_gm_wm(t1[box], cord, prior, voxel_mm=voxel_mm, t2star=t2star)
        interior[box] = binary_erosion(cord, structure=_IN_PLANE_CROSS)
    given_gm = given.grey_matter(segmentation.cord) if given is not None else None
    if given_gm is not None:
        given_mask, slices = given_gm
        gm[slices] = given_mask[slices]
        wm[slices] = segmentation.cord[slices] & ~given_mask[slices]
    levels = estimate_levels(coords, n_slabs)
    labels = label_regions_atlas(coords, gm, wm, levels, load_pam50_priors())
    masks = region_masks(labels, gm, wm, levels, within=interior)
    return SlabAnatomy(
        index=index,
        segmentation=segmentation,
        coords=coords,
        gm=gm,
        wm=wm,
        labels=labels,
        levels=levels,
        masks=masks,
        evidence=evidence,
    )


def score_slab(
    t1_ms: FloatArray,
    anatomy: SlabAnatomy,
    *,
    model: NormativeModel | None,
    voxel_mm: tuple[float, float, float],
    affine_lps: FloatArray,
    reader_lesions: NDArray[np.int32] | None = None,
    candidate_z_threshold: float = 2.5,
    reuse: SlabScores | None = None,
) -> SlabScores:
    """Z-scores against the model, automatic lesion candidates, lesion statistics.

    ``reuse``: scores of an earlier pass on the same cord and coordinates (only the GM/WM
    split differs); its Z-scores and candidates are kept, the lesion statistics redone.
    """
    z = None
    valid = None
    candidate_labels = None
    if reuse is not None:
        z, valid, candidate_labels = reuse.z, reuse.model_valid, reuse.candidate_lesions
    elif model is not None:
        mean_ms = anatomy.coords.sample(model.mean_ms)
        sd_ms = anatomy.coords.sample(model.sd_ms)
        z = np.where(anatomy.cord, z_scores(t1_ms, mean_ms, sd_ms), np.nan)
        valid = anatomy.cord & np.isfinite(z)
        candidate_labels = candidates(
            z,
            t1_ms,
            anatomy.cord,
            voxel_mm=voxel_mm,
            z_threshold=candidate_z_threshold,
            wm=anatomy.wm,
        )
    lesions: list[LesionStats] = []
    for labels, source in ((reader_lesions, "reader"), (candidate_labels, "candidate")):
        if labels is None or not np.any(labels):
            continue
        lesions += characterise(
            labels,
            t1_ms,
            gm=anatomy.gm,
            wm=anatomy.wm,
            cord=anatomy.cord,
            affine_lps=affine_lps,
            levels=np.broadcast_to(anatomy.levels[:, None, None], labels.shape),
            region_labels=anatomy.labels,
            source=source,  # type: ignore[arg-type]
            mixed_min_gm_percent=MIXED_MIN_GM_PERCENT,
        )
    return SlabScores(
        z=z,
        model_valid=valid,
        reader_lesions=reader_lesions,
        candidate_lesions=candidate_labels,
        lesions=lesions,
    )


def lesion_template_centres(
    labels: NDArray[np.int32], coords: CordCoordinates
) -> dict[int, list[float]]:
    """Mean (slab, s, u, v) of each labelled lesion: a frame shared by a patient's exams."""
    out: dict[int, list[float]] = {}
    s = np.broadcast_to(coords.s[:, None, None], labels.shape)
    for lesion_id in (int(v) for v in np.unique(labels) if v > 0):
        sel = (labels == lesion_id) & np.isfinite(coords.u) & np.isfinite(coords.v)
        if not sel.any():
            continue
        out[lesion_id] = [
            float(coords.slab),
            round(float(s[sel].mean()), 4),
            round(float(coords.u[sel].mean()), 4),
            round(float(coords.v[sel].mean()), 4),
        ]
    return out


def pool_region_statistics(
    t1_ms: Sequence[FloatArray],
    z: Sequence[FloatArray | None],
    masks: Sequence[dict[str, BoolArray]],
    *,
    threshold: float = DEFAULT_Z_THRESHOLD,
) -> dict[str, RegionStats]:
    """Region statistics over all slabs of an exam (voxels pooled)."""
    keys = sorted({key for m in masks for key in m})
    flat_t1 = np.concatenate([np.ravel(t) for t in t1_ms])
    flat_z = np.concatenate(
        [
            np.ravel(zz) if zz is not None else np.full(t.size, np.nan)
            for zz, t in zip(z, t1_ms, strict=True)
        ]
    )
    flat_masks = {
        key: np.concatenate(
            [
                np.ravel(m[key]) if key in m else np.zeros(t.size, bool)
                for m, t in zip(masks, t1_ms, strict=True)
            ]
        )
        for key in keys
    }
    return region_statistics(flat_t1, flat_z, flat_masks, threshold=threshold)


def normal_appearing_statistics(
    t1_ms: Sequence[FloatArray],
    z: Sequence[FloatArray | None],
    masks: Sequence[dict[str, BoolArray]],
    lesion_masks: Sequence[BoolArray],
    *,
    threshold: float = DEFAULT_Z_THRESHOLD,
) -> dict[str, RegionStats]:
    """NAWM / NAGM statistics (lesion voxels removed), pooled over slabs."""
    per_slab = [normal_appearing(m, lesion) for m, lesion in zip(masks, lesion_masks, strict=True)]
    return pool_region_statistics(t1_ms, z, per_slab, threshold=threshold)


def assess_exam(
    *,
    anatomies: Sequence[SlabAnatomy],
    inv2: Sequence[FloatArray | None],
    foregrounds: Sequence[BoolArray],
    outside_lookup_in_cord: float | None,
    voxel_mm: Sequence[tuple[float, float, float]],
    model_valid: Sequence[BoolArray | None],
    protocol_matches_model: bool | None,
    b1_corrected: bool,
) -> QcVerdict:
    """The QC verdict of a whole exam (all slabs together)."""
    areas, found, shifts, slab_of = [], [], [], []
    for anatomy, vox in zip(anatomies, voxel_mm, strict=True):
        seg = anatomy.segmentation
        areas.append(seg.area_mm2(vox))
        found.append(seg.found)
        slab_of.append(np.full(len(seg.found), anatomy.coords.slab))
        centre = seg.centre_ji * np.asarray(vox[1:])
        shift = np.full(len(seg.found), np.nan)
        shift[1:] = np.hypot(*np.diff(centre, axis=0).T)
        shifts.append(shift)
    snr = None
    snrs = []
    for image, fg in zip(inv2, foregrounds, strict=True):
        if image is None or not fg.any():
            continue
        try:
            snrs.append(estimate_snr(image, fg))
        except ValueError:  # no air in the field of view: SNR cannot be measured
            continue
    if snrs:
        snr = float(np.median(snrs))
    template_fit = None
    if all(v is not None for v in model_valid) and model_valid:
        cord_voxels = sum(int(a.cord.sum()) for a in anatomies)
        fitted = sum(int(v.sum()) for v in model_valid if v is not None)
        template_fit = fitted / cord_voxels if cord_voxels else 0.0
    return assess(
        snr=snr,
        outside_lookup_fraction=outside_lookup_in_cord,
        cord_area_mm2_per_slice=np.concatenate(areas),
        cord_found_per_slice=np.concatenate(found),
        centre_shift_mm_per_slice=np.concatenate(shifts),
        template_fit=template_fit,
        protocol_matches_model=protocol_matches_model,
        b1_corrected=b1_corrected,
        slab_per_slice=np.concatenate(slab_of),
    )


def stats_to_summary(stats: dict[str, RegionStats]) -> dict[str, Any]:
    """The per-region blocks of summary.json."""

    def number(value: float | None, digits: int) -> float | None:
        if value is None or not np.isfinite(value):
            return None
        return round(float(value), digits)

    return {
        key: {
            "voxels": s.voxels,
            "mean_t1_ms": number(s.mean_t1_ms, 1),
            "median_t1_ms": number(s.median_t1_ms, 1),
            "mean_z": number(s.mean_z, 3),
            "abnormal_percent": number(s.abnormal_percent, 2),
        }
        for key, s in stats.items()
    }
