"""T1 (ms) of one slab: from UNI and the protocol's lookup table (B1-corrected with a B1 map of
any grid), or the scanner's own T1 map."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
from numpy.typing import NDArray

from processing.mp2rage import MP2RAGEProtocol, T1LookupTable, stored_to_uni, t1_from_uni
from service.inputs.consistency import SLAB_COMPONENTS, missing_series_text
from service.inputs.exam import ExamError, Slab
from service.inputs.partners import describe_grid, partner_on_grid
from service.inputs.protocol import (
    MissingProtocolValuesError,
    ProtocolError,
    SiteProtocol,
    match_profile,
    protocol_from_headers,
)
from service.inputs.volumes import same_grid

__all__ = ["B1_TABLE_VALUES", "slab_t1"]


@lru_cache(maxsize=16)
def _lookup_table(protocol: MP2RAGEProtocol) -> T1LookupTable:
    return T1LookupTable.build(protocol)


#: Relative B1 values of the 2-D (T1 x B1) table: 0.5 to 1.5 in steps of 0.025.
B1_TABLE_VALUES = tuple(np.round(np.arange(0.5, 1.5001, 0.025), 3))


@lru_cache(maxsize=8)
def _b1_lookup_table(protocol: MP2RAGEProtocol) -> T1LookupTable:
    return T1LookupTable.build(protocol, b1=B1_TABLE_VALUES)


def slab_t1(
    slab: Slab, profiles: list[SiteProtocol]
) -> tuple[NDArray[np.float64], dict[str, Any], MP2RAGEProtocol | None]:
    """T1 (ms) of one slab from UNI and the protocol, or the scanner's map without UNI.

    Returns
    -------
    t1_ms, info, protocol
        ``protocol`` is None when the scanner's T1 map was used.

    Raises
    ------
    ExamError
        If the protocol values are missing or inconsistent. When values are missing because
        the INV1 or INV2 series is, the message names the missing series (the values the
        site profile lacks as well are added only when no series could give them).
    """
    if slab.uni is None:
        assert slab.t1map is not None
        return slab.t1map.array.astype(np.float64), {"t1_source": "scanner T1 map"}, None
    try:
        protocol, sources = protocol_from_headers(
            uni=slab.uni.datasets[0],
            inv1=slab.inv1.datasets[0] if slab.inv1 else None,
            inv2=slab.inv2.datasets[0] if slab.inv2 else None,
            profiles=profiles,
        )
    except MissingProtocolValuesError as exc:
        raise ExamError(_missing_text(slab, exc)) from exc
    except ProtocolError as exc:
        raise ExamError(str(exc)) from exc
    absent = [name for name in ("inv1", "inv2") if getattr(slab, name) is None]
    if absent:
        slab.qc_notes.append(
            missing_series_text(slab.index, absent, _received(slab))
            + "; their protocol values came from the site profile"
        )
    table = _lookup_table(protocol)
    uni = stored_to_uni(slab.uni.array)
    t1_ms = t1_from_uni(uni, table) * 1000.0
    t1_ms, b1_corrected, b1_note = _b1_correct(slab, uni, t1_ms, protocol, profiles)
    info = {
        "t1_source": "UNI + protocol lookup table",
        "b1_corrected": b1_corrected,
        "b1_note": b1_note,
        "protocol": {**protocol.as_dict(), "sources": sources},
        "lookup_t1_range_ms": [
            round(float(v) * 1000, 1) for v in table.monotonic_part()[0][[0, -1]]
        ],
    }
    if slab.notes:
        info["partner_notes"] = list(slab.notes)
    return t1_ms, info, protocol


#: Protocol values that the headers of INV1 and INV2 give.
_FROM_SERIES = {"inv1": ("ti1_s", "flip1_deg"), "inv2": ("ti2_s", "flip2_deg")}


def _received(slab: Slab) -> list[str]:
    return [name for name in SLAB_COMPONENTS if getattr(slab, name) is not None]


def _missing_text(slab: Slab, exc: MissingProtocolValuesError) -> str:
    """The missing series when they are why protocol values are missing, else ``exc``."""
    absent = [name for name in ("inv1", "inv2") if getattr(slab, name) is None]
    from_series = {value for name in absent for value in _FROM_SERIES[name]}
    if not absent or not from_series & set(exc.missing):
        return str(exc)
    text = (
        missing_series_text(slab.index, absent, _received(slab))
        + " (T1 from UNI needs the inversion times and flip angles their headers carry)"
    )
    if set(exc.missing) - from_series:
        text += f"; also: {exc}"
    return text


def _b1_correct(
    slab: Slab,
    uni: NDArray[np.float64],
    t1_ms: NDArray[np.float64],
    protocol: MP2RAGEProtocol,
    profiles: list[SiteProtocol],
) -> tuple[NDArray[np.float64], bool, str]:
    """T1 corrected for B1+ where the slab's B1 map gives a value; the note says how much.

    A B1 map on another grid is resampled onto the UNI grid (trilinear, antialiased); stored
    values <= 0 mean "not measured". Voxels the map does not cover, or whose B1 is outside the
    2-D table, keep the uncorrected T1.
    """
    assert slab.uni is not None
    if slab.b1map is None:
        unused = [note for note in slab.notes if note.startswith("B1 map")]
        if unused:
            return t1_ms, False, "; ".join(unused) + "; T1 not corrected for B1+"
        return t1_ms, False, "T1 not corrected for B1+ (no B1 map)"
    profile = match_profile(profiles, str(slab.uni.datasets[0].get("ProtocolName", "")))
    scale = profile.b1_map_scale if profile else None
    if scale is None:
        return (
            t1_ms,
            False,
            "B1 map received but not used: b1_map_scale is not set in the site protocol "
            "profile; T1 not corrected for B1+",
        )
    stored = slab.b1map.array
    measured = np.where(stored > 0, stored, np.nan)
    relative_b1, covered = partner_on_grid(slab.b1map, slab.uni, values=measured)
    relative_b1 /= scale
    corrected = t1_from_uni(uni, _b1_lookup_table(protocol), b1=relative_b1) * 1000.0
    usable = np.isfinite(corrected)
    has_b1 = np.isfinite(relative_b1)
    inside = float(usable[has_b1].mean()) if has_b1.any() else 0.0
    if not usable.any():
        return (
            t1_ms,
            False,
            f"B1 map received but not used: it gives no usable B1 value on the slab "
            f"({100 * covered:.0f} % of voxels covered); T1 not corrected for B1+",
        )
    grid = (
        "same grid"
        if same_grid(slab.b1map, slab.uni)
        else f"resampled from {describe_grid(slab.b1map)}"
    )
    note = (
        f"T1 corrected for B1+ with the B1 map ({grid}; {100 * covered:.0f} % of voxels "
        f"covered, {100 * inside:.0f} % of those inside the table's range)"
    )
    if covered < 0.995:
        note += "; voxels outside the B1 map are not corrected"
    return np.where(usable, corrected, t1_ms), True, note
