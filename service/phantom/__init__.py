"""Synthetic 7 T MP2RAGE cervical-cord cohorts: DICOM series plus NIfTI/JSON ground truth.

Entry point: :func:`write_cohort` with :class:`PhantomOptions`. Also here: `cordt1 demo`
(:mod:`service.phantom.demo`) and the PACS it sends to (:mod:`service.phantom.pacs`).

Import rules: the generator uses :mod:`processing`, :mod:`dicom_node` (tags) and the shipped
reference data (:mod:`service.pipeline.reference_data`); only the demo may use the job store.
"""

from __future__ import annotations

from service.phantom.cohort import write_cohort
from service.phantom.options import PhantomOptions
from service.phantom.protocols import PRESETS, ProtocolPreset

__all__ = ["PRESETS", "PhantomOptions", "ProtocolPreset", "write_cohort"]
