"""What every result object says about its origin: software, version, research-use status.

:func:`apply_identity` writes it into any result dataset (Parametric Map, SEG, SR):

- Manufacturer, ManufacturerModelName (software name), SoftwareVersions, InstitutionName
  (when configured);
- the research-use text, visible to a reader, as a suffix of SeriesDescription (shown in
  every PACS series list) and, for objects with the Content Identification macro
  (Parametric Map, SEG: they carry ContentLabel), as ContentDescription. Both are LO
  (64 characters); a longer SeriesDescription is shortened in front of the suffix, by whole
  words only (the leading software name first), so the research text always survives and no
  word is ever cut. ImageComments is not used: it belongs to the General Image
  module, which the Parametric Map and SEG IODs do not include.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version

from pydicom.dataset import Dataset

__all__ = ["DEFAULT_RESEARCH_USE_TEXT", "ResultIdentity", "apply_identity", "package_version"]

DEFAULT_RESEARCH_USE_TEXT = "RESEARCH USE ONLY - NOT FOR DIAGNOSIS"
_LO_MAX = 64
_SEPARATOR = " - "


def package_version() -> str:
    """Version of the installed ``cordt1`` distribution (``0.1.0+src`` in a source tree)."""
    try:
        return version("cordt1")
    except PackageNotFoundError:
        return "0.1.0+src"


def _check_lo(name: str, value: str, *, required: bool) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    if required and not value.strip():
        raise ValueError(f"{name} must not be empty")
    if len(value) > _LO_MAX or "\\" in value or any(ord(c) < 32 for c in value):
        raise ValueError(
            f"{name} must be at most {_LO_MAX} characters without backslash or control "
            f"characters, got {value!r}"
        )


@dataclass(frozen=True)
class ResultIdentity:
    """Identity written into every result object.

    Parameters
    ----------
    manufacturer : str
        Manufacturer (0008,0070) of the result objects.
    software_name : str
        ManufacturerModelName (0008,1090).
    software_version : str
        SoftwareVersions (0018,1020); defaults to the installed package version.
    institution : str or None
        InstitutionName (0008,0080), if the site wants it.
    research_use_text : str
        Shown to readers; empty only when the site has cleared the software for clinical use.
    device_serial_number : str
        DeviceSerialNumber (0018,1000), Type 1 in the Enhanced General Equipment module.

    Raises
    ------
    ValueError, TypeError
        If a value is empty where required, too long for an LO element, or not a str.
    """

    manufacturer: str = "cordt1"
    software_name: str = "cordt1"
    software_version: str = field(default_factory=package_version)
    institution: str | None = None
    research_use_text: str = DEFAULT_RESEARCH_USE_TEXT
    device_serial_number: str = "0"

    def __post_init__(self) -> None:
        _check_lo("manufacturer", self.manufacturer, required=True)
        _check_lo("software_name", self.software_name, required=True)
        _check_lo("software_version", self.software_version, required=True)
        _check_lo("device_serial_number", self.device_serial_number, required=True)
        if self.institution is not None:
            _check_lo("institution", self.institution, required=True)
        _check_lo("research_use_text", self.research_use_text, required=False)
        if len(self.research_use_text) > _LO_MAX - len(_SEPARATOR) - 1:
            raise ValueError(
                f"research_use_text must be at most {_LO_MAX - len(_SEPARATOR) - 1} "
                "characters so that it fits into SeriesDescription"
            )

    @property
    def content_qualification(self) -> str:
        """ContentQualification: RESEARCH while a research-use text is set, else PRODUCT."""
        return "RESEARCH" if self.research_use_text else "PRODUCT"

    def device_arguments(self) -> dict[str, str]:
        """The equipment keyword arguments every highdicom result constructor takes."""
        return {
            "manufacturer": self.manufacturer,
            "manufacturer_model_name": self.software_name,
            "software_versions": self.software_version,
            "device_serial_number": self.device_serial_number,
        }


def _with_suffix(description: str, suffix: str, software_name: str = "") -> str:
    """``description - suffix`` within 64 characters, shortened by whole words only.

    Too long: first the leading software name goes (Manufacturer and model name carry it),
    then words from the end; a word is never cut (a single word longer than the room is
    dropped, leaving the suffix alone).
    """
    if not suffix or description.endswith(suffix):
        return description
    room = _LO_MAX - len(_SEPARATOR) - len(suffix)
    words = description.split()
    if len(" ".join(words)) > room and software_name and words[:1] == [software_name]:
        words = words[1:]
    while words and len(" ".join(words)) > room:
        words.pop()
    if not words:
        return suffix
    return f"{' '.join(words)}{_SEPARATOR}{suffix}"


def apply_identity(ds: Dataset, identity: ResultIdentity) -> Dataset:
    """Write ``identity`` into a result dataset in place.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        A result object (Parametric Map, SEG, SR, ...).
    identity : ResultIdentity
        What to write.

    Returns
    -------
    pydicom.dataset.Dataset
        ``ds`` itself, for chaining.

    Examples
    --------
    >>> ds = Dataset()
    >>> ds.SeriesDescription = "cordt1 T1 map (ms)"
    >>> _ = apply_identity(ds, ResultIdentity(software_version="1.0"))
    >>> ds.SeriesDescription
    'cordt1 T1 map (ms) - RESEARCH USE ONLY - NOT FOR DIAGNOSIS'
    """
    if not isinstance(ds, Dataset):
        raise TypeError(f"ds must be a pydicom Dataset, got {type(ds).__name__}")
    if not isinstance(identity, ResultIdentity):
        raise TypeError(f"identity must be a ResultIdentity, got {type(identity).__name__}")
    ds.Manufacturer = identity.manufacturer
    ds.ManufacturerModelName = identity.software_name
    ds.SoftwareVersions = identity.software_version
    if "DeviceSerialNumber" in ds or "ContentLabel" in ds:
        ds.DeviceSerialNumber = identity.device_serial_number
    if identity.institution is not None:
        ds.InstitutionName = identity.institution
    text = identity.research_use_text
    if text:
        ds.SeriesDescription = _with_suffix(
            str(ds.get("SeriesDescription", "") or ""), text, identity.software_name
        )
        if "ContentLabel" in ds:
            ds.ContentDescription = _with_suffix(
                str(ds.get("ContentDescription", "") or ""), text, identity.software_name
            )
    return ds
