"""Tissue T1 (7 T) and proton density per material, drawn per subject."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar, Self

import numpy as np
from numpy.typing import NDArray

from processing.phantom.anatomy import N_BASE_MATERIALS, Material
from processing.phantom.lesions import Lesion, lesion_material

__all__ = ["PROTON_DENSITY", "TissueT1", "TissueValues", "draw_tissue_t1", "material_table"]

#: Relative proton density per base material (CSF = 1).
PROTON_DENSITY: dict[Material, float] = {
    Material.AIR: 0.0,
    Material.FAT: 0.90,
    Material.MUSCLE: 0.72,
    Material.BONE: 0.06,
    Material.MARROW: 0.80,
    Material.DISC: 0.75,
    Material.CSF: 1.00,
    Material.WM: 0.70,
    Material.GM: 0.80,
}

#: Population mean T1 at 7 T (ms) and between-subject SD.
_T1_POPULATION_MS: dict[Material, tuple[float, float]] = {
    Material.FAT: (450.0, 20.0),
    Material.MUSCLE: (1600.0, 50.0),
    Material.BONE: (1000.0, 50.0),
    Material.MARROW: (620.0, 40.0),
    Material.DISC: (1350.0, 80.0),
    Material.CSF: (3700.0, 150.0),
    Material.WM: (1190.0, 40.0),
    Material.GM: (1310.0, 40.0),
}


@dataclass(frozen=True)
class TissueValues:
    """One subject's per-material values (ms) before and after diffuse damage.

    Parameters
    ----------
    healthy_ms : dict
        Value per base material name (``"WM"``, ``"GM"``, ...) of the healthy subject.
    diffuse_rise : float
        Relative rise of normal-appearing WM and GM (0 for controls).
    """

    healthy_ms: dict[str, float]
    diffuse_rise: float = 0.0
    #: What the values are (in error messages).
    quantity: ClassVar[str] = "value"

    def __post_init__(self) -> None:
        missing = {m.name for m in Material if m != Material.AIR} - set(self.healthy_ms)
        if missing:
            raise ValueError(f"tissue {self.quantity} missing for {sorted(missing)}")
        if any(not value > 0 for value in self.healthy_ms.values()):
            raise ValueError(f"tissue {self.quantity} values must be positive")
        if not 0.0 <= self.diffuse_rise < 0.5:
            raise ValueError("diffuse_rise must be within [0, 0.5)")

    def value_ms(self, material: Material | int) -> float:
        """Value (ms) of a base material, including the diffuse rise for WM and GM (air: 0)."""
        material = Material(material)
        if material == Material.AIR:
            return 0.0
        value = self.healthy_ms[material.name]
        if material in (Material.WM, Material.GM):
            value *= 1.0 + self.diffuse_rise
        return value

    def with_rise(self, diffuse_rise: float) -> Self:
        """Same tissues with another diffuse rise."""
        return replace(self, diffuse_rise=diffuse_rise)


class TissueT1(TissueValues):
    """One subject's tissue T1 values (ms); see :class:`TissueValues`."""

    quantity = "T1"

    def t1_ms(self, material: Material | int) -> float:
        """T1 (ms) of a base material, including the diffuse rise for WM and GM."""
        return self.value_ms(material)


def draw_tissue_t1(rng: np.random.Generator, diffuse_rise: float = 0.0) -> TissueT1:
    """Draw one subject's T1 values around the 7 T population means.

    Examples
    --------
    >>> t = draw_tissue_t1(np.random.default_rng(0))
    >>> bool(1000 < t.t1_ms(Material.WM) < 1400)
    True
    """
    healthy = {m.name: float(rng.normal(mean, sd)) for m, (mean, sd) in _T1_POPULATION_MS.items()}
    healthy["GM"] = max(healthy["GM"], healthy["WM"] + 40.0)
    return TissueT1(healthy, diffuse_rise)


def material_table(
    tissues: TissueT1, lesions: tuple[Lesion, ...]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """T1 (ms) and proton density of every material code, lesions included.

    Returns
    -------
    t1_ms, pd : ndarray, shape (N_BASE_MATERIALS + 2 * len(lesions),)
        Air has T1 0 and PD 0.
    """
    n = N_BASE_MATERIALS + 2 * len(lesions)
    t1 = np.zeros(n)
    pd = np.zeros(n)
    for m in Material:
        t1[m] = tissues.t1_ms(m)
        pd[m] = PROTON_DENSITY[m]
    for index, lesion in enumerate(lesions):
        for in_gm, base in ((False, Material.WM), (True, Material.GM)):
            code = lesion_material(index, in_gm)
            t1[code] = tissues.t1_ms(base) * lesion.t1_factor
            pd[code] = PROTON_DENSITY[base] * 1.05  # oedema / demyelination: more free water
    return t1, pd
