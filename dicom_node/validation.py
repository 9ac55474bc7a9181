"""Checks for values that come from the network and end up in paths or associations."""

from __future__ import annotations

import re

__all__ = ["check_ae_title", "check_uid", "is_valid_uid"]

# Digits and dots, no empty component, at most 64 characters (PS3.5 9.1). Leading zeros in a
# component are tolerated because some scanners emit them; they cannot escape a folder.
_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_AE_FORBIDDEN = re.compile(r"[\\\x00-\x1f\x7f]")


def is_valid_uid(value: object) -> bool:
    """Return ``True`` if ``value`` is a syntactically valid DICOM UID.

    Parameters
    ----------
    value : object
        Candidate UID.

    Returns
    -------
    bool

    Examples
    --------
    >>> is_valid_uid("1.2.840.10008.1.1"), is_valid_uid("1.2/../3"), is_valid_uid("1..2")
    (True, False, False)
    """
    return isinstance(value, str) and 0 < len(value) <= 64 and bool(_UID_RE.match(value))


def check_uid(value: object, name: str) -> str:
    """Return ``value`` if it is a valid UID, else raise.

    Parameters
    ----------
    value : object
        Candidate UID (from a hostile peer, possibly).
    name : str
        Attribute name used in the error message.

    Returns
    -------
    str
        The UID.

    Raises
    ------
    ValueError
        If ``value`` is not 1-64 characters of digits and single dots.
    """
    if not is_valid_uid(value):
        shown = repr(value)[:80]
        raise ValueError(f"{name} is not a valid DICOM UID (digits and dots, <= 64): {shown}")
    return str(value)


def check_ae_title(value: object, name: str = "AE title") -> str:
    """Return the stripped AE title or raise.

    Parameters
    ----------
    value : object
        Candidate AE title.
    name : str
        Name used in the error message.

    Returns
    -------
    str
        The AE title without leading/trailing spaces.

    Raises
    ------
    ValueError
        If it is empty, longer than 16 characters, or has a backslash or control character.
    """
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {type(value).__name__}")
    stripped = value.strip()
    if not stripped:
        raise ValueError(f"{name} must not be empty")
    if len(stripped) > 16:
        raise ValueError(f"{name} {stripped!r} is longer than 16 characters")
    if _AE_FORBIDDEN.search(stripped):
        raise ValueError(f"{name} {stripped!r} contains a backslash or control character")
    return stripped
