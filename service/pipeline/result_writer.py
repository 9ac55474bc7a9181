"""Write one exam's result files (DICOM objects, NIfTI, figures); a failing writer fails the
whole exam with an error naming the object.

Per slab: the T1 (and Z) map as a Parametric Map *and* as an ordinary derived MR image series
(:meth:`ResultWriter.parametric_map`, :meth:`ResultWriter.derived_images`); two SEGs
(:meth:`ResultWriter.segmentations`: the clinical layer - cord, lesions, abnormal voxels - and
the anatomy layer - GM, WM, regions); the exam's SR anchors every measurement group on a UNI
slice inside the segment it describes (:mod:`reports.sr.anchors`). Series numbers: see
:data:`SERIES_NUMBERS` and the README table "Where results appear".

The pipeline first *plans* every object (:class:`ResultWriter` methods return the UIDs the
object will have, so the summary and the report can name it), then :meth:`ResultWriter.write`
makes them all as independent tasks shared between the job's process and forked helpers
(:mod:`service.pipeline.task_lanes`): the report lists the SEGs and maps as evidence from their
planned headers (:func:`reports.segmentation.segmentation_header`), not from the objects.
Files appear only in ``out_dir``; nothing is sent before every task has succeeded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import highdicom as hd
import nibabel as nib
import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.uid import ParametricMapStorage

from processing.lesions import LesionStats
from reports.codes import REGION_CONCEPTS
from reports.common import instance_header
from reports.derived_image import build_derived_images
from reports.encapsulated_pdf import build_encapsulated_pdf
from reports.figures import SlabImages, render_exam_figures, render_pdf_report
from reports.identity import ResultIdentity
from reports.parametric_map import MapKind, build_parametric_map
from reports.secondary_capture import build_secondary_captures
from reports.segmentation import (
    SegmentSpec,
    build_segmentation,
    lesion_label,
    segment_numbers,
    segmentation_header,
    split_layers,
)
from reports.sr.anchors import ImageAnchor, mask_anchor
from reports.structured_report import build_measurement_report
from service.inputs.exam import ExamError, Slab
from service.inputs.nifti import to_nifti
from service.pipeline.task_lanes import LaneError, Task, TaskError, run_tasks

__all__ = [
    "ANATOMY_SEG_SERIES_NUMBER",
    "PDF_SERIES_NUMBER",
    "REGION_SEGMENT_LABELS",
    "SC_SERIES_NUMBER",
    "SEG_SERIES_NUMBER",
    "SR_SERIES_NUMBER",
    "T1_IMAGE_SERIES_NUMBER",
    "T1_SERIES_NUMBER",
    "Z_IMAGE_SERIES_NUMBER",
    "Z_SERIES_NUMBER",
    "ExamOutputs",
    "ResultWriter",
    "Written",
    "exam_lesion_ids",
]

log = logging.getLogger(__name__)

T1_SERIES_NUMBER = 9100
Z_SERIES_NUMBER = 9200
SEG_SERIES_NUMBER = 9300
#: Derived MR image series of the T1 and Z maps (slab k: + k, e.g. 9111, 9112).
T1_IMAGE_SERIES_NUMBER = 9110
Z_IMAGE_SERIES_NUMBER = 9210
#: The anatomy-layer SEG of slab k (GM, WM, regions): 9310 + k; the clinical SEG is 9300 + k.
ANATOMY_SEG_SERIES_NUMBER = 9310
SR_SERIES_NUMBER = 9400
SC_SERIES_NUMBER = 9500
PDF_SERIES_NUMBER = 9600
#: Summary key -> label of its segment in our SEG (see reports.segmentation.segment_specs).
REGION_SEGMENT_LABELS: dict[str, str] = {
    "cord": "Spinal cord",
    "gm": "Grey matter",
    "wm": "White matter",
    **{concept.key: concept.label for concept in REGION_CONCEPTS.values()},
}


@dataclass
class ExamOutputs:
    """What one exam produced."""

    out_dir: Path
    summary: dict[str, Any]
    dicom_files: list[Path] = field(default_factory=list)
    nifti_files: list[Path] = field(default_factory=list)


@dataclass
class Written:
    """Files one writing task made, and what it has to tell (``values``)."""

    dicom_files: list[Path] = field(default_factory=list)
    nifti_files: list[Path] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)


# Relative run times (a 2-slab 448 x 448 exam), so that the longest tasks start first.
_COST_REPORT = 4.0
_COST_RENDERED = 4.0
_COST_SEGMENTATION = 1.2
_COST_MAP = 0.25
_COST_IMAGES = 0.3
_COST_NIFTI = 0.1


@contextmanager
def _planning(what: str) -> Iterator[None]:
    """Turn an invalid object description into an ExamError naming the object."""
    try:
        yield
    except ExamError:
        raise
    except Exception as exc:
        log.error("planning the %s failed: %s", what, exc)
        raise ExamError(
            f"writing the {what} failed ({type(exc).__name__}: {exc}); no result was sent"
        ) from exc


def _save(dataset: Dataset, path: Path) -> Path:
    dataset.save_as(path, enforce_file_format=True)
    return path


def exam_lesion_ids(
    slab_lesions: list[list[LesionStats]], *, scored: bool
) -> list[dict[tuple[str, int], int]]:
    """The exam-wide lesion id of every lesion: one numbering for SEG, SR, PDF and summary.

    Lesions are numbered 1, 2, ... slab by slab in the order of each slab's list; automatic
    candidates only when the exam was scored (otherwise they are reported nowhere).

    Returns
    -------
    list of dict
        Per slab: ``(source, id in the slab's label image) -> exam lesion id``.
    """
    numbering: list[dict[tuple[str, int], int]] = []
    next_id = 1
    for lesions in slab_lesions:
        ids: dict[tuple[str, int], int] = {}
        for lesion in lesions:
            if lesion.source == "candidate" and not scored:
                continue
            ids[(lesion.source, int(lesion.id))] = next_id
            next_id += 1
        numbering.append(ids)
    return numbering


class ResultWriter:
    """Plans one exam's result files, then writes them all (:meth:`write`).

    Parameters
    ----------
    out : ExamOutputs
        Where the files go (``dicom/``, ``nifti/``, ``figures/`` are created).
    identity : ResultIdentity
        Software name, version and research-use text of every object.
    write_nifti : bool
        Whether :meth:`nifti` writes anything (the service's NIfTI export is optional).
    """

    def __init__(
        self, out: ExamOutputs, identity: ResultIdentity, *, write_nifti: bool = True
    ) -> None:
        self.out = out
        self.identity = identity
        self.write_nifti = write_nifti
        self.tasks: list[Task[Written]] = []
        self._segmentations: list[Dataset] = []
        self._segment_numbers: dict[str, dict[str, int]] = {}
        self._anchors: dict[int, dict[str, ImageAnchor]] = {}
        self._parametric_maps: list[Dataset] = []
        self._rendered: int | None = None
        (out.out_dir / "dicom").mkdir(parents=True, exist_ok=True)
        if write_nifti:
            (out.out_dir / "nifti").mkdir(parents=True, exist_ok=True)

    def _plan(self, name: str, cost: float, run: Callable[[], Written]) -> None:
        self.tasks.append(Task(name=name, run=run, cost=cost))

    def _plan_object(
        self, name: str, cost: float, filename: str, build: Callable[[], Dataset]
    ) -> None:
        """Plan one DICOM object: ``build()`` makes it, the task saves it as ``filename``."""
        path = self.out.out_dir / "dicom" / filename

        def run() -> Written:
            return Written(dicom_files=[_save(build(), path)])

        self._plan(name, cost, run)

    def nifti(
        self,
        name: str,
        array: NDArray[Any],
        affine_lps: NDArray[np.float64],
        dtype: type[np.generic],
    ) -> None:
        """Plan a NIfTI file of ``array`` stored as ``dtype`` (NaN as 0); nothing when NIfTI
        is off."""
        if not self.write_nifti:
            return
        path = self.out.out_dir / "nifti" / name

        def run() -> Written:
            data = np.nan_to_num(array) if np.issubdtype(array.dtype, np.floating) else array
            nib.save(to_nifti(data.astype(dtype), affine_lps), path)
            return Written(nifti_files=[path])

        self._plan(f"NIfTI file {name}", _COST_NIFTI, run)

    def parametric_map(
        self,
        slab: Slab,
        values: NDArray[np.float64],
        kind: MapKind,
        series_number: int,
        name: str,
    ) -> str:
        """Plan a T1 or Z Parametric Map of ``slab``; returns its SOP Instance UID."""
        reference = slab.reference
        series_uid, sop_uid = str(hd.UID()), str(hd.UID())
        self._parametric_maps.append(
            instance_header(
                reference.datasets[0],
                sop_class_uid=ParametricMapStorage,
                series_instance_uid=series_uid,
                sop_instance_uid=sop_uid,
            )
        )

        def build() -> Dataset:
            return build_parametric_map(
                reference.datasets,
                reference.to_source_order(np.where(np.isfinite(values), values, 0.0)),
                kind,
                series_number=series_number,
                identity=self.identity,
                series_instance_uid=series_uid,
                sop_instance_uid=sop_uid,
                slab=slab.index,
            )

        self._plan_object(f"{kind} parametric map of slab {slab.index}", _COST_MAP, name, build)
        return sop_uid

    def derived_images(self, slab: Slab, values: NDArray[np.float64], kind: MapKind) -> str:
        """Plan the T1 or Z map of ``slab`` as a derived MR image series (one image per UNI
        plane, series 9110 + k / 9210 + k); returns its Series Instance UID."""
        reference = slab.reference
        series_uid = str(hd.UID())
        number = (T1_IMAGE_SERIES_NUMBER if kind is MapKind.T1_MS else Z_IMAGE_SERIES_NUMBER) + (
            slab.index
        )
        stem = "t1" if kind is MapKind.T1_MS else "z"
        out_dir = self.out.out_dir / "dicom"

        def run() -> Written:
            images = build_derived_images(
                reference.datasets,
                reference.to_source_order(values),
                kind,
                series_number=number,
                identity=self.identity,
                series_instance_uid=series_uid,
                slab=slab.index,
            )
            return Written(
                dicom_files=[
                    _save(image, out_dir / f"{stem}img_slab{slab.index}_{i:03d}.dcm")
                    for i, image in enumerate(images, start=1)
                ]
            )

        self._plan(f"{kind} images of slab {slab.index}", _COST_IMAGES, run)
        return series_uid

    def segmentations(self, slab: Slab, specs: list[SegmentSpec]) -> dict[str, Any]:
        """Plan the SEGs of ``slab``: clinical layer (cord, lesions, abnormal voxels; series
        9300 + k) and anatomy layer (GM, WM, regions; 9310 + k), each when it has a segment.

        Also notes an image anchor (:func:`reports.sr.anchors.mask_anchor`) for every segment,
        for the report. Returns the slab's summary entries: ``seg_sop_instance_uid`` /
        ``segment_numbers`` (clinical) and ``anatomy_seg_sop_instance_uid`` /
        ``anatomy_segment_numbers``.
        """
        clinical, anatomy = split_layers(specs)
        entries: dict[str, Any] = {}
        k = slab.index
        for layer, prefix, number, name, description in (
            (clinical, "", SEG_SERIES_NUMBER + k, f"seg_slab{k}.dcm", "Cord lesions seg"),
            (
                anatomy,
                "anatomy_",
                ANATOMY_SEG_SERIES_NUMBER + k,
                f"seg_anatomy_slab{k}.dcm",
                "GM WM regions seg",
            ),
        ):
            if not layer:
                continue
            uid, numbers = self.segmentation(
                slab, layer, number, name, series_description=f"{description} slab {k}"
            )
            entries[f"{prefix}seg_sop_instance_uid"] = uid
            entries[f"{prefix}segment_numbers"] = numbers
        anchors = self._anchors.setdefault(k, {})
        reference = slab.reference
        for spec in specs:
            found = mask_anchor(spec.mask)
            if found is None:
                continue
            plane, column, row, voxels = found
            sop_uid, frame = reference.frame_sources[plane]
            dataset = next(
                (ds for ds in reference.datasets if str(ds.SOPInstanceUID) == sop_uid),
                reference.datasets[0],
            )
            anchors[spec.label] = ImageAnchor(
                sop_class_uid=str(dataset.SOPClassUID),
                sop_instance_uid=str(sop_uid),
                frame_number=frame,
                column=column,
                row=row,
                voxels=voxels,
            )
        return entries

    def _anchor(self, key: str, slab: int | None) -> ImageAnchor | None:
        """The image anchor of a region key or ``lesion_<id>`` on ``slab`` (None: the slab
        holding most of its voxels)."""
        if key.startswith("lesion_"):
            lesion_id = int(key.removeprefix("lesion_"))
            labels = [lesion_label(lesion_id, source) for source in ("reader", "candidate")]
        else:
            labels = [REGION_SEGMENT_LABELS.get(key, key)]
        slabs = [slab] if slab is not None else sorted(self._anchors)
        found = [self._anchors.get(number, {}).get(label) for number in slabs for label in labels]
        anchors = [anchor for anchor in found if anchor is not None]
        return max(anchors, key=lambda a: a.voxels) if anchors else None

    def segmentation(
        self,
        slab: Slab,
        specs: list[SegmentSpec],
        series_number: int,
        name: str,
        *,
        series_description: str | None = None,
    ) -> tuple[str, dict[str, int]]:
        """Plan one SEG of ``slab``; returns its SOP Instance UID and the segment numbers."""
        reference = slab.reference
        multiframe = len(reference.datasets) == 1 and reference.frame_sources[0][1] is not None
        order = [frame - 1 for _, frame in reference.frame_sources] if multiframe else None
        series_uid, sop_uid = str(hd.UID()), str(hd.UID())
        with _planning("segmentation"):
            self._segmentations.append(
                segmentation_header(
                    reference.datasets,
                    specs,
                    series_instance_uid=series_uid,
                    sop_instance_uid=sop_uid,
                )
            )

        numbers = segment_numbers(specs)
        self._segment_numbers[sop_uid] = numbers
        options: dict[str, Any] = {}
        if series_description is not None:
            options["series_description"] = series_description
            options["content_description"] = series_description

        def build() -> Dataset:
            return build_segmentation(
                reference.datasets,
                specs,
                series_number=series_number,
                identity=self.identity,
                slice_order=order,  # type: ignore[arg-type]
                series_instance_uid=series_uid,
                sop_instance_uid=sop_uid,
                **options,
            )

        self._plan_object(f"segmentation {name}", _COST_SEGMENTATION, name, build)
        return sop_uid, numbers

    @property
    def has_segmentations(self) -> bool:
        """Whether a SEG is planned (the report needs one)."""
        return bool(self._segmentations)

    def report(self, summary: dict[str, Any], slabs: list[Slab]) -> str:
        """Plan the TID 1500 Structured Report of the whole exam; returns its SOP Instance UID.

        ``summary`` is read when the report is built, i.e. after every object is planned.
        """
        numbers = dict(self._segment_numbers)

        def lookup(key: str, seg: Dataset) -> int | None:
            own = numbers.get(str(seg.SOPInstanceUID), {})
            if key.startswith("lesion_"):
                lesion_id = int(key.removeprefix("lesion_"))
                for source in ("reader", "candidate"):
                    number = own.get(lesion_label(lesion_id, source))
                    if number is not None:
                        return number
                return None
            label = REGION_SEGMENT_LABELS.get(key)
            return own.get(label) if label else None

        series_uid, sop_uid = str(hd.UID()), str(hd.UID())
        sources = [ds for slab in slabs for ds in slab.reference.datasets]
        segmentations, maps = list(self._segmentations), list(self._parametric_maps)

        def build() -> Dataset:
            return build_measurement_report(
                summary,
                source_images=sources,
                segmentations=segmentations,
                segment_numbers=lookup,
                parametric_maps=maps,
                series_number=SR_SERIES_NUMBER,
                identity=self.identity,
                series_instance_uid=series_uid,
                sop_instance_uid=sop_uid,
                anchors=self._anchor,
            )

        self._plan_object("structured report", _COST_REPORT, "report_sr.dcm", build)
        return sop_uid

    def rendered_report(
        self,
        summary: dict[str, Any],
        slabs: list[Slab],
        images: list[SlabImages],
        history: list[dict[str, Any]],
    ) -> None:
        """Plan the charts and overlays (Secondary Captures) and the PDF page (Encapsulated
        PDF); what was made is in :attr:`ExamOutputs.summary` ``["rendered"]`` after
        :meth:`write`."""
        sources = [ds for slab in slabs for ds in slab.reference.datasets]
        out_dir = self.out.out_dir

        def run() -> Written:
            figures_dir = out_dir / "figures"
            figures_dir.mkdir(exist_ok=True)
            figures = render_exam_figures(summary, images, history)
            pdf = render_pdf_report(summary, figures)
            for figure in figures:
                (figures_dir / f"{figure.name}.png").write_bytes(figure.png())
            (figures_dir / "report.pdf").write_bytes(pdf)
            captures = build_secondary_captures(
                figures, sources, series_number=SC_SERIES_NUMBER, identity=self.identity
            )
            document = build_encapsulated_pdf(
                pdf,
                sources,
                document_title="cordt1 spinal cord T1 report",
                series_number=PDF_SERIES_NUMBER,
                identity=self.identity,
            )
            files = [
                _save(capture, out_dir / "dicom" / f"figure{number}_sc.dcm")
                for number, capture in enumerate(captures, start=1)
            ]
            files.append(_save(document, out_dir / "dicom" / "report_pdf.dcm"))
            return Written(
                dicom_files=files,
                values={
                    "figures": [f.name for f in figures],
                    "sc_sop_instance_uids": [str(c.SOPInstanceUID) for c in captures],
                    "pdf_sop_instance_uid": str(document.SOPInstanceUID),
                },
            )

        self._rendered = len(self.tasks)
        self._plan("rendered report (figures, secondary captures, PDF)", _COST_RENDERED, run)

    def write(self, *, processes: int = 1) -> dict[str, Any]:
        """Write every planned file, on ``processes`` processes in all.

        Returns
        -------
        dict
            What the rendered report made (figure names and UIDs), empty without one.

        Raises
        ------
        ExamError
            Naming the object whose writer failed, or the helper process that died; no
            result is sent then.
        """
        try:
            results = run_tasks(self.tasks, processes=processes)
        except TaskError as exc:
            raise ExamError(
                f"writing the {exc.name} failed ({exc.error}); no result was sent"
            ) from exc
        except LaneError as exc:
            raise ExamError(f"writing the results failed: {exc}; no result was sent") from exc
        for written in results:
            self.out.dicom_files.extend(written.dicom_files)
            self.out.nifti_files.extend(written.nifti_files)
        return results[self._rendered].values if self._rendered is not None else {}
