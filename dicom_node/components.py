"""Which MP2RAGE component a series holds, read from its header.

ImageType carries the component on Siemens and most other scanners; SeriesDescription is a
fallback only (sites rename series). Nothing here touches pixel data.
"""

from __future__ import annotations

import re
from enum import StrEnum

from pydicom.dataset import Dataset

__all__ = ["Component", "classify"]


class Component(StrEnum):
    """Series kinds the service knows."""

    INV1 = "INV1"
    INV2 = "INV2"
    UNI = "UNI"
    T1MAP = "T1MAP"
    B1MAP = "B1MAP"
    T2STAR = "T2STAR"
    PHASE = "PHASE"
    SEG = "SEG"
    OTHER = "OTHER"


_DESCRIPTION_PATTERNS: tuple[tuple[Component, re.Pattern[str]], ...] = (
    (Component.T1MAP, re.compile(r"(^|[_\s-])T1(_?MAP|_Images)?($|[_\s-])", re.IGNORECASE)),
    (Component.UNI, re.compile(r"(^|[_\s-])UNI(_Images|-DEN)?($|[_\s-])", re.IGNORECASE)),
    (Component.INV1, re.compile(r"(^|[_\s-])INV1($|[_\s-])", re.IGNORECASE)),
    (Component.INV2, re.compile(r"(^|[_\s-])INV2($|[_\s-])", re.IGNORECASE)),
    (Component.B1MAP, re.compile(r"(B1(_?MAP)?|TFL_B1|SA2RAGE|DREAM)", re.IGNORECASE)),
    (Component.T2STAR, re.compile(r"(T2\*|T2STAR|ME_?GRE|MEDIC|GRE_ME)", re.IGNORECASE)),
)


def _image_type(ds: Dataset) -> list[str]:
    value = ds.get("ImageType") or ds.get("FrameType") or []
    if isinstance(value, str):
        value = value.split("\\")
    return [str(v).upper() for v in value]


def classify(ds: Dataset) -> Component:
    """Return the component of the series ``ds`` belongs to.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        Any instance of the series (header only is enough).

    Returns
    -------
    Component
        ``Component.OTHER`` when neither ImageType nor SeriesDescription identify it.
    """
    modality = str(ds.get("Modality", "")).upper()
    if modality == "SEG" or ds.get("SOPClassUID") == "1.2.840.10008.5.1.4.1.1.66.4":
        return Component.SEG
    image_type = _image_type(ds)
    tokens = set(image_type)
    # A T1 map derived from UNI may keep the UNI token next to "T1 MAP": the map wins.
    if "T1 MAP" in tokens or "T1MAP" in tokens or "T1_MAP" in tokens:
        return Component.T1MAP
    if "UNI" in tokens:
        return Component.UNI
    if "B1 MAP" in tokens or "B1MAP" in tokens or "FLIP ANGLE MAP" in tokens:
        return Component.B1MAP
    if "INV1" in tokens:
        return Component.INV1
    if "INV2" in tokens:
        return Component.INV2
    if "P" in image_type[2:3] or "PHASE" in tokens:
        return Component.PHASE
    series_description = str(ds.get("SeriesDescription", ""))
    for component, pattern in _DESCRIPTION_PATTERNS:
        if pattern.search(series_description):
            return component
    return Component.OTHER
