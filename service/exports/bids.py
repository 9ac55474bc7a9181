"""Export one exam's NIfTI results as a BIDS-derivatives dataset for researchers.

Layout written under ``bids_root`` (BIDS 1.9.0, derivative dataset):

- ``dataset_description.json`` (``DatasetType`` ``derivative``, ``GeneratedBy`` cordt1,
  ``SourceDatasets``: one ``urn:oid:<StudyInstanceUID>`` per exported DICOM study), a
  ``README`` and ``.bidsignore`` (the summary, the Z-score map and the group table use names
  BIDS does not define);
- ``cordt1_regions.tsv`` + ``.json``: the group table, one row per exam, slab and region or
  level (:mod:`service.exports.group_table`), updated by every export;
- ``sub-<s>/ses-<e>/sub-<s>_ses-<e>_desc-cordt1_summary.json``: ``summary.json`` without the
  accession number;
- ``sub-<s>/ses-<e>/anat/sub-<s>_ses-<e>_acq-slab<k>_<name>`` per slab ``k``:

  ========================================  ===============================================
  ``T1map.nii.gz`` + ``.json``              T1 in seconds (BIDS); MP2RAGE timing keys
  ``desc-zscore_statmap.nii.gz`` + ``.json``  Z-score against the normative model (if scored)
  ``desc-cord_mask``, ``desc-gm_mask``,     binary cord, grey- and white-matter masks
  ``desc-wm_mask`` (``.nii.gz`` + ``.json``)
  ``dseg.nii.gz`` + ``.tsv`` + ``.json``     region labels; the TSV lists every region code
  ``desc-lesions_dseg``                     reader lesions (ids as in the summary's slab labels)
  ``desc-candidates_dseg``                  automatic lesion candidates (if scored)
  ========================================  ===============================================

Every image has its units in the NIfTI header (``xyzt_units``: mm, s) and a sidecar with BIDS
keys only; facts BIDS has no key for (both inversion times, B1 correction, normative model
version, Z threshold, software version) are in the session's ``desc-cordt1_summary.json``
(``.bidsignore``d) and the group table. Writes of the shared root files (description, group
table) hold the folder's lock (:func:`service.exports.group_table.locked`).

The subject label is the pseudonymous patient key (:func:`dicom_node.instance.patient_key`),
never the PatientID; the session label is the study date, with the study time appended when
another study of the same subject has that date (:func:`choose_session`).
"""

from __future__ import annotations

import json
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom

from dicom_node.instance import PseudonymKey
from processing.regions import REGIONS
from service import __version__
from service.exports.group_table import TABLE_NAME, exam_rows, locked, update_table
from service.inputs.exam import ExamSeries

__all__ = [
    "BIDS_VERSION",
    "ExamLabels",
    "choose_session",
    "exam_labels",
    "export_bids",
    "export_exam",
    "session_label",
]

