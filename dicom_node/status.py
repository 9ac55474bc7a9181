"""Every DIMSE status code the node's handlers return, in one place.

The C-STORE handler of :class:`dicom_node.scp.StorageSCP` returns exactly one of the codes in
:class:`StoreStatus`; the C-ECHO service is answered by pynetdicom itself with ``0x0000``.
The SCU side (:mod:`dicom_node.scu`) uses :func:`is_success`, :func:`is_warning` and
:func:`describe` to judge the peer's answers.

C-STORE statuses returned by our SCP (DICOM PS3.4 B.2.3, pynetdicom ``doc_handle_store``):

========  ===========================================================================
Code      Meaning and when we return it (every failure carries an Error Comment)
========  ===========================================================================
0x0000    Success: the Part-10 file is written and fsynced in the spool.
0xA700    Refused, out of resources: the spool disk has less free space than
          ``ScpConfig.min_free_bytes``, or the disk filled while writing. Nothing is kept.
0x0117    Invalid SOP instance: the request's Affected SOP Instance UID is missing or
          empty (answered at once, before any data set is read).
0xA900    Error, dataset does not match SOP class: the SOP Class/Instance UID in the
          dataset differs from the one in the C-STORE request. Nothing is kept.
0xC210    Error, cannot understand: the header could not be decoded or lacks a valid
          Study/Series/SOP Instance UID. The bytes are kept in the quarantine folder.
          Also a C-STORE request without a data set, or without Affected SOP Class UID
          (answered at once). A request without Priority is not refused: it is stored
          like any other (Priority is not used).
0xC211    Error, cannot understand (processing failure): any other exception while
          spooling or in the ``on_instance`` callback; logged with UIDs only. When the
          callback failed the file stays in the spool (a re-send overwrites it).
0xC220    Error, pixel data do not match the header: no PixelData in an image SOP class,
          Rows/Columns 0, BitsAllocated not 1/8/16/32/64, SamplesPerPixel not 1..4,
          NumberOfFrames below 1, declared size above
          ``ScpConfig.max_pixel_bytes``, native pixel data shorter than the header needs,
          or encapsulated pixel data without (enough) fragments. Kept in quarantine.
========  ===========================================================================
"""

from __future__ import annotations

from enum import IntEnum

__all__ = ["StoreStatus", "describe", "is_failure", "is_success", "is_warning"]


class StoreStatus(IntEnum):
    """C-STORE response statuses returned by :class:`dicom_node.scp.StorageSCP`."""

    SUCCESS = 0x0000
    INVALID_SOP_INSTANCE = 0x0117
    OUT_OF_RESOURCES = 0xA700
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC210
    PROCESSING_FAILURE = 0xC211
    PIXEL_DATA_MISMATCH = 0xC220


_WARNING_CODES: frozenset[int] = frozenset({0x0001, 0xB000, 0xB006, 0xB007})

_KNOWN: dict[int, str] = {
    0x0000: "success",
    0x0001: "warning: requested optional attributes not supported",
    0xB000: "warning: coercion of data elements",
    0xB006: "warning: elements discarded",
    0xB007: "warning: dataset does not match SOP class",
    0x0110: "failure: processing failure",
    0x0117: "failure: invalid SOP instance",
    0x0122: "failure: SOP class not supported",
    0x0124: "failure: not authorised",
    0x0210: "failure: duplicate invocation",
    0x0211: "failure: unrecognised operation",
    0x0212: "failure: mistyped argument",
    0xC210: "failure: cannot understand (dataset could not be decoded)",
    0xC211: "failure: cannot understand (unhandled error in the peer's handler)",
    0xC220: "failure: cannot understand (pixel data do not match the header)",
}


def is_success(code: int) -> bool:
    """Return ``True`` for status ``0x0000``.

    Parameters
    ----------
    code : int
        DIMSE status.

    Returns
    -------
    bool
    """
    return code == 0x0000


def is_warning(code: int) -> bool:
    """Return ``True`` for C-STORE warning statuses (the instance was stored).

    Parameters
    ----------
    code : int
        DIMSE status.

    Returns
    -------
    bool
    """
    return code in _WARNING_CODES


def is_failure(code: int) -> bool:
    """Return ``True`` when ``code`` means the instance was not stored.

    Parameters
    ----------
    code : int
        DIMSE status.

    Returns
    -------
    bool
    """
    return not (is_success(code) or is_warning(code))


def describe(code: int) -> str:
    """Return a short human-readable text for a C-STORE status.

    Parameters
    ----------
    code : int
        DIMSE status.

    Returns
    -------
    str
        For example ``"0xA700 failure: out of resources"``.

    Examples
    --------
    >>> describe(0xA700)
    '0xA700 failure: out of resources'
    """
    text = _KNOWN.get(code)
    if text is None:
        if 0xA700 <= code <= 0xA7FF:
            text = "failure: out of resources"
        elif 0xA900 <= code <= 0xA9FF:
            text = "failure: dataset does not match SOP class"
        elif 0xC000 <= code <= 0xCFFF:
            text = "failure: cannot understand"
        else:
            text = "failure: unknown status"
    return f"0x{code:04X} {text}"
