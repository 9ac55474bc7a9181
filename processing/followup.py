"""Follow-up: compare two exams of one patient (regions, lesions, overall trend).

Inputs are the JSON-like summaries of each exam, so exams on different grids compare:

``{"regions": {key: {"mean_t1_ms", "abnormal_percent", "mean_z"}},
"lesions": [{"id", "volume_mm3", "centre"}, ...]}``

Lesion ``centre`` values must share one coordinate frame across the two exams: template
coordinates (e.g. ``(slab, s, u, v)``) or LPS mm when both exams share a frame of reference.
``axis_scale`` turns them into comparable distances (e.g. a large scale on ``slab`` forbids
matches across slabs). :class:`processing.lesions.LesionStats` entries are accepted too
(their ``centre_lps_mm`` is used).

Rules (all thresholds are parameters of :func:`compare`):

- lesions are paired one-to-one by smallest total distance (Hungarian assignment), pairs
  farther apart than ``max_match_distance`` are not pairs;
- a pair is *enlarged* when the volume grew by at least ``enlarge_fraction`` (25 %) *and*
  by at least ``min_change_mm3`` (3 mm^3, about 8 voxels of 0.3 x 0.3 x 4 mm: below that a
  one-voxel-wide outline change on a small lesion would count), *shrunk* by the mirror
  rule (volume / 1.25 and the same absolute change), else *stable*; an unpaired current
  lesion is *new*, an unpaired prior lesion *resolved*;
- overall trend: "worse" if any lesion is new or enlarged, or the ``trend_key`` region's
  abnormal share rose by at least ``abnormal_margin_pp`` percentage points; else "better"
  if that share fell by at least the margin, or a lesion shrank or resolved while the
  share did not rise by the margin; else "stable".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import linear_sum_assignment

from processing.lesions import LesionStats

__all__ = ["FollowUp", "LesionChange", "RegionChange", "compare"]

Status = Literal["new", "enlarged", "stable", "shrunk", "resolved"]
Trend = Literal["worse", "stable", "better"]
_REGION_FIELDS = ("mean_t1_ms", "abnormal_percent", "mean_z")


@dataclass(frozen=True)
class RegionChange:
    """Change of one region's statistics (current minus prior; None when unknown)."""

    key: str
    prior: dict[str, float | None]
    current: dict[str, float | None]
    delta_abnormal_percent: float | None
    delta_mean_t1_ms: float | None
    delta_mean_z: float | None


@dataclass(frozen=True)
class LesionChange:
    """One lesion followed from the prior to the current exam."""

    status: Status
    prior_id: int | None
    current_id: int | None
    prior_volume_mm3: float | None
    current_volume_mm3: float | None
    distance: float | None  # between the paired centres, in (scaled) frame units

    @property
    def volume_change_percent(self) -> float | None:
        """Relative volume change (%) of a pair, None otherwise."""
        if self.prior_volume_mm3 is None or self.current_volume_mm3 is None:
            return None
        if self.prior_volume_mm3 <= 0:
            return None
        return 100.0 * (self.current_volume_mm3 / self.prior_volume_mm3 - 1.0)


