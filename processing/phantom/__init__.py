"""Synthetic 7 T MP2RAGE cervical-cord exams with ground truth (numpy/scipy only)."""

from __future__ import annotations

from processing.phantom.anatomy import N_BASE_MATERIALS, Material, SubjectAnatomy, draw_anatomy
from processing.phantom.fields import FieldParameters, draw_fields
from processing.phantom.geometry import SlabGeometry, slab_geometry
from processing.phantom.lesions import Lesion, draw_lesions, evolve_lesions
from processing.phantom.simulate import SlabImages, noise_sigma, simulate_slab
from processing.phantom.tissues import TissueT1, draw_tissue_t1

__all__ = [
    "N_BASE_MATERIALS",
    "FieldParameters",
    "Lesion",
    "Material",
    "SlabGeometry",
    "SlabImages",
    "SubjectAnatomy",
    "TissueT1",
    "draw_anatomy",
    "draw_fields",
    "draw_lesions",
    "draw_tissue_t1",
    "evolve_lesions",
    "noise_sigma",
    "simulate_slab",
    "slab_geometry",
]
