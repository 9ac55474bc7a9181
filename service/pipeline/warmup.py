"""Load, once per worker, what the first exam would otherwise wait for while writing.

highdicom reads its tables of the DICOM standard (IODs, modules; about 0.4 s) the first time it
builds an object, and matplotlib loads its fonts the first time it draws text and sets up its
PDF writer (about 0.3 s) the first time it writes a PDF; the PAM50 priors are read from
``service/data`` the first time an exam is segmented. A Celery worker
calls :func:`warm_up` in its main process before it forks its pool, so every child starts its
first job with all of them loaded (``worker_init`` in :mod:`service.jobs.celery_app`).
"""

from __future__ import annotations

import io
import logging
import time

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from pydicom.dataset import Dataset
from pydicom.uid import MRImageStorage, generate_uid

from reports.figures import RenderedFigure
from reports.identity import ResultIdentity
from reports.secondary_capture import build_secondary_captures
from service.pipeline.atlas import load_pam50_priors, pam50_gm_prior

__all__ = ["warm_up"]

log = logging.getLogger(__name__)


def _synthetic_source() -> Dataset:
    """A header-only MR instance of an invented study (never written, never sent)."""
    source = Dataset()
    source.SOPClassUID = MRImageStorage
    source.SOPInstanceUID = generate_uid()
    source.StudyInstanceUID = generate_uid()
    source.SeriesInstanceUID = generate_uid()
    source.Modality = "MR"
    source.PatientName = "WARM^UP"
    source.PatientID = "WARMUP"
    return source


def warm_up() -> float:
    """Build one tiny Secondary Capture, draw text in every weight the figures use, as pixels
    and as a PDF page (kept in memory).

    Returns
    -------
    float
        Seconds it took.
    """
    started = time.perf_counter()
    figure = RenderedFigure("warm_up", "warm-up", np.zeros((8, 8, 3), dtype=np.uint8))
    build_secondary_captures(
        [figure], [_synthetic_source()], series_number=1, identity=ResultIdentity()
    )
    fig = Figure(figsize=(2.0, 1.0), dpi=50)
    for y, weight, style in ((0.2, "normal", "normal"), (0.5, "bold", "normal")):
        fig.text(0.1, y, "cordt1 0123456789", weight=weight, style=style, fontsize=10)
    fig.text(0.1, 0.8, "italic", style="italic", fontsize=8)
    FigureCanvasAgg(fig).draw()
    fig.savefig(io.BytesIO(), format="pdf")
    for n_slabs in (1, 2):  # the PAM50 priors (region maps, GM prior per protocol)
        pam50_gm_prior(n_slabs)
    _ = load_pam50_priors().region_maps
    seconds = time.perf_counter() - started
    log.info(
        "worker warmed up in %.2f s (DICOM standard tables, fonts, PDF writer, PAM50 priors)",
        seconds,
    )
    return seconds
