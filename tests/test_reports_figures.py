"""Rendered figures and the one-page PDF report (reports.figures)."""

from __future__ import annotations

import copy
import io
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from reports.figures import (
    RenderedFigure,
    SlabImages,
    expected_false_positive_percent,
    render_abnormal_bars,
    render_exam_figures,
    render_pdf_report,
    render_trend,
    render_z_overlay,
)
from tests.dicom_factory import affine_from_geometry

ABNORMAL = {
    "cord": 14.2,
    "wm": 12.1,
    "gm": 20.3,
    "wm_dorsal_columns": 28.0,
    "wm_dorsal_columns_left": 25.5,
    "wm_dorsal_columns_right": 31.0,
    "wm_lateral_funiculi_left": 8.0,
    "wm_lateral_funiculi_right": 9.5,
    "wm_ventral_funiculi_left": 2.0,
    "wm_ventral_funiculi_right": 3.1,
    "gm_dorsal_horns_left": 18.0,
    "gm_dorsal_horns_right": 22.0,
    "gm_intermediate_zone_left": 4.0,
    "gm_intermediate_zone_right": 5.0,
    "gm_ventral_horns_left": 1.0,  # the right side is missing on purpose
    "C2": 40.0,  # level keys are not bars
}


def make_summary(**changes: Any) -> dict[str, Any]:
    """A complete summary (docs/summary-contract.md) with known numbers."""
    summary: dict[str, Any] = {
        "software": {"name": "cordt1", "version": "9.8.7"},
        "exam": {
            "study_instance_uid": "1.2.826.0.1.3680043.8.498.2",
            "study_date": "20260101",
            "accession_number": "",
            "protocol_name": "mp2rage_cspine_0.3",
        },
        "research_use": "RESEARCH USE ONLY - NOT FOR DIAGNOSIS",
        "b1_note": "T1 not corrected for B1+ (no B1 map used)",
        "t1_ms": {"cord": 1231.4, "wm": 1201.2, "gm": 1322.0},
        "abnormal_percent": dict(ABNORMAL),
        "mean_z": {"cord": 0.84, "wm": 0.71, "gm": 1.12},
        "z_threshold": 1.96,
        "normal_appearing": {
            "nawm": {"mean_t1_ms": 1195.0, "mean_z": 0.5},
            "nagm": {"mean_t1_ms": 1301.0, "mean_z": 0.6},
        },
        "lesions": [
            {
                "id": 1,
                "source": "reader",
                "volume_mm3": 27.0,
                "location": "posterior",
                "side": "right",
                "level_name": "C3",
                "composition": "wm_only",
                "mean_t1_ms": 1725.8,
            }
        ],
        "lesion_summary": {"count": 1, "load_mm3": 27.0, "gm_share_percent": 0.0},
        "follow_up": {
            "prior_study_instance_uid": "1.2.826.0.1.3680043.8.498.1",
            "prior_study_date": "20250101",
            "trend": "worse",
            "reasons": ["new lesion 2"],
            "regions": {
                "cord": {"prior": {"abnormal_percent": 11.1}, "current": {}},
                "wm": {"prior": {"abnormal_percent": 9.0}, "current": {}},
                "gm": {"prior": {"abnormal_percent": 15.0}, "current": {}},
            },
        },
        "model": {"model_version": "nm-0123456789abcdef", "n_controls": 12},
        "qc": {"verdict": "pass", "reasons": [], "metrics": {"snr": 31.0}},
    }
    summary.update(changes)
    return summary


def failed_summary() -> dict[str, Any]:
    """QC failed; Z numbers left in on purpose: the figures must still not show them."""
    summary = make_summary()
    summary["qc"] = {"verdict": "fail", "reasons": ["fail: SNR 4.1 below 10"], "metrics": {}}
    return summary


