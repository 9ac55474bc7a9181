"""Typed, validated reading of the per-exam summary dict (docs/summary-contract.md) for the SR.

Every key the SR uses is optional except where the contract makes it structural (a lesion
needs an ``id``); ``None`` counts as absent (the pipeline writes ``None`` for values that
could not be computed). Wrong types, non-finite numbers and unknown categorical values are
refused with a ``ValueError`` naming the key path, e.g. ``summary['lesions'][0]['side']``.

When ``qc.verdict == "fail"`` the reader withholds everything Z-based: mean Z, % abnormal
voxels, the Z threshold and the Z-based follow-up deltas are set to ``None``, so no writer
can show them by mistake (:attr:`ExamReport.z_withheld`). This holds for the per-slab region
statistics (``summary['slabs'][k]['regions']``) too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "COMPOSITIONS",
    "LESION_SOURCES",
    "LOCATIONS",
    "QC_VERDICTS",
    "SIDES",
    "TRENDS",
    "ExamReport",
    "FollowUp",
    "LesionResult",
    "RegionDelta",
    "RegionResult",
    "read_summary",
]

LOCATIONS = ("posterior", "lateral", "anterior")
SIDES = ("left", "right", "midline")
COMPOSITIONS = ("wm_only", "mixed")
LESION_SOURCES = ("reader", "candidate")
QC_VERDICTS = ("pass", "warn", "fail")
TRENDS = ("worse", "stable", "better")
_LEVEL_NAMES = tuple(f"C{n}" for n in range(1, 8))


@dataclass(frozen=True)
class RegionResult:
    """Statistics of one region (summary key such as ``cord`` or ``gm_dorsal_horns_left``)."""

    key: str
    mean_t1_ms: float | None
    mean_z: float | None
    abnormal_percent: float | None


@dataclass(frozen=True)
class LesionResult:
    """One lesion (reader outline or automatic candidate)."""

    lesion_id: int
    source: str
    segment_number: int | None
    slab: int | None
    volume_mm3: float | None
    extent_mm: float | None
    location: str | None
    side: str | None
    level_name: str | None
    composition: str | None
    gm_percent: float | None
    mean_t1_ms: float | None
    max_t1_ms: float | None


@dataclass(frozen=True)
class RegionDelta:
    """Change of one region since the prior exam (Z-based deltas ``None`` when withheld)."""

    key: str
    delta_abnormal_percent: float | None
    delta_mean_t1_ms: float | None
    delta_mean_z: float | None


@dataclass(frozen=True)
class FollowUp:
    """Comparison with a prior exam of the same patient."""

    prior_study_date: str | None
    trend: str | None
    reasons: tuple[str, ...]
    regions: tuple[RegionDelta, ...]
    lesion_changes: tuple[str, ...]


@dataclass(frozen=True)
class ExamReport:
    """Everything the SR writes, read from one summary.

    ``regions`` are the exam's statistics (all slabs pooled); ``slab_regions`` maps a slab
    number to that slab's own statistics (``summary['slabs'][k]['regions']``, read only for
    entries with a slab number and a series UID); ``n_slabs`` counts ``summary['slabs']``.
    """

    study_instance_uid: str | None
    regions: tuple[RegionResult, ...]
    lesions: tuple[LesionResult, ...]
    lesion_count: int | None
    lesion_load_mm3: float | None
    lesion_gm_share_percent: float | None
    n_slabs: int
    slab_series: dict[int, str]
    slab_regions: dict[int, tuple[RegionResult, ...]]
    b1_corrected: bool | None
    b1_note: str | None
    gm_wm_evidence: tuple[str, ...]
    research_use: str | None
    model_version: str | None
    z_threshold: float | None
    qc_verdict: str | None
    qc_reasons: tuple[str, ...]
    follow_up: FollowUp | None
    coverage: str | None = None

    @property
    def z_withheld(self) -> bool:
        """Whether QC failed, so that no Z-based number may be reported."""
        return self.qc_verdict == "fail"


def _mapping(value: object, where: str, *, required: bool = False) -> Mapping | None:
    if value is None:
        if required:
            raise ValueError(f"{where} is required")
        return None
    if not isinstance(value, Mapping):
        raise ValueError(f"{where} must be a mapping, got {type(value).__name__}")
    return value


def _list(value: object, where: str) -> Sequence:
    if value is None:
        return ()
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise ValueError(f"{where} must be a list, got {type(value).__name__}")
    return value


def _number(value: object, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{where} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{where} must be finite, got {value!r}")
    return float(value)


def _integer(value: object, where: str, *, minimum: int = 1) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{where} must be at least {minimum}, got {value}")
    return int(value)


def _text(value: object, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{where} must be a string, got {value!r}")
    return value.strip() or None


def _choice(value: object, where: str, allowed: tuple[str, ...]) -> str | None:
    text = _text(value, where)
    if text is not None and text not in allowed:
        raise ValueError(f"{where} must be one of {', '.join(allowed)}; got {text!r}")
    return text


def _regions(value: object, where: str, withheld: bool) -> tuple[RegionResult, ...]:
    regions = _mapping(value, where) or {}
    out = []
    for key, stats in regions.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"{where} has a key that is not a name: {key!r}")
        at = f"{where}[{key!r}]"
        stats = _mapping(stats, at, required=True)
        assert stats is not None
        mean_z = _number(stats.get("mean_z"), f"{at}['mean_z']")
        abnormal = _number(stats.get("abnormal_percent"), f"{at}['abnormal_percent']")
        out.append(
            RegionResult(
                key=key,
                mean_t1_ms=_number(stats.get("mean_t1_ms"), f"{at}['mean_t1_ms']"),
                mean_z=None if withheld else mean_z,
                abnormal_percent=None if withheld else abnormal,
            )
        )
    return tuple(out)


def _slabs(
    summary: Mapping, withheld: bool
) -> tuple[int, dict[int, str], dict[int, tuple[RegionResult, ...]]]:
    """Number of slab entries, slab -> series UID, slab -> that slab's own region results."""
    items = _list(summary.get("slabs"), "summary['slabs']")
    series: dict[int, str] = {}
    regions: dict[int, tuple[RegionResult, ...]] = {}
    for index, item in enumerate(items):
        where = f"summary['slabs'][{index}]"
        slab = _mapping(item, where, required=True)
        assert slab is not None
        number = _integer(slab.get("slab"), f"{where}['slab']")
        uid = _text(slab.get("series_instance_uid"), f"{where}['series_instance_uid']")
        own = (
            _regions(slab["regions"], f"{where}['regions']", withheld)
            if slab.get("regions") is not None
            else None
        )
        if number is None or uid is None:
            continue
        if number in series:
            raise ValueError(f"{where}['slab'] repeats slab number {number}")
        series[number] = uid
        if own is not None:
            regions[number] = own
    return len(items), series, regions


