"""The MP2RAGE protocol of an exam: standard DICOM tags first, a site profile for the rest.

Standard tags carry TR_MP2RAGE (RepetitionTime), TI1/TI2 (InversionTime of the INV1/INV2
series) and the flip angles (FlipAngle). The readout echo spacing, excitations per block and
inversion efficiency live in private headers, so a site writes them once per protocol in a TOML
profile. A value found in neither place is an explicit error, never a silent default.
"""

from __future__ import annotations

import fnmatch
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from processing.mp2rage import MP2RAGEProtocol

__all__ = [
    "HEADER_AGREEMENT_RTOL",
    "PROTOCOL_FIELDS",
    "MissingProtocolValuesError",
    "ProtocolError",
    "SiteProtocol",
    "header_number",
    "load_site_protocols",
    "match_profile",
    "protocol_from_headers",
    "protocol_from_profile",
]

#: Every value of an MP2RAGE protocol, in the order a site writes them.
PROTOCOL_FIELDS = (
    "tr_mp2rage_s",
    "ti1_s",
    "ti2_s",
    "flip1_deg",
    "flip2_deg",
    "echo_spacing_s",
    "n_excitations",
    "efficiency",
)
#: Relative tolerance between a header value of a T1 map and its site profile entry.
HEADER_AGREEMENT_RTOL = 0.01


class ProtocolError(ValueError):
    """A protocol value is missing or inconsistent."""


class MissingProtocolValuesError(ProtocolError):
    """Protocol values found in neither the headers nor the site profile.

    Attributes
    ----------
    missing : tuple of str
        The names of :data:`PROTOCOL_FIELDS` that are missing.
    """

    def __init__(self, message: str, missing: tuple[str, ...]) -> None:
        super().__init__(message)
        self.missing = missing


@dataclass(frozen=True)
class SiteProtocol:
    """Values of one protocol that the DICOM headers do not carry.

    ``protocol_name`` is matched against ProtocolName (shell wildcards allowed, ``*`` for a
    site-wide default). Timing fields other than echo spacing, excitations and efficiency
    are only used where the headers lack them. ``b1_map_scale`` is the stored B1-map value
    that means "actual flip angle = nominal" (e.g. 800 for a map of flip angle x 10 at a
    nominal 80 deg); without it a B1 map is not used.
    """

    protocol_name: str
    echo_spacing_s: float | None = None
    n_excitations: int | None = None
    efficiency: float | None = None
    n_before_centre: int | None = None
    tr_mp2rage_s: float | None = None
    ti1_s: float | None = None
    ti2_s: float | None = None
    flip1_deg: float | None = None
    flip2_deg: float | None = None
    b1_map_scale: float | None = None

    def __post_init__(self) -> None:
        if not self.protocol_name:
            raise ValueError("site protocol entry needs a protocol_name")
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "protocol_name" and value is not None and not value > 0:
                if f.name == "n_before_centre" and value == 0:
                    continue
                raise ValueError(f"site protocol {self.protocol_name!r}: {f.name} must be > 0")


def load_site_protocols(path: Path | None) -> list[SiteProtocol]:
    """Read the ``[[protocol]]`` entries of a site profile (empty list for ``None``).

    Raises
    ------
    ValueError
        If the file has unknown keys or invalid values (the message names the entry).
    """
    if path is None:
        return []
    with Path(path).open("rb") as fh:
        data = tomllib.load(fh)
    known = {f.name for f in fields(SiteProtocol)}
    out = []
    for i, entry in enumerate(data.get("protocol", [])):
        unknown = set(entry) - known
        if unknown:
            raise ValueError(f"{path}: protocol entry {i + 1} has unknown keys {sorted(unknown)}")
        out.append(SiteProtocol(**entry))
    return out


def _lookup(ds: Dataset | None, keyword: str) -> Any:
    """A header value, looked up at the top level and in functional groups (Enhanced MR)."""
    if ds is None:
        return None
    value = ds.get(keyword)
    if value not in (None, ""):
        return value
    for group_keyword in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        groups = ds.get(group_keyword)
        if not groups:
            continue
        for item in groups[0]:
            if item.VR != "SQ":
                continue
            for nested in item.value:
                value = nested.get(keyword)
                if value not in (None, ""):
                    return value
    return None


