"""The phantom's subject anatomy: real shapes (PAM50 + a real neck) or the analytic one."""

from __future__ import annotations

from functools import cache

import numpy as np

from processing.phantom.anatomy import draw_anatomy
from processing.phantom.protocol import Anatomy
from processing.phantom.real_anatomy import draw_real_anatomy
from processing.phantom.real_reference import RealReference, prepare_real_reference
from service.phantom.options import ANATOMY_KINDS
from service.pipeline.reference_data import load_neck, load_pam50

__all__ = ["draw_subject_anatomy", "real_reference"]


@cache
def real_reference() -> RealReference:
    """The shipped PAM50 and real neck, prepared for the phantom (once per process)."""
    neck = load_neck()
    pam = load_pam50()
    return prepare_real_reference(
        neck.image,
        neck.gm,
        neck.affine_ras,
        pam.cord,
        pam.csf,
        pam.gm,
        pam.wm,
        pam.levels,
        pam.affine_ras,
    )


def draw_subject_anatomy(rng: np.random.Generator, kind: str) -> Anatomy:
    """Draw one subject's anatomy of the given kind (``real`` or ``simple``)."""
    if kind == "real":
        return draw_real_anatomy(rng, real_reference())
    if kind == "simple":
        return draw_anatomy(rng)
    raise ValueError(f"anatomy must be one of {ANATOMY_KINDS}, got {kind!r}")
