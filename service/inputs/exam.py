"""Sort the files of one exam into MP2RAGE acquisitions (slabs) by component and geometry.

INV1, INV2 and the scanner T1 map belong to a slab when they sample its grid. A B1 map and a
T2*-weighted series may lie on any grid of the same frame of reference; they go to every slab
they cover enough of (:mod:`service.inputs.partners`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom.dataset import Dataset

from dicom_node.components import Component, classify, classify_series, is_gradient_echo
from dicom_node.instance import OwnResultMarkers
from service.inputs.consistency import (
    SLAB_COMPONENTS,
    InconsistentSlabError,
    check_slab,
    grid_differences,
    missing_series_text,
    scanner_t1_problem,
    series_label,
)
from service.inputs.partners import assign_partners, combine_echo_series
from service.inputs.volumes import SeriesVolume, group_by_series, load_series, same_grid

__all__ = [
    "ExamError",
    "ExamSeries",
    "Slab",
    "dicom_files",
    "find_exam_series",
    "match_slabs",
    "own_markers",
    "slab_foreground",
]


class ExamError(Exception):
    """The exam cannot be processed; the message says why in terms a user can act on."""


@dataclass
class ExamSeries:
    """The series of one exam, by component, still on disk."""

    study_uid: str
    by_component: dict[Component, dict[str, list[Path]]] = field(default_factory=dict)

    def series(self, component: Component) -> dict[str, list[Path]]:
        """Series UID -> file paths of one component (empty when absent)."""
        return self.by_component.get(component, {})


@dataclass
class Slab:
    """One MP2RAGE acquisition: the UNI volume, what shares its grid, and what covers it.

    ``inv1``, ``inv2`` and ``t1map`` sample the reference grid. ``b1map`` and ``t2star`` may
    lie on their own grid of the same frame of reference (read them on the slab's grid with
    :func:`service.inputs.partners.partner_on_grid`). ``notes`` says why a B1 map or T2* series of
    the exam was not used for this slab; ``qc_notes`` what the exam's QC reasons must say about
    its series (a scanner T1 map not used, a series missing that the site profile stood in
    for).
    """

    index: int
    uni: SeriesVolume | None
    inv1: SeriesVolume | None = None
    inv2: SeriesVolume | None = None
    t1map: SeriesVolume | None = None
    b1map: SeriesVolume | None = None
    t2star: SeriesVolume | None = None
    notes: list[str] = field(default_factory=list)
    qc_notes: list[str] = field(default_factory=list)

    @property
    def reference(self) -> SeriesVolume:
        """The volume results are written on (UNI, or the scanner T1 map without UNI)."""
        volume = self.uni or self.t1map
        if volume is None:
            raise ExamError(f"slab {self.index} has neither UNI nor T1 map")
        return volume


def slab_foreground(slab: Slab) -> NDArray[np.bool_]:
    """Voxels with signal: INV2 above a tenth of its robust maximum (all voxels without INV2)."""
    if slab.inv2 is None:
        return np.isfinite(slab.reference.array)
    inv2 = slab.inv2.array
    return inv2 > 0.1 * float(np.percentile(inv2, 99.5))


def dicom_files(folder: Path) -> list[Path]:
    """Every Part-10 DICOM file under ``folder`` (any layout), sorted."""
    files = []
    for root, _dirs, names in os.walk(folder):
        for name in names:
            path = Path(root) / name
            with path.open("rb") as fh:
                head = fh.read(132)
            if head[128:132] == b"DICM":
                files.append(path)
    return sorted(files)


def own_markers() -> OwnResultMarkers:
    """How results written by this software are recognised (a PACS may send them back)."""
    return OwnResultMarkers(manufacturer="cordt1", software_name="cordt1")


_ECHO_TAGS = ["EchoNumbers", "EchoTime", "EchoTrainLength"]


def _series_component(header: Dataset, files: list[Path]) -> Component:
    """Component of a series; an unnamed gradient echo is checked across its instances for
    echoes (reading only their echo tags)."""
    component = classify(header)
    if component is not Component.OTHER or len(files) < 2 or not is_gradient_echo(header):
        return component
    headers = [header] + [
        pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_ECHO_TAGS)
        for path in files[1:]
    ]
    return classify_series(headers)


def _echo_series_key(header: Dataset) -> tuple[str, str]:
    name = str(header.get("ProtocolName", "") or header.get("SeriesDescription", ""))
    return name, str(header.get("FrameOfReferenceUID", ""))


def _first_echo_series(exam: ExamSeries, headers: dict[str, Dataset]) -> None:
    """Move the first-echo series of a one-series-per-echo GRE from OTHER to T2STAR.

    Alone it looks like a single-echo gradient echo; it belongs with the later echoes when a
    T2* series of the same protocol and frame of reference exists.
    """
    t2star = exam.by_component.get(Component.T2STAR, {})
    others = exam.by_component.get(Component.OTHER, {})
    keys = {_echo_series_key(headers[uid]) for uid in t2star}
    for uid in list(others):
        header = headers[uid]
        if is_gradient_echo(header) and _echo_series_key(header) in keys:
            exam.by_component.setdefault(Component.T2STAR, {})[uid] = others.pop(uid)
    if Component.OTHER in exam.by_component and not others:
        del exam.by_component[Component.OTHER]


def find_exam_series(paths: Iterable[Path]) -> dict[str, ExamSeries]:
    """Group files by study, then by component and series (headers only).

    Results this software wrote (e.g. an earlier run's output in the same folder) are left
    out: they are never inputs.

    Returns
    -------
    dict
        StudyInstanceUID -> ExamSeries.
    """
    exams: dict[str, ExamSeries] = {}
    headers: dict[str, Dataset] = {}
    markers = own_markers()
    for series_uid, files in group_by_series(paths).items():
        header = pydicom.dcmread(files[0], stop_before_pixels=True)
        if markers.matches(header):
            continue
        headers[series_uid] = header
        study_uid = str(header.get("StudyInstanceUID", ""))
        exam = exams.setdefault(study_uid, ExamSeries(study_uid=study_uid))
        component = _series_component(header, files)
        exam.by_component.setdefault(component, {})[series_uid] = list(files)
    for exam in exams.values():
        _first_echo_series(exam, headers)
    return exams


def _position_along_normal(volume: SeriesVolume) -> float:
    """Where a slab starts along its slice normal (for superior-to-inferior ordering)."""
    return float(volume.affine_lps[2, 3])


def match_slabs(exam: ExamSeries) -> list[Slab]:
    """Load the volumes of an exam, pair each UNI with its partners and check they agree.

    INV1/INV2/T1 map: the series on the UNI's grid. B1 map and T2*-weighted series: on any
    grid of the same frame of reference, the one covering most of the slab (at least
    :data:`service.inputs.partners.MIN_COVERAGE`); one series may serve several slabs. T2* echoes
    sent as one series per echo are combined first. Why a B1 map or T2* series was not used
    goes to ``Slab.notes``.

    The series of each slab are then checked (:mod:`service.inputs.consistency`): an INV1 or
    INV2 series off the slab's grid, or headers that disagree (TR, TI, flip angle), fail the
    exam; a scanner T1 map that is off the grid or implausible is not used and says why in
    ``Slab.qc_notes`` (or fails an exam that has nothing else to give T1).

    Raises
    ------
    ExamError
        If the exam has no UNI and no T1 map, a slab lacks a series the others have, a series
        is off its slab's grid, or the series of a slab disagree (the message names the
        series, the tag and both values).
    """
    unis = [load_series(files) for files in exam.series(Component.UNI).values()]
    others = {
        component: [load_series(files) for files in exam.series(component).values()]
        for component in (
            Component.INV1,
            Component.INV2,
            Component.T1MAP,
            Component.B1MAP,
            Component.T2STAR,
        )
    }
    references = unis or others[Component.T1MAP]
    if not references:
        raise ExamError(_no_reference_text(exam, others))
    references.sort(key=_position_along_normal, reverse=True)
    slabs: list[Slab] = []
    for index, reference in enumerate(references, start=1):
        slab = Slab(index=index, uni=reference if unis else None)
        for component, attribute in _GRID_PARTNERS:
            match = next((v for v in others[component] if same_grid(v, reference)), None)
            setattr(slab, attribute, match)
        slabs.append(slab)
    _off_grid_partners(slabs, others)
    _partially_missing(slabs)
    for slab in slabs:
        try:
            check_slab(slab.index, {name: getattr(slab, name) for name in SLAB_COMPONENTS})
        except InconsistentSlabError as exc:
            raise ExamError(str(exc)) from exc
        _check_scanner_t1(slab)
    for candidates, attribute, label in (
        (others[Component.B1MAP], "b1map", "B1 map"),
        (combine_echo_series(others[Component.T2STAR]), "t2star", "T2* series"),
    ):
        chosen, notes = assign_partners(references, candidates, label)
        for slab, partner, slab_notes in zip(slabs, chosen, notes, strict=True):
            setattr(slab, attribute, partner)
            slab.notes.extend(slab_notes)
    return slabs


_GRID_PARTNERS = (
    (Component.INV1, "inv1"),
    (Component.INV2, "inv2"),
    (Component.T1MAP, "t1map"),
)


def _no_reference_text(exam: ExamSeries, others: dict[Component, list[SeriesVolume]]) -> str:
    """Why an exam without UNI and T1 map cannot give T1, naming what did arrive."""
    found = sorted(str(c) for c in exam.by_component) or ["nothing"]
    inversions = [c for c in (Component.INV1, Component.INV2) if others[c]]
    if inversions:
        n_series = max(len(others[c]) for c in inversions)
        return (
            f"UNI series missing ({n_series} slab(s) of INV1/INV2 received, and no scanner T1 "
            f"map): received {', '.join(found)}; T1 is computed from the UNI series of the "
            "acquisition (or taken from the scanner's T1 map): send it"
        )
    return (
        "exam has no UNI and no T1 map series (found: " + ", ".join(found) + "); "
        "an MP2RAGE exam needs UNI (+ INV1/INV2) or a scanner T1 map"
    )


def _centre_mm(volume: SeriesVolume) -> NDArray[np.float64]:
    centre = (np.array(volume.array.shape, dtype=np.float64) - 1.0) / 2.0
    return np.asarray(volume.affine_lps @ np.append(centre, 1.0))[:3]


def _off_grid_partners(slabs: list[Slab], others: dict[Component, list[SeriesVolume]]) -> None:
    """A slab without INV1/INV2/T1 map on its grid, while such a series pairs with no slab.

    The unpaired series nearest to the slab is taken as the slab's and its grid compared: an
    INV1 or INV2 off the grid fails the exam; a T1 map off the grid of a slab with UNI is not
    used (a QC note says why).
    """
    for component, attribute in _GRID_PARTNERS:
        paired = {id(getattr(s, attribute)) for s in slabs if getattr(s, attribute) is not None}
        unpaired = [v for v in others[component] if id(v) not in paired]
        for slab in slabs:
            if getattr(slab, attribute) is not None or not unpaired:
                continue
            centre = _centre_mm(slab.reference)
            nearest = min(unpaired, key=lambda v: float(np.linalg.norm(_centre_mm(v) - centre)))
            unpaired.remove(nearest)
            text = (
                f"{series_label(nearest)} is not on the grid of "
                f"{series_label(slab.reference)}: "
                + "; ".join(grid_differences(nearest, slab.reference) or ["voxel centres differ"])
            )
            if component is Component.T1MAP:
                slab.qc_notes.append(f"slab {slab.index}: scanner T1 map not used: {text}")
                continue
            raise ExamError(f"slab {slab.index}: {text}")


def _received(slab: Slab) -> list[str]:
    return [name for name in SLAB_COMPONENTS if getattr(slab, name) is not None]


def _partially_missing(slabs: list[Slab]) -> None:
    """Fail when some slabs have an INV1/INV2 series and another has none.

    When no slab has one, :func:`service.inputs.t1_map.slab_t1` decides: the site profile may
    give the values its header would have given.
    """
    for name in ("inv1", "inv2"):
        have = [s.index for s in slabs if getattr(s, name) is not None]
        if not have or len(have) == len(slabs) or all(s.uni is None for s in slabs):
            continue
        lacking = next(s for s in slabs if getattr(s, name) is None)
        raise ExamError(
            missing_series_text(lacking.index, [name], _received(lacking))
            + f" (slab(s) {have} have one)"
        )


def _check_scanner_t1(slab: Slab) -> None:
    """Drop an implausible scanner T1 map (a QC note says why); fail a slab that needs it."""
    if slab.t1map is None:
        return
    foreground = slab_foreground(slab) if slab.inv2 is not None else None
    problem = scanner_t1_problem(slab.t1map, foreground)
    if problem is None:
        return
    label = series_label(slab.t1map)
    if slab.uni is None:
        raise ExamError(
            f"slab {slab.index}: {label} cannot be used: {problem}; the exam has no UNI series "
            "to compute T1 from"
        )
    slab.qc_notes.append(f"slab {slab.index}: scanner T1 map not used: {label}: {problem}")
    slab.t1map = None