def _first_float(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        if isinstance(value, list | tuple | MultiValue):
            value = value[0]
        number = float(value)
    except (TypeError, ValueError, IndexError):
        return None
    return number if number > 0 else None


def header_number(ds: Dataset | None, keyword: str) -> float | None:
    """A positive number from a header (top level or Enhanced MR functional groups).

    The first value of a multi-valued element; ``None`` when absent, empty, not a number or
    not positive.
    """
    return _first_float(_lookup(ds, keyword))


def match_profile(profiles: list[SiteProtocol], protocol_name: str) -> SiteProtocol | None:
    """The profile entry for a ProtocolName: exact name first, then wildcards, ``*`` last."""
    exact = [p for p in profiles if p.protocol_name == protocol_name]
    if exact:
        return exact[0]
    patterns = [p for p in profiles if fnmatch.fnmatchcase(protocol_name, p.protocol_name)]
    patterns.sort(key=lambda p: p.protocol_name == "*")
    return patterns[0] if patterns else None


def protocol_from_headers(
    *,
    uni: Dataset,
    inv1: Dataset | None,
    inv2: Dataset | None,
    profiles: list[SiteProtocol],
) -> tuple[MP2RAGEProtocol, dict[str, str]]:
    """Assemble the MP2RAGE protocol of one acquisition.

    Parameters
    ----------
    uni, inv1, inv2 : pydicom.dataset.Dataset
        One instance (header) of the UNI, INV1 and INV2 series; INV1/INV2 may be missing.
    profiles : list of SiteProtocol
        The site's protocol profile.

    Returns
    -------
    protocol : MP2RAGEProtocol
    sources : dict
        For each value, where it came from (``"header"`` or ``"site profile"``).

    Raises
    ------
    MissingProtocolValuesError
        Naming every value found in neither the headers nor the profile.
    ProtocolError
        For an inconsistency.
    """
    protocol_name = str(uni.get("ProtocolName", "") or uni.get("SeriesDescription", ""))
    profile = match_profile(profiles, protocol_name)
    from_header: dict[str, float | None] = {
        "tr_mp2rage_s": _ms_to_s(
            _lookup(uni, "RepetitionTime") or _lookup(inv1, "RepetitionTime")
        ),
        "ti1_s": _ms_to_s(_lookup(inv1, "InversionTime") or _lookup(inv1, "InversionTimes")),
        "ti2_s": _ms_to_s(_lookup(inv2, "InversionTime") or _lookup(inv2, "InversionTimes")),
        "flip1_deg": _first_float(_lookup(inv1, "FlipAngle")),
        "flip2_deg": _first_float(_lookup(inv2, "FlipAngle")),
        "echo_spacing_s": None,
        "n_excitations": None,
        "efficiency": None,
    }
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    missing: list[str] = []
    for name, header_value in from_header.items():
        profile_value = getattr(profile, name) if profile else None
        if header_value is not None:
            values[name], sources[name] = header_value, "header"
        elif profile_value is not None:
            values[name], sources[name] = profile_value, "site profile"
        else:
            missing.append(name)
    if missing:
        where = (
            f"site protocol entry {profile.protocol_name!r}"
            if profile
            else f"no site protocol entry matches ProtocolName {protocol_name!r}"
        )
        raise MissingProtocolValuesError(
            "MP2RAGE protocol value(s) missing: "
            + ", ".join(missing)
            + f" (not in the DICOM headers; {where}; set them in the site_protocols file)",
            tuple(missing),
        )
    if profile and profile.n_before_centre is not None:
        values["n_before_centre"] = profile.n_before_centre
        sources["n_before_centre"] = "site profile"
    values["n_excitations"] = int(values["n_excitations"])
    try:
        protocol = MP2RAGEProtocol(**values)
    except ValueError as exc:
        raise ProtocolError(f"MP2RAGE protocol is inconsistent: {exc}") from exc
    return protocol, sources


def _ms_to_s(value: Any) -> float | None:
    number = _first_float(value)
    return None if number is None else number / 1000.0


def protocol_from_profile(
    t1map: Dataset, profiles: list[SiteProtocol]
) -> tuple[MP2RAGEProtocol, SiteProtocol]:
    """The MP2RAGE protocol of an exam that has only the scanner's T1 map.

    Without UNI, INV1 and INV2 the headers cannot give TI1, TI2 and both flip angles, so the
    site profile entry matching the T1 map's ProtocolName must give every value
    (:data:`PROTOCOL_FIELDS`). What the T1 map's header does carry must agree with it:
    RepetitionTime with ``tr_mp2rage_s``, FlipAngle with one of the two flip angles (within
    :data:`HEADER_AGREEMENT_RTOL`).

    Parameters
    ----------
    t1map : pydicom.dataset.Dataset
        One instance (header) of the scanner T1 map series.
    profiles : list of SiteProtocol
        The site's protocol profile.

    Returns
    -------
    protocol : MP2RAGEProtocol
    profile : SiteProtocol
        The entry it came from.

    Raises
    ------
    ProtocolError
        When no entry matches, the entry lacks values (the message names the entry to add or
        complete and every missing key), the header disagrees, or the values are inconsistent.
    """
    protocol_name = str(t1map.get("ProtocolName", "") or t1map.get("SeriesDescription", ""))
    profile = match_profile(profiles, protocol_name)
    keys = ", ".join(PROTOCOL_FIELDS)
    if profile is None:
        raise ProtocolError(
            f"the exam has only a scanner T1 map and no site protocol entry matches its "
            f"ProtocolName {protocol_name!r}: add a [[protocol]] entry with protocol_name = "
            f"{protocol_name!r} and {keys} to the site_protocols file"
        )
    missing = [name for name in PROTOCOL_FIELDS if getattr(profile, name) is None]
    if missing:
        raise ProtocolError(
            f"the exam has only a scanner T1 map, so site protocol entry "
            f"{profile.protocol_name!r} (matched by ProtocolName {protocol_name!r}) must give "
            f"the whole MP2RAGE protocol; add {', '.join(missing)} to it (or an entry with "
            f"protocol_name = {protocol_name!r} and {keys})"
        )
    values: dict[str, Any] = {name: getattr(profile, name) for name in PROTOCOL_FIELDS}
    values["n_excitations"] = int(values["n_excitations"])
    if profile.n_before_centre is not None:
        values["n_before_centre"] = profile.n_before_centre
    disagreements = []
    tr_ms = _first_float(_lookup(t1map, "RepetitionTime"))
    if tr_ms is not None and not _close(tr_ms / 1000.0, values["tr_mp2rage_s"]):
        disagreements.append(
            f"RepetitionTime {tr_ms:g} ms (T1 map header) vs tr_mp2rage_s "
            f"{values['tr_mp2rage_s']:g} s (profile)"
        )
    flip_deg = _first_float(_lookup(t1map, "FlipAngle"))
    flips = (values["flip1_deg"], values["flip2_deg"])
    if flip_deg is not None and not any(_close(flip_deg, f) for f in flips):
        disagreements.append(
            f"FlipAngle {flip_deg:g} deg (T1 map header) is neither flip1_deg {flips[0]:g} "
            f"nor flip2_deg {flips[1]:g} (profile)"
        )
    if disagreements:
        raise ProtocolError(
            f"the scanner T1 map's header disagrees with site protocol entry "
            f"{profile.protocol_name!r}: " + "; ".join(disagreements)
        )
    try:
        protocol = MP2RAGEProtocol(**values)
    except ValueError as exc:
        raise ProtocolError(
            f"site protocol entry {profile.protocol_name!r} is not a consistent MP2RAGE "
            f"protocol: {exc}"
        ) from exc
    return protocol, profile


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= HEADER_AGREEMENT_RTOL * max(abs(a), abs(b))