def _gm_wm_evidence(summary: Mapping) -> tuple[str, ...]:
    """One line per slab: what its GM/WM split rested on (and why a T2* series was not used)."""
    lines = []
    for index, item in enumerate(_list(summary.get("slabs"), "summary['slabs']")):
        where = f"summary['slabs'][{index}]['gm_wm_evidence']"
        evidence = (
            _mapping(item.get("gm_wm_evidence"), where) if isinstance(item, Mapping) else None
        )
        if not evidence:
            continue
        source = _text(evidence.get("source"), f"{where}['source']") or "T1"
        line = f"slab {item.get('slab', index + 1)}: {source}"
        alignment = _mapping(evidence.get("t2star_alignment"), f"{where}['t2star_alignment']")
        if alignment and alignment.get("shift_mm") is not None and source != "T1":
            shift = ", ".join(f"{float(v):.2f}" for v in alignment["shift_mm"])
            line += f" (GRE aligned in-plane by {shift} mm)"
        note = _text(evidence.get("t2star_note"), f"{where}['t2star_note']")
        if note:
            line += f"; {note}"
        lines.append(line)
    return tuple(lines)


def _lesion(item: object, where: str) -> LesionResult:
    lesion = _mapping(item, where, required=True)
    assert lesion is not None
    lesion_id = _integer(lesion.get("id"), f"{where}['id']")
    if lesion_id is None:
        raise ValueError(f"{where}['id'] is required")
    level = _text(lesion.get("level_name"), f"{where}['level_name']")
    if level is None and lesion.get("level") is not None:
        number = _integer(lesion.get("level"), f"{where}['level']")
        level = f"C{number}"
    if level is not None and level not in _LEVEL_NAMES:
        raise ValueError(f"{where}['level_name'] must be one of C1..C7, got {level!r}")
    return LesionResult(
        lesion_id=lesion_id,
        source=_choice(lesion.get("source"), f"{where}['source']", LESION_SOURCES) or "reader",
        segment_number=_integer(lesion.get("segment_number"), f"{where}['segment_number']"),
        slab=_integer(lesion.get("slab"), f"{where}['slab']"),
        volume_mm3=_number(lesion.get("volume_mm3"), f"{where}['volume_mm3']"),
        extent_mm=_number(lesion.get("extent_mm"), f"{where}['extent_mm']"),
        location=_choice(lesion.get("location"), f"{where}['location']", LOCATIONS),
        side=_choice(lesion.get("side"), f"{where}['side']", SIDES),
        level_name=level,
        composition=_choice(lesion.get("composition"), f"{where}['composition']", COMPOSITIONS),
        gm_percent=_number(lesion.get("gm_percent"), f"{where}['gm_percent']"),
        mean_t1_ms=_number(lesion.get("mean_t1_ms"), f"{where}['mean_t1_ms']"),
        max_t1_ms=_number(lesion.get("max_t1_ms"), f"{where}['max_t1_ms']"),
    )


