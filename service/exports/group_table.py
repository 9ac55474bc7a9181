"""The group-level table: one row per exam, slab and region or vertebral level.

Like the Spinal Cord Toolbox's per-level CSV, but for every exam processed so far, so a
researcher reads one TSV instead of N nested ``summary.json`` files. ``cordt1 process``
writes it next to its outputs and, with a BIDS folder, at the BIDS root; the service updates
the BIDS copy as exams arrive (:func:`update_table`).

Rows of an exam come from its ``summary.json`` (:func:`exam_rows`): ``slab`` is the slab
number, or ``all`` for the exam's slabs together (the values the report shows). A row is a
region (``cord``, ``gm_left``, ...; ``level`` ``n/a``) or a vertebral level of the cord
(``region`` ``cord``, ``level`` ``C3``). Updating replaces every row of an exam's study
(never duplicates it) under an exclusive file lock, and the file is swapped in atomically, so
two workers writing at once lose nothing and a reader never sees half a table.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "COLUMNS",
    "TABLE_NAME",
    "exam_rows",
    "locked",
    "read_table",
    "update_table",
]

#: File name of the table (its column description is the same name with ``.json``).
TABLE_NAME = "cordt1_regions.tsv"

#: Column -> description (and units), written as the table's JSON sidecar.
COLUMNS: dict[str, dict[str, str]] = {
    "subject": {"Description": "BIDS subject label: pseudonymous patient key (no PatientID)"},
    "session": {"Description": "BIDS session label: study date (and time if needed)"},
    "study_date": {"Description": "DICOM StudyDate (YYYYMMDD)"},
    "study_instance_uid": {"Description": "DICOM StudyInstanceUID of the exam"},
    "slab": {"Description": "Slab number (1 = upper), or 'all' for the slabs together"},
    "region": {"Description": "Cord region (cord, gm, wm, columns, funiculi, horns, by side)"},
    "level": {"Description": "Vertebral level (C1..C7) of the cord, or n/a for a region row"},
    "voxels": {"Description": "Voxels in the region"},
    "mean_t1_ms": {"Description": "Mean T1 in the region", "Units": "ms"},
    "median_t1_ms": {"Description": "Median T1 in the region", "Units": "ms"},
    "mean_z": {"Description": "Mean Z-score against the normative model (n/a: not scored)"},
    "abnormal_percent": {
        "Description": "Voxels with |Z| above the exam's threshold (n/a: not scored)",
        "Units": "%",
    },
    "qc_verdict": {"Description": "Exam quality control verdict (pass, warn, fail)"},
    "model_version": {
        "Description": "Normative model the exam was scored or checked against (n/a: none); "
        "Z is n/a when the QC verdict fail withholds it"
    },
    "software_version": {"Description": "cordt1 version that processed the exam"},
}

_LEVEL = re.compile(r"C[1-7]")
_MISSING = "n/a"


def _cell(value: Any) -> str:
    if value is None or value == "":
        return _MISSING
    return str(value)


def _region_rows(regions: dict[str, Any], slab: str, common: dict[str, str]) -> list[dict]:
    rows = []
    for name, values in regions.items():
        if not isinstance(values, dict):
            continue
        is_level = bool(_LEVEL.fullmatch(name))
        rows.append(
            {
                **common,
                "slab": slab,
                "region": "cord" if is_level else name,
                "level": name if is_level else _MISSING,
                "voxels": _cell(values.get("voxels")),
                "mean_t1_ms": _cell(values.get("mean_t1_ms")),
                "median_t1_ms": _cell(values.get("median_t1_ms")),
                "mean_z": _cell(values.get("mean_z")),
                "abnormal_percent": _cell(values.get("abnormal_percent")),
            }
        )
    return rows


def exam_rows(summary: dict[str, Any], *, subject: str, session: str) -> list[dict[str, str]]:
    """The table rows of one processed exam, from its ``summary.json`` content.

    Parameters
    ----------
    summary : dict
        The exam's summary (``exam``, ``regions``, ``slabs[].regions``, ``qc``, ``model``).
    subject, session : str
        The exam's BIDS labels (``subject`` is the pseudonymous patient key).

    Returns
    -------
    list of dict
        One row per slab (and ``all``) and region or level; every value a string, ``n/a``
        where the exam has none (e.g. Z without a normative model).

    Raises
    ------
    ValueError
        If the summary names no study instance UID.
    """
    exam = summary.get("exam") or {}
    study_uid = str(exam.get("study_instance_uid") or "")
    if not study_uid:
        raise ValueError("summary has no exam.study_instance_uid: not an exam summary")
    common = {
        "subject": subject,
        "session": session,
        "study_date": _cell(exam.get("study_date")),
        "study_instance_uid": study_uid,
        "qc_verdict": _cell((summary.get("qc") or {}).get("verdict")),
        "model_version": _cell((summary.get("model") or {}).get("model_version")),
        "software_version": _cell((summary.get("software") or {}).get("version")),
    }
    rows: list[dict[str, str]] = []
    for slab in summary.get("slabs") or []:
        rows += _region_rows(slab.get("regions") or {}, str(slab.get("slab")), common)
    rows += _region_rows(summary.get("regions") or {}, "all", common)
    return rows


def read_table(path: Path) -> list[dict[str, str]]:
    """Rows of a table written by :func:`update_table` (empty when there is none yet).

    Raises
    ------
    ValueError
        If the file's header is not this table's columns.
    """
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        if reader.fieldnames != list(COLUMNS):
            raise ValueError(
                f"{path} is not a cordt1 group table (columns {reader.fieldnames}); "
                "move it away or write into another folder"
            )
        return list(reader)


def _sort_key(row: dict[str, str]) -> tuple[Any, ...]:
    slab = row["slab"]
    return (
        row["subject"],
        row["session"],
        row["study_instance_uid"],
        (1, 0) if slab == "all" else (0, int(slab) if slab.isdigit() else 0),
        row["level"] != _MISSING,
        row["region"],
        row["level"],
    )


@contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Hold the folder's exclusive cordt1 lock (``.cordt1.lock``) while the block runs.

    Every writer of shared files in a cordt1 output or BIDS folder takes it, so two workers
    (processes or hosts sharing a POSIX file system) update them one after the other.
    """
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / ".cordt1.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _replace_text(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    temporary.write_text(text)
    os.replace(temporary, path)


