"""Figures a person reads: abnormal-voxel bar chart, Z overlay on T1, follow-up trend, PDF page.

Pure rendering: inputs are the per-exam summary dict (``docs/summary-contract.md``) and arrays
on the exam grid; outputs are RGB ``uint8`` arrays (for Secondary Capture), PNG bytes and a
one-page PDF. matplotlib runs with its Agg canvas on :class:`matplotlib.figure.Figure` objects
(no pyplot, no display, no global figure state), so rendering is safe in worker threads.

Choices a reader sees:

- plain words next to anatomical names ("Dorsal columns (sensory tracts)"), large fonts;
- colours from the Okabe-Ito palette (safe for colour-blind readers), and every colour also
  differs by hatching, line style or marker;
- the expected false-positive share (``100 - percentile of the Z threshold``: 2.5 % for
  Z > 1.96) and the study's > 10 % line on the bar chart;
- every figure carries the research-use text, the software and model version and the QC verdict;
- a failed QC replaces every Z-derived number by the reasons of the failure;
- axial slices are shown as radiologists expect: patient left on the image right, anterior up
  (derived from ``affine_lps``; the letters at the panel edges say where each side is).

Each ``render_*`` function returns a :class:`RenderedFigure` whose ``data`` reports what was
drawn, read back from the plotted artists (bar lengths, reference lines, slices, orientation).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from numpy.typing import NDArray
from PIL import Image
from scipy import ndimage

__all__ = [
    "REGION_LABELS",
    "RenderedFigure",
    "SlabImages",
    "expected_false_positive_percent",
    "render_abnormal_bars",
    "render_exam_figures",
    "render_pdf_report",
    "render_trend",
    "render_z_overlay",
]

#: Plain-word labels of the summary's region keys.
REGION_LABELS: dict[str, str] = {
    "cord": "Whole spinal cord",
    "wm": "White matter, all (nerve fibres)",
    "gm": "Grey matter, all (nerve cells)",
    "wm_dorsal_columns": "Dorsal columns (sensory tracts)",
    "wm_lateral_funiculi": "Lateral columns (motor tracts)",
    "wm_ventral_funiculi": "Ventral columns (front tracts)",
    "gm_dorsal_horns": "Dorsal horns (sensory grey matter)",
    "gm_intermediate_zone": "Intermediate zone (central grey matter)",
    "gm_ventral_horns": "Ventral horns (motor nerve cells)",
}
_TISSUES = ("cord", "wm", "gm")
_SUBREGIONS = (
    "wm_dorsal_columns",
    "wm_lateral_funiculi",
    "wm_ventral_funiculi",
    "gm_dorsal_horns",
    "gm_intermediate_zone",
    "gm_ventral_horns",
)
_TREND_KEYS = ("cord", "wm", "gm", "wm_dorsal_columns")
STUDY_CUTOFF_PERCENT = 10.0

# Okabe-Ito palette (colour-blind safe).
_BLUE, _ORANGE, _GREEN, _VERMILLION = "#0072B2", "#E69F00", "#009E73", "#D55E00"
_SKY, _PURPLE, _GREY = "#56B4E9", "#CC79A7", "#4D4D4D"
_VERDICT_COLOURS = {"pass": _GREEN, "warn": _ORANGE, "fail": _VERMILLION}
_VERDICT_WORDS = {"pass": "passed", "warn": "passed with warnings", "fail": "FAILED"}
_TREND_COLOURS = {"worse": _VERMILLION, "better": _GREEN, "stable": _BLUE}
_DPI = 100
_T1_WINDOW_MS = (0.0, 3000.0)
_Z_SPAN = 4.0  # colour scale from the threshold to threshold + this
_Z_COLOURS = matplotlib.colormaps["plasma"]
_PANEL_PX = 280  # target size of one slice panel
_A4_IN = (8.27, 11.69)
_PDF_CHAR_W = 0.0082  # mean width of one 8.5 pt character as a fraction of the A4 width
_PDF_MAX_DPI = 200  # figures are embedded at most at this resolution on the page


@dataclass(frozen=True)
class RenderedFigure:
    """One rendered figure.

    Attributes
    ----------
    name : str
        Machine name (``abnormal_bars``, ``z_overlay_slab1``, ``trend``).
    title : str
        What the figure shows, in plain words (used as the DICOM description).
    rgb : numpy.ndarray
        ``(rows, columns, 3)`` uint8 pixels.
    data : mapping
        What was drawn (values read back from the plot), for checks and logs.
    """

    name: str
    title: str
    rgb: NDArray[np.uint8]
    data: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (
            not isinstance(self.rgb, np.ndarray)
            or self.rgb.dtype != np.uint8
            or self.rgb.ndim != 3
            or self.rgb.shape[2] != 3
            or min(self.rgb.shape[:2]) < 1
        ):
            raise ValueError("rgb must be a non-empty (rows, columns, 3) uint8 array")
        if not self.name or not self.title:
            raise ValueError("a figure needs a name and a title")

    def png(self) -> bytes:
        """The figure as PNG bytes."""
        buffer = io.BytesIO()
        Image.fromarray(self.rgb, mode="RGB").save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue()


@dataclass(frozen=True)
class SlabImages:
    """Arrays of one slab on its own grid, ``[k, j, i]`` (see docs/CONVENTIONS.md).

    Parameters
    ----------
    slab : int
        Slab number (1 = upper).
    t1_ms : numpy.ndarray
        T1 in ms; NaN where unknown.
    affine_lps : numpy.ndarray
        4x4 voxel index -> LPS mm.
    cord : numpy.ndarray
        Boolean cord mask.
    z : numpy.ndarray, optional
        Z-scores (NaN outside the cord); None when no normative model was used or QC failed.
    lesions : numpy.ndarray, optional
        Lesion mask or label image (> 0 is lesion).
    """

    slab: int
    t1_ms: NDArray[np.floating[Any]]
    affine_lps: NDArray[np.floating[Any]]
    cord: NDArray[np.bool_]
    z: NDArray[np.floating[Any]] | None = None
    lesions: NDArray[np.integer[Any]] | NDArray[np.bool_] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.slab, bool) or not isinstance(self.slab, int) or self.slab < 1:
            raise ValueError(f"slab must be a positive int, got {self.slab!r}")
        t1 = np.asarray(self.t1_ms)
        if t1.ndim != 3 or 0 in t1.shape:
            raise ValueError(f"t1_ms must be a non-empty 3-D array [k, j, i], got {t1.shape}")
        affine = np.asarray(self.affine_lps, dtype=float)
        if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
            raise ValueError("affine_lps must be a finite 4x4 matrix")
        if np.linalg.matrix_rank(affine[:3, :3]) < 3:
            raise ValueError("affine_lps is singular")
        for name in ("cord", "z", "lesions"):
            value = getattr(self, name)
            if value is not None and np.shape(value) != t1.shape:
                raise ValueError(f"{name} shape {np.shape(value)} != t1_ms shape {t1.shape}")
        if np.asarray(self.cord).dtype != np.bool_:
            raise TypeError("cord must be a boolean mask")


# ---- summary access ---------------------------------------------------------------------------


def expected_false_positive_percent(z_threshold: float) -> float:
    """Share of healthy voxels above a one-sided Z threshold, in percent.

    Examples
    --------
    >>> round(expected_false_positive_percent(1.96), 2)
    2.5
    """
    if not math.isfinite(z_threshold):
        raise ValueError(f"z_threshold must be finite, got {z_threshold!r}")
    return 50.0 * math.erfc(z_threshold / math.sqrt(2.0))


def _check_summary(summary: Mapping[str, Any]) -> None:
    if not isinstance(summary, Mapping):
        raise TypeError(f"summary must be a mapping, got {type(summary).__name__}")
    for key in ("exam", "qc"):
        if not isinstance(summary.get(key), Mapping):
            raise ValueError(f"summary has no {key!r} section (see docs/summary-contract.md)")
    verdict = summary["qc"].get("verdict")
    if verdict not in _VERDICT_COLOURS:
        raise ValueError(f"summary qc.verdict must be pass, warn or fail, got {verdict!r}")


def _qc_failed(summary: Mapping[str, Any]) -> bool:
    return bool(summary["qc"]["verdict"] == "fail")


def _study_date(text: object) -> date | None:
    value = str(text or "")
    if len(value) != 8 or not value.isdigit():
        return None
    try:
        return date(int(value[:4]), int(value[4:6]), int(value[6:]))
    except ValueError:
        return None


def _date_words(text: object) -> str:
    day = _study_date(text)
    return day.strftime("%d %B %Y").lstrip("0") if day else "unknown date"


def _percent_values(section: object, where: str) -> dict[str, float]:
    """Finite 0..100 values of a ``{region: percent}`` mapping (None entries are skipped)."""
    if section is None:
        return {}
    if not isinstance(section, Mapping):
        raise ValueError(f"{where} must be a mapping of region -> percent")
    values: dict[str, float] = {}
    for key, value in section.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{where}[{key!r}] must be a number, got {value!r}")
        if not math.isfinite(value) or not 0.0 <= value <= 100.0:
            raise ValueError(f"{where}[{key!r}] = {value!r} is not a percentage within 0..100")
        values[str(key)] = float(value)
    return values


def _z_threshold(summary: Mapping[str, Any]) -> float:
    value = summary.get("z_threshold", 1.96)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"summary z_threshold must be a finite number, got {value!r}")
    return float(value)


def _footer_text(summary: Mapping[str, Any]) -> str:
    software = summary.get("software") or {}
    parts = [str(summary.get("research_use") or "")]
    parts.append(f"{software.get('name', 'cordt1')} {software.get('version', '?')}")
    model = summary.get("model")
    if isinstance(model, Mapping) and model.get("model_version"):
        controls = model.get("n_controls")
        extra = f", {controls} healthy controls" if controls else ""
        parts.append(f"normative model {model['model_version']}{extra}")
    else:
        parts.append("no normative model")
    verdict = summary["qc"]["verdict"]
    parts.append(f"quality check {_VERDICT_WORDS[verdict]}")
    return "  |  ".join(p for p in parts if p)


# ---- matplotlib plumbing ------------------------------------------------------------------------


def _new_figure(width_in: float, height_in: float) -> Figure:
    fig = Figure(figsize=(width_in, height_in), dpi=_DPI, facecolor="white")
    FigureCanvasAgg(fig)
    return fig


def _to_rgb(fig: Figure) -> NDArray[np.uint8]:
    canvas = fig.canvas
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())  # type: ignore[attr-defined]
    return np.ascontiguousarray(rgba[..., :3])


def _decorate(fig: Figure, summary: Mapping[str, Any], title: str, subtitle: str) -> None:
    """Title, subtitle, QC badge (top) and footer; placed in pixels from the figure edges."""
    height_px = fig.get_figheight() * _DPI
    fig.text(0.5, 1 - 14 / height_px, title, ha="center", va="top", fontsize=22, weight="bold")
    fig.text(0.5, 1 - 62 / height_px, subtitle, ha="center", va="top", fontsize=15, color=_GREY)
    verdict = summary["qc"]["verdict"]
    fig.text(
        0.985,
        1 - 62 / height_px,
        f"Quality check: {_VERDICT_WORDS[verdict]}",
        ha="right",
        va="top",
        fontsize=13,
        color="white",
        weight="bold",
        bbox={"boxstyle": "round,pad=0.4", "facecolor": _VERDICT_COLOURS[verdict], "lw": 0},
    )
    fig.text(0.5, 10 / height_px, _footer_text(summary), ha="center", va="bottom", fontsize=12)


def _message_figure(
    summary: Mapping[str, Any], name: str, title: str, headline: str, lines: Sequence[str]
) -> RenderedFigure:
    """A figure that explains why there are no numbers to plot."""
    fig = _new_figure(14.0, 9.0)
    _decorate(fig, summary, title, f"Exam of {_date_words(summary['exam'].get('study_date'))}")
    fig.text(0.5, 0.72, headline, ha="center", va="center", fontsize=24, weight="bold")
    body = "\n".join(f"- {line}" for line in lines) or "-"
    fig.text(0.08, 0.6, body, ha="left", va="top", fontsize=17, wrap=True)
    return RenderedFigure(name, title, _to_rgb(fig), {"message": headline, "lines": list(lines)})


def _failure_lines(summary: Mapping[str, Any]) -> list[str]:
    reasons = [str(r) for r in summary["qc"].get("reasons") or []]
    return reasons or ["no reason recorded"]


# ---- 1. bar chart -------------------------------------------------------------------------------


def render_abnormal_bars(summary: Mapping[str, Any]) -> RenderedFigure:
    """Bar chart of the share of abnormal voxels per region (the study's per-patient chart).

    Parameters
    ----------
    summary : mapping
        The exam summary. Without ``abnormal_percent`` (no normative model) or with a failed
        QC, the figure explains why instead of showing numbers.

    Returns
    -------
    RenderedFigure
        ``data["bars"]`` maps ``region`` or ``region_left``/``_right`` to the drawn bar
        length (%); ``data["expected_false_positive_percent"]`` and
        ``data["study_cutoff_percent"]`` are the x positions of the two reference lines.

    Raises
    ------
    TypeError, ValueError
        For a summary without ``exam``/``qc`` or with percentages outside 0..100.
    """
    _check_summary(summary)
    title = "Share of spinal cord tissue with abnormally high T1"
    if _qc_failed(summary):
        return _message_figure(
            summary,
            "abnormal_bars",
            title,
            "Quality check failed: no Z-score results are shown",
            _failure_lines(summary),
        )
    percent = _percent_values(summary.get("abnormal_percent"), "abnormal_percent")
    if not percent:
        return _message_figure(
            summary,
            "abnormal_bars",
            title,
            "No comparison with healthy controls",
            ["no normative model exists for this protocol: only T1 values are reported"],
        )
    threshold = _z_threshold(summary)
    expected = expected_false_positive_percent(threshold)

    fig = _new_figure(14.0, 9.0)
    ax = fig.add_axes((0.33, 0.14, 0.63, 0.66))
    rows: list[tuple[str, float]] = []  # (label, y)
    bars: dict[str, float] = {}
    missing: list[float] = []
    y = 0.0
    height = 0.38
    for key in _TISSUES:
        rows.append((REGION_LABELS[key], y))
        if key in percent:
            patch = ax.barh(y, percent[key], height=2 * height, color=_GREY, edgecolor="black")
            bars[key] = float(patch.patches[0].get_width())
        else:
            missing.append(y)
        y += 1.0
    y += 0.5
    for key in _SUBREGIONS:
        rows.append((REGION_LABELS[key], y))
        for side, offset, colour, hatch in (
            ("left", -height / 2, _BLUE, ""),
            ("right", height / 2, _ORANGE, "//"),
        ):
            side_key = f"{key}_{side}"
            if side_key in percent:
                patch = ax.barh(
                    y + offset,
                    percent[side_key],
                    height=height,
                    color=colour,
                    hatch=hatch,
                    edgecolor="black",
                )
                bars[side_key] = float(patch.patches[0].get_width())
            else:
                missing.append(y + offset)
        y += 1.0
    largest = max([*bars.values(), STUDY_CUTOFF_PERCENT, expected])
    x_max = min(100.0, largest * 1.18 + 2.0)
    for patch in ax.patches:
        width = patch.get_width()  # type: ignore[attr-defined]
        centre = patch.get_y() + patch.get_height() / 2  # type: ignore[attr-defined]
        ax.text(
            width + x_max * 0.006,
            centre,
            f"{width:.1f} %",
            va="center",
            fontsize=12,
            bbox={"boxstyle": "square,pad=0.1", "facecolor": "white", "lw": 0},
        )
    for y_missing in missing:
        ax.text(x_max * 0.006, y_missing, "no data", va="center", fontsize=12, color=_GREY)
    expected_line = ax.axvline(expected, color="black", linestyle="--", linewidth=2.5)
    cutoff_line = ax.axvline(STUDY_CUTOFF_PERCENT, color=_PURPLE, linestyle=":", linewidth=3.5)
    ax.set_yticks([r[1] for r in rows], [r[0] for r in rows], fontsize=14)
    ax.invert_yaxis()
    ax.set_xlim(0.0, x_max)
    ax.set_xlabel(
        f"Voxels with abnormally high T1 (%)   [Z-score above {threshold:g}]", fontsize=15
    )
    ax.tick_params(axis="x", labelsize=13)
    ax.grid(axis="x", color="#DDDDDD")
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    legend = [
        Patch(facecolor=_GREY, edgecolor="black", label="both sides"),
        Patch(facecolor=_BLUE, edgecolor="black", label="left side"),
        Patch(facecolor=_ORANGE, edgecolor="black", hatch="//", label="right side"),
        Line2D(
            [], [], color="black", ls="--", lw=2.5, label=f"expected by chance ({expected:.1f} %)"
        ),
        Line2D([], [], color=_PURPLE, ls=":", lw=3.5, label="study cut-off (10 %)"),
    ]
    ax.legend(
        handles=legend,
        loc="lower center",
        bbox_to_anchor=(0.4, 1.0),
        ncol=3,
        fontsize=13,
        frameon=False,
    )
    date_words = _date_words(summary["exam"].get("study_date"))
    _decorate(
        fig,
        summary,
        "Share of spinal cord tissue with abnormally high T1",
        f"Exam of {date_words}",
    )
    fig.text(
        0.5,
        0.06,
        f"Healthy people show about {expected:.1f} % by chance (dashed line); "
        "the research study counted more than 10 % as clearly abnormal (dotted line).",
        ha="center",
        fontsize=13,
    )
    data = {
        "bars": bars,
        "expected_false_positive_percent": float(expected_line.get_xdata()[0]),  # type: ignore[index]
        "study_cutoff_percent": float(cutoff_line.get_xdata()[0]),  # type: ignore[index]
        "z_threshold": threshold,
    }
    return RenderedFigure("abnormal_bars", title, _to_rgb(fig), data)


# ---- 2. Z overlay on T1 -------------------------------------------------------------------------


def _letter(direction: NDArray[np.float64]) -> str:
    """Patient direction letter (LPS) of the dominant component of ``direction``."""
    axis = int(np.argmax(np.abs(direction)))
    positive = direction[axis] > 0
    return (("L", "R"), ("P", "A"), ("S", "I"))[axis][0 if positive else 1]


@dataclass(frozen=True)
class _Display:
    transpose: bool
    flip_lr: bool
    flip_ud: bool
    letters: dict[str, str]

    def apply(self, plane: NDArray[Any]) -> NDArray[Any]:
        out = plane.T if self.transpose else plane
        if self.flip_lr:
            out = out[:, ::-1]
        if self.flip_ud:
            out = out[::-1, :]
        return out


def _display(affine_lps: NDArray[np.float64]) -> _Display:
    """How to show a ``[j, i]`` plane so that patient left is right and anterior (or up) is up."""
    j_dir = affine_lps[:3, 1] / np.linalg.norm(affine_lps[:3, 1])
    i_dir = affine_lps[:3, 2] / np.linalg.norm(affine_lps[:3, 2])
    transpose = bool(abs(j_dir[0]) > abs(i_dir[0]))
    across, down = (j_dir, i_dir) if transpose else (i_dir, j_dir)
    flip_lr = bool(across[0] < 0)
    across = -across if flip_lr else across
    axis = int(np.argmax(np.abs(down)))
    wanted = -1.0 if axis == 2 else 1.0  # posterior down (axial), inferior down (else)
    flip_ud = bool(np.sign(down[axis]) != wanted)
    down = -down if flip_ud else down
    letters = {
        "right": _letter(across),
        "left": _letter(-across),
        "bottom": _letter(down),
        "top": _letter(-down),
    }
    return _Display(transpose, flip_lr, flip_ud, letters)


def _crop_box(
    cord: NDArray[np.bool_], spacing_ji_mm: tuple[float, float], margin_mm: float
) -> tuple[int, int, int, int]:
    """Square (in mm) box around every cord voxel of the slab plus a margin: j0, j1, i0, i1."""
    rows, cols = cord.shape[1:]
    footprint = cord.any(axis=0)
    if not footprint.any():
        return 0, rows, 0, cols
    js, is_ = np.nonzero(footprint)
    centre = ((js.min() + js.max()) / 2.0, (is_.min() + is_.max()) / 2.0)
    half_mm = (
        max(
            (js.max() - js.min() + 1) * spacing_ji_mm[0],
            (is_.max() - is_.min() + 1) * spacing_ji_mm[1],
        )
        / 2.0
        + margin_mm
    )
    box = []
    for axis, size in ((0, rows), (1, cols)):
        half = math.ceil(half_mm / spacing_ji_mm[axis])
        low = max(0, round(centre[axis]) - half)
        box.extend([low, min(size, round(centre[axis]) + half + 1)])
    return box[0], box[1], box[2], box[3]


def _overlay_slices(slab: SlabImages, max_slices: int) -> list[int]:
    with_cord = [k for k in range(slab.cord.shape[0]) if slab.cord[k].any()]
    slices = with_cord or list(range(slab.cord.shape[0]))
    if len(slices) > max_slices:
        picks = np.unique(np.round(np.linspace(0, len(slices) - 1, max_slices)).astype(int))
        slices = [slices[p] for p in picks]
    superior_first = np.asarray(slab.affine_lps)[2, 0] > 0  # k runs towards the head
    return sorted(slices, reverse=bool(superior_first))


def _outline(mask: NDArray[np.bool_], width_px: int) -> NDArray[np.bool_]:
    """Pixels of ``mask`` within ``width_px`` of its border."""
    if not mask.any():
        return mask
    inner = ndimage.binary_erosion(mask, iterations=width_px, border_value=0)
    return mask & ~inner


def _panel_rgb(
    slab: SlabImages,
    k: int,
    crop: tuple[slice, slice],
    display: _Display,
    scale: int,
    z_threshold: float,
    show_z: bool,
) -> tuple[NDArray[np.uint8], int]:
    """One slice as RGB pixels (``scale`` pixels per voxel) and its number of abnormal voxels."""
    t1 = display.apply(np.asarray(slab.t1_ms[k], dtype=float)[crop])
    grey = np.clip((np.nan_to_num(t1, nan=0.0) - _T1_WINDOW_MS[0]) / np.diff(_T1_WINDOW_MS), 0, 1)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    cord = display.apply(np.asarray(slab.cord[k])[crop])
    abnormal_count = 0
    if show_z:
        z = display.apply(np.asarray(slab.z[k], dtype=float)[crop])  # type: ignore[index]
        abnormal = cord & (np.nan_to_num(z, nan=-np.inf) > z_threshold)
        abnormal_count = int(abnormal.sum())
        level = np.clip((np.nan_to_num(z) - z_threshold) / _Z_SPAN, 0.0, 1.0)
        rgb[abnormal] = _Z_COLOURS(level[abnormal])[:, :3]
    big = np.repeat(np.repeat(rgb, scale, axis=0), scale, axis=1)
    cord_big = np.repeat(np.repeat(cord, scale, axis=0), scale, axis=1)
    rows, cols = np.indices(cord_big.shape)
    dotted = _outline(cord_big, 2) & (((rows + cols) // 6) % 2 == 0)
    big[dotted] = matplotlib.colors.to_rgb(_GREEN)
    if slab.lesions is not None:
        lesion = display.apply(np.asarray(slab.lesions[k])[crop] > 0)
        lesion_big = np.repeat(np.repeat(lesion, scale, axis=0), scale, axis=1)
        big[_outline(lesion_big, 2)] = matplotlib.colors.to_rgb(_SKY)
    return (big * 255.0 + 0.5).astype(np.uint8), abnormal_count


def render_z_overlay(
    slab: SlabImages,
    *,
    z_threshold: float = 1.96,
    summary: Mapping[str, Any] | None = None,
    max_slices: int = 12,
    margin_mm: float = 4.0,
    columns: int = 4,
) -> RenderedFigure:
    """Axial slices around the cord: T1 in grey, Z above the threshold in colour, lesion outlines.

    Parameters
    ----------
    slab : SlabImages
        The slab's arrays. With ``slab.z`` None (no model, or QC failed) only T1 is shown.
    z_threshold : float
        Voxels with Z above it are coloured.
    summary : mapping, optional
        The exam summary, for title and footer (research text, versions, QC verdict). A
        failed QC hides the Z-scores even when ``slab.z`` is given.
    max_slices : int
        At most this many slices (evenly spread over the slices with cord).
    margin_mm : float
        Margin around the cord's bounding box (all slices of the slab).
    columns : int
        Panels per row.

    Returns
    -------
    RenderedFigure
        ``data`` holds ``slices`` (k, superior first), ``crop_ji`` (j0, j1, i0, i1),
        ``letters`` (patient direction at each panel edge), ``panel_boxes_px`` (column0,
        row0, column1, row1 of each panel in ``rgb``), ``abnormal_voxels`` shown and
        ``z_shown``.
    """
    if not isinstance(slab, SlabImages):
        raise TypeError(f"slab must be a SlabImages, got {type(slab).__name__}")
    if not math.isfinite(z_threshold):
        raise ValueError(f"z_threshold must be finite, got {z_threshold!r}")
    for name, value in (("max_slices", max_slices), ("columns", columns)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not 0.0 <= margin_mm <= 100.0:
        raise ValueError(f"margin_mm must be within 0..100, got {margin_mm!r}")
    if summary is not None:
        _check_summary(summary)
    failed = summary is not None and _qc_failed(summary)
    show_z = slab.z is not None and not failed
    affine = np.asarray(slab.affine_lps, dtype=float)
    spacing = (float(np.linalg.norm(affine[:3, 1])), float(np.linalg.norm(affine[:3, 2])))
    j0, j1, i0, i1 = _crop_box(np.asarray(slab.cord), spacing, margin_mm)
    crop = (slice(j0, j1), slice(i0, i1))
    display = _display(affine)
    slices = _overlay_slices(slab, max_slices)

    shape = display.apply(np.empty((j1 - j0, i1 - i0))).shape
    scale = max(1, round(_PANEL_PX / max(shape)))
    panel_h, panel_w = shape[0] * scale, shape[1] * scale
    n_cols = min(columns, len(slices))
    n_rows = math.ceil(len(slices) / n_cols)
    gap, label = 16, 30
    mosaic_w = n_cols * (panel_w + gap) - gap
    mosaic_h = n_rows * (panel_h + label + gap) - gap
    mosaic = np.full((mosaic_h, mosaic_w, 3), 255, dtype=np.uint8)
    origins = []
    abnormal_total = 0
    for n, k in enumerate(slices):
        row, col = divmod(n, n_cols)
        top, left = row * (panel_h + label + gap) + label, col * (panel_w + gap)
        pixels, count = _panel_rgb(slab, k, crop, display, scale, z_threshold, show_z)
        mosaic[top : top + panel_h, left : left + panel_w] = pixels
        abnormal_total += count
        origins.append((left, top))

    margin_l, margin_r, margin_t, margin_b = 40, 260 if show_z else 40, 190, 120
    width_px = max(1200, mosaic_w + margin_l + margin_r)
    height_px = mosaic_h + margin_t + margin_b
    x0 = (width_px - margin_r + margin_l - mosaic_w) // 2
    fig = _new_figure(width_px / _DPI, height_px / _DPI)
    # The mosaic is pasted 1:1 into the drawn canvas (see below): matplotlib's image path
    # would resample it. Texts on the mosaic are "animated" and drawn after the paste.
    letter_style = {
        "color": "white",
        "fontsize": 14,
        "weight": "bold",
        "bbox": {"boxstyle": "square,pad=0.1", "facecolor": "black", "alpha": 0.55, "lw": 0},
    }

    def put(x_px: float, y_px: float, text: str, **style: Any) -> Any:
        """Text at mosaic pixel (x, y), y counted from the mosaic's top."""
        style.setdefault("animated", True)  # drawn after the mosaic is pasted
        return fig.text(
            (x0 + x_px) / width_px, (margin_b + mosaic_h - y_px) / height_px, text, **style
        )

    for n, ((left, top), k) in enumerate(zip(origins, slices, strict=True)):
        put(left + panel_w / 2, top - 5, f"slice {k + 1}", ha="center", va="bottom", fontsize=14)
        if n == 0:  # every panel has the same orientation
            cx, cy = left + panel_w / 2, top + panel_h / 2
            put(cx, top + 4, display.letters["top"], ha="center", va="top", **letter_style)
            put(
                cx,
                top + panel_h - 4,
                display.letters["bottom"],
                ha="center",
                va="bottom",
                **letter_style,
            )
            put(left + 4, cy, display.letters["left"], ha="left", va="center", **letter_style)
            put(
                left + panel_w - 4,
                cy,
                display.letters["right"],
                ha="right",
                va="center",
                **letter_style,
            )

    handles: list[Any] = [Line2D([], [], color=_GREEN, ls=":", lw=2.5, label="cord outline")]
    if slab.lesions is not None:
        handles.append(Line2D([], [], color=_SKY, lw=3, label="lesion outline"))
    if show_z:
        handles.insert(
            0, Patch(facecolor=_Z_COLOURS(0.6), label=f"abnormally high T1 (Z > {z_threshold:g})")
        )
        cax = fig.add_axes(
            (
                (width_px - 200) / width_px,
                margin_b / height_px,
                24 / width_px,
                min(mosaic_h, 600) / height_px,
            )
        )
        mappable = ScalarMappable(
            norm=Normalize(z_threshold, z_threshold + _Z_SPAN), cmap=_Z_COLOURS
        )
        bar = fig.colorbar(mappable, cax=cax)
        bar.set_label("Z-score (T1 above healthy controls)", fontsize=13)
        bar.ax.tick_params(labelsize=12)
        note = "Grey: T1 map (0 to 3000 ms). Colour: T1 well above healthy controls."
    elif failed:
        note = "Quality check failed: Z-scores are not shown. Grey: T1 map (0 to 3000 ms)."
    else:
        note = "No comparison with healthy controls. Grey: T1 map (0 to 3000 ms)."
    fig.legend(
        handles=handles,
        loc="lower center",
        bbox_to_anchor=(0.5, 45 / height_px),
        ncol=len(handles),
        fontsize=13,
        frameon=False,
    )
    fig.text(
        0.5,
        1.0 - 140 / height_px,
        f"{note} Letters: patient directions (left on the image right, as in radiology).",
        ha="center",
        va="bottom",
        fontsize=13,
    )
    title = f"Spinal cord T1{' and Z-scores' if show_z else ''}, slab {slab.slab}"
    if summary is not None:
        _decorate(fig, summary, title, f"Exam of {_date_words(summary['exam'].get('study_date'))}")
    else:
        fig.text(
            0.5, 1.0 - 20 / height_px, title, ha="center", va="top", fontsize=22, weight="bold"
        )
    fig.canvas.draw()
    top_px = height_px - margin_b - mosaic_h
    canvas_rgba = np.asarray(fig.canvas.buffer_rgba())  # type: ignore[attr-defined]
    canvas_rgba[top_px : top_px + mosaic_h, x0 : x0 + mosaic_w, :3] = mosaic
    for text in fig.texts:
        if text.get_animated():
            fig.draw_artist(text)
    rgb = np.ascontiguousarray(np.asarray(fig.canvas.buffer_rgba())[..., :3])
    boxes = [
        (x0 + left, top_px + top, x0 + left + panel_w, top_px + top + panel_h)
        for left, top in origins
    ]
    data = {
        "slices": slices,
        "crop_ji": (j0, j1, i0, i1),
        "letters": dict(display.letters),
        "panel_boxes_px": boxes,
        "abnormal_voxels": abnormal_total,
        "z_shown": show_z,
    }
    return RenderedFigure(f"z_overlay_slab{slab.slab}", title, rgb, data)


# ---- 3. follow-up trend -------------------------------------------------------------------------


def _exam_point(summary: Mapping[str, Any]) -> tuple[date, str, dict[str, float]] | None:
    exam = summary.get("exam") or {}
    day = _study_date(exam.get("study_date"))
    if day is None or (summary.get("qc") or {}).get("verdict") == "fail":
        return None
    values = _percent_values(summary.get("abnormal_percent"), "abnormal_percent")
    return (
        (day, str(exam.get("study_instance_uid") or day.isoformat()), values) if values else None
    )


def _trend_points(
    summary: Mapping[str, Any], history: Sequence[Mapping[str, Any]]
) -> list[tuple[date, str, dict[str, float]]]:
    points = [p for p in (_exam_point(s) for s in history) if p is not None]
    follow_up = summary.get("follow_up")
    if isinstance(follow_up, Mapping):
        day = _study_date(follow_up.get("prior_study_date"))
        regions = follow_up.get("regions") or {}
        prior = {
            key: (value.get("prior") or {}).get("abnormal_percent")
            for key, value in regions.items()
            if isinstance(value, Mapping)
        }
        values = _percent_values(prior, "follow_up.regions[*].prior")
        if day is not None and values:
            uid = str(follow_up.get("prior_study_instance_uid") or day.isoformat())
            points.append((day, uid, values))
    current = _exam_point(summary)
    if current is not None:
        points.append(current)
    unique: dict[str, tuple[date, str, dict[str, float]]] = {}
    for point in points:
        unique[point[1]] = point  # later entries (current, follow-up) win over history
    return sorted(unique.values(), key=lambda p: p[0])


def render_trend(
    summary: Mapping[str, Any], history: Sequence[Mapping[str, Any]] = ()
) -> RenderedFigure:
    """Per-region share of abnormal voxels over the patient's exam dates, with the trend word.

    Parameters
    ----------
    summary : mapping
        The current exam's summary; its ``follow_up`` section gives the prior exam's values,
        the trend word and its reasons.
    history : sequence of mapping
        Summaries of earlier exams of the same patient (optional; more points).

    Returns
    -------
    RenderedFigure
        ``data["dates"]`` (ISO dates), ``data["series"]`` (region -> values per date, None
        where unknown) and ``data["trend"]``.

    Raises
    ------
    ValueError
        With fewer than two exams that have dates and Z-score results (no earlier exam,
        failed QC, no normative model).
    """
    _check_summary(summary)
    if isinstance(history, Mapping) or not isinstance(history, Sequence):
        raise TypeError("history must be a sequence of summaries")
    points = _trend_points(summary, history)
    if len(points) < 2:
        raise ValueError(
            "a trend needs at least two exams with dates and Z-score results; "
            f"found {len(points)} (no earlier exam, failed QC or no normative model)"
        )
    follow_up = summary.get("follow_up") if isinstance(summary.get("follow_up"), Mapping) else {}
    trend = str(follow_up.get("trend") or "not assessed")  # type: ignore[union-attr]
    reasons = [str(r) for r in follow_up.get("reasons") or []]  # type: ignore[union-attr]
    threshold = _z_threshold(summary)

    fig = _new_figure(13.0, 8.5)
    ax = fig.add_axes((0.09, 0.2, 0.6, 0.62))
    dates = [p[0] for p in points]
    styles = (("black", "-", "o"), (_BLUE, "--", "s"), (_ORANGE, "-.", "^"), (_GREEN, ":", "D"))
    series: dict[str, list[float | None]] = {}
    top = STUDY_CUTOFF_PERCENT
    for key, (colour, line, marker) in zip(_TREND_KEYS, styles, strict=True):
        values = [p[2].get(key) for p in points]
        if all(v is None for v in values):
            continue
        series[key] = values
        xs = [d for d, v in zip(dates, values, strict=True) if v is not None]
        ys = [v for v in values if v is not None]
        top = max(top, *ys)
        ax.plot(
            xs,
            ys,
            color=colour,
            linestyle=line,
            marker=marker,
            markersize=11,
            linewidth=3,
            label=REGION_LABELS[key],
        )
    ax.axhline(
        STUDY_CUTOFF_PERCENT,
        color=_PURPLE,
        linestyle=":",
        linewidth=2.5,
        label="study cut-off (10 %)",
    )
    expected = expected_false_positive_percent(threshold)
    ax.axhline(
        expected,
        color=_GREY,
        linestyle="--",
        linewidth=2,
        label=f"expected by chance ({expected:.1f} %)",
    )
    ax.set_ylim(0.0, min(100.0, top * 1.2 + 2.0))
    ax.set_xticks(
        dates,
        [d.strftime("%d %b %Y") for d in dates],
        fontsize=13,
        rotation=15 if len(dates) > 3 else 0,
    )
    span = max((dates[-1] - dates[0]).days, 1)
    pad = np.timedelta64(max(int(span * 0.08), 10), "D")
    ax.set_xlim(np.datetime64(dates[0]) - pad, np.datetime64(dates[-1]) + pad)
    ax.tick_params(axis="y", labelsize=13)
    ax.set_ylabel("Voxels with abnormally high T1 (%)", fontsize=15)
    ax.set_xlabel("Exam date", fontsize=15)
    ax.grid(color="#DDDDDD")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=13, frameon=False)
    colour = _TREND_COLOURS.get(trend, _GREY)
    fig.text(
        0.72,
        0.42,
        f"Trend: {trend.upper()}",
        fontsize=24,
        weight="bold",
        color="white",
        va="top",
        bbox={"boxstyle": "round,pad=0.4", "facecolor": colour, "lw": 0},
    )
    if reasons:
        fig.text(
            0.72, 0.33, "Why:\n" + "\n".join(f"- {r}" for r in reasons[:5]), fontsize=13, va="top"
        )
    title = "Change over time: share of abnormal cord tissue"
    _decorate(
        fig, summary, title, f"{len(points)} exams, {dates[0]:%d %b %Y} to {dates[-1]:%d %b %Y}"
    )
    data = {
        "dates": [d.isoformat() for d in dates],
        "series": series,
        "trend": trend,
        "reasons": reasons,
    }
    return RenderedFigure("trend", title, _to_rgb(fig), data)


