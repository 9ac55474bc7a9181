"""Coded concepts of the result objects: what a segment, region or finding *is*.

One table, shared by the Segmentation writer and the SR writer. Every code below was checked
against DICOM PS3.16 (Content Mapping Resource) as shipped in pydicom 3.0.2
(``pydicom.sr._cid_dict`` / ``_concepts_dict``, generated from the 2024 edition of PS3.16);
the context group (CID) that lists each code is named next to it. Code meanings are the
PS3.16 spellings (US "gray"); labels shown to readers live elsewhere.

Segmented property categories (CID 7150 "Segmentation Property Categories"):

- SCT 91723000 "Anatomical Structure"
- SCT 49755003 "Morphologically Abnormal Structure"

Segmented property types:

- SCT 2748008 "Spinal cord" (CID 7151, 7153 "CNS Segmentation Types", 7192)
- SCT 12958003 "Spinal cord gray matter" (CID 7151, 7153, 7192)
- SCT 27088001 "Spinal cord white matter" (CID 7151, 7153, 7192)
- SCT 59752008 "dorsal funiculus", SCT 14892003 "lateral funiculus", SCT 31701002 "ventral
  funiculus" (CID 7707 "Spinal Cord Fiber")
- SCT 52988006 "Lesion" (CID 7151 "Segmentation Property Types")
- SCT 263654008 "Abnormal" (CID 222 "Normality Codes"): voxels whose T1 is abnormal
  against the normative model (Z above the threshold); the threshold is in the segment label
  and description.

PS3.16 has no concept for the dorsal horn, the intermediate zone or the ventral horn of the
spinal cord, so the grey-matter sub-regions are coded as "Spinal cord gray matter" with
laterality; which part of the grey matter is named by the segment label and description
(``RegionConcept.label``).

Laterality modifiers (CID 244 "Laterality"): SCT 7771000 "Left", SCT 24028007 "Right".

Algorithm families (CID 7162 "Segmentation Algorithm Families" in highdicom's use):
DCM 123109 "Manual Processing", DCM 123104 "Morphological Operations", DCM 123107 "Cluster
Analysis", DCM 123111 "Deformable Models", DCM 123105 "Histogram Analysis".
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.sr.coding import Code

from processing.regions import REGIONS

__all__ = [
    "ABNORMAL",
    "ANATOMICAL_STRUCTURE",
    "DORSAL_FUNICULUS",
    "FAMILY_CLUSTER_ANALYSIS",
    "FAMILY_DEFORMABLE_MODELS",
    "FAMILY_HISTOGRAM_ANALYSIS",
    "FAMILY_MANUAL",
    "FAMILY_MORPHOLOGICAL",
    "LATERALITY",
    "LATERAL_FUNICULUS",
    "LEFT",
    "LESION",
    "MORPHOLOGICALLY_ABNORMAL_STRUCTURE",
    "REGION_CONCEPTS",
    "RIGHT",
    "SPINAL_CORD",
    "SPINAL_CORD_GRAY_MATTER",
    "SPINAL_CORD_WHITE_MATTER",
    "TISSUE_CONCEPTS",
    "VENTRAL_FUNICULUS",
    "RegionConcept",
    "region_concept",
]

# ---- segmented property categories (CID 7150) ----------------------------------------------
ANATOMICAL_STRUCTURE = Code("91723000", "SCT", "Anatomical Structure")
MORPHOLOGICALLY_ABNORMAL_STRUCTURE = Code("49755003", "SCT", "Morphologically Abnormal Structure")

# ---- anatomy (CID 7151 / 7153 / 7192; funiculi CID 7707) -----------------------------------
SPINAL_CORD = Code("2748008", "SCT", "Spinal cord")
SPINAL_CORD_GRAY_MATTER = Code("12958003", "SCT", "Spinal cord gray matter")
SPINAL_CORD_WHITE_MATTER = Code("27088001", "SCT", "Spinal cord white matter")
DORSAL_FUNICULUS = Code("59752008", "SCT", "dorsal funiculus")
LATERAL_FUNICULUS = Code("14892003", "SCT", "lateral funiculus")
VENTRAL_FUNICULUS = Code("31701002", "SCT", "ventral funiculus")

# ---- abnormalities (CID 7151; CID 222) -----------------------------------------------------
LESION = Code("52988006", "SCT", "Lesion")
ABNORMAL = Code("263654008", "SCT", "Abnormal")

# ---- laterality (CID 244) ------------------------------------------------------------------
LEFT = Code("7771000", "SCT", "Left")
RIGHT = Code("24028007", "SCT", "Right")
LATERALITY: dict[str, Code] = {"left": LEFT, "right": RIGHT}

# ---- segmentation algorithm families (CID 7162) --------------------------------------------
FAMILY_MANUAL = Code("123109", "DCM", "Manual Processing")
FAMILY_MORPHOLOGICAL = Code("123104", "DCM", "Morphological Operations")
FAMILY_CLUSTER_ANALYSIS = Code("123107", "DCM", "Cluster Analysis")
FAMILY_DEFORMABLE_MODELS = Code("123111", "DCM", "Deformable Models")
FAMILY_HISTOGRAM_ANALYSIS = Code("123105", "DCM", "Histogram Analysis")

#: Summary keys of whole tissues (docs/summary-contract.md) -> property type.
TISSUE_CONCEPTS: dict[str, Code] = {
    "cord": SPINAL_CORD,
    "wm": SPINAL_CORD_WHITE_MATTER,
    "gm": SPINAL_CORD_GRAY_MATTER,
}


@dataclass(frozen=True)
class RegionConcept:
    """How one region of the design doc (codes 1-6 WM, 11-16 GM) is coded and labelled.

    Attributes
    ----------
    code : int
        Region code of :data:`processing.regions.REGIONS`.
    key : str
        Summary key, e.g. ``"gm_dorsal_horns_left"``.
    property_type : Code
        Segmented property type / finding site.
    laterality : Code
        Left or right modifier.
    label : str
        Short label for viewers, e.g. ``"GM dorsal horn left"``.
    description : str
        Longer text, e.g. ``"Grey matter, dorsal horn, left"``.
    """

    code: int
    key: str
    property_type: Code
    laterality: Code
    label: str
    description: str


# region name -> (property type, short label stem, description stem)
_REGION_NAMES: dict[str, tuple[Code, str, str]] = {
    "wm_dorsal_columns": (DORSAL_FUNICULUS, "WM dorsal columns", "White matter, dorsal columns"),
    "wm_lateral_funiculi": (
        LATERAL_FUNICULUS,
        "WM lateral funiculus",
        "White matter, lateral funiculus",
    ),
    "wm_ventral_funiculi": (
        VENTRAL_FUNICULUS,
        "WM ventral funiculus",
        "White matter, ventral funiculus",
    ),
    "gm_dorsal_horns": (SPINAL_CORD_GRAY_MATTER, "GM dorsal horn", "Grey matter, dorsal horn"),
    "gm_intermediate_zone": (
        SPINAL_CORD_GRAY_MATTER,
        "GM intermediate zone",
        "Grey matter, intermediate zone",
    ),
    "gm_ventral_horns": (SPINAL_CORD_GRAY_MATTER, "GM ventral horn", "Grey matter, ventral horn"),
}


def _region_concepts() -> dict[int, RegionConcept]:
    table = {}
    for code, info in REGIONS.items():
        property_type, label, description = _REGION_NAMES[info.name]
        table[code] = RegionConcept(
            code=code,
            key=info.key,
            property_type=property_type,
            laterality=LATERALITY[info.side],
            label=f"{label} {info.side}",
            description=f"{description}, {info.side}",
        )
    return table


#: Region code (1-6 WM, 11-16 GM) -> its concept.
REGION_CONCEPTS: dict[int, RegionConcept] = _region_concepts()


def region_concept(code: int) -> RegionConcept:
    """The concept of a region code.

    Parameters
    ----------
    code : int
        Region code (1-6 white matter, 11-16 grey matter; odd = left, even = right).

    Returns
    -------
    RegionConcept

    Raises
    ------
    ValueError
        For a code that is not a region of the design doc.

    Examples
    --------
    >>> region_concept(12).label
    'GM dorsal horn right'
    >>> region_concept(1).property_type.value
    '59752008'
    """
    if isinstance(code, bool) or code not in REGION_CONCEPTS:
        known = ", ".join(str(c) for c in REGION_CONCEPTS)
        raise ValueError(f"unknown region code {code!r}; expected one of {known}")
    return REGION_CONCEPTS[code]