def _follow_up(summary: Mapping, withheld: bool) -> FollowUp | None:
    follow = _mapping(summary.get("follow_up"), "summary['follow_up']")
    if follow is None:
        return None
    where = "summary['follow_up']"
    deltas = []
    regions = _mapping(follow.get("regions"), f"{where}['regions']") or {}
    for key, change in regions.items():
        at = f"{where}['regions'][{key!r}]"
        change = _mapping(change, at, required=True)
        assert change is not None
        abnormal = _number(change.get("delta_abnormal_percent"), f"{at}['delta_abnormal_percent']")
        delta_z = _number(change.get("delta_mean_z"), f"{at}['delta_mean_z']")
        deltas.append(
            RegionDelta(
                key=str(key),
                delta_abnormal_percent=None if withheld else abnormal,
                delta_mean_t1_ms=_number(
                    change.get("delta_mean_t1_ms"), f"{at}['delta_mean_t1_ms']"
                ),
                delta_mean_z=None if withheld else delta_z,
            )
        )
    changes = []
    for index, item in enumerate(_list(follow.get("lesions"), f"{where}['lesions']")):
        at = f"{where}['lesions'][{index}]"
        change = _mapping(item, at, required=True)
        assert change is not None
        status = _text(change.get("status"), f"{at}['status']") or "unknown"
        current = _integer(change.get("current_id"), f"{at}['current_id']")
        prior = _integer(change.get("prior_id"), f"{at}['prior_id']")
        volumes = [
            _number(change.get(k), f"{at}[{k!r}]")
            for k in ("prior_volume_mm3", "current_volume_mm3")
        ]
        name = f"lesion {current}" if current is not None else f"prior lesion {prior}"
        detail = " -> ".join("-" if v is None else f"{v:g} mm3" for v in volumes)
        changes.append(f"{name}: {status} ({detail})")
    reasons = tuple(
        str(_text(r, f"{where}['reasons'][{i}]") or "")
        for i, r in enumerate(_list(follow.get("reasons"), f"{where}['reasons']"))
    )
    return FollowUp(
        prior_study_date=_text(follow.get("prior_study_date"), f"{where}['prior_study_date']"),
        trend=_choice(follow.get("trend"), f"{where}['trend']", TRENDS),
        reasons=tuple(r for r in reasons if r),
        regions=tuple(deltas),
        lesion_changes=tuple(changes),
    )