def render_exam_figures(
    summary: Mapping[str, Any],
    slabs: Sequence[SlabImages] = (),
    history: Sequence[Mapping[str, Any]] = (),
) -> list[RenderedFigure]:
    """Every figure of one exam: bar chart, one Z overlay per slab, trend (when it exists).

    The trend chart is left out when there are fewer than two exams to compare (first exam,
    failed QC, no normative model); the PDF report says why.
    """
    _check_summary(summary)
    threshold = _z_threshold(summary)
    figures = [render_abnormal_bars(summary)]
    figures.extend(render_z_overlay(s, z_threshold=threshold, summary=summary) for s in slabs)
    if len(_trend_points(summary, history)) >= 2:
        figures.append(render_trend(summary, history))
    return figures


# ---- 4. one-page PDF report ---------------------------------------------------------------------


def _number(value: object, digits: int = 0) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return "-"
    return f"{value:.{digits}f}"


def _key_numbers(summary: Mapping[str, Any], with_z: bool) -> tuple[list[str], list[list[str]]]:
    t1 = summary.get("t1_ms") or {}
    abnormal = summary.get("abnormal_percent") or {}
    mean_z = summary.get("mean_z") or {}
    normal = summary.get("normal_appearing") or {}
    header = ["Tissue", "Mean T1 (ms)"]
    if with_z:
        header += ["Abnormal voxels (%)", "Mean Z"]
    rows = []
    for key in _TISSUES:
        row = [REGION_LABELS[key].split(",")[0], _number(t1.get(key))]
        if with_z:
            row += [_number(abnormal.get(key), 1), _number(mean_z.get(key), 2)]
        rows.append(row)
    for key, label in (
        ("nawm", "Normal-appearing white matter"),
        ("nagm", "Normal-appearing grey matter"),
    ):
        values = normal.get(key) or {}
        row = [label, _number(values.get("mean_t1_ms"))]
        if with_z:
            row += ["", _number(values.get("mean_z"), 2)]
        rows.append(row)
    return header, rows