def make_slab(
    *, row_cos: tuple[float, float, float] = (1.0, 0.0, 0.0), n_slices: int = 6, size: int = 96
) -> SlabImages:
    """A cord (ellipse) in CSF with a lesion and high Z on the patient's left, posterior side.

    ``row_cos`` is the direction of increasing column index i in LPS: (1, 0, 0) points to the
    patient's left, (-1, 0, 0) to the patient's right.
    """
    affine = affine_from_geometry([-14.0, -14.0, 0.0], row_cos, [0, 1, 0], [4.0, 0.3, 0.3])
    jj, ii = np.mgrid[:size, :size].astype(float)
    centre = size / 2
    x_mm = (ii - centre) * 0.3 * row_cos[0]  # + = patient left
    y_mm = (jj - centre) * 0.3  # + = posterior
    radius = (x_mm / 6.0) ** 2 + (y_mm / 4.0) ** 2
    t1 = np.full((n_slices, size, size), 900.0)
    t1[:, radius < 3.0] = 3600.0
    cord_2d = radius < 1.0
    t1[:, cord_2d] = 1200.0
    lesion_2d = cord_2d & (((x_mm - 3.0) / 1.5) ** 2 + ((y_mm - 1.5) / 1.2) ** 2 < 1.0)
    lesions = np.zeros(t1.shape, dtype=np.int16)
    lesions[1:4, lesion_2d] = 1
    t1[lesions > 0] = 1800.0
    cord = np.broadcast_to(cord_2d, t1.shape).copy()
    cord[0] = False  # no cord on the first slice: it must not be shown
    z = np.where(cord, (t1 - 1200.0) / 100.0, np.nan)
    return SlabImages(slab=1, t1_ms=t1, affine_lps=affine, cord=cord, z=z, lesions=lesions)


def coloured(rgb: np.ndarray) -> np.ndarray:
    """Pixels of strong colour (not grey, not white/black)."""
    as_int = rgb.astype(int)
    return (as_int.max(axis=2) - as_int.min(axis=2)) > 80


def pdf_text(pdf: bytes, tmp_path: Path) -> str:
    path = tmp_path / "report.pdf"
    path.write_bytes(pdf)
    result = subprocess.run(
        ["pdftotext", "-layout", str(path), "-"], capture_output=True, text=True, check=True
    )
    return result.stdout


needs_pdftotext = pytest.mark.skipif(
    shutil.which("pdftotext") is None, reason="poppler-utils (pdftotext) not installed"
)


# ---- bar chart ---------------------------------------------------------------------------------


def test_bars_have_the_summary_numbers_and_reference_lines() -> None:
    figure = render_abnormal_bars(make_summary())

    expected = {k: v for k, v in ABNORMAL.items() if k not in ("wm_dorsal_columns", "C2")}
    assert figure.data["bars"] == pytest.approx(expected)
    assert "gm_ventral_horns_right" not in figure.data["bars"]
    assert figure.data["expected_false_positive_percent"] == pytest.approx(2.5, abs=0.01)
    assert figure.data["study_cutoff_percent"] == 10.0
    assert figure.rgb.shape == (900, 1400, 3) and figure.rgb.dtype == np.uint8
    assert coloured(figure.rgb).sum() > 10_000  # blue/orange bars and the QC badge


def test_expected_false_positive_rate_follows_the_threshold() -> None:
    assert expected_false_positive_percent(2.0) == pytest.approx(2.275, abs=0.001)
    figure = render_abnormal_bars(make_summary(z_threshold=2.0))
    assert figure.data["expected_false_positive_percent"] == pytest.approx(2.275, abs=0.001)


def test_failed_qc_bars_show_reasons_not_numbers() -> None:
    figure = render_abnormal_bars(failed_summary())
    assert "bars" not in figure.data
    assert figure.data["lines"] == ["fail: SNR 4.1 below 10"]


def test_no_normative_model_is_explained() -> None:
    summary = make_summary()
    for key in ("abnormal_percent", "mean_z", "z_threshold", "model"):
        del summary[key]
    figure = render_abnormal_bars(summary)
    assert "bars" not in figure.data
    assert "No comparison with healthy controls" in figure.data["message"]