def read_summary(summary: Mapping) -> ExamReport:
    """Read and validate what the SR needs from a summary dict.

    Parameters
    ----------
    summary : Mapping
        The per-exam summary (docs/summary-contract.md).

    Returns
    -------
    ExamReport

    Raises
    ------
    TypeError
        If ``summary`` is not a mapping.
    ValueError
        For a value of the wrong type, a non-finite number or an unknown category; the
        message names the key path.

    Examples
    --------
    >>> report = read_summary({"regions": {"cord": {"mean_t1_ms": 1230.0, "mean_z": 0.8}},
    ...                        "qc": {"verdict": "fail", "reasons": ["low SNR"]}})
    >>> report.regions[0].mean_t1_ms, report.regions[0].mean_z, report.qc_reasons
    (1230.0, None, ('low SNR',))
    """
    if not isinstance(summary, Mapping):
        raise TypeError(f"summary must be a mapping, got {type(summary).__name__}")
    qc = _mapping(summary.get("qc"), "summary['qc']") or {}
    verdict = _choice(qc.get("verdict"), "summary['qc']['verdict']", QC_VERDICTS)
    withheld = verdict == "fail"
    reasons = tuple(
        str(_text(r, f"summary['qc']['reasons'][{i}]") or "")
        for i, r in enumerate(_list(qc.get("reasons"), "summary['qc']['reasons']"))
    )
    exam = _mapping(summary.get("exam"), "summary['exam']") or {}
    coverage = _mapping(summary.get("coverage"), "summary['coverage']") or {}
    n_slabs, slab_series, slab_regions = _slabs(summary, withheld)
    lesions = tuple(
        _lesion(item, f"summary['lesions'][{i}]")
        for i, item in enumerate(_list(summary.get("lesions"), "summary['lesions']"))
    )
    ids = [lesion.lesion_id for lesion in lesions]
    if len(set(ids)) != len(ids):
        raise ValueError(f"summary['lesions'] has repeated ids: {sorted(ids)}")
    lesion_summary = _mapping(summary.get("lesion_summary"), "summary['lesion_summary']") or {}
    model = _mapping(summary.get("model"), "summary['model']") or {}
    b1 = summary.get("b1_corrected")
    if b1 is not None and not isinstance(b1, bool):
        raise ValueError(f"summary['b1_corrected'] must be true or false, got {b1!r}")
    threshold = _number(summary.get("z_threshold"), "summary['z_threshold']")
    return ExamReport(
        study_instance_uid=_text(
            exam.get("study_instance_uid"), "summary['exam']['study_instance_uid']"
        ),
        regions=_regions(summary.get("regions"), "summary['regions']", withheld),
        lesions=lesions,
        lesion_count=_integer(
            lesion_summary.get("count"), "summary['lesion_summary']['count']", minimum=0
        ),
        lesion_load_mm3=_number(
            lesion_summary.get("load_mm3"), "summary['lesion_summary']['load_mm3']"
        ),
        lesion_gm_share_percent=_number(
            lesion_summary.get("gm_share_percent"),
            "summary['lesion_summary']['gm_share_percent']",
        ),
        n_slabs=n_slabs,
        slab_series=slab_series,
        slab_regions=slab_regions,
        b1_corrected=b1,
        b1_note=_text(summary.get("b1_note"), "summary['b1_note']"),
        gm_wm_evidence=_gm_wm_evidence(summary),
        research_use=_text(summary.get("research_use"), "summary['research_use']"),
        model_version=_text(model.get("model_version"), "summary['model']['model_version']"),
        z_threshold=None if withheld else threshold,
        qc_verdict=verdict,
        qc_reasons=tuple(r for r in reasons if r),
        follow_up=_follow_up(summary, withheld),
        coverage=_text(coverage.get("statement"), "summary['coverage']['statement']"),
    )
