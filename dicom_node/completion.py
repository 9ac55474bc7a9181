"""When is an exam complete? A pure, clock-injected tracker (no threads, no I/O).

An exam is one StudyInstanceUID. It is handed out by :meth:`ExamTracker.ready` when

1. the MP2RAGE components are there: INV1, INV2 and UNI, or at least a T1MAP when the exam
   has no UNI;
2. every series has the instances its header announces: for single-frame series,
   ImagesInAcquisition instances per AcquisitionNumber; a multi-frame (enhanced) series is
   complete with one instance carrying NumberOfFrames; series whose header announces no count
   are judged by silence only;
3. the slab count agrees: as many UNI series as INV1 and INV2 series;
4. no new instance arrived for ``settle_s`` seconds.

Fallback: after ``stale_s`` seconds without a new instance the exam is handed out anyway
with ``complete=False`` and a reason.

Our own results (``InstanceInfo.is_own_result``) are ignored entirely, so results a PACS
forwards back never start a job. Reader segmentations (component SEG) are attached to the
exam (in :attr:`ExamReady.series`) but do not count for completeness.

Optional components (B1MAP, T2STAR, a T1MAP next to UNI, and anything else) never make an
exam wait for them to exist: whatever has arrived is part of the exam, on any grid. Rule 2
still applies to them, so a series that announced more images than arrived delays the exam at
most until the stale fallback. A series whose instances classify differently (the first echo
of a multi-echo GRE may look like OTHER, later echoes like T2STAR) is listed under its
specific component only.

Hand-out rule: each exam is handed out at most once. If new instances of it arrive after it
was handed out, it is handed out again, with ``update=True`` and all instances known so far,
once the rules above hold again. Re-adding a known SOP instance changes nothing, so the
tracker can be rebuilt after a restart by re-adding every spooled instance.

A known SOP instance *received again* (a corrected copy, or an identical re-send) is reported
with :meth:`ExamTracker.resent`: the exam is handed out again after ``settle_s``, with the
re-sent SOP Instance UIDs in :attr:`ExamReady.resent`. Whether the content changed is for the
caller to decide (the tracker never reads files).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

from dicom_node.components import Component
from dicom_node.instance import InstanceInfo

__all__ = ["ExamReady", "ExamTracker"]

_SLAB_COMPONENTS: tuple[Component, ...] = (Component.UNI, Component.INV1, Component.INV2)


@dataclass(frozen=True)
class ExamReady:
    """An exam handed out for processing.

    Attributes
    ----------
    study_uid : str
        StudyInstanceUID.
    series : dict[str, list[InstanceInfo]]
        Series UID -> its instances (arrival order), own results excluded, SEG included.
    components : dict[Component, list[str]]
        Component -> series UIDs holding it (a slab per series).
    complete : bool
        ``True`` when every completeness rule held; ``False`` for the stale fallback.
    reason : str
        Why it is ready (``"complete"``) or what is missing.
    update : bool
        ``True`` when the exam was handed out before and new instances arrived since.
    resent : tuple of str
        SOP Instance UIDs received again since the exam was last handed out (see
        :meth:`ExamTracker.resent`), sorted; empty when none was.
    """

    study_uid: str
    series: dict[str, list[InstanceInfo]]
    components: dict[Component, list[str]]
    complete: bool
    reason: str
    update: bool = False
    resent: tuple[str, ...] = ()


@dataclass
class _Exam:
    instances: dict[str, InstanceInfo] = field(default_factory=dict)
    last_arrival: float = -math.inf
    handed_out: int = 0
    dirty: bool = True
    resent: set[str] = field(default_factory=set)


class ExamTracker:
    """Groups instances by study and decides when each exam is ready.

    Parameters
    ----------
    settle_s : float
        Quiet time after the last new instance before a complete exam is ready (e.g. 3 s).
    stale_s : float
        Quiet time after which an incomplete exam is handed out anyway (e.g. 120 s).

    Raises
    ------
    ValueError
        If ``settle_s < 0`` or ``stale_s < settle_s``.

    Examples
    --------
    >>> tracker = ExamTracker(settle_s=3.0, stale_s=120.0)
    >>> tracker.ready(now=0.0)
    []
    """

    def __init__(self, settle_s: float, stale_s: float) -> None:
        if not math.isfinite(settle_s) or settle_s < 0:
            raise ValueError(f"settle_s must be a finite number >= 0, got {settle_s!r}")
        if not math.isfinite(stale_s) or stale_s < settle_s:
            raise ValueError(
                f"stale_s must be finite and >= settle_s ({settle_s}), got {stale_s!r}"
            )
        self.settle_s = float(settle_s)
        self.stale_s = float(stale_s)
        self._exams: dict[str, _Exam] = {}

    def add(self, info: InstanceInfo, now: float) -> bool:
        """Record one received instance.

        Parameters
        ----------
        info : InstanceInfo
            Header facts of the instance.
        now : float
            Current time (seconds, same clock as :meth:`ready`).

        Returns
        -------
        bool
            ``True`` if the instance was new to the tracker; ``False`` for our own results
            and for SOP instances already known (idempotent re-add).
        """
        if info.is_own_result:
            return False
        exam = self._exams.setdefault(info.study_uid, _Exam())
        if info.sop_instance_uid in exam.instances:
            return False
        exam.instances[info.sop_instance_uid] = info
        exam.last_arrival = max(exam.last_arrival, float(now))
        exam.dirty = True
        return True

    def resent(self, info: InstanceInfo, now: float) -> bool:
        """Record that a known SOP instance was received again (its file was replaced).

        Parameters
        ----------
        info : InstanceInfo
            Header facts of the instance as received this time.
        now : float
            Current time (seconds, same clock as :meth:`ready`).

        Returns
        -------
        bool
            ``True`` when the instance was known: its exam is handed out again after
            ``settle_s`` with the instance in :attr:`ExamReady.resent`; ``False`` for our own
            results and unknown instances (use :meth:`add` for those).
        """
        if info.is_own_result:
            return False
        exam = self._exams.get(info.study_uid)
        if exam is None or info.sop_instance_uid not in exam.instances:
            return False
        exam.instances[info.sop_instance_uid] = info
        exam.resent.add(info.sop_instance_uid)
        exam.last_arrival = max(exam.last_arrival, float(now))
        exam.dirty = True
        return True

    def ready(self, now: float) -> list[ExamReady]:
        """Return the exams that became ready since the last call.

        Parameters
        ----------
        now : float
            Current time (seconds, same clock as :meth:`add`).

        Returns
        -------
        list of ExamReady
            Each exam at most once per batch of new instances, oldest activity first.
        """
        handed: list[ExamReady] = []
        for study_uid, exam in sorted(self._exams.items(), key=lambda item: item[1].last_arrival):
            if not exam.dirty:
                continue
            quiet_s = float(now) - exam.last_arrival
            if quiet_s < self.settle_s:
                continue
            series = _group_series(exam)
            components = _components(series)
            missing = _missing(series, components)
            if missing is None:
                complete, reason = True, "complete"
            elif quiet_s >= self.stale_s:
                complete, reason = False, f"no instance for {quiet_s:.0f} s; {missing}"
            else:
                continue
            handed.append(
                ExamReady(
                    study_uid=study_uid,
                    series=series,
                    components=components,
                    complete=complete,
                    reason=reason,
                    update=exam.handed_out > 0,
                    resent=tuple(sorted(exam.resent)),
                )
            )
            exam.handed_out += 1
            exam.dirty = False
            exam.resent.clear()
        return handed

    def handed_out(self) -> dict[str, tuple[list[str], int]]:
        """The exams handed out so far: study UID -> (series UIDs, number of instances).

        Returns
        -------
        dict
            Only exams with nothing new since their last hand-out.
        """
        return {
            study_uid: (
                sorted({i.series_uid for i in exam.instances.values()}),
                len(exam.instances),
            )
            for study_uid, exam in self._exams.items()
            if exam.handed_out > 0 and not exam.dirty
        }

    def hand_out_again(self, study_uid: str, now: float) -> bool:
        """Hand an exam out again after ``settle_s`` (its job was lost, e.g. by a database
        restored from a backup or one that lost its last commits in a crash).

        Parameters
        ----------
        study_uid : str
            StudyInstanceUID.
        now : float
            Current time (seconds, same clock as :meth:`ready`).

        Returns
        -------
        bool
            ``False`` for an unknown study.
        """
        exam = self._exams.get(study_uid)
        if exam is None:
            return False
        exam.dirty = True
        exam.last_arrival = max(exam.last_arrival, float(now))
        return True

    def forget(self, study_uid: str) -> None:
        """Drop everything known about a study (after its spool folder was removed).

        Parameters
        ----------
        study_uid : str
            StudyInstanceUID; unknown studies are ignored.
        """
        self._exams.pop(study_uid, None)

    def pending(self) -> list[str]:
        """Return the studies with instances not yet handed out.

        Returns
        -------
        list of str
        """
        return [uid for uid, exam in self._exams.items() if exam.dirty]

    def __len__(self) -> int:
        return len(self._exams)


def _group_series(exam: _Exam) -> dict[str, list[InstanceInfo]]:
    series: dict[str, list[InstanceInfo]] = defaultdict(list)
    for info in exam.instances.values():
        series[info.series_uid].append(info)
    return dict(series)


def _components(series: dict[str, list[InstanceInfo]]) -> dict[Component, list[str]]:
    found: dict[Component, list[str]] = {}
    for series_uid, instances in series.items():
        kinds = list(dict.fromkeys(info.component for info in instances))
        if len(kinds) > 1 and Component.OTHER in kinds:
            kinds.remove(Component.OTHER)
        for component in kinds:
            found.setdefault(component, []).append(series_uid)
    return found


def _missing(
    series: dict[str, list[InstanceInfo]], components: dict[Component, list[str]]
) -> str | None:
    """Return what keeps the exam from being complete, or ``None`` when it is complete."""
    problems: list[str] = []
    if Component.UNI in components:
        absent = [c.value for c in (Component.INV1, Component.INV2) if c not in components]
        if absent:
            problems.append("missing " + ", ".join(absent))
        else:
            counts = {c.value: len(components[c]) for c in _SLAB_COMPONENTS}
            if len(set(counts.values())) > 1:
                text = ", ".join(f"{name}={n}" for name, n in counts.items())
                problems.append(f"slab count differs between components ({text} series)")
    elif Component.T1MAP not in components:
        problems.append("no UNI (with INV1, INV2) and no T1MAP series")
    for series_uid, instances in series.items():
        shortfall = _series_shortfall(instances)
        if shortfall:
            problems.append(f"series {series_uid} {shortfall}")
    return "; ".join(problems) if problems else None


def _series_shortfall(instances: list[InstanceInfo]) -> str | None:
    if any(info.component == Component.SEG for info in instances):
        return None
    if any((info.number_of_frames or 0) > 1 for info in instances):
        return None
    by_acquisition: dict[int | None, list[InstanceInfo]] = defaultdict(list)
    for info in instances:
        by_acquisition[info.acquisition_number].append(info)
    for acquisition, members in by_acquisition.items():
        expected = max((info.images_in_acquisition or 0) for info in members)
        if expected and len(members) < expected:
            label = "" if acquisition is None else f" (acquisition {acquisition})"
            return f"has {len(members)} of {expected} images{label}"
    return None
