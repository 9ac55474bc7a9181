"""Presentation contexts the node accepts (SCP) and the transfer syntaxes it knows."""

from __future__ import annotations

from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AllStoragePresentationContexts

__all__ = ["ACCEPTED_TRANSFER_SYNTAXES", "UNCOMPRESSED_TRANSFER_SYNTAXES", "storage_sop_classes"]

UNCOMPRESSED_TRANSFER_SYNTAXES: tuple[UID, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
"""What every SCP must accept; proposed by :func:`dicom_node.scu.send` for every SOP class."""

ACCEPTED_TRANSFER_SYNTAXES: tuple[UID, ...] = (
    *UNCOMPRESSED_TRANSFER_SYNTAXES,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEG2000Lossless,
    JPEG2000,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    JPEGLosslessSV1,
    JPEGLossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    HTJ2K,
)
"""Transfer syntaxes the SCP accepts for every storage SOP class (stored as received)."""


def storage_sop_classes() -> tuple[str, ...]:
    """Return every storage SOP class the SCP accepts.

    All storage SOP classes pynetdicom knows (170 in 3.0), which include MR, Enhanced MR,
    Legacy Converted Enhanced MR, Segmentation, Label Map Segmentation, Parametric Map and
    Comprehensive 3D SR. An SCP has no 128-context limit (that limit binds the requestor).

    Returns
    -------
    tuple of str
    """
    return tuple(context.abstract_syntax for context in AllStoragePresentationContexts)  # type: ignore[misc]
