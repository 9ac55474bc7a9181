"""Synthetic 7 T MP2RAGE cervical-cord cohorts: DICOM series plus NIfTI/JSON ground truth.

Entry point: :func:`write_cohort` with :class:`PhantomOptions`.
"""

from __future__ import annotations

from service.phantom.cohort import write_cohort
from service.phantom.options import PhantomOptions
from service.phantom.protocols import PRESETS, ProtocolPreset

__all__ = ["PRESETS", "PhantomOptions", "ProtocolPreset", "write_cohort"]
