"""A processed exam in the OHIF web viewer, as a radiologist opens it (issue 11).

Orthanc with DICOMweb holds the source exam and every result object of ``cordt1 process``; the
OHIF viewer from npm is served in front of it by ``deploy/viewer/ohif_proxy.py`` and driven in the
system Chromium. Screenshots are kept under the test's temporary folder and, with
``CORDT1_VIEWER_ARTEFACTS=DIR`` (``scripts/viewer.sh``), copied to DIR.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

from service.inputs.protocol import load_site_protocols
from service.pipeline.model_build import build_model
from tests.ohif_viewer import (
    SR_WITHOUT_COORDINATES,
    OhifPage,
    ViewerStack,
    chromium_page,
    is_blank,
    probe_value,
    viewer_stack,
)
from tests.service_harness import PhantomExam, make_exams

pytestmark = pytest.mark.slow

SEG = "1.2.840.10008.5.1.4.1.1.66.4"
LABELMAP_SEG = "1.2.840.10008.5.1.4.1.1.66.7"
SR_CLASSES = ("1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.88.33")
PDF = "1.2.840.10008.5.1.4.1.1.104.1"
PARAMETRIC_MAP = "1.2.840.10008.5.1.4.1.1.30"
MR_CLASSES = ("1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.4.1")
# share of clearly coloured pixels in the viewport's centre that means "an overlay is drawn"
OVERLAY_SHARE = 0.002
# segments of the anatomy layer (GM/WM regions) that must not bury the lesions
REGION_WORDS = ("dorsal", "ventral", "lateral", "intermediate")


@dataclass(frozen=True)
class ProcessedExam:
    """A phantom exam with its ``cordt1 process`` results (headers read once)."""

    exam: PhantomExam
    sources: list[Path]
    results: dict[Path, pydicom.Dataset]

    def of_class(self, *sop_classes: str) -> dict[Path, pydicom.Dataset]:
        """Result files of the given SOP classes."""
        return {p: ds for p, ds in self.results.items() if ds.SOPClassUID in sop_classes}


@pytest.fixture(scope="module")
def processed(tmp_path_factory: pytest.TempPathFactory) -> ProcessedExam:
    root = tmp_path_factory.mktemp("viewer_exam")
    controls = make_exams(root / "controls", controls=5, patients=0, seed=31)
    build_model(
        root / "controls",
        root / "model",
        profiles=load_site_protocols(controls[0].site_protocols),
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    exam = make_exams(root / "patient", patients=1, seed=21)[0]
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "service.cli",
            "process",
            str(exam.dicom_dir),
            "--out",
            str(root / "out"),
            "--site-protocols",
            str(exam.site_protocols),
            "--model",
            str(root / "model"),
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    files = sorted((root / "out" / exam.study_uid / "dicom").glob("*.dcm"))
    results = {p: pydicom.dcmread(p, stop_before_pixels=True) for p in files}
    return ProcessedExam(exam, sorted(exam.dicom_dir.rglob("*.dcm")), results)


@pytest.fixture(scope="module")
def stack(
    processed: ProcessedExam, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ViewerStack]:
    folder = tmp_path_factory.mktemp("viewer_stack")
    with viewer_stack(folder, processed.sources + list(processed.results)) as running:
        yield running


@pytest.fixture(scope="module")
def ohif(stack: ViewerStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OhifPage]:
    shots = tmp_path_factory.mktemp("viewer_shots")
    with chromium_page(shots) as page:
        yield page
    (shots / "console.log").write_text("\n".join(page.console + page.page_errors))
    keep = os.environ.get("CORDT1_VIEWER_ARTEFACTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        for shot in shots.iterdir():
            shutil.copyfile(shot, Path(keep) / shot.name)


def _series(files: dict[Path, pydicom.Dataset]) -> dict[int, list[pydicom.Dataset]]:
    out: dict[int, list[pydicom.Dataset]] = {}
    for ds in files.values():
        out.setdefault(int(ds.SeriesNumber), []).append(ds)
    return dict(sorted(out.items()))


def test_study_list_opens_the_study_with_every_result_series(
    processed: ProcessedExam, stack: ViewerStack, ohif: OhifPage
) -> None:
    description = str(
        pydicom.dcmread(processed.sources[0], stop_before_pixels=True).StudyDescription
    )
    ohif.page.goto(stack.url)
    row = ohif.page.get_by_text(description, exact=True).first
    row.wait_for(timeout=60_000)
    ohif.dismiss_notices()
    ohif.page_shot("01_study_list")
    row.click()
    ohif.page.get_by_role("button", name="Basic Viewer").click()
    ohif.page.wait_for_url(re.compile("/viewer"))
    ohif.page.locator('[data-cy="study-browser-thumbnail"]').first.wait_for(timeout=60_000)
    ohif.page.wait_for_timeout(2000)
    ohif.dismiss_notices()
    ohif.page_shot("02_study")
    shot, stats = ohif.viewport_shot_when("02_study_viewport", lambda st: not is_blank(st))
    assert processed.exam.study_uid in ohif.page.url
    assert set(_series(processed.results)) <= ohif.thumbnail_series_numbers()
    assert not is_blank(stats), f"blank first viewport, see {shot}"
    assert ohif.viewer_errors() == []


def test_result_series_are_told_apart_by_their_descriptions(
    processed: ProcessedExam, stack: ViewerStack, ohif: OhifPage
) -> None:
    """Issue 11 item 3: per-slab series name their slab; no two result series look the same."""
    ohif.open_viewer(stack.viewer_url(processed.exam.study_uid))
    shown = ohif.thumbnail_descriptions()
    results = {n: shown.get(n, "") for n in _series(processed.results)}
    seen: dict[str, list[int]] = {}
    for number, description in results.items():
        seen.setdefault(description, []).append(number)
    assert {d: n for d, n in seen.items() if len(n) > 1} == {}


@pytest.fixture(scope="module")
def opened_segmentations(
    processed: ProcessedExam, stack: ViewerStack, ohif: OhifPage
) -> list[dict[str, Any]]:
    """Each SEG result opened on its own: the segments the panel lists, the shot, errors."""
    opened = []
    for number, datasets in _series(processed.of_class(SEG, LABELMAP_SEG)).items():
        ohif.open_viewer(stack.viewer_url(processed.exam.study_uid))
        mark = len(ohif.console)
        ohif.open_series(number, settle_ms=500)
        assert ohif.click_button("Yes"), f"OHIF did not offer to open SEG series {number}"
        shot, stats = ohif.viewport_shot_when(
            f"03_seg_{number}", lambda st: not is_blank(st) and st["coloured"] > OVERLAY_SHARE
        )
        panel = ohif.open_segmentation_panel()
        ohif.page_shot(f"03_seg_{number}_panel")
        labels = [str(s.SegmentLabel) for ds in datasets for s in ds.SegmentSequence]
        opened.append(
            {
                "series": number,
                "labels": labels,
                "listed": [label for label in labels if label in panel],
                "shot": shot,
                "stats": stats,
                "errors": ohif.viewer_errors(mark),
            }
        )
    return opened


def test_segmentations_list_their_segments_and_draw_an_overlay(
    opened_segmentations: list[dict[str, Any]],
) -> None:
    assert opened_segmentations, "no SEG among the results"
    for seg in opened_segmentations:
        assert seg["errors"] == [], seg
        assert seg["listed"] == seg["labels"], f"segments not listed in the panel: {seg}"
        assert not is_blank(seg["stats"]), f"blank viewport: {seg}"
        assert seg["stats"]["coloured"] > OVERLAY_SHARE, f"no overlay drawn: {seg}"


def test_lesions_and_cord_are_a_layer_apart_from_the_regions(
    opened_segmentations: list[dict[str, Any]],
) -> None:
    """Issue 11 item 3: the reader can show cord and lesions without the 12 regions on top."""
    clinical = [
        seg
        for seg in opened_segmentations
        if any("cord" in label.lower() for label in seg["listed"])
        and not any(w in label.lower() for label in seg["listed"] for w in REGION_WORDS)
    ]
    assert clinical, "every SEG with the cord also holds the regions: " + str(
        [(seg["series"], seg["listed"]) for seg in opened_segmentations]
    )
    lesions = {
        label
        for seg in opened_segmentations
        for label in seg["labels"]
        if "lesion" in label.lower()
    }
    in_clinical_layer = {label for seg in clinical for label in seg["listed"]}
    assert lesions <= in_clinical_layer, f"lesions outside the clinical layer: {lesions}"


def test_sr_measurements_show_as_annotations_on_the_images(
    processed: ProcessedExam, stack: ViewerStack, ohif: OhifPage
) -> None:
    reports = _series(processed.of_class(*SR_CLASSES))
    assert reports, "no SR among the results"
    number = next(iter(reports))
    ohif.open_viewer(stack.viewer_url(processed.exam.study_uid))
    mark = len(ohif.console)
    ohif.open_series(number, settle_ms=3000)
    shot, stats = ohif.viewport_shot_when("04_sr", lambda st: not is_blank(st))
    without_coordinates = [
        line for line in ohif.since(mark) if any(m in line for m in SR_WITHOUT_COORDINATES)
    ]
    texts = list(ohif.annotation_texts().values())
    for _ in range(5):  # labels are drawn a moment after the image
        if texts or is_blank(stats):
            break
        ohif.page.wait_for_timeout(1000)
        texts = list(ohif.annotation_texts().values())
    problems = [f"viewer error: {e}" for e in ohif.viewer_errors(mark)]
    if without_coordinates:
        problems.append(
            f"{len(without_coordinates)} warnings of measurement groups without image coordinates "
            f"({without_coordinates[0]})"
        )
    if is_blank(stats):
        problems.append(f"blank SR viewport ({shot})")
    if not texts:
        problems.append("no rendered annotation")
    elif not any(re.search(r"\d\s*ms(?![a-z])", text) for text in texts):
        problems.append(f"no annotation shows a value in ms: {texts}")
    assert problems == [], "\n".join(problems)


Z_WORDS = re.compile(r"z[- ]?score|\bZ\b", re.IGNORECASE)


def _derived_mr(processed: ProcessedExam, *, z_map: bool) -> dict[int, list[pydicom.Dataset]]:
    """Result MR series of the T1 map (``z_map=False``) or of the Z map, by series number."""
    out = {}
    for number, datasets in _series(processed.of_class(*MR_CLASSES)).items():
        description = str(datasets[0].SeriesDescription)
        is_z = bool(Z_WORDS.search(description))
        is_t1 = not is_z and bool(re.search(r"\bT1\b", description))
        if (z_map and is_z) or (not z_map and is_t1):
            out[number] = datasets
    return out


def _series_volume(processed: ProcessedExam, number: int) -> np.ndarray:
    """Rescaled pixel values of every image of a result series, [image, row, column]."""
    images = []
    for path, header in processed.results.items():
        if int(header.SeriesNumber) == number:
            ds = pydicom.dcmread(path)
            frames = ds.pixel_array.reshape(-1, ds.Rows, ds.Columns).astype(float)
            slope = float(ds.get("RescaleSlope", 1))
            images.append(frames * slope + float(ds.get("RescaleIntercept", 0)))
    return np.concatenate(images)


def _probe_target(volume: np.ndarray, plausible: Callable[[np.ndarray], np.ndarray]) -> Any:
    """The pixel nearest the image centre whose 3 x 3 neighbourhood is plausible on every
    image (so the probe reads a meaningful value whichever image OHIF shows first and a click
    a pixel off still lands on one), and the values there: (row, column, values)."""
    good = np.all(plausible(volume), axis=0)
    core = good.copy()
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            core &= np.roll(np.roll(good, dr, axis=0), dc, axis=1)
    rows, columns = np.nonzero(core if core.any() else good)
    if rows.size == 0:
        return None
    centre = (volume.shape[1] / 2, volume.shape[2] / 2)
    i = int(np.argmin((rows - centre[0]) ** 2 + (columns - centre[1]) ** 2))
    row, column = int(rows[i]), int(columns[i])
    return row, column, volume[:, row - 1 : row + 2, column - 1 : column + 2].ravel()


def _probe_series(
    processed: ProcessedExam,
    stack: ViewerStack,
    ohif: OhifPage,
    number: int,
    name: str,
    plausible: Callable[[np.ndarray], np.ndarray],
) -> tuple[float, np.ndarray, str, list[str]]:
    """Open a series and probe a plausible pixel near the centre: (probe value, stored values
    around that pixel, overlay text, problems: viewer errors, blank viewport, no value)."""
    volume = _series_volume(processed, number)
    target = _probe_target(volume, plausible)
    ohif.open_viewer(stack.viewer_url(processed.exam.study_uid))
    mark = len(ohif.console)
    ohif.open_series(number, settle_ms=2000)
    shot, stats = ohif.viewport_shot_when(name, lambda st: not is_blank(st))
    overlay = ohif.overlay_text()
    problems = [f"viewer error: {e}" for e in ohif.viewer_errors(mark)]
    if is_blank(stats):
        problems.append(f"blank viewport ({shot})")
    if target is None:
        problems.append("no pixel with a plausible value on every image of the series")
        return float("nan"), np.array([]), overlay, problems
    row, column, stored = target
    label = ohif.probe(row, column, volume.shape[1:])
    ohif.viewport_shot(f"{name}_probe")
    value = probe_value(label)
    if value is None:
        problems.append(f"no probe value in {label!r}")
    return (value if value is not None else float("nan")), stored, overlay, problems


def test_t1_map_is_a_derived_mr_series_whose_probe_reads_ms(
    processed: ProcessedExam, stack: ViewerStack, ohif: OhifPage
) -> None:
    """Issue 11 item 2: the T1 map as an ordinary MR series; the probe shows T1 in ms."""
    t1_series = _derived_mr(processed, z_map=False)
    assert t1_series, "no derived MR series of the T1 map among the results " + str(
        sorted({str(ds.SOPClassUID.name) for ds in processed.results.values()})
    )
    number, datasets = next(iter(t1_series.items()))
    assert "DERIVED" in datasets[0].ImageType
    assert "ms" in str(datasets[0].SeriesDescription)
    value, stored_ms, overlay, problems = _probe_series(
        processed, stack, ohif, number, "05_t1_map", lambda v: (v > 300) & (v < 5000)
    )
    assert problems == [], "\n".join(problems)
    assert "ms" in overlay, overlay
    assert 300 < value < 5000, f"probe shows {value}, not a T1 in ms"
    assert np.min(np.abs(stored_ms - value)) <= max(1.0, 0.005 * value), (value, stored_ms)


def test_z_map_is_a_derived_mr_series_whose_probe_reads_z(
    processed: ProcessedExam, stack: ViewerStack, ohif: OhifPage
) -> None:
    """Issue 11 item 2: with Z results (QC not failed) the Z map is an MR series too."""
    assert processed.of_class(PARAMETRIC_MAP), "no Parametric Map among the results"
    z_maps = [
        ds
        for ds in processed.of_class(PARAMETRIC_MAP).values()
        if Z_WORDS.search(str(ds.SeriesDescription))
    ]
    assert z_maps, "this exam has no Z results: the test needs a model and a QC that passes"
    z_series = _derived_mr(processed, z_map=True)
    assert z_series, "no derived MR series of the Z map among the results"
    number, datasets = next(iter(z_series.items()))
    assert "DERIVED" in datasets[0].ImageType
    value, stored_z, _, problems = _probe_series(
        processed,
        stack,
        ohif,
        number,
        "05_z_map",
        lambda v: np.isfinite(v) & (v != 0) & (np.abs(v) < 20),
    )
    assert problems == [], "\n".join(problems)
    assert -20 < value < 20, f"probe shows {value}, not a Z-score"
    assert np.min(np.abs(stored_z - value)) <= max(0.05, 0.02 * abs(value)), (value, stored_z)


def test_pdf_report_displays(processed: ProcessedExam, stack: ViewerStack, ohif: OhifPage) -> None:
    documents = _series(processed.of_class(PDF))
    assert documents, "no encapsulated PDF among the results"
    ohif.open_viewer(stack.viewer_url(processed.exam.study_uid))
    mark = len(ohif.console)
    ohif.open_series(next(iter(documents)), settle_ms=5000)
    shot, stats = ohif.viewport_shot_when("06_pdf", lambda st: not is_blank(st))
    embedded = ohif.viewport().locator("iframe, object, embed").count()
    assert ohif.viewer_errors(mark) == []
    assert embedded >= 1, "no PDF frame in the viewport"
    assert not is_blank(stats), f"blank PDF viewport, see {shot}"