BIDS_VERSION = "1.9.0"
_LABEL = re.compile(r"[A-Za-z0-9]+")
_SLAB_FILE = re.compile(r"slab(\d+)_(t1_ms|z|cord|gm|wm|labels|lesions_reader|lesions_candidates)")
_BIDSIGNORE = (
    "*_summary.json",
    "*_statmap.nii.gz",
    "*_statmap.json",
    TABLE_NAME,
    TABLE_NAME.removesuffix(".tsv") + ".json",
)
_MP2RAGE_REFERENCE = (
    "Marques JP, Kober T, Krueger G, van der Zwaag W, Van de Moortele PF, Gruetter R. "
    "MP2RAGE, a self bias-field corrected sequence for improved segmentation and "
    "T1-mapping at high field. NeuroImage 2010;49(2):1271-1281. "
    "doi:10.1016/j.neuroimage.2009.10.002"
)
_README = """# cordt1 spinal cord quantitative T1 (BIDS derivatives)

RESEARCH USE ONLY - NOT FOR DIAGNOSIS.

Written by cordt1 from 7 T MP2RAGE exams of the cervical spinal cord (DICOM studies named
in dataset_description.json SourceDatasets as urn:oid:<StudyInstanceUID>).

Per session (sub-<patient key>/ses-<study date>/anat/, one acq-slab<k> per slab):

- *_T1map.nii.gz: longitudinal relaxation time T1 in seconds;
- *_desc-cord_mask, *_desc-gm_mask, *_desc-wm_mask: binary cord, grey and white matter;
- *_dseg.nii.gz + .tsv: cord sub-regions (columns, funiculi, horns by side);
- *_desc-lesions_dseg, *_desc-candidates_dseg: reader lesions, automatic lesion candidates;
- *_desc-zscore_statmap.nii.gz: voxel-wise Z-score against the normative model (ignored by
  the BIDS validator: statmap is not a BIDS suffix yet);
- sub-*_ses-*_desc-cordt1_summary.json: the exam's full summary (protocol with both inversion
  times, B1 correction, QC, model, lesions, region values).

cordt1_regions.tsv (columns described in cordt1_regions.json): one row per exam, slab and
region or vertebral level, with voxels, mean/median T1 (ms), mean Z, % abnormal voxels, QC
verdict and model version.
"""


@dataclass(frozen=True)
class ExamLabels:
    """What names an exam in a BIDS tree (no patient data: ``subject`` is a hash)."""

    subject: str
    study_uid: str
    study_date: str
    study_time: str


@dataclass(frozen=True)
class _Output:
    """How one pipeline NIfTI output is named and described in BIDS."""

    name: str
    description: str
    extra: tuple[tuple[str, Any], ...] = ()


_OUTPUTS: dict[str, _Output] = {
    "t1_ms": _Output("T1map", "Longitudinal relaxation time T1 from the MP2RAGE UNI image"),
    "z": _Output(
        "desc-zscore_statmap",
        "Voxel-wise Z-score of T1 against the normative model of healthy controls",
    ),
    "cord": _Output("desc-cord_mask", "Spinal cord mask", (("Type", "ROI"),)),
    "gm": _Output("desc-gm_mask", "Spinal cord grey matter mask", (("Type", "ROI"),)),
    "wm": _Output("desc-wm_mask", "Spinal cord white matter mask", (("Type", "ROI"),)),
    "labels": _Output("dseg", "Cord sub-regions (columns, funiculi, horns) by side"),
    "lesions_reader": _Output("desc-lesions_dseg", "Lesions outlined by a reader"),
    "lesions_candidates": _Output(
        "desc-candidates_dseg", "Automatic lesion candidates (not reviewed by a reader)"
    ),
}


#: Output kind -> the kinds it is computed from (its sidecar's ``Sources``, when exported).
_SOURCES: dict[str, tuple[str, ...]] = {
    "z": ("t1_ms",),
    "labels": ("cord", "gm"),
    "lesions_candidates": ("z",),
}

_TISSUE = ("cord", "gm", "wm")


def _check_label(value: str, what: str) -> str:
    if not isinstance(value, str) or not _LABEL.fullmatch(value):
        raise ValueError(
            f"BIDS {what} label must be letters and digits only (no 'sub-'/'ses-' prefix), "
            f"got {value!r}"
        )
    return value


def session_label(study_date: str, study_time: str = "", *, with_time: bool = False) -> str:
    """The BIDS session label of a study: its date, optionally with its time.

    Parameters
    ----------
    study_date : str
        DICOM StudyDate (``YYYYMMDD``; other characters are dropped).
    study_time : str
        DICOM StudyTime (``HHMMSS.FFFFFF``); fractions of a second are dropped.
    with_time : bool
        Append ``T`` and the time (needed when two studies share a date).

    Raises
    ------
    ValueError
        If the date (or, with ``with_time``, the time) is empty.

    Examples
    --------
    >>> session_label("20221107"), session_label("20221107", "101500.25", with_time=True)
    ('20221107', '20221107T101500')
    """
    date = re.sub(r"\D", "", study_date or "")
    if not date:
        raise ValueError("the exam has no StudyDate: a BIDS session label cannot be derived")
    if not with_time:
        return date
    time = re.sub(r"\D", "", (study_time or "").split(".")[0])
    if not time:
        raise ValueError(
            "two studies share the date "
            f"{date} but this one has no StudyTime: a BIDS session label cannot be derived"
        )
    return f"{date}T{time}"


