"""Build the reference data cordt1 ships (service/data/) from the public sets in shared/data.

Run once by a developer when the source data change:
``PYTHONPATH=. python scripts/make_reference_data.py ../shared/data service/data``.

- ``pam50_cervical.npz``: the PAM50 template and atlas (De Leener et al., NeuroImage 2018;
  MIT, NeuroPoly) cut to C1-T1 and to a 30 x 30 mm box around the straight cord, at the
  template's 0.5 mm: cord, CSF, GM and WM probabilities, vertebral levels, disc labels and the
  12 reporting regions (dorsal columns, lateral and ventral funiculi, ventral horns,
  intermediate zone and dorsal horns, left and right) as probabilities summed from the atlas.
- ``pam50_priors.npz``: the PAM50 GM probability and the 12 region probabilities mapped into
  the project's normalised cord coordinates and averaged per vertebral level (64 x 64 cells,
  C1..T1; :func:`processing.atlas.pam50_priors_from_atlas`), made from ``pam50_cervical.npz``;
  shipped precomputed because building it takes about a second per process.
- ``neck_t2s.npz``: one real neck (Spinal Cord Toolbox test data, MIT, NeuroPoly): the
  uncropped axial T2*-weighted GRE (0.5 x 0.5 x 7.5 mm) and its manual GM outline.

Arrays are stored in NIfTI voxel order (i, j, k) with their RAS affine.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from service.pipeline.atlas import build_pam50_priors, save_pam50_priors
from service.pipeline.reference_data import read_pam50

#: Reporting region -> PAM50 atlas tract IDs (info_label.txt), left then right.
REGION_TRACTS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "wm_dorsal_columns": ((0, 2), (1, 3)),
    "wm_lateral_funiculi": ((4, 6, 8, 10, 12), (5, 7, 9, 11, 13)),
    "wm_ventral_funiculi": (
        (14, 16, 18, 20, 22, 24, 26, 28),
        (15, 17, 19, 21, 23, 25, 27, 29),
    ),
    "gm_ventral_horns": ((30,), (31,)),
    "gm_intermediate_zone": ((32,), (33,)),
    "gm_dorsal_horns": ((34,), (35,)),
}

_Z = slice(686, 991)  # T1 (level 8) to the top of C1
_XY = slice(40, 101)


def _crop(img: nib.Nifti1Image) -> tuple[np.ndarray, np.ndarray]:
    data = np.asarray(img.dataobj)[_XY, _XY, _Z]
    affine = img.affine @ np.array(
        [[1, 0, 0, _XY.start], [0, 1, 0, _XY.start], [0, 0, 1, _Z.start], [0, 0, 0, 1]]
    )
    return data, affine


def _probability_u8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(np.asarray(values, dtype=np.float64) * 255), 0, 255).astype(np.uint8)


def build_pam50(source: Path, out: Path) -> None:
    template = source / "pam50" / "template"
    atlas = source / "pam50" / "atlas"
    arrays: dict[str, np.ndarray] = {}
    for name, key in (("cord", "cord"), ("csf", "csf"), ("levels", "levels")):
        data, affine = _crop(nib.load(template / f"PAM50_{name}.nii.gz"))
        arrays[key] = data.astype(np.uint8)
    disc, _ = _crop(nib.load(template / "PAM50_label_disc.nii.gz"))
    arrays["disc_ijk_label"] = np.array(
        [[*ijk, int(disc[tuple(ijk)])] for ijk in np.argwhere(disc > 0)], dtype=np.int16
    )
    for name in ("gm", "wm"):
        data, _ = _crop(nib.load(template / f"PAM50_{name}.nii.gz"))
        arrays[name] = _probability_u8(data)
    names, probs = [], []
    for region, sides in REGION_TRACTS.items():
        for side, ids in zip(("left", "right"), sides, strict=True):
            total = sum(_crop(nib.load(atlas / f"PAM50_atlas_{i:02d}.nii.gz"))[0] for i in ids)
            names.append(f"{region}_{side}")
            probs.append(_probability_u8(total))
    arrays["regions"] = np.stack(probs)
    arrays["region_keys"] = np.array(names)
    arrays["affine_ras"] = affine
    np.savez_compressed(out / "pam50_cervical.npz", **arrays)


def build_neck(source: Path, out: Path) -> None:
    """The uncropped real neck and its manual GM outline (both on the same grid).

    The cropped image's cord outline (``t2s_seg``) is not shipped: its header places it 4-6 mm
    off the cord seen on the uncropped grid, and the cropped image matches no in-plane shift of
    the uncropped one well, so it cannot be carried over.
    """
    folder = source / "sct-testing" / "t2s"
    full = nib.load(folder / "t2s_uncropped.nii.gz")
    gm = np.asarray(nib.load(folder / "t2s_uncropped_gmseg_manual.nii.gz").dataobj) > 0
    np.savez_compressed(
        out / "neck_t2s.npz",
        image=np.asarray(full.dataobj).astype(np.uint8),
        gm=gm,
        affine_ras=full.affine,
    )


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: make_reference_data.py SHARED_DATA_DIR OUT_DIR", file=sys.stderr)
        return 2
    source, out = Path(argv[0]), Path(argv[1])
    out.mkdir(parents=True, exist_ok=True)
    build_pam50(source, out)
    priors = build_pam50_priors(read_pam50(out / "pam50_cervical.npz"))
    save_pam50_priors(priors, out / "pam50_priors.npz")
    build_neck(source, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