def update_table(folder: Path, rows: list[dict[str, str]]) -> Path:
    """Put an exam's rows into ``folder/cordt1_regions.tsv``, replacing its earlier rows.

    Rows of every study named in ``rows`` are dropped first, so processing an exam again
    never duplicates it. The table's JSON sidecar (column descriptions) is written too.

    Parameters
    ----------
    folder : Path
        Where the table lives (a BIDS root or an output folder); created if needed.
    rows : list of dict
        From :func:`exam_rows` (possibly of several exams).

    Returns
    -------
    Path
        The table file.

    Raises
    ------
    ValueError
        If a row lacks a column, or an existing file there is not this table.
    """
    for row in rows:
        missing = [c for c in COLUMNS if c not in row]
        if missing:
            raise ValueError(f"group table row lacks column(s) {missing}")
    path = Path(folder) / TABLE_NAME
    studies = {row["study_instance_uid"] for row in rows}
    with locked(Path(folder)):
        kept = [row for row in read_table(path) if row["study_instance_uid"] not in studies]
        table = sorted(kept + [{c: row[c] for c in COLUMNS} for row in rows], key=_sort_key)
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(COLUMNS), delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(table)
        _replace_text(path, out.getvalue())
        sidecar = path.with_suffix(".json")
        text = json.dumps(COLUMNS, indent=2) + "\n"
        if not sidecar.exists() or sidecar.read_text() != text:
            _replace_text(sidecar, text)
    return path