@dataclass(frozen=True)
class FollowUp:
    """Result of :func:`compare`."""

    regions: dict[str, RegionChange]
    lesions: list[LesionChange]
    trend: Trend
    reasons: list[str] = field(default_factory=list)

    def ids(self, status: Status) -> list[int]:
        """Lesion ids with ``status`` (current ids; prior ids for "resolved")."""
        out = []
        for change in self.lesions:
            if change.status == status:
                lesion_id = change.prior_id if status == "resolved" else change.current_id
                out.append(int(lesion_id))  # type: ignore[arg-type]
        return sorted(out)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready summary (for summary.json)."""

        def _round(value: float | None) -> float | None:
            return None if value is None else round(value, 3)

        return {
            "trend": self.trend,
            "reasons": list(self.reasons),
            "lesions": {
                status: self.ids(status)
                for status in ("new", "enlarged", "stable", "shrunk", "resolved")
            },
            "lesion_changes": [
                {
                    "status": c.status,
                    "prior_id": c.prior_id,
                    "current_id": c.current_id,
                    "prior_volume_mm3": _round(c.prior_volume_mm3),
                    "current_volume_mm3": _round(c.current_volume_mm3),
                    "volume_change_percent": _round(c.volume_change_percent),
                    "distance": _round(c.distance),
                }
                for c in self.lesions
            ],
            "regions": {
                key: {
                    "prior": {k: _round(v) for k, v in r.prior.items()},
                    "current": {k: _round(v) for k, v in r.current.items()},
                    "delta_abnormal_percent": _round(r.delta_abnormal_percent),
                    "delta_mean_t1_ms": _round(r.delta_mean_t1_ms),
                    "delta_mean_z": _round(r.delta_mean_z),
                }
                for key, r in self.regions.items()
            },
        }


# --------------------------------------------------------------------------- inputs


def _number(value: object, what: str) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number or None, got {value!r}") from None
    return number if math.isfinite(number) else None


def _regions(exam: Mapping, name: str) -> dict[str, dict[str, float | None]]:
    regions = exam.get("regions", {})
    if not isinstance(regions, Mapping):
        raise ValueError(f"{name}['regions'] must be a mapping of region key -> statistics")
    out = {}
    for key, stats in regions.items():
        if not isinstance(stats, Mapping):
            raise ValueError(f"{name}['regions'][{key!r}] must be a mapping")
        out[str(key)] = {f: _number(stats.get(f), f"{name} {key} {f}") for f in _REGION_FIELDS}
    return out


def _lesions(
    exam: Mapping, name: str, scale: NDArray[np.float64] | None
) -> tuple[list[int], NDArray[np.float64], NDArray[np.float64]]:
    entries = exam.get("lesions", [])
    if isinstance(entries, Mapping) or not isinstance(entries, Sequence):
        raise ValueError(f"{name}['lesions'] must be a list of lesions")
    ids, volumes, centres = [], [], []
    for n, entry in enumerate(entries):
        if isinstance(entry, LesionStats):
            lesion_id, volume, centre = entry.id, entry.volume_mm3, entry.centre_lps_mm
        elif isinstance(entry, Mapping):
            missing = {"id", "volume_mm3", "centre"} - set(entry)
            if missing:
                raise ValueError(f"{name} lesion #{n} lacks {sorted(missing)}")
            lesion_id, volume, centre = entry["id"], entry["volume_mm3"], entry["centre"]
        else:
            raise ValueError(f"{name} lesion #{n} must be a mapping or LesionStats")
        point = np.asarray(centre, dtype=float).ravel()
        if point.size == 0 or not np.all(np.isfinite(point)):
            raise ValueError(f"{name} lesion {lesion_id}: centre must be finite numbers")
        if not (math.isfinite(float(volume)) and float(volume) >= 0):
            raise ValueError(f"{name} lesion {lesion_id}: volume_mm3 must be >= 0")
        ids.append(int(lesion_id))
        volumes.append(float(volume))
        centres.append(point)
    if len(set(ids)) != len(ids):
        raise ValueError(f"{name} lesion ids must be unique")
    if centres and len({c.size for c in centres}) != 1:
        raise ValueError(f"{name} lesion centres must all have the same number of coordinates")
    points = np.array(centres) if centres else np.zeros((0, 0))
    if scale is not None and points.size:
        if points.shape[1] != scale.size:
            raise ValueError(
                f"axis_scale has {scale.size} values, {name} centres have {points.shape[1]}"
            )
        points = points * scale
    return ids, np.asarray(volumes), points


# --------------------------------------------------------------------------- compare


def _pair(
    prior_points: NDArray[np.float64], current_points: NDArray[np.float64], max_distance: float
) -> list[tuple[int, int, float]]:
    if prior_points.shape[0] == 0 or current_points.shape[0] == 0:
        return []
    if prior_points.shape[1] != current_points.shape[1]:
        raise ValueError("prior and current lesion centres have different dimensions")
    distance = np.linalg.norm(prior_points[:, None, :] - current_points[None, :, :], axis=-1)
    # Impossible pairs cost more than any set of possible ones, so they are chosen last.
    big = 1.0 + distance.size * (max_distance + 1.0)
    cost = np.where(distance <= max_distance, distance, big)
    rows, cols = linear_sum_assignment(cost)
    return [
        (int(r), int(c), float(distance[r, c]))
        for r, c in zip(rows, cols, strict=True)
        if distance[r, c] <= max_distance
    ]


def compare(
    prior: Mapping,
    current: Mapping,
    *,
    max_match_distance: float = 5.0,
    axis_scale: Sequence[float] | None = None,
    enlarge_fraction: float = 0.25,
    min_change_mm3: float = 3.0,
    abnormal_margin_pp: float = 5.0,
    trend_key: str = "cord",
) -> FollowUp:
    """Compare a prior and a current exam of the same patient.

    Parameters
    ----------
    prior, current : mapping
        ``{"regions": {key: {"mean_t1_ms", "abnormal_percent", "mean_z"}},
        "lesions": [{"id", "volume_mm3", "centre"} or LesionStats, ...]}``; either part
        may be missing (no regions / no lesions).
    max_match_distance : float
        Largest centre distance of a lesion pair, in (scaled) frame units (mm for LPS).
        5 mm: a lesion centroid moves by up to about half a 4 mm slice between exams, and
        distinct lesions of the phantom are farther apart.
    axis_scale : sequence of float, optional
        Multiplies each centre coordinate before distances (e.g. mm per template unit).
    enlarge_fraction : float
        Relative growth that makes a pair "enlarged" (0.25 = +25 %).
    min_change_mm3 : float
        Absolute volume change also required for "enlarged" / "shrunk".
    abnormal_margin_pp : float
        Change of the ``trend_key`` region's abnormal share (percentage points) that counts
        as worse / better (smaller changes are within scan-rescan variability).
    trend_key : str
        Region summarising the whole cord (skipped with a reason when absent).

    Returns
    -------
    FollowUp
        Per-region changes (regions present in both exams), lesion changes and the trend
        with its reasons (see the module docstring for the rules).

    Examples
    --------
    >>> prior = {"lesions": [{"id": 1, "volume_mm3": 20.0, "centre": [0, 0, 0]}]}
    >>> current = {"lesions": [{"id": 7, "volume_mm3": 40.0, "centre": [0.5, 0, 1]},
    ...                        {"id": 8, "volume_mm3": 15.0, "centre": [0, 0, 30]}]}
    >>> result = compare(prior, current)
    >>> result.ids("enlarged"), result.ids("new"), result.trend
    ([7], [8], 'worse')
    """
    if not isinstance(prior, Mapping) or not isinstance(current, Mapping):
        raise ValueError("prior and current must be mappings with 'regions' and/or 'lesions'")
    for name, value in (
        ("max_match_distance", max_match_distance),
        ("enlarge_fraction", enlarge_fraction),
        ("min_change_mm3", min_change_mm3),
        ("abnormal_margin_pp", abnormal_margin_pp),
    ):
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    scale = None
    if axis_scale is not None:
        scale = np.asarray(axis_scale, dtype=float).ravel()
        if scale.size == 0 or not np.all(np.isfinite(scale)) or np.any(scale <= 0):
            raise ValueError("axis_scale must hold positive finite numbers")

    prior_regions, current_regions = _regions(prior, "prior"), _regions(current, "current")
    regions: dict[str, RegionChange] = {}
    for key in prior_regions.keys() & current_regions.keys():
        p, c = prior_regions[key], current_regions[key]
        delta = {
            f: (None if p[f] is None or c[f] is None else c[f] - p[f])  # type: ignore[operator]
            for f in _REGION_FIELDS
        }
        regions[key] = RegionChange(
            key, p, c, delta["abnormal_percent"], delta["mean_t1_ms"], delta["mean_z"]
        )
    regions = dict(sorted(regions.items()))

    prior_ids, prior_vol, prior_pts = _lesions(prior, "prior", scale)
    current_ids, current_vol, current_pts = _lesions(current, "current", scale)
    pairs = _pair(prior_pts, current_pts, max_match_distance)
    changes: list[LesionChange] = []
    for r, c, distance in pairs:
        before, after = float(prior_vol[r]), float(current_vol[c])
        status: Status = "stable"
        if after >= before * (1 + enlarge_fraction) and after - before >= min_change_mm3:
            status = "enlarged"
        elif before >= after * (1 + enlarge_fraction) and before - after >= min_change_mm3:
            status = "shrunk"
        changes.append(LesionChange(status, prior_ids[r], current_ids[c], before, after, distance))
    paired_prior = {r for r, _, _ in pairs}
    paired_current = {c for _, c, _ in pairs}
    for c, lesion_id in enumerate(current_ids):
        if c not in paired_current:
            changes.append(LesionChange("new", None, lesion_id, None, float(current_vol[c]), None))
    for r, lesion_id in enumerate(prior_ids):
        if r not in paired_prior:
            changes.append(
                LesionChange("resolved", lesion_id, None, float(prior_vol[r]), None, None)
            )

    trend, reasons = _trend(changes, regions.get(trend_key), trend_key, abnormal_margin_pp)
    return FollowUp(regions=regions, lesions=changes, trend=trend, reasons=reasons)


def _trend(
    changes: list[LesionChange],
    overall: RegionChange | None,
    trend_key: str,
    margin_pp: float,
) -> tuple[Trend, list[str]]:
    counts = {s: sum(c.status == s for c in changes) for s in ("new", "enlarged", "shrunk")}
    counts["resolved"] = sum(c.status == "resolved" for c in changes)
    reasons: list[str] = []
    delta = None if overall is None else overall.delta_abnormal_percent
    if delta is None:
        reasons.append(f"no abnormal share for region {trend_key!r} in both exams")
    rose = delta is not None and delta >= margin_pp
    fell = delta is not None and delta <= -margin_pp
    if counts["new"]:
        reasons.append(f"{counts['new']} new lesion(s)")
    if counts["enlarged"]:
        reasons.append(f"{counts['enlarged']} enlarged lesion(s)")
    if rose:
        reasons.append(f"{trend_key} abnormal voxels +{delta:.1f} percentage points")
    if counts["new"] or counts["enlarged"] or rose:
        return "worse", reasons
    if fell:
        reasons.append(f"{trend_key} abnormal voxels {delta:.1f} percentage points")
    if counts["shrunk"]:
        reasons.append(f"{counts['shrunk']} shrunk lesion(s)")
    if counts["resolved"]:
        reasons.append(f"{counts['resolved']} resolved lesion(s)")
    if fell or counts["shrunk"] or counts["resolved"]:
        return "better", reasons
    reasons.append("no new or enlarged lesion and no change beyond the margin")
    return "stable", reasons
