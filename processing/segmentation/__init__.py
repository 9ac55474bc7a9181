"""Cord, CSF, grey- and white-matter segmentation of 7 T MP2RAGE T1 maps."""

from __future__ import annotations

from processing.segmentation.cord import CordSegmentation, SegmentationSettings, segment_cord
from processing.segmentation.given import segmentation_with_given_cord
from processing.segmentation.tissue import TissueMixture, fit_tissue_mixture, split_gm_wm

__all__ = [
    "CordSegmentation",
    "SegmentationSettings",
    "TissueMixture",
    "fit_tissue_mixture",
    "segment_cord",
    "segmentation_with_given_cord",
    "split_gm_wm",
]