def _lesion_rows(summary: Mapping[str, Any], limit: int) -> tuple[list[str], list[list[str]], str]:
    lesions = [item for item in summary.get("lesions") or [] if isinstance(item, Mapping)]
    header = ["#", "Level", "Where", "Volume (mm³)", "Tissue", "Mean T1 (ms)"]
    rows = []
    for lesion in lesions[:limit]:
        where = " ".join(str(lesion.get(k) or "") for k in ("location", "side")).strip() or "-"
        tissue = {"wm_only": "white matter only", "mixed": "grey + white"}.get(
            str(lesion.get("composition")), str(lesion.get("composition") or "-")
        )
        label = str(lesion.get("id", "?"))
        if lesion.get("source") == "candidate":
            label += " (auto)"
        rows.append(
            [
                label,
                str(lesion.get("level_name") or "-") + " (est.)",
                where,
                _number(lesion.get("volume_mm3"), 1),
                tissue,
                _number(lesion.get("mean_t1_ms")),
            ]
        )
    extra = (
        f"and {len(lesions) - limit} more lesions (see the structured report)"
        if len(lesions) > limit
        else ""
    )
    summary_line = summary.get("lesion_summary") or {}
    if lesions:
        line = (
            f"{summary_line.get('count', len(lesions))} lesion(s), total "
            f"{_number(summary_line.get('load_mm3'), 1)} mm³, "
            f"{_number(summary_line.get('gm_share_percent'), 0)} % of lesion tissue in grey "
            f"matter. {extra}"
        )
    else:
        line = "No lesions outlined or detected."
    return header, rows, line