def _summary_path(bids_root: Path, subject: str, session: str) -> Path:
    prefix = f"sub-{subject}_ses-{session}"
    return bids_root / f"sub-{subject}" / f"ses-{session}" / f"{prefix}_desc-cordt1_summary.json"


def _session_study(bids_root: Path, subject: str, session: str) -> str | None:
    """Study UID already exported into this session (None: the session is free)."""
    path = _summary_path(bids_root, subject, session)
    if not path.parent.exists():
        return None
    try:
        return str(json.loads(path.read_text())["exam"]["study_instance_uid"])
    except (OSError, ValueError, KeyError, TypeError):
        return ""  # an unknown folder: never overwrite it


def choose_session(
    bids_root: Path,
    subject: str,
    *,
    study_uid: str,
    study_date: str,
    study_time: str = "",
    with_time: bool = False,
) -> str:
    """The session label for a study: its date, or date and time when the date is taken.

    A session already holding the same study is reused (exporting again replaces it).

    Raises
    ------
    ValueError
        If the labels are invalid or even the date-and-time session holds another study.
    """
    _check_label(subject, "subject")
    bids_root = Path(bids_root)
    session = session_label(study_date, study_time, with_time=with_time)
    if _session_study(bids_root, subject, session) in (None, study_uid):
        return session
    if not with_time:
        # session_label raises a clear error when the study has no time to tell it apart
        session = session_label(study_date, study_time, with_time=True)
        if _session_study(bids_root, subject, session) in (None, study_uid):
            return session
    raise ValueError(
        f"BIDS session ses-{session} of sub-{subject} already holds another study; "
        "remove it or export into another folder"
    )


def exam_labels(exam: ExamSeries, pseudonyms: PseudonymKey) -> ExamLabels:
    """Subject (pseudonymous patient key), study UID, date and time from an exam's headers.

    ``pseudonyms`` is the site key (:func:`service.pseudonym.pseudonym_key`): the same
    patient gets the same ``sub-`` label from every process that has the site secret.
    """
    first = next(
        (files[0] for series in exam.by_component.values() for files in series.values()), None
    )
    if first is None:
        raise ValueError(f"exam {exam.study_uid} has no files")
    header = pydicom.dcmread(first, stop_before_pixels=True)
    key = pseudonyms.patient_key(
        str(header.get("IssuerOfPatientID", "")), str(header.get("PatientID", ""))
    )
    return ExamLabels(
        subject=key,
        study_uid=exam.study_uid,
        study_date=str(header.get("StudyDate", "") or ""),
        study_time=str(header.get("StudyTime", "") or ""),
    )


def _write_json(path: Path, content: dict[str, Any]) -> None:
    path.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")