def test_bad_summaries_are_refused() -> None:
    with pytest.raises(ValueError, match="not a percentage"):
        render_abnormal_bars(make_summary(abnormal_percent={"cord": 140.0}))
    with pytest.raises(ValueError, match="no 'qc' section"):
        render_abnormal_bars({"exam": {}})
    with pytest.raises(ValueError, match=r"qc\.verdict"):
        render_abnormal_bars(make_summary(qc={"verdict": "maybe"}))
    with pytest.raises(TypeError, match="mapping"):
        render_abnormal_bars([])  # type: ignore[arg-type]


def test_png_bytes_decode_to_the_same_pixels() -> None:
    figure = render_abnormal_bars(make_summary())
    back = np.asarray(Image.open(io.BytesIO(figure.png())).convert("RGB"))
    np.testing.assert_array_equal(back, figure.rgb)


# ---- Z overlay ---------------------------------------------------------------------------------


@pytest.mark.parametrize("row_cos", [(1.0, 0.0, 0.0), (-1.0, 0.0, 0.0)])
def test_overlay_puts_patient_left_on_the_image_right(row_cos: tuple[float, float, float]) -> None:
    figure = render_z_overlay(make_slab(row_cos=row_cos), z_threshold=1.96)

    assert figure.data["letters"] == {"right": "L", "left": "R", "top": "A", "bottom": "P"}
    # the lesion (high Z) sits on the patient's left and posterior: right and low in each panel
    x0, y0, x1, y1 = figure.data["panel_boxes_px"][2]  # slice 3 holds the lesion
    panel = figure.rgb[y0:y1, x0:x1]
    rows, cols = np.nonzero(coloured(panel) & (panel[..., 0] > 150))  # plasma warm colours
    assert cols.size > 50
    assert cols.mean() > 0.55 * panel.shape[1]
    assert rows.mean() > 0.5 * panel.shape[0]


def test_overlay_crops_around_the_cord_and_skips_slices_without_cord() -> None:
    slab = make_slab()
    figure = render_z_overlay(slab, z_threshold=1.96, margin_mm=2.0)

    assert figure.data["slices"] == [5, 4, 3, 2, 1]  # superior first, slice 0 has no cord
    j0, j1, i0, i1 = figure.data["crop_ji"]
    js, is_ = np.nonzero(slab.cord.any(axis=0))
    assert j0 <= js.min() and j1 > js.max() and i0 <= is_.min() and i1 > is_.max()
    assert (j1 - j0) < 96 and (i1 - i0) < 96  # cropped, not the whole field of view
    assert figure.data["abnormal_voxels"] == int((slab.lesions > 0).sum())
    assert len(figure.data["panel_boxes_px"]) == 5


def test_failed_qc_overlay_hides_z() -> None:
    figure = render_z_overlay(make_slab(), summary=failed_summary())
    assert figure.data["z_shown"] is False
    assert figure.data["abnormal_voxels"] == 0
    assert "Z-scores" not in figure.title


def test_slab_images_validate() -> None:
    slab = make_slab()
    with pytest.raises(ValueError, match="z shape"):
        SlabImages(1, slab.t1_ms, slab.affine_lps, slab.cord, z=np.zeros((2, 2, 2)))
    with pytest.raises(TypeError, match="boolean"):
        SlabImages(1, slab.t1_ms, slab.affine_lps, slab.cord.astype(int))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="singular"):
        SlabImages(1, slab.t1_ms, np.zeros((4, 4)), slab.cord)


# ---- trend -------------------------------------------------------------------------------------


def test_trend_has_prior_and_current_values_and_the_trend_word() -> None:
    figure = render_trend(make_summary())

    assert figure.data["dates"] == ["2025-01-01", "2026-01-01"]
    assert figure.data["series"]["cord"] == [11.1, 14.2]
    assert figure.data["series"]["gm"] == [15.0, 20.3]
    assert figure.data["series"]["wm_dorsal_columns"] == [None, 28.0]
    assert figure.data["trend"] == "worse"
    assert figure.data["reasons"] == ["new lesion 2"]
    assert figure.rgb.shape == (850, 1300, 3)


