"""Sort the files of one exam into MP2RAGE acquisitions (slabs) by component and geometry."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pydicom

from dicom_node.components import Component, classify
from dicom_node.instance import OwnResultMarkers
from service.volumes import SeriesVolume, group_by_series, load_series, same_grid

__all__ = [
    "ExamError",
    "ExamSeries",
    "Slab",
    "dicom_files",
    "find_exam_series",
    "match_slabs",
    "own_markers",
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
    """One MP2RAGE acquisition: the UNI volume and whatever else shares its grid."""

    index: int
    uni: SeriesVolume | None
    inv1: SeriesVolume | None = None
    inv2: SeriesVolume | None = None
    t1map: SeriesVolume | None = None
    b1map: SeriesVolume | None = None

    @property
    def reference(self) -> SeriesVolume:
        """The volume results are written on (UNI, or the scanner T1 map without UNI)."""
        volume = self.uni or self.t1map
        if volume is None:
            raise ExamError(f"slab {self.index} has neither UNI nor T1 map")
        return volume


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
    markers = own_markers()
    for series_uid, files in group_by_series(paths).items():
        header = pydicom.dcmread(files[0], stop_before_pixels=True)
        if markers.matches(header):
            continue
        study_uid = str(header.get("StudyInstanceUID", ""))
        exam = exams.setdefault(study_uid, ExamSeries(study_uid=study_uid))
        exam.by_component.setdefault(classify(header), {})[series_uid] = list(files)
    return exams


def _position_along_normal(volume: SeriesVolume) -> float:
    """Where a slab starts along its slice normal (for superior-to-inferior ordering)."""
    return float(volume.affine_lps[2, 3])


def match_slabs(exam: ExamSeries) -> list[Slab]:
    """Load the volumes of an exam and pair each UNI with the INV1/INV2/T1/B1 on its grid.

    Raises
    ------
    ExamError
        If the exam has no UNI and no T1 map, or a slab lacks a partner the others have.
    """
    unis = [load_series(files) for files in exam.series(Component.UNI).values()]
    others = {
        component: [load_series(files) for files in exam.series(component).values()]
        for component in (Component.INV1, Component.INV2, Component.T1MAP, Component.B1MAP)
    }
    references = unis or others[Component.T1MAP]
    if not references:
        found = sorted(str(c) for c in exam.by_component) or ["nothing"]
        raise ExamError(
            "exam has no UNI and no T1 map series (found: " + ", ".join(found) + "); "
            "an MP2RAGE exam needs UNI (+ INV1/INV2) or a scanner T1 map"
        )
    references.sort(key=_position_along_normal, reverse=True)
    slabs: list[Slab] = []
    for index, reference in enumerate(references, start=1):
        slab = Slab(index=index, uni=reference if unis else None)
        for component, attribute in (
            (Component.INV1, "inv1"),
            (Component.INV2, "inv2"),
            (Component.T1MAP, "t1map"),
            (Component.B1MAP, "b1map"),
        ):
            match = next((v for v in others[component] if same_grid(v, reference)), None)
            setattr(slab, attribute, match)
        slabs.append(slab)
    if unis and len(others[Component.INV2]) and any(s.inv2 is None for s in slabs):
        missing = [s.index for s in slabs if s.inv2 is None]
        raise ExamError(
            f"slab(s) {missing}: no INV2 series on the same grid as the UNI series "
            f"({len(unis)} UNI, {len(others[Component.INV2])} INV2 series received)"
        )
    return slabs