def _write_description(bids_root: Path, study_uid: str) -> Path:
    """Write or update ``dataset_description.json``, ``README`` and ``.bidsignore``.

    The study joins ``SourceDatasets`` (once). Call with the root's lock held.

    Raises
    ------
    ValueError
        If the folder holds another BIDS dataset (not a cordt1 derivative).
    """
    path = bids_root / "dataset_description.json"
    description: dict[str, Any] = {
        "Name": "cordt1 spinal cord quantitative T1",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [
            {
                "Name": "cordt1",
                "Version": __version__,
                "Description": "7 T MP2RAGE cervical cord T1 maps, segmentation and Z-scores",
            }
        ],
        "SourceDatasets": [],
    }
    if path.exists():
        try:
            existing = json.loads(path.read_text())
            ours = any(g.get("Name") == "cordt1" for g in existing.get("GeneratedBy", []))
        except (ValueError, AttributeError, TypeError):
            ours = False
        if not ours or existing.get("DatasetType") != "derivative":
            raise ValueError(
                f"{bids_root} holds another BIDS dataset (not a cordt1 derivative); "
                "export into an empty folder"
            )
        description = {**description, **existing}
    source = {"URL": f"urn:oid:{study_uid}"}
    sources = list(description.get("SourceDatasets") or [])
    if source not in sources:
        description["SourceDatasets"] = [*sources, source]
        temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
        _write_json(temporary, description)
        temporary.replace(path)
    readme = bids_root / "README"
    if not readme.exists() and not any(bids_root.glob("README.*")):
        readme.write_text(_README)
    ignore = bids_root / ".bidsignore"
    lines = ignore.read_text().splitlines() if ignore.exists() else []
    missing = [pattern for pattern in _BIDSIGNORE if pattern not in lines]
    if missing:
        ignore.write_text("\n".join(lines + missing) + "\n")
    return path


def _slab_outputs(nifti_dir: Path) -> dict[int, dict[str, Path]]:
    """Slab -> output kind -> file, for every pipeline NIfTI output in ``nifti_dir``."""
    found: dict[int, dict[str, Path]] = {}
    for path in sorted(nifti_dir.glob("slab*.nii.gz")):
        match = _SLAB_FILE.fullmatch(path.name.removesuffix(".nii.gz"))
        if match:
            found.setdefault(int(match.group(1)), {})[match.group(2)] = path
    return found


def _t1_sidecar(slab: dict[str, Any]) -> dict[str, Any]:
    """BIDS keys of a T1map: units, estimation and the MP2RAGE timing (seconds, degrees).

    ``InversionTime`` is left out: BIDS gives it one number per image, and the T1 map comes
    from both inversions (their times are in the session summary).
    """
    source = str(slab.get("t1_source") or "")
    sidecar: dict[str, Any] = {"Units": "s", "SkullStripped": False}
    if source:
        sidecar["EstimationAlgorithm"] = source
    if source.startswith("UNI"):
        sidecar["EstimationReference"] = _MP2RAGE_REFERENCE
    protocol = slab.get("protocol")
    if protocol:
        sidecar.update(
            {
                "RepetitionTimePreparation": protocol["tr_mp2rage_s"],
                "FlipAngle": protocol["flip_deg"],
                "RepetitionTimeExcitation": protocol["echo_spacing_s"],
                "NumberShots": protocol["n_excitations"],
            }
        )
    return sidecar


def _bids_uri(path: Path, bids_root: Path) -> str:
    return f"bids::{path.relative_to(bids_root).as_posix()}"


def _write_image(source: Path, target: Path, *, scale: float | None = None) -> None:
    """Copy a NIfTI image with its units in the header (mm, s); ``scale`` multiplies values."""
    image = nib.load(source)
    header = image.header.copy()
    data = np.asanyarray(image.dataobj)
    if scale is not None:
        data = (np.asarray(image.get_fdata(dtype=np.float64)) * scale).astype(np.float32)
        header.set_data_dtype(np.float32)
        header.set_slope_inter(None, None)
    out = nib.Nifti1Image(data, image.affine, header)
    out.header.set_xyzt_units("mm", "sec")
    out.set_sform(*image.get_sform(coded=True))
    out.set_qform(*image.get_qform(coded=True))
    nib.save(out, target)


def _regions_table() -> str:
    rows = ["index\tname\ttissue\tside"]
    rows += [f"{code}\t{info.key}\t{info.tissue}\t{info.side}" for code, info in REGIONS.items()]
    return "\n".join(rows) + "\n"


