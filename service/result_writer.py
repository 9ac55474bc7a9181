"""Write one exam's result files (DICOM objects, NIfTI, figures) and remember them; a failing
writer fails the whole exam with an error naming the object."""

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

from reports.codes import REGION_CONCEPTS
from reports.encapsulated_pdf import build_encapsulated_pdf
from reports.figures import SlabImages, render_exam_figures, render_pdf_report
from reports.identity import ResultIdentity
from reports.parametric_map import MapKind, build_parametric_map
from reports.secondary_capture import build_secondary_captures
from reports.segmentation import SegmentSpec, build_segmentation, segment_numbers
from reports.structured_report import build_measurement_report
from service.exam import ExamError, Slab
from service.nifti import to_nifti
from service.volumes import SeriesVolume

__all__ = [
    "PDF_SERIES_NUMBER",
    "REGION_SEGMENT_LABELS",
    "SC_SERIES_NUMBER",
    "SEG_SERIES_NUMBER",
    "SR_SERIES_NUMBER",
    "T1_SERIES_NUMBER",
    "Z_SERIES_NUMBER",
    "ExamOutputs",
    "ResultWriter",
]

log = logging.getLogger(__name__)

T1_SERIES_NUMBER = 9100
Z_SERIES_NUMBER = 9200
SEG_SERIES_NUMBER = 9300
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


@contextmanager
def _writing(what: str) -> Iterator[None]:
    """Turn any failure of a result writer into an ExamError naming the object."""
    try:
        yield
    except ExamError:
        raise
    except Exception as exc:
        log.exception("writing the %s failed", what)
        raise ExamError(
            f"writing the {what} failed ({type(exc).__name__}: {exc}); no result was sent"
        ) from exc


class ResultWriter:
    """Writes one exam's files and remembers them; a failing writer fails the whole exam."""

    def __init__(self, out: ExamOutputs) -> None:
        self.out = out
        self.segmentations: list[hd.seg.Segmentation] = []
        self.parametric_maps: list[Dataset] = []
        (out.out_dir / "dicom").mkdir(parents=True, exist_ok=True)
        (out.out_dir / "nifti").mkdir(parents=True, exist_ok=True)

    def nifti(self, name: str, array: NDArray[Any], affine_lps: NDArray[np.float64]) -> None:
        path = self.out.out_dir / "nifti" / name
        nib.save(to_nifti(array, affine_lps), path)
        self.out.nifti_files.append(path)

    def parametric_map(
        self,
        slab: Slab,
        values: NDArray[np.float64],
        kind: MapKind,
        series_number: int,
        identity: ResultIdentity,
        name: str,
    ) -> str:
        reference = slab.reference
        with _writing(f"{kind} parametric map"):
            pm = self._parametric_map(reference, values, kind, series_number, identity)
        path = self.out.out_dir / "dicom" / name
        pm.save_as(path, enforce_file_format=True)
        self.out.dicom_files.append(path)
        self.parametric_maps.append(pm)
        return str(pm.SOPInstanceUID)

    @staticmethod
    def _parametric_map(
        reference: SeriesVolume,
        values: NDArray[np.float64],
        kind: MapKind,
        series_number: int,
        identity: ResultIdentity,
    ) -> hd.pm.ParametricMap:
        return build_parametric_map(
            reference.datasets,
            reference.to_source_order(np.where(np.isfinite(values), values, 0.0)),
            kind,
            series_number=series_number,
            identity=identity,
        )

    def report(self, summary: dict[str, Any], slabs: list[Slab], identity: ResultIdentity) -> str:
        """The TID 1500 Structured Report of the whole exam."""
        numbers = {
            str(entry["seg_sop_instance_uid"]): entry.get("segment_numbers", {})
            for entry in summary["slabs"]
            if entry.get("seg_sop_instance_uid")
        }

        def lookup(key: str, seg: Dataset) -> int | None:
            label = REGION_SEGMENT_LABELS.get(key)
            return numbers.get(str(seg.SOPInstanceUID), {}).get(label) if label else None

        with _writing("structured report"):
            sr = self._build_report(summary, slabs, identity, lookup)
        path = self.out.out_dir / "dicom" / "report_sr.dcm"
        sr.save_as(path, enforce_file_format=True)
        self.out.dicom_files.append(path)
        return str(sr.SOPInstanceUID)

    def _build_report(
        self,
        summary: dict[str, Any],
        slabs: list[Slab],
        identity: ResultIdentity,
        lookup: Callable[[str, Dataset], int | None],
    ) -> hd.sr.Comprehensive3DSR:
        return build_measurement_report(
            summary,
            source_images=[ds for slab in slabs for ds in slab.reference.datasets],
            segmentations=self.segmentations,
            segment_numbers=lookup,
            parametric_maps=self.parametric_maps,
            series_number=SR_SERIES_NUMBER,
            identity=identity,
        )

    def rendered_report(
        self,
        summary: dict[str, Any],
        slabs: list[Slab],
        images: list[SlabImages],
        identity: ResultIdentity,
        history: list[dict[str, Any]],
    ) -> dict[str, Any]:
        """Charts and overlays as Secondary Captures, the one-page report as Encapsulated PDF."""
        sources = [ds for slab in slabs for ds in slab.reference.datasets]
        figures_dir = self.out.out_dir / "figures"
        figures_dir.mkdir(exist_ok=True)
        with _writing("rendered figures"):
            figures = render_exam_figures(summary, images, history)
            pdf = render_pdf_report(summary, figures)
        for figure in figures:
            (figures_dir / f"{figure.name}.png").write_bytes(figure.png())
        (figures_dir / "report.pdf").write_bytes(pdf)
        with _writing("secondary captures"):
            captures = build_secondary_captures(
                figures, sources, series_number=SC_SERIES_NUMBER, identity=identity
            )
        with _writing("encapsulated PDF report"):
            document = build_encapsulated_pdf(
                pdf,
                sources,
                document_title="cordt1 spinal cord T1 report",
                series_number=PDF_SERIES_NUMBER,
                identity=identity,
            )
        uids = []
        for number, capture in enumerate(captures, start=1):
            path = self.out.out_dir / "dicom" / f"figure{number}_sc.dcm"
            capture.save_as(path, enforce_file_format=True)
            self.out.dicom_files.append(path)
            uids.append(str(capture.SOPInstanceUID))
        path = self.out.out_dir / "dicom" / "report_pdf.dcm"
        document.save_as(path, enforce_file_format=True)
        self.out.dicom_files.append(path)
        return {
            "figures": [f.name for f in figures],
            "sc_sop_instance_uids": uids,
            "pdf_sop_instance_uid": str(document.SOPInstanceUID),
        }

    def segmentation(
        self,
        slab: Slab,
        specs: list[SegmentSpec],
        series_number: int,
        identity: ResultIdentity,
        name: str,
    ) -> tuple[str, dict[str, int]]:
        reference = slab.reference
        multiframe = len(reference.datasets) == 1 and reference.frame_sources[0][1] is not None
        order = [frame - 1 for _, frame in reference.frame_sources] if multiframe else None
        with _writing("segmentation"):
            seg = build_segmentation(
                reference.datasets,
                specs,
                series_number=series_number,
                identity=identity,
                slice_order=order,  # type: ignore[arg-type]
            )
        path = self.out.out_dir / "dicom" / name
        seg.save_as(path, enforce_file_format=True)
        self.out.dicom_files.append(path)
        self.segmentations.append(seg)
        return str(seg.SOPInstanceUID), segment_numbers(specs)
