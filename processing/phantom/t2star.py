"""Tissue T2* (7 T) per material, drawn per subject, for a multi-echo gradient echo (GRE).

Assumed 7 T values (ms, population mean and between-subject SD). Sources: 7 T brain T2* of
about 26-28 ms in white matter and 32-36 ms in grey matter (Peters et al., Magn Reson Imaging
2007;25:748-753) and 7 T cervical-cord multi-echo GRE studies in which cord grey matter is
clearly hyperintense to white matter (Sigmund et al., NMR Biomed 2012;25:891-899; Dula et al.,
Mult Scler 2016;22:320-328); CSF is long but shortened by pulsation and susceptibility in the
canal; fat, muscle, marrow and cortical bone are short at 7 T. The exact numbers are modelling
choices within those ranges, not measurements.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from processing.phantom.anatomy import N_BASE_MATERIALS, Material
from processing.phantom.lesions import Lesion, lesion_material
from processing.phantom.tissues import TissueValues

__all__ = [
    "LESION_T2STAR_PER_T1",
    "TissueT2Star",
    "draw_tissue_t2star",
    "t2star_material_table",
]

#: Population mean T2* at 7 T (ms) and between-subject SD.
_T2STAR_POPULATION_MS: dict[Material, tuple[float, float]] = {
    Material.FAT: (12.0, 1.5),
    Material.MUSCLE: (18.0, 2.0),
    Material.BONE: (1.5, 0.2),
    Material.MARROW: (8.0, 1.0),
    Material.DISC: (25.0, 3.0),
    Material.CSF: (110.0, 15.0),
    Material.WM: (30.0, 1.5),
    Material.GM: (37.5, 1.5),
}

#: Relative T2* rise of a lesion per unit relative T1 rise: a lesion whose T1 is 40 % above
#: its tissue has a T2* about 20 % above it (oedema and demyelination, moderated by iron).
LESION_T2STAR_PER_T1 = 0.5

#: Relative T2* rise of normal-appearing WM and GM per unit diffuse T1 rise.
_DIFFUSE_T2STAR_PER_T1 = 0.5


class TissueT2Star(TissueValues):
    """One subject's tissue T2* values (ms); see :class:`TissueValues`."""

    quantity = "T2*"

    def t2star_ms(self, material: Material | int) -> float:
        """T2* (ms) of a base material, including the diffuse rise for WM and GM (air: 0)."""
        return self.value_ms(material)


def draw_tissue_t2star(rng: np.random.Generator, diffuse_t1_rise: float = 0.0) -> TissueT2Star:
    """Draw one subject's T2* values around the 7 T population means.

    Parameters
    ----------
    rng : numpy.random.Generator
    diffuse_t1_rise : float
        The subject's diffuse T1 rise (:class:`TissueT1`); T2* rises by half of it.

    Examples
    --------
    >>> t = draw_tissue_t2star(np.random.default_rng(0))
    >>> bool(25 < t.t2star_ms(Material.WM) < t.t2star_ms(Material.GM) < 45)
    True
    """
    healthy = {
        m.name: float(max(rng.normal(mean, sd), 0.2 * mean))
        for m, (mean, sd) in _T2STAR_POPULATION_MS.items()
    }
    healthy["GM"] = max(healthy["GM"], healthy["WM"] + 4.0)
    return TissueT2Star(healthy, _DIFFUSE_T2STAR_PER_T1 * diffuse_t1_rise)


def t2star_material_table(
    tissues: TissueT2Star, lesions: tuple[Lesion, ...]
) -> NDArray[np.float64]:
    """T2* (ms) of every material code, lesions included (air 0).

    A lesion's T2* is its tissue's T2* raised by ``LESION_T2STAR_PER_T1`` times the
    lesion's relative T1 rise, so lesions are always longer than the tissue they sit in.
    """
    out = np.zeros(N_BASE_MATERIALS + 2 * len(lesions))
    for m in Material:
        out[m] = tissues.t2star_ms(m)
    for index, lesion in enumerate(lesions):
        factor = 1.0 + LESION_T2STAR_PER_T1 * (lesion.t1_factor - 1.0)
        for in_gm, base in ((False, Material.WM), (True, Material.GM)):
            out[lesion_material(index, in_gm)] = tissues.t2star_ms(base) * factor
    return out
