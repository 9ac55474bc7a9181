"""Synthetic 7 T MP2RAGE cervical-cord exams with ground truth (numpy/scipy only)."""

from __future__ import annotations

from processing.phantom.anatomy import N_BASE_MATERIALS, Material, SubjectAnatomy, draw_anatomy
from processing.phantom.fields import FieldParameters, draw_fields
from processing.phantom.geometry import SlabGeometry, slab_geometry
from processing.phantom.gre import GREImages, GREProtocol, gre_noise_sigma, simulate_gre_slab
from processing.phantom.lesions import Lesion, draw_lesions, evolve_lesions
from processing.phantom.protocol import Anatomy
from processing.phantom.real_anatomy import RealAnatomy, draw_real_anatomy
from processing.phantom.real_reference import RealReference, prepare_real_reference
from processing.phantom.simulate import SlabImages, noise_sigma, simulate_slab
from processing.phantom.t2star import TissueT2Star, draw_tissue_t2star
from processing.phantom.tissues import TissueT1, draw_tissue_t1

__all__ = [
    "N_BASE_MATERIALS",
    "Anatomy",
    "FieldParameters",
    "GREImages",
    "GREProtocol",
    "Lesion",
    "Material",
    "RealAnatomy",
    "RealReference",
    "SlabGeometry",
    "SlabImages",
    "SubjectAnatomy",
    "TissueT1",
    "TissueT2Star",
    "draw_anatomy",
    "draw_fields",
    "draw_lesions",
    "draw_real_anatomy",
    "draw_tissue_t1",
    "draw_tissue_t2star",
    "evolve_lesions",
    "gre_noise_sigma",
    "noise_sigma",
    "prepare_real_reference",
    "simulate_gre_slab",
    "simulate_slab",
    "slab_geometry",
]
