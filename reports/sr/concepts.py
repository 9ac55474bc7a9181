"""Coded concepts used only by the Structured Report.

Standard codes were checked against PS3.16 as shipped in pydicom 3.0.2
(``pydicom.sr._concepts_dict``); the context group that lists each one is named next to it.
Where PS3.16 has no concept (percentage of abnormal voxels, lesion composition, lesion
source, B1 correction, QC verdict, ...) the private coding scheme :data:`PRIVATE_SCHEME`
(``99CORDT1``) is used and declared in CodingSchemeIdentificationSequence by
:data:`PRIVATE_SCHEME_ITEM`.
"""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

__all__ = [
    "ABNORMAL_PERCENT",
    "B1_CORRECTION",
    "COMMENT",
    "COMPOSITION",
    "COMPOSITIONS",
    "COVERAGE",
    "CRANIO_CAUDAL_EXTENT",
    "DERIVATION_MAX",
    "DERIVATION_MEAN",
    "FOLLOW_UP",
    "GM_PERCENT",
    "GM_WM_EVIDENCE",
    "LESION_COUNT",
    "LESION_LOAD",
    "LESION_SOURCE",
    "LESION_SOURCES",
    "LEVEL",
    "LEVEL_CODES",
    "LOCATION",
    "LOCATIONS",
    "MIDLINE",
    "MODEL_VERSION",
    "NO",
    "PRIVATE_SCHEME",
    "PRIVATE_SCHEME_ITEM",
    "PROCEDURE",
    "QC_REASON",
    "QC_VERDICT",
    "QC_VERDICTS",
    "QUALITATIVE_EVALUATIONS",
    "RESEARCH_USE",
    "SIDES",
    "SIDE_CONCEPT",
    "T1",
    "UNIT_COUNT",
    "UNIT_MM",
    "UNIT_MM3",
    "UNIT_MS",
    "UNIT_NONE",
    "UNIT_PERCENT",
    "VOLUME",
    "YES",
    "Z_SCORE",
    "Z_THRESHOLD",
]

PRIVATE_SCHEME = "99CORDT1"

#: Item of CodingSchemeIdentificationSequence (0008,0110) declaring the private scheme.
PRIVATE_SCHEME_ITEM = Dataset()
PRIVATE_SCHEME_ITEM.CodingSchemeDesignator = PRIVATE_SCHEME
PRIVATE_SCHEME_ITEM.CodingSchemeName = "cordt1 spinal cord T1 report concepts"
PRIVATE_SCHEME_ITEM.CodingSchemeResponsibleOrganization = "cordt1"


def _private(value: str, meaning: str) -> Code:
    return Code(value, PRIVATE_SCHEME, meaning)


# ---- procedure (TID 1500 row 4: one code from CID 100, which has no cervical-spine MRI) ----
PROCEDURE = Code("25056-3", "LN", "MRI unspecified body region")  # CID 100

# ---- measurement names, derivations, units -------------------------------------------------
T1 = Code("113063", "DCM", "T1")  # CID 7180
Z_SCORE = Code("113071", "DCM", "Z-score")  # CID 7180, 7469
VOLUME = Code("118565006", "SCT", "Volume")  # CID 7469
DERIVATION_MEAN = Code("373098007", "SCT", "Mean")  # CID 7464
DERIVATION_MAX = Code("56851009", "SCT", "Maximum")  # CID 7464
ABNORMAL_PERCENT = _private("ABNORMAL_PCT", "Abnormal voxels (Z above threshold)")
CRANIO_CAUDAL_EXTENT = _private("CC_EXTENT", "Cranio-caudal extent")
GM_PERCENT = _private("GM_PCT", "Gray matter share of lesion")
LESION_COUNT = _private("LESION_COUNT", "Number of lesions")
LESION_LOAD = _private("LESION_LOAD", "Lesion load (total lesion volume)")

