"""Ground truth of a phantom exam: NIfTI volumes and per-lesion statistics."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
from numpy.typing import NDArray

from processing.phantom.geometry import SlabGeometry
from processing.phantom.lesions import Lesion
from processing.phantom.protocol import Anatomy
from processing.phantom.simulate import SlabImages

__all__ = [
    "lesion_statistics",
    "nifti_affine_ras",
    "write_json",
    "write_nifti",
    "write_slab_truth",
]

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def nifti_affine_ras(geometry: SlabGeometry) -> NDArray[np.float64]:
    """NIfTI affine: voxel (i, j, k) to RAS mm, from the LPS ``[k, j, i]`` affine."""
    a = geometry.affine_lps
    ijk = np.column_stack([a[:, 2], a[:, 1], a[:, 0], a[:, 3]])
    return _LPS_TO_RAS @ ijk


def write_nifti(path: Path, volume: NDArray, geometry: SlabGeometry) -> None:
    """Write a ``[k, j, i]`` volume as byte-reproducible ``.nii.gz`` (i, j, k order, RAS)."""
    data = np.ascontiguousarray(np.transpose(volume, (2, 1, 0)))
    image = nib.Nifti1Image(data, nifti_affine_ras(geometry))
    image.header.set_xyzt_units("mm")
    image.header.set_qform(image.affine, code=1)
    image.header.set_sform(image.affine, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(image.to_bytes(), compresslevel=6, mtime=0))


def write_slab_truth(
    truth_dir: Path, slab: int, images: SlabImages, geometry: SlabGeometry
) -> None:
    """Write the masks and the true T1 of one slab (``slab<k>_*.nii.gz``)."""
    volumes: dict[str, NDArray] = {
        "cord": images.cord.astype(np.uint8),
        "gm": images.gm.astype(np.uint8),
        "wm": images.wm.astype(np.uint8),
        "csf": images.csf.astype(np.uint8),
        "lesions": images.lesions.astype(np.int16),
        "levels": images.levels.astype(np.uint8),
        "t1_true_ms": images.t1_true_ms.astype(np.float32),
        "b1_true": images.b1.astype(np.float32),
    }
    for name, volume in volumes.items():
        write_nifti(truth_dir / f"slab{slab}_{name}.nii.gz", volume, geometry)


def lesion_statistics(
    lesions: tuple[Lesion, ...],
    slabs: list[tuple[SlabGeometry, SlabImages]],
    anatomy: Anatomy,
) -> list[dict[str, object]]:
    """Per-lesion truth measured on the label masks of all slabs.

    Volume is the mask voxel count times the voxel volume; the centre is the centroid of
    the lesion voxels (LPS mm); extent is the number of slices touched times the slice
    thickness; GM share and composition come from the gm mask.
    """
    out = []
    for lesion in lesions:
        count, gm_count, slices = 0, 0, 0
        volume = 0.0
        centre_sum = np.zeros(3)
        t1_sum = 0.0
        for geometry, images in slabs:
            mask = images.lesions == lesion.lesion_id
            n = int(mask.sum())
            if n == 0:
                continue
            k, j, i = np.nonzero(mask)
            voxel_mm3 = float(abs(np.linalg.det(geometry.affine_lps[:3, :3])))
            count += n
            volume += n * voxel_mm3
            gm_count += int((mask & images.gm).sum())
            slices += int(np.unique(k).size)
            centre_sum += geometry.points_mm(k, j, i).sum(axis=0)
            t1_sum += float(images.t1_true_ms[mask].sum())
        centre = centre_sum / max(count, 1)
        slice_mm = slabs[0][0].slice_mm
        gm_percent = 100.0 * gm_count / count if count else 0.0
        out.append(
            {
                "id": lesion.lesion_id,
                "slab": lesion.slab,
                "voxels": count,
                "volume_mm3": round(volume, 4),
                "centre": [round(float(c), 3) for c in centre],
                "extent_mm": round(slices * slice_mm, 3),
                "location": lesion.location,
                "side": lesion.side,
                "level": int(anatomy.level_at(np.asarray(lesion.z_mm))),
                "composition": "mixed" if gm_count > 0 else "wm_only",
                "designed_composition": lesion.composition,
                "gm_percent": round(gm_percent, 2),
                "mean_t1_ms": round(t1_sum / count, 2) if count else None,
                "t1_factor": round(lesion.t1_factor, 4),
                "ellipsoid_mm": {
                    "z": round(lesion.z_mm, 3),
                    "offset_x": round(lesion.offset_x_mm, 3),
                    "offset_y": round(lesion.offset_y_mm, 3),
                    "radii": [
                        round(lesion.radius_x_mm, 3),
                        round(lesion.radius_y_mm, 3),
                        round(lesion.radius_z_mm, 3),
                    ],
                },
            }
        )
    return out


def write_json(path: Path, payload: object) -> None:
    """Deterministic, human-readable JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