def _lesions_table(image_path: Path, k: int, source: str, lesions: list[dict[str, Any]]) -> str:
    by_label = {
        int(entry["label_in_slab"]): entry
        for entry in lesions
        if entry.get("slab") == k and entry.get("source") == source and "label_in_slab" in entry
    }
    present = np.unique(np.asanyarray(nib.load(image_path).dataobj))
    rows = ["index\tname\tsummary_id\tvolume_mm3"]
    for label in (int(v) for v in present if v > 0):
        entry = by_label.get(label, {})
        summary_id = entry.get("id", "n/a")
        volume = entry.get("volume_mm3", "n/a")
        rows.append(f"{label}\tlesion_{label}\t{summary_id}\t{volume}")
    return "\n".join(rows) + "\n"


def _dseg_sidecar_columns(kind: str) -> dict[str, Any]:
    """Descriptions of a dseg TSV's extra columns (BIDS reads them from the shared sidecar)."""
    if kind == "labels":
        return {
            "tissue": {
                "Description": "Tissue of the region",
                "Levels": {"wm": "white matter", "gm": "grey matter"},
            },
            "side": {"Description": "Patient side of the region"},
        }
    return {
        "summary_id": {"Description": "Lesion id in the session's desc-cordt1_summary.json"},
        "volume_mm3": {"Description": "Lesion volume", "Units": "mm^3"},
    }