UNIT_MS = Code("ms", "UCUM", "millisecond")  # CID 7181
UNIT_NONE = Code("1", "UCUM", "no units")  # CID 7181
UNIT_PERCENT = Code("%", "UCUM", "Percent")  # CID 7181
UNIT_MM3 = Code("mm3", "UCUM", "cubic millimeter")  # CID 7181
UNIT_MM = Code("mm", "UCUM", "millimeter")  # CID 7181
UNIT_COUNT = Code("{lesions}", "UCUM", "lesions")

# ---- qualitative evaluations ---------------------------------------------------------------
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")  # TID 1500
COMMENT = Code("121106", "DCM", "Comment")  # CID 12101
YES = Code("373066001", "SCT", "Yes")  # CID 230
NO = Code("373067005", "SCT", "No")  # CID 230

LOCATION = Code("106233006", "SCT", "Topographical modifier")  # CID 210
LOCATIONS: dict[str, Code] = {
    "posterior": Code("255551008", "SCT", "Posterior"),  # CID 2
    "lateral": Code("49370004", "SCT", "Lateral"),  # CID 2
    "anterior": Code("255549009", "SCT", "Anterior"),  # CID 2
}
SIDE_CONCEPT = Code("272741003", "SCT", "Laterality")  # CID 210
MIDLINE = Code("261129000", "SCT", "Midline")  # CID 5
SIDES: dict[str, Code] = {
    "left": Code("7771000", "SCT", "Left"),  # CID 244
    "right": Code("24028007", "SCT", "Right"),  # CID 244
    "midline": MIDLINE,
}
LEVEL = _private("LEVEL_EST", "Estimated vertebral level")
#: Vertebrae C1..C7 (CID 7602 / 7151).
LEVEL_CODES: dict[str, Code] = {
    "C1": Code("14806007", "SCT", "C1 vertebra"),
    "C2": Code("39976000", "SCT", "C2 vertebra"),
    "C3": Code("113205007", "SCT", "C3 vertebra"),
    "C4": Code("5329002", "SCT", "C4 vertebra"),
    "C5": Code("36978003", "SCT", "C5 vertebra"),
    "C6": Code("36054005", "SCT", "C6 vertebra"),
    "C7": Code("87391001", "SCT", "C7 vertebra"),
}
COMPOSITION = _private("COMPOSITION", "Lesion tissue composition")
COMPOSITIONS: dict[str, Code] = {
    "wm_only": _private("WM_ONLY", "WM only"),
    "mixed": _private("MIXED_GM_WM", "mixed GM+WM"),
}
LESION_SOURCE = _private("LESION_SOURCE", "Lesion source")
LESION_SOURCES: dict[str, Code] = {
    "reader": _private("READER", "Reader outline"),
    "candidate": _private("CANDIDATE", "Automatic candidate (not reviewed by a reader)"),
}
B1_CORRECTION = _private("B1_CORRECTED", "B1 correction applied")
GM_WM_EVIDENCE = _private("GM_WM_EVIDENCE", "Grey/white matter segmentation based on")
QC_VERDICT = _private("QC_VERDICT", "Quality control verdict")
QC_VERDICTS: dict[str, Code] = {
    "pass": _private("QC_PASS", "QC passed"),
    "warn": _private("QC_WARN", "QC passed with warnings"),
    "fail": _private("QC_FAIL", "QC failed: Z-scores withheld"),
}
QC_REASON = _private("QC_REASON", "Quality control reason")
COVERAGE = _private("COVERAGE", "Slices the reported numbers rest on")
MODEL_VERSION = _private("MODEL_VERSION", "Normative model version")
Z_THRESHOLD = _private("Z_THRESHOLD", "Z-score threshold for abnormal voxels")
FOLLOW_UP = _private("FOLLOW_UP", "Change since prior exam")
RESEARCH_USE = _private("RESEARCH_USE", "Research use statement")
