"""The report-level "Qualitative Evaluations" container (TID 1500 rows 12-14).

Plain statements a reader sees next to the numbers, as CODE or TEXT items:

- QC verdict (code) and each QC reason (text); when QC failed, a text saying that the
  Z-scores are withheld;
- B1 correction applied yes/no (code) and the B1 note (text);
- per slab, what the GM/WM split rested on (T1, or T1 + T2*-weighted GRE; text);
- normative model version and Z threshold (text; the threshold only when Z is reported);
- follow-up: trend and reasons, per-region deltas, lesion changes (text);
- the lesion burden when no whole-exam cord group carries it (text);
- the research-use statement (text).
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
from pydicom.sr.coding import Code

from reports.sr import concepts as c
from reports.sr.summary import ExamReport, FollowUp, RegionDelta

__all__ = ["evaluations_container", "follow_up_lines"]

_CONTAINS = hd.sr.RelationshipTypeValues.CONTAINS


def _text(name: Code, value: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(name=name, value=value, relationship_type=_CONTAINS)


def _code(name: Code, value: Code) -> hd.sr.CodeContentItem:
    return hd.sr.CodeContentItem(name=name, value=value, relationship_type=_CONTAINS)


def _signed(value: float, unit: str, digits: int) -> str:
    return f"{value:+.{digits}f}{unit}"


def _delta_line(delta: RegionDelta) -> str | None:
    parts = []
    if delta.delta_abnormal_percent is not None:
        parts.append(
            f"abnormal voxels {_signed(delta.delta_abnormal_percent, ' percentage points', 1)}"
        )
    if delta.delta_mean_t1_ms is not None:
        parts.append(f"mean T1 {_signed(delta.delta_mean_t1_ms, ' ms', 1)}")
    if delta.delta_mean_z is not None:
        parts.append(f"mean Z {_signed(delta.delta_mean_z, '', 2)}")
    return f"{delta.key}: {', '.join(parts)}" if parts else None


def follow_up_lines(follow_up: FollowUp) -> list[str]:
    """Readable lines for the comparison with the prior exam.

    Examples
    --------
    >>> follow = FollowUp("20250101", "worse", ("new lesion 2",),
    ...                   (RegionDelta("cord", 3.1, 12.0, None),), ())
    >>> for line in follow_up_lines(follow):
    ...     print(line)
    Trend since prior exam of 20250101: worse (new lesion 2)
    cord: abnormal voxels +3.1 percentage points, mean T1 +12.0 ms
    """
    since = (
        f"prior exam of {follow_up.prior_study_date}"
        if follow_up.prior_study_date
        else ("prior exam")
    )
    trend = follow_up.trend or "not assessed"
    reasons = f" ({'; '.join(follow_up.reasons)})" if follow_up.reasons else ""
    lines = [f"Trend since {since}: {trend}{reasons}"]
    lines.extend(line for line in map(_delta_line, follow_up.regions) if line)
    lines.extend(follow_up.lesion_changes)
    return lines


def evaluations_container(
    report: ExamReport, *, research_use_text: str, notes: Sequence[str] = ()
) -> hd.sr.ContainerContentItem:
    """Build the container; it always holds at least the research-use or QC statement."""
    items: list[hd.sr.ContentItem] = []
    if report.qc_verdict is not None:
        items.append(_code(c.QC_VERDICT, c.QC_VERDICTS[report.qc_verdict]))
    items.extend(_text(c.QC_REASON, reason) for reason in report.qc_reasons)
    if report.coverage:
        items.append(_text(c.COVERAGE, report.coverage))
    if report.z_withheld:
        items.append(
            _text(c.COMMENT, "QC failed: Z-scores and abnormal-voxel percentages are withheld")
        )
    if report.b1_corrected is not None:
        items.append(_code(c.B1_CORRECTION, c.YES if report.b1_corrected else c.NO))
    if report.b1_note:
        items.append(_text(c.B1_CORRECTION, report.b1_note))
    items.extend(_text(c.GM_WM_EVIDENCE, line) for line in report.gm_wm_evidence)
    if report.model_version:
        items.append(_text(c.MODEL_VERSION, report.model_version))
    if report.z_threshold is not None:
        items.append(_text(c.Z_THRESHOLD, f"abnormal = Z > {report.z_threshold:g} (one-sided)"))
    if report.follow_up is not None:
        items.extend(_text(c.FOLLOW_UP, line) for line in follow_up_lines(report.follow_up))
    items.extend(_text(c.COMMENT, note) for note in notes)
    research = research_use_text or report.research_use
    if research:
        items.append(_text(c.RESEARCH_USE, research))
    container = hd.sr.ContainerContentItem(
        name=c.QUALITATIVE_EVALUATIONS, relationship_type=_CONTAINS
    )
    if not items:
        items.append(_text(c.COMMENT, "no qualitative evaluations"))
    container.ContentSequence = hd.sr.ContentSequence(items)
    return container