def export_bids(exam_out_dir: Path, bids_root: Path, *, subject: str, session: str) -> list[Path]:
    """Copy one exam's NIfTI outputs and summary into a BIDS-derivatives tree.

    Parameters
    ----------
    exam_out_dir : Path
        Output folder of :func:`service.pipeline.run.process_exam` (``summary.json``, ``nifti/``).
    bids_root : Path
        Root of the derivative dataset; created if needed.
    subject : str
        Subject label without ``sub-``: the pseudonymous patient key, never the PatientID.
    session : str
        Session label without ``ses-`` (see :func:`choose_session`).

    Returns
    -------
    list of Path
        Every file written for this session (images, sidecars, tables, summary).

    Raises
    ------
    ValueError
        If a label is not alphanumeric, the exam folder has no summary or no T1 map, or
        ``bids_root`` is a file or holds a dataset that is not a cordt1 derivative (or a
        ``cordt1_regions.tsv`` that is not the group table).

    Notes
    -----
    The session folder is built aside and then swapped in, so exporting the same session
    again replaces it completely (no stale file from an earlier run survives); the exam's rows
    in the group table ``cordt1_regions.tsv`` are replaced likewise. The T1 map is written in
    seconds (BIDS); the pipeline's own ``slab<k>_t1_ms.nii.gz`` stays in ms.
    """
    _check_label(subject, "subject")
    _check_label(session, "session")
    exam_out_dir, bids_root = Path(exam_out_dir), Path(bids_root)
    summary_file = exam_out_dir / "summary.json"
    if not summary_file.is_file():
        raise ValueError(f"{exam_out_dir} holds no summary.json: not a processed exam folder")
    summary: dict[str, Any] = json.loads(summary_file.read_text())
    outputs = _slab_outputs(exam_out_dir / "nifti")
    slabs = {int(entry["slab"]): entry for entry in summary.get("slabs", [])}
    missing = sorted(k for k in slabs if "t1_ms" not in outputs.get(k, {}))
    if not slabs or missing:
        raise ValueError(f"{exam_out_dir} has no T1 map NIfTI for slab(s) {missing or '(none)'}")

    if bids_root.exists() and not bids_root.is_dir():
        raise ValueError(f"BIDS folder {bids_root} exists and is not a folder")
    study_uid = str(summary.get("exam", {}).get("study_instance_uid") or "")
    rows = exam_rows(summary, subject=subject, session=session)  # raises without a study UID
    with locked(bids_root):
        _write_description(bids_root, study_uid)
    subject_dir = bids_root / f"sub-{subject}"
    subject_dir.mkdir(exist_ok=True)
    final = subject_dir / f"ses-{session}"
    staging = subject_dir / f".ses-{session}.partial-{uuid.uuid4().hex}"
    anat = staging / "anat"
    anat.mkdir(parents=True)
    prefix = f"sub-{subject}_ses-{session}"

    def uri(k: int, kind: str) -> str:
        name = f"{prefix}_acq-slab{k}_{_OUTPUTS[kind].name}.nii.gz"
        return _bids_uri(final / "anat" / name, bids_root)

    written: list[Path] = []
    try:
        lesions = list(summary.get("lesions", []))
        for k in sorted(slabs):
            for kind, source in sorted(outputs[k].items()):
                spec = _OUTPUTS[kind]
                stem = anat / f"{prefix}_acq-slab{k}_{spec.name}"
                image = stem.with_name(stem.name + ".nii.gz")
                _write_image(source, image, scale=1e-3 if kind == "t1_ms" else None)
                written.append(image)
                sidecar: dict[str, Any] = {"Description": spec.description, **dict(spec.extra)}
                if kind == "t1_ms":
                    sidecar.update(_t1_sidecar(slabs[k]))
                else:
                    sidecar["SpatialReference"] = uri(k, "t1_ms")
                made_from = _SOURCES.get(kind, ())
                if kind in _TISSUE and slabs[k].get("segmentation_source", "automatic") == (
                    "automatic"
                ):
                    made_from = ("t1_ms",)  # our segmentation runs on the T1 map
                sources = [uri(k, s) for s in made_from if s in outputs[k]]
                if sources:
                    sidecar["Sources"] = sources
                if kind == "z":
                    sidecar["SkullStripped"] = False
                if spec.name.endswith("dseg"):
                    table = (
                        _regions_table()
                        if kind == "labels"
                        else _lesions_table(
                            source,
                            k,
                            "reader" if kind == "lesions_reader" else "candidate",
                            lesions,
                        )
                    )
                    stem.with_name(stem.name + ".tsv").write_text(table)
                    written.append(stem.with_name(stem.name + ".tsv"))
                    sidecar.update(_dseg_sidecar_columns(kind))
                _write_json(stem.with_name(stem.name + ".json"), sidecar)
                written.append(stem.with_name(stem.name + ".json"))
        exported = dict(summary)
        exported["exam"] = {
            key: value
            for key, value in summary.get("exam", {}).items()
            if key != "accession_number"
        }
        summary_out = staging / f"{prefix}_desc-cordt1_summary.json"
        _write_json(summary_out, exported)
        written.append(summary_out)
        old = subject_dir / f".ses-{session}.old-{uuid.uuid4().hex}"
        with locked(bids_root):
            if final.exists():
                final.rename(old)
            staging.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    update_table(bids_root, rows)
    return [final / path.relative_to(staging) for path in written]


def export_exam(
    exam_out_dir: Path, bids_root: Path, labels: ExamLabels, *, with_time: bool = False
) -> list[Path]:
    """Choose the exam's session (:func:`choose_session`) and export it (:func:`export_bids`).

    Parameters
    ----------
    exam_out_dir : Path
        The processed exam's output folder.
    bids_root : Path
        Root of the derivative dataset.
    labels : ExamLabels
        From :func:`exam_labels`.
    with_time : bool
        Name the session by date and time (the caller knows another study shares the date).

    Raises
    ------
    ValueError
        See :func:`choose_session` and :func:`export_bids`.
    OSError
        If the files cannot be written.
    """
    session = choose_session(
        bids_root,
        labels.subject,
        study_uid=labels.study_uid,
        study_date=labels.study_date,
        study_time=labels.study_time,
        with_time=with_time,
    )
    return export_bids(exam_out_dir, bids_root, subject=labels.subject, session=session)
