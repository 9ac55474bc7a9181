"""Which MP2RAGE component a series holds, read from its header.

ImageType carries the component on Siemens and most other scanners; SeriesDescription is a
fallback (sites rename series). A series neither names is still recognised as T2*-weighted
when its header describes a multi-echo gradient echo without inversion (see
:func:`is_multi_echo_gre`). Nothing here touches pixel data.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from enum import StrEnum

from pydicom.dataset import Dataset

from dicom_node.header_values import HeaderValues

__all__ = [
    "Component",
    "classify",
    "classify_header",
    "classify_series",
    "echo_times_ms",
    "is_gradient_echo",
    "is_multi_echo_gre",
]


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


def _image_type(values: HeaderValues) -> list[str]:
    value = values.get("ImageType") or values.get("FrameType") or []
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
    return classify_header(HeaderValues(ds))


def classify_header(values: HeaderValues) -> Component:
    """Return the component as :func:`classify` does, from a reader of the header's values.

    Parameters
    ----------
    values : HeaderValues
        Values of any instance of the series.

    Returns
    -------
    Component
    """
    modality = str(values.get("Modality", "")).upper()
    if modality == "SEG" or values.get("SOPClassUID") == "1.2.840.10008.5.1.4.1.1.66.4":
        return Component.SEG
    image_type = _image_type(values)
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
    series_description = str(values.get("SeriesDescription", ""))
    for component, pattern in _DESCRIPTION_PATTERNS:
        if pattern.search(series_description):
            return component
    # the first checks of is_multi_echo_gre, on values read cheaply (most series end here)
    if _NOT_T2STAR_DESCRIPTION.search(series_description):
        return Component.OTHER
    if not _declares_gradient_echo(
        values.get("ScanningSequence"), values.get("EchoPulseSequence")
    ):
        return Component.OTHER
    if is_multi_echo_gre([values.dataset]):
        return Component.T2STAR
    return Component.OTHER


def classify_series(headers: Sequence[Dataset]) -> Component:
    """Return the component of a series from several of its instances (headers only).

    The first header decides, as :func:`classify` does. A series it leaves as ``OTHER`` is
    T2*-weighted when its instances together show several echoes of a gradient echo (the
    first echo of a legacy multi-echo series carries EchoNumbers 1 and alone looks
    single-echo).

    Parameters
    ----------
    headers : sequence of pydicom.dataset.Dataset
        Instances of one series (at least one).

    Returns
    -------
    Component

    Raises
    ------
    ValueError
        If ``headers`` is empty.
    """
    if not headers:
        raise ValueError("classify_series needs at least one header")
    component = classify(headers[0])
    if component is Component.OTHER and is_multi_echo_gre(headers):
        return Component.T2STAR
    return component


#: Descriptions of GRE series that have several echoes but are not T2*-weighted images.
_NOT_T2STAR_DESCRIPTION = re.compile(r"(FIELD_?MAP|FIELDMAP|B0_?MAP|\bB0\b)", re.IGNORECASE)


def _words(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip().upper() for v in value.split("\\")]
    try:
        return [str(v).strip().upper() for v in value]  # type: ignore[attr-defined]
    except TypeError:
        return [str(value).strip().upper()]


def _integer(value: object) -> int | None:
    try:
        return int(float(_words(value)[0])) if _words(value) else None
    except ValueError:
        return None


def _nested(ds: Dataset, group_keyword: str, keyword: str) -> Iterator[object]:
    """Values of ``keyword`` inside the functional groups of an Enhanced MR instance."""
    for group in ds.get(group_keyword) or []:
        for element in group:
            if element.VR != "SQ":
                continue
            for item in element.value:
                value = item.get(keyword)
                if value not in (None, ""):
                    yield value


def echo_times_ms(ds: Dataset) -> list[float]:
    """Every distinct echo time (ms) one instance declares, sorted.

    EchoTime (0018,0081) of a single-frame instance, or the EffectiveEchoTime (0018,9082) of
    each frame's MR Echo Sequence in an Enhanced MR instance (shared or per-frame groups).

    Examples
    --------
    >>> ds = Dataset()
    >>> ds.EchoTime = "4.5"
    >>> echo_times_ms(ds)
    [4.5]
    """
    found: set[float] = set()
    values: list[object] = [ds.get("EchoTime")]
    for group_keyword in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        values.extend(_nested(ds, group_keyword, "EffectiveEchoTime"))
    for value in values:
        for word in _words(value):
            try:
                found.add(round(float(word), 4))
            except ValueError:
                continue
    return sorted(t for t in found if t > 0)


def is_gradient_echo(ds: Dataset) -> bool:
    """Whether an instance is a gradient echo without inversion (any number of echoes).

    ScanningSequence contains ``GR`` (or EchoPulseSequence is ``GRADIENT``), and neither
    ScanningSequence ``IR``, InversionRecovery ``YES`` nor an inversion time is present (top
    level or in the functional groups of an Enhanced MR instance).
    """
    scanning = ds.get("ScanningSequence")
    if not _declares_gradient_echo(scanning, ds.get("EchoPulseSequence")):
        return False
    if "IR" in _words(scanning) or "YES" in _words(ds.get("InversionRecovery")):
        return False
    if ds.get("InversionTime") not in (None, ""):
        return False
    for group_keyword in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        if any(True for _ in _nested(ds, group_keyword, "InversionTimes")):
            return False
        if any("YES" in _words(v) for v in _nested(ds, group_keyword, "InversionRecovery")):
            return False
    return True


def _declares_gradient_echo(scanning_sequence: object, echo_pulse_sequence: object) -> bool:
    """ScanningSequence contains ``GR`` or EchoPulseSequence is ``GRADIENT``."""
    return "GR" in _words(scanning_sequence) or "GRADIENT" in _words(echo_pulse_sequence)


def is_multi_echo_gre(headers: Sequence[Dataset]) -> bool:
    """Whether instances of one series show a gradient echo with two or more echoes.

    Gradient echo: ScanningSequence contains ``GR`` (or EchoPulseSequence is ``GRADIENT``),
    without ``IR``, InversionRecovery ``YES`` or an inversion time. Two or more echoes:
    EchoNumbers above 1, EchoTrainLength above 1, or several distinct echo times among the
    instances (and the frames of an Enhanced MR instance). Field-map series (B0) are excluded
    by their description.

    Parameters
    ----------
    headers : sequence of pydicom.dataset.Dataset
        One or more instances of the same series.

    Returns
    -------
    bool
    """
    if not headers:
        return False
    first = headers[0]
    if _NOT_T2STAR_DESCRIPTION.search(str(first.get("SeriesDescription", ""))):
        return False
    if not is_gradient_echo(first):
        return False
    times: set[float] = set()
    for ds in headers:
        if (_integer(ds.get("EchoNumbers")) or 1) > 1:
            return True
        if (_integer(ds.get("EchoTrainLength")) or 1) > 1:
            return True
        times.update(echo_times_ms(ds))
    return len(times) > 1