def test_trend_takes_earlier_exams_from_history() -> None:
    older = make_summary(exam={"study_instance_uid": "1.2.0", "study_date": "20240301"})
    older["abnormal_percent"] = {"cord": 5.0}
    figure = render_trend(make_summary(), history=[older])
    assert figure.data["dates"] == ["2024-03-01", "2025-01-01", "2026-01-01"]
    assert figure.data["series"]["cord"] == [5.0, 11.1, 14.2]


def test_missing_follow_up_gives_no_trend() -> None:
    summary = make_summary()
    del summary["follow_up"]
    with pytest.raises(ValueError, match="at least two exams"):
        render_trend(summary)
    names = [f.name for f in render_exam_figures(summary, [make_slab()])]
    assert names == ["abnormal_bars", "z_overlay_slab1"]


def test_exam_figures_include_the_trend_when_there_is_a_prior() -> None:
    names = [f.name for f in render_exam_figures(make_summary(), [make_slab()])]
    assert names == ["abnormal_bars", "z_overlay_slab1", "trend"]


# ---- PDF ---------------------------------------------------------------------------------------


def _pdf(summary: dict[str, Any]) -> bytes:
    return render_pdf_report(summary, render_exam_figures(summary, [make_slab()]))


def test_pdf_is_one_page_with_metadata() -> None:
    pdf = _pdf(make_summary())
    assert pdf.startswith(b"%PDF-")
    assert pdf.count(b"/Type /Page\n") + pdf.count(b"/Type /Page ") == 1
    assert b"Spinal cord T1 report, exam 20260101" in pdf  # Title, plain text in the PDF


@needs_pdftotext
def test_pdf_shows_key_numbers_lesions_and_research_text(tmp_path: Path) -> None:
    text = pdf_text(_pdf(make_summary()), tmp_path)
    for expected in (
        "RESEARCH USE ONLY - NOT FOR DIAGNOSIS",
        "Quality check: passed",
        "1231",  # mean T1 of the cord
        "14.2",  # % abnormal of the cord
        "0.84",  # mean Z of the cord
        "C3 (est.)",
        "posterior right",
        "nm-0123456789abcdef",
        "T1 not corrected for B1+",
    ):
        assert expected in text, expected


@needs_pdftotext
def test_failed_qc_pdf_shows_reasons_instead_of_z_numbers(tmp_path: Path) -> None:
    text = pdf_text(_pdf(failed_summary()), tmp_path)
    assert "FAILED" in text
    assert "SNR 4.1 below 10" in text
    assert "1231" in text  # T1 is still reported
    for z_number in ("14.2", "0.84", "Mean Z", "Abnormal voxels"):
        assert z_number not in text, z_number


@needs_pdftotext
def test_pdf_without_follow_up_says_when_the_trend_comes(tmp_path: Path) -> None:
    summary = make_summary()
    del summary["follow_up"]
    text = pdf_text(_pdf(summary), tmp_path)
    assert "the trend chart appears after the next exam" in text


def test_pdf_needs_the_bar_chart() -> None:
    summary = make_summary()
    overlay = render_z_overlay(make_slab())
    with pytest.raises(ValueError, match="abnormal_bars"):
        render_pdf_report(summary, [overlay])
    with pytest.raises(TypeError, match="RenderedFigure"):
        render_pdf_report(summary, ["chart"])  # type: ignore[list-item]


def test_rendered_figure_validates() -> None:
    with pytest.raises(ValueError, match="uint8"):
        RenderedFigure("x", "X", np.zeros((4, 4, 3), dtype=np.float32))  # type: ignore[arg-type]
    figure = RenderedFigure("x", "X", np.zeros((4, 4, 3), dtype=np.uint8))
    assert copy.copy(figure).name == "x"


@needs_pdftotext
def test_pdf_numbers_lesions_with_the_summary_ids_and_marks_candidates(tmp_path: Path) -> None:
    # the '#' column is summary.json's lesion id, the one the SEG labels and SR groups carry
    summary = make_summary()
    candidate = {**summary["lesions"][0], "id": 2, "source": "candidate", "level_name": "C5"}
    summary["lesions"] = [summary["lesions"][0], candidate]
    text = pdf_text(_pdf(summary), tmp_path)
    assert "2 (auto)" in text
    assert "1 (auto)" not in text