def _table(ax: Any, x: float, y: float, header: list[str], rows: list[list[str]]) -> float:
    """Draw a text table with its top-left corner at (x, y) (page fractions); return its bottom."""
    if not rows:
        return y
    widths = [max(len(str(r[c])) for r in [header, *rows]) for c in range(len(header))]
    line = 0.0155
    lefts = list(np.cumsum([x, *[(w + 2) * _PDF_CHAR_W for w in widths[:-1]]]))
    ax.add_patch(Rectangle((x - 0.005, y - line), 0.93, line, facecolor="#E8E8E8", lw=0, zorder=0))
    for r, row in enumerate([header, *rows]):
        for left, cell in zip(lefts, row, strict=True):
            ax.text(
                left,
                y - (r + 0.5) * line,
                str(cell),
                va="center",
                fontsize=8.5,
                weight="bold" if r == 0 else "normal",
            )
    return float(y - (len(rows) + 1) * line)


def _page_image(ax: Any, rgb: NDArray[np.uint8], box: tuple[float, float, float, float]) -> None:
    """Place ``rgb`` inside ``box`` (x0, y0, x1, y1 page fractions), keeping its aspect ratio."""
    x0, y0, x1, y1 = box
    page_w, page_h = _A4_IN
    factor = int(rgb.shape[1] // (_PDF_MAX_DPI * (x1 - x0) * page_w)) + 1
    if factor > 1:  # area-average: fewer pixels to compress, no visible loss at print size
        rows, cols = (rgb.shape[0] // factor) * factor, (rgb.shape[1] // factor) * factor
        shape = (rows // factor, factor, cols // factor, factor, 3)
        rgb = rgb[:rows, :cols].reshape(shape).mean(axis=(1, 3)).astype(np.uint8)
    aspect = rgb.shape[0] / rgb.shape[1]
    width = min(x1 - x0, (y1 - y0) * page_h / page_w / aspect)
    height = width * aspect * page_w / page_h
    left, top = x0 + (x1 - x0 - width) / 2, y1
    ax.imshow(
        rgb, extent=(left, left + width, top - height, top), interpolation="none", aspect="auto"
    )


def render_pdf_report(
    summary: Mapping[str, Any], figures: Sequence[RenderedFigure], *, max_lesions: int = 8
) -> bytes:
    """A one-page A4 PDF: QC, key numbers, lesion table, bar chart, Z overlay, trend.

    Parameters
    ----------
    summary : mapping
        The exam summary. With a failed QC the page shows the reasons instead of Z numbers.
    figures : sequence of RenderedFigure
        From :func:`render_exam_figures`: ``abnormal_bars`` is required; the overlay with
        the most abnormal voxels and the ``trend`` are used when present.
    max_lesions : int
        Rows of the lesion table (the rest is counted).

    Returns
    -------
    bytes
        The PDF document (selectable text; its Title and Subject name the report and the
        research-use status). Figures are embedded at their own resolution.
    """
    _check_summary(summary)
    by_name = {f.name: f for f in figures if isinstance(f, RenderedFigure)}
    if len(by_name) != len(figures):
        raise TypeError("figures must be RenderedFigure objects with distinct names")
    if "abnormal_bars" not in by_name:
        raise ValueError("figures must include the 'abnormal_bars' chart")
    if isinstance(max_lesions, bool) or not isinstance(max_lesions, int) or max_lesions < 1:
        raise ValueError(f"max_lesions must be a positive int, got {max_lesions!r}")
    failed = _qc_failed(summary)
    with_z = not failed and bool(summary.get("abnormal_percent"))
    exam = summary["exam"]
    research = str(summary.get("research_use") or "")

    fig = Figure(figsize=_A4_IN, dpi=_DPI, facecolor="white")
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_axis_off()
    ax.text(
        0.04,
        0.975,
        "Cervical spinal cord T1 report (7 T MP2RAGE)",
        fontsize=15,
        weight="bold",
        va="top",
    )
    ax.text(
        0.04,
        0.951,
        f"Exam of {_date_words(exam.get('study_date'))}   |   "
        f"protocol {exam.get('protocol_name') or '-'}",
        fontsize=10,
        va="top",
    )
    if research:
        ax.text(
            0.96,
            0.951,
            research,
            fontsize=10,
            weight="bold",
            color="white",
            ha="right",
            va="top",
            bbox={"boxstyle": "round,pad=0.3", "facecolor": _VERMILLION, "lw": 0},
        )
    verdict = summary["qc"]["verdict"]
    qc_lines = [f"Quality check: {_VERDICT_WORDS[verdict]}"]
    if failed:
        qc_lines[0] += " - Z-score results are withheld because:"
    qc_lines += [f"   - {r}" for r in [str(r) for r in summary["qc"].get("reasons") or []][:6]]
    coverage = (summary.get("coverage") or {}).get("statement")
    if coverage:
        qc_lines.append(f"Numbers rest on: {coverage}")
    ax.text(
        0.04,
        0.925,
        "\n".join(qc_lines),
        fontsize=10,
        va="top",
        linespacing=1.4,
        color=_VERMILLION if failed else "black",
        weight="bold" if failed else "normal",
    )
    y = 0.925 - 0.0165 * len(qc_lines) - 0.012
    b1 = str(summary.get("b1_note") or "")
    ax.text(0.04, y, "Key numbers", fontsize=11, weight="bold", va="top")
    ax.text(0.2, y - 0.002, b1, fontsize=8.5, va="top", style="italic")
    header, rows = _key_numbers(summary, with_z)
    y = _table(ax, 0.045, y - 0.02, header, rows) - 0.015
    lesion_header, lesion_rows, lesion_line = _lesion_rows(summary, max_lesions)
    ax.text(0.04, y, "Lesions", fontsize=11, weight="bold", va="top")
    ax.text(0.14, y - 0.002, lesion_line, fontsize=8.5, va="top")
    y = _table(ax, 0.045, y - 0.02, lesion_header, lesion_rows) - 0.01
    _page_image(ax, by_name["abnormal_bars"].rgb, (0.03, 0.36, 0.97, y))
    overlays = [f for f in figures if f.name.startswith("z_overlay")]
    lower = (0.02, 0.03, 0.5, 0.35)
    if overlays:
        best = max(overlays, key=lambda f: int(f.data.get("abnormal_voxels", 0)))
        _page_image(ax, best.rgb, lower)
    else:
        ax.text(0.26, 0.19, "No slice images given.", ha="center", fontsize=10)
    if "trend" in by_name:
        _page_image(ax, by_name["trend"].rgb, (0.5, 0.03, 0.98, 0.35))
    else:
        why = (
            "Quality check failed:\nno trend is shown."
            if failed
            else "No earlier exam of this patient with Z-scores:\n"
            "the trend chart appears after the next exam."
        )
        ax.text(0.74, 0.19, why, ha="center", va="center", fontsize=10)
    ax.text(0.5, 0.01, _footer_text(summary), ha="center", fontsize=7)
    buffer = io.BytesIO()
    software = summary.get("software") or {}
    fig.savefig(
        buffer,
        format="pdf",
        metadata={
            "Title": f"Spinal cord T1 report, exam {exam.get('study_date') or 'undated'}",
            "Subject": research or "spinal cord T1 report",
            "Creator": f"{software.get('name', 'cordt1')} {software.get('version', '')}".strip(),
            "CreationDate": None,
        },
    )
    return buffer.getvalue()
