"""Convert project volumes (``[k, j, i]`` + ``affine_lps``) to and from NIfTI images.

NIfTI stores data as ``(i, j, k)`` and its affine maps ``[i, j, k, 1]`` to RAS mm; DICOM LPS
differs from RAS by flipping the x and y axes. The conversion is a pure axis permutation and a
sign flip, so ``from_nifti(to_nifti(a, A))`` returns ``a`` and ``A`` exactly in memory. A file
written by nibabel keeps the affine as float32 (sform), so after a save/load cycle the affine
matches to float32 precision only.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np

__all__ = ["from_nifti", "to_nifti"]

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_KJI_TO_IJK = np.array(
    [[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float
)  # swaps the first and third index; its own inverse


def _check_affine(affine: np.ndarray) -> np.ndarray:
    affine = np.asarray(affine, dtype=float)
    if affine.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got shape {affine.shape}")
    if not np.all(np.isfinite(affine)):
        raise ValueError("affine contains non-finite values")
    if abs(np.linalg.det(affine[:3, :3])) == 0:
        raise ValueError("affine is singular")
    return affine


def to_nifti(array: np.ndarray, affine_lps: np.ndarray) -> nib.Nifti1Image:
    """Wrap a ``[k, j, i]`` volume as a NIfTI-1 image in RAS.

    Parameters
    ----------
    array : numpy.ndarray
        3-D volume indexed ``[k, j, i]``; its dtype is kept.
    affine_lps : numpy.ndarray
        4x4 voxel ``[k, j, i, 1]`` -> LPS mm.

    Returns
    -------
    nibabel.Nifti1Image
        Data ``(i, j, k)``, affine to RAS, sform and qform code 1 (scanner), spatial
        units mm (``xyzt_units``).

    Examples
    --------
    >>> img = to_nifti(np.zeros((2, 3, 4)), np.eye(4))
    >>> img.shape
    (4, 3, 2)
    """
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"array must be 3-D [k, j, i], got shape {array.shape}")
    affine_ras = _LPS_TO_RAS @ _check_affine(affine_lps) @ _KJI_TO_IJK
    img = nib.Nifti1Image(np.ascontiguousarray(array.transpose(2, 1, 0)), affine_ras)
    # update_affine=False: the header keeps float32 copies, img.affine stays exact
    img.set_qform(affine_ras, code=1, update_affine=False)
    img.set_sform(affine_ras, code=1, update_affine=False)
    img.header.set_xyzt_units("mm", "sec")  # units in the header (BIDS validators ask)
    return img


def from_nifti(img: nib.Nifti1Image) -> tuple[np.ndarray, np.ndarray]:
    """Read a 3-D NIfTI image into a ``[k, j, i]`` array and its ``affine_lps``.

    Parameters
    ----------
    img : nibabel.Nifti1Image
        3-D image (a 4-D image with one volume is accepted); on-disk scaling is applied.

    Returns
    -------
    array : numpy.ndarray
        Volume indexed ``[k, j, i]`` (dtype of the stored data unless scaling applies).
    affine_lps : numpy.ndarray
        4x4 voxel ``[k, j, i, 1]`` -> LPS mm.
    """
    if not isinstance(img, nib.Nifti1Image):
        raise TypeError(f"expected a nibabel Nifti1Image, got {type(img).__name__}")
    data = np.asanyarray(img.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"expected a 3-D NIfTI image, got shape {data.shape}")
    affine_lps = _LPS_TO_RAS @ _check_affine(img.affine) @ _KJI_TO_IJK
    return np.ascontiguousarray(data.transpose(2, 1, 0)), affine_lps
