"""BIDS-derivatives export, `cordt1 process --bids-out/--lesions` and the worker export."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import pytest

from dicom_node.components import classify
from dicom_node.instance import PseudonymKey
from processing.regions import REGIONS
from service.cli import main
from service.exports.bids import choose_session, export_bids, session_label
from service.inputs.nifti import from_nifti, to_nifti
from service.jobs.store import JobState, JobStore
from service.jobs.tasks import JobRunner
from service.settings import Settings
from tests.service_harness import PhantomExam, make_exams

#: Keys a BIDS 1.9 T1map sidecar of this derivative may carry (all defined by BIDS).
BIDS_T1MAP_KEYS = {
    "Description",
    "Units",
    "SkullStripped",
    "EstimationAlgorithm",
    "EstimationReference",
    "RepetitionTimePreparation",
    "FlipAngle",
    "RepetitionTimeExcitation",
    "NumberShots",
    "Sources",
}
SUBJECT = "0123456789abcdef"
SESSION = "20240102"
PREFIX = f"sub-{SUBJECT}_ses-{SESSION}"

# ---------------------------------------------------------------------------------------------
# A processed exam folder written like service.pipeline.run does (small arrays, realistic summary)
# ---------------------------------------------------------------------------------------------


def _summary(*, scored: bool) -> dict[str, Any]:
    protocol = {
        "tr_mp2rage_s": 5.0,
        "ti_s": [0.8, 2.7],
        "flip_deg": [4.0, 5.0],
        "echo_spacing_s": 0.0067,
        "n_excitations": 48,
        "efficiency": 0.96,
        "sources": {"ti1_s": "header"},
    }
    summary: dict[str, Any] = {
        "software": {"name": "cordt1", "version": "9.8.7"},
        "exam": {
            "study_instance_uid": "1.2.3.4",
            "study_date": SESSION,
            "accession_number": "ACC-SECRET-42",
            "protocol_name": "mp2rage_cspine_0.3",
        },
        "slabs": [
            {
                "slab": k,
                "series_instance_uid": f"1.2.3.4.{k}",
                "protocol": protocol,
                "t1_source": "UNI + protocol lookup table",
                "b1_corrected": k == 2,
                "b1_note": "note",
                "regions": {
                    "cord": {"voxels": 40 * k, "mean_t1_ms": 1300.0 + k, "median_t1_ms": 1290.0},
                    "C3": {"voxels": 20, "mean_t1_ms": 1310.5, "median_t1_ms": 1305.0},
                },
            }
            for k in (1, 2)
        ],
        "regions": {
            "cord": {"voxels": 120, "mean_t1_ms": 1301.7, "median_t1_ms": 1290.0},
            "C3": {"voxels": 40, "mean_t1_ms": 1310.5, "median_t1_ms": 1305.0},
        },
        "qc": {"verdict": "pass"},
        "research_use": "RESEARCH USE ONLY - NOT FOR DIAGNOSIS",
        "lesions": [
            {"id": 1, "source": "reader", "slab": 1, "label_in_slab": 1, "volume_mm3": 2.5},
            {"id": 2, "source": "reader", "slab": 1, "label_in_slab": 2, "volume_mm3": 7.5},
        ],
    }
    if scored:
        summary["model"] = {"model_version": "nm-feedbeef"}
        summary["z_threshold"] = 1.96
        for regions in [summary["regions"], *(slab["regions"] for slab in summary["slabs"])]:
            regions["cord"].update({"mean_z": 0.25, "abnormal_percent": 3.5})
    return summary


def _write_exam(out: Path, *, scored: bool = True) -> Path:
    """An exam output folder: summary.json and nifti/slab<k>_*.nii.gz for two slabs."""
    nifti = out / "nifti"
    nifti.mkdir(parents=True)
    rng = np.random.default_rng(3)
    shape = (3, 8, 10)
    for k in (1, 2):
        affine = np.array(
            [[0, 0, 0.3, -5.0], [0, 0.3, 0, -7.0], [4.0, 0, 0, -25.0 - 12 * k], [0, 0, 0, 1]]
        )
        codes = np.array(list(REGIONS), dtype=np.int16)
        volumes: dict[str, np.ndarray] = {
            "t1_ms": rng.uniform(800, 2000, shape).astype(np.float32),
            "cord": (rng.random(shape) > 0.5).astype(np.uint8),
            "gm": (rng.random(shape) > 0.7).astype(np.uint8),
            "wm": (rng.random(shape) > 0.7).astype(np.uint8),
            "labels": rng.choice(codes, shape).astype(np.int16),
        }
        lesions = np.zeros(shape, np.int16)
        if k == 1:
            lesions[0, :2, :2], lesions[2, 5:, 5:] = 1, 2
        volumes["lesions_reader"] = lesions
        if scored:
            volumes["z"] = rng.normal(size=shape).astype(np.float32)
            volumes["lesions_candidates"] = np.zeros(shape, np.int16)
        for name, array in volumes.items():
            nib.save(to_nifti(array, affine), nifti / f"slab{k}_{name}.nii.gz")
    (out / "summary.json").write_text(json.dumps(_summary(scored=scored)))
    return out


@pytest.fixture
def exam_out(tmp_path: Path) -> Path:
    return _write_exam(tmp_path / "exam")


def _read_tsv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def test_export_writes_bids_derivative_tree(exam_out: Path, tmp_path: Path) -> None:
    root = tmp_path / "bids"
    written = export_bids(exam_out, root, subject=SUBJECT, session=SESSION)

    description = json.loads((root / "dataset_description.json").read_text())
    assert description["BIDSVersion"] == "1.9.0"
    assert description["DatasetType"] == "derivative"
    assert description["GeneratedBy"][0]["Name"] == "cordt1"
    assert description["GeneratedBy"][0]["Version"]
    assert description["SourceDatasets"] == [{"URL": "urn:oid:1.2.3.4"}]
    assert "RESEARCH USE ONLY" in (root / "README").read_text()
    ignored = (root / ".bidsignore").read_text().splitlines()
    assert {"*_summary.json", "*_statmap.nii.gz", "cordt1_regions.tsv"} <= set(ignored)
    session = root / f"sub-{SUBJECT}" / f"ses-{SESSION}"
    anat = {p.name for p in (session / "anat").iterdir()}
    for k in (1, 2):
        for name in (
            "T1map",
            "desc-zscore_statmap",
            "desc-cord_mask",
            "desc-gm_mask",
            "desc-wm_mask",
            "desc-lesions_dseg",
            "desc-candidates_dseg",
        ):
            assert f"{PREFIX}_acq-slab{k}_{name}.nii.gz" in anat
            assert f"{PREFIX}_acq-slab{k}_{name}.json" in anat
        assert f"{PREFIX}_acq-slab{k}_dseg.nii.gz" in anat
        assert f"{PREFIX}_acq-slab{k}_dseg.tsv" in anat
    assert (session / f"{PREFIX}_desc-cordt1_summary.json").is_file()
    # The returned list is exactly the session's files, all of which exist.
    on_disk = {p for p in session.rglob("*") if p.is_file()}
    assert set(written) == on_disk
    # No staging folder left behind.
    assert [p.name for p in (root / f"sub-{SUBJECT}").iterdir()] == [f"ses-{SESSION}"]


def test_exported_images_keep_data_and_grid_with_t1_in_seconds(
    exam_out: Path, tmp_path: Path
) -> None:
    export_bids(exam_out, tmp_path / "bids", subject=SUBJECT, session=SESSION)
    anat = tmp_path / "bids" / f"sub-{SUBJECT}" / f"ses-{SESSION}" / "anat"
    source, source_affine = from_nifti(nib.load(exam_out / "nifti" / "slab2_t1_ms.nii.gz"))
    image = nib.load(anat / f"{PREFIX}_acq-slab2_T1map.nii.gz")
    t1_s, copy_affine = from_nifti(image)
    np.testing.assert_allclose(t1_s, source / 1000.0, rtol=1e-6)  # BIDS T1map: seconds
    np.testing.assert_allclose(copy_affine, source_affine)
    assert image.header.get_xyzt_units() == ("mm", "sec")
    labels, _ = from_nifti(nib.load(exam_out / "nifti" / "slab2_labels.nii.gz"))
    dseg = nib.load(anat / f"{PREFIX}_acq-slab2_dseg.nii.gz")
    np.testing.assert_array_equal(from_nifti(dseg)[0], labels)
    assert dseg.get_data_dtype() == np.int16
    assert dseg.header.get_xyzt_units() == ("mm", "sec")


def test_t1_and_z_sidecars_carry_units_protocol_b1_and_model(
    exam_out: Path, tmp_path: Path
) -> None:
    export_bids(exam_out, tmp_path / "bids", subject=SUBJECT, session=SESSION)
    anat = tmp_path / "bids" / f"sub-{SUBJECT}" / f"ses-{SESSION}" / "anat"
    slab1 = json.loads((anat / f"{PREFIX}_acq-slab1_T1map.json").read_text())
    assert slab1["Units"] == "s"
    assert slab1["SkullStripped"] is False
    assert slab1["RepetitionTimePreparation"] == 5.0
    assert slab1["FlipAngle"] == [4.0, 5.0]
    assert slab1["NumberShots"] == 48
    assert slab1["EstimationAlgorithm"] == "UNI + protocol lookup table"
    assert "MP2RAGE" in slab1["EstimationReference"]
    # BIDS keys only: InversionTime is one number per image in BIDS, so both inversion times
    # (and B1 correction, model, software version) are in the session summary instead.
    assert set(slab1) <= BIDS_T1MAP_KEYS
    summary = json.loads((anat.parent / f"{PREFIX}_desc-cordt1_summary.json").read_text())
    assert summary["slabs"][0]["protocol"]["ti_s"] == [0.8, 2.7]
    assert [slab["b1_corrected"] for slab in summary["slabs"]] == [False, True]
    assert summary["model"]["model_version"] == "nm-feedbeef"
    z = json.loads((anat / f"{PREFIX}_acq-slab1_desc-zscore_statmap.json").read_text())
    t1_uri = f"bids::sub-{SUBJECT}/ses-{SESSION}/anat/{PREFIX}_acq-slab1_T1map.nii.gz"
    assert z["Sources"] == [t1_uri]
    assert z["SpatialReference"] == t1_uri
    mask = json.loads((anat / f"{PREFIX}_acq-slab1_desc-cord_mask.json").read_text())
    assert (mask["Type"], mask["SpatialReference"]) == ("ROI", t1_uri)


def test_dseg_tsv_lists_every_region_code(exam_out: Path, tmp_path: Path) -> None:
    export_bids(exam_out, tmp_path / "bids", subject=SUBJECT, session=SESSION)
    anat = tmp_path / "bids" / f"sub-{SUBJECT}" / f"ses-{SESSION}" / "anat"
    rows = _read_tsv(anat / f"{PREFIX}_acq-slab1_dseg.tsv")
    assert {int(r["index"]): r["name"] for r in rows} == {
        code: info.key for code, info in REGIONS.items()
    }
    assert {r["tissue"] for r in rows} == {"gm", "wm"}
    # Every label in the image has a row.
    labels, _ = from_nifti(nib.load(anat / f"{PREFIX}_acq-slab1_dseg.nii.gz"))
    assert set(np.unique(labels[labels > 0]).tolist()) <= {int(r["index"]) for r in rows}


def test_lesion_dseg_tsv_links_each_lesion_to_the_summary(exam_out: Path, tmp_path: Path) -> None:
    export_bids(exam_out, tmp_path / "bids", subject=SUBJECT, session=SESSION)
    anat = tmp_path / "bids" / f"sub-{SUBJECT}" / f"ses-{SESSION}" / "anat"
    rows = _read_tsv(anat / f"{PREFIX}_acq-slab1_desc-lesions_dseg.tsv")
    assert [(r["index"], r["summary_id"], r["volume_mm3"]) for r in rows] == [
        ("1", "1", "2.5"),
        ("2", "2", "7.5"),
    ]
    assert _read_tsv(anat / f"{PREFIX}_acq-slab2_desc-lesions_dseg.tsv") == []


def test_summary_is_exported_without_accession_number(exam_out: Path, tmp_path: Path) -> None:
    export_bids(exam_out, tmp_path / "bids", subject=SUBJECT, session=SESSION)
    path = tmp_path / "bids" / f"sub-{SUBJECT}" / f"ses-{SESSION}"
    text = (path / f"{PREFIX}_desc-cordt1_summary.json").read_text()
    assert "ACC-SECRET-42" not in text
    assert json.loads(text)["exam"]["study_instance_uid"] == "1.2.3.4"


@pytest.mark.parametrize(
    ("subject", "session"),
    [("sub-01", SESSION), ("ab_c", SESSION), ("", SESSION), (SUBJECT, "2024-01-02"), ("ü1", "1")],
)
def test_labels_must_be_alphanumeric(
    exam_out: Path, tmp_path: Path, subject: str, session: str
) -> None:
    with pytest.raises(ValueError, match="letters and digits only"):
        export_bids(exam_out, tmp_path / "bids", subject=subject, session=session)
    assert not (tmp_path / "bids").exists()


def test_exporting_again_replaces_the_session(tmp_path: Path) -> None:
    root = tmp_path / "bids"
    export_bids(_write_exam(tmp_path / "scored"), root, subject=SUBJECT, session=SESSION)
    written = export_bids(
        _write_exam(tmp_path / "unscored", scored=False), root, subject=SUBJECT, session=SESSION
    )
    anat = root / f"sub-{SUBJECT}" / f"ses-{SESSION}" / "anat"
    assert not list(anat.glob("*statmap*")), "stale Z-map of the earlier export survived"
    assert {p for p in anat.parent.rglob("*") if p.is_file()} == set(written)
    summary = json.loads((anat.parent / f"{PREFIX}_desc-cordt1_summary.json").read_text())
    assert "model" not in summary
    # The group table holds the exam once, with the later (unscored) values.
    rows = _read_tsv(root / "cordt1_regions.tsv")
    assert len(rows) == 6  # (slab 1, slab 2, all) x (cord, C3)
    assert {r["mean_z"] for r in rows} == {"n/a"}
    description = json.loads((root / "dataset_description.json").read_text())
    assert description["SourceDatasets"] == [{"URL": "urn:oid:1.2.3.4"}]


def test_not_a_processed_exam_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no summary\.json"):
        export_bids(tmp_path, tmp_path / "bids", subject=SUBJECT, session=SESSION)
    exam = _write_exam(tmp_path / "exam")
    (exam / "nifti" / "slab2_t1_ms.nii.gz").unlink()
    with pytest.raises(ValueError, match=r"no T1 map NIfTI for slab\(s\) \[2\]"):
        export_bids(exam, tmp_path / "bids", subject=SUBJECT, session=SESSION)


def test_another_dataset_in_the_folder_is_refused(exam_out: Path, tmp_path: Path) -> None:
    root = tmp_path / "bids"
    root.mkdir()
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "raw study", "BIDSVersion": "1.9.0", "DatasetType": "raw"})
    )
    with pytest.raises(ValueError, match="not a cordt1 derivative"):
        export_bids(exam_out, root, subject=SUBJECT, session=SESSION)


def test_session_is_the_date_unless_another_study_has_it(exam_out: Path, tmp_path: Path) -> None:
    root = tmp_path / "bids"
    assert session_label("2024.01.02") == "20240102"
    assert session_label(SESSION, "093000.5", with_time=True) == "20240102T093000"
    kwargs = {"study_date": SESSION, "study_time": "093000"}
    assert choose_session(root, SUBJECT, study_uid="1.2.3.4", **kwargs) == SESSION
    export_bids(exam_out, root, subject=SUBJECT, session=SESSION)  # holds study 1.2.3.4
    assert choose_session(root, SUBJECT, study_uid="1.2.3.4", **kwargs) == SESSION
    assert choose_session(root, SUBJECT, study_uid="9.9", **kwargs) == "20240102T093000"
    assert choose_session(root, "fedcba9876543210", study_uid="9.9", **kwargs) == SESSION
    with pytest.raises(ValueError, match="no StudyTime"):
        choose_session(root, SUBJECT, study_uid="9.9", study_date=SESSION)
    with pytest.raises(ValueError, match="no StudyDate"):
        choose_session(root, SUBJECT, study_uid="9.9", study_date="")


# ---------------------------------------------------------------------------------------------
# `cordt1 process --bids-out --lesions` on a phantom exam with known lesions
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exam(tmp_path_factory: pytest.TempPathFactory) -> PhantomExam:
    return make_exams(tmp_path_factory.mktemp("cohort"), patients=1, controls=0, seed=5)[0]


SITE_SECRET = "test-site-secret-0123456789"
SITE_KEY = PseudonymKey(SITE_SECRET.encode())


def _subject(exam: PhantomExam) -> tuple[str, str]:
    """Expected subject label and the exam's PatientID."""
    header = pydicom.dcmread(next(exam.dicom_dir.rglob("*.dcm")), stop_before_pixels=True)
    key = SITE_KEY.patient_key(str(header.get("IssuerOfPatientID", "")), str(header.PatientID))
    return key, str(header.PatientID)


@pytest.fixture(scope="module")
def processed(
    exam: PhantomExam, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path, Path]:
    """One CLI run with --bids-out and a folder of the truth lesion masks as --lesions."""
    work = tmp_path_factory.mktemp("processed")
    lesions = work / "reader"
    lesions.mkdir()
    for path in exam.truth_dir.glob("slab*_lesions.nii.gz"):
        shutil.copy(path, lesions / path.name)
    argv = ["process", str(exam.dicom_dir), "--out", str(work / "out")]
    argv += ["--site-protocols", str(exam.site_protocols)]
    argv += ["--bids-out", str(work / "bids"), "--lesions", str(lesions)]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CORDT1_PSEUDONYM_SECRET", SITE_SECRET)
        patch.chdir(work)  # the default data_dir, should anything land there
        assert main(argv) == 0
    return work / "out" / exam.study_uid, work / "bids", lesions


def test_process_bids_out_exports_the_exam(
    exam: PhantomExam, processed: tuple[Path, Path, Path]
) -> None:
    out_dir, bids, _ = processed
    key, patient_id = _subject(exam)
    summary = json.loads((out_dir / "summary.json").read_text())
    subjects = [p.name for p in bids.iterdir() if p.is_dir()]
    assert subjects == [f"sub-{key}"]
    assert patient_id not in "".join(str(p) for p in bids.rglob("*"))
    # keyed with the site secret: not a bare SHA-256 anyone could recompute from the ID
    for raw in (patient_id, f"\\{patient_id}"):
        assert hashlib.sha256(raw.encode()).hexdigest()[:16] != key
    session = bids / f"sub-{key}" / f"ses-{summary['exam']['study_date']}"
    prefix = f"sub-{key}_ses-{summary['exam']['study_date']}"
    for k in (1, 2):
        t1, affine = from_nifti(nib.load(session / "anat" / f"{prefix}_acq-slab{k}_T1map.nii.gz"))
        ours, our_affine = from_nifti(nib.load(out_dir / "nifti" / f"slab{k}_t1_ms.nii.gz"))
        np.testing.assert_allclose(t1 * 1000.0, ours, rtol=1e-6)
        np.testing.assert_allclose(affine, our_affine)
        sidecar = json.loads((session / "anat" / f"{prefix}_acq-slab{k}_T1map.json").read_text())
        assert sidecar["Units"] == "s"
        protocol = summary["slabs"][k - 1]["protocol"]
        assert sidecar["RepetitionTimePreparation"] == protocol["tr_mp2rage_s"]
        assert sidecar["FlipAngle"] == protocol["flip_deg"]
    exported = json.loads((session / f"{prefix}_desc-cordt1_summary.json").read_text())
    assert exported["exam"]["study_instance_uid"] == exam.study_uid
    assert "accession_number" not in exported["exam"]


def _validator() -> Path:
    """The BIDS validator (PyPI ``bids-validator-deno``, in the ``test`` extra)."""
    found = shutil.which("bids-validator-deno") or shutil.which(
        "bids-validator-deno", path=str(Path(sys.executable).parent)
    )
    if found is None:
        pytest.fail("bids-validator-deno not found: install the project's test extra")
    return Path(found)


def _validate(bids_root: Path) -> list[dict[str, Any]]:
    """Every issue the BIDS validator reports on ``bids_root`` (its ``--format json``)."""
    run = subprocess.run(
        [str(_validator()), "--format", "json", str(bids_root)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    try:
        report = json.loads(run.stdout)
    except ValueError:
        pytest.fail(f"validator gave no JSON (exit {run.returncode}): {run.stderr[-2000:]}")
    return list(report["issues"]["issues"])


def _describe(issue: dict[str, Any]) -> str:
    message = str(issue.get("issueMessage", "")).strip().splitlines()
    return f"{issue['code']}/{issue.get('subCode', '-')} at {issue.get('location', '?')}" + (
        f": {message[0]}" if message else ""
    )


@pytest.mark.slow
def test_process_bids_out_passes_the_bids_validator(processed: tuple[Path, Path, Path]) -> None:
    _, bids, _ = processed
    issues = _validate(bids)
    errors = [_describe(i) for i in issues if i.get("severity") == "error"]
    assert errors == [], "BIDS validator errors:\n" + "\n".join(errors)
    # The only warning left: dataset_description.json names no authors (the site adds them).
    warnings = sorted({i["code"] for i in issues if i.get("severity") == "warning"})
    assert warnings == ["TOO_FEW_AUTHORS"], [_describe(i) for i in issues]


@pytest.mark.slow
def test_scored_export_with_lesions_passes_the_bids_validator(
    exam_out: Path, tmp_path: Path
) -> None:
    """Z-map, reader lesions and candidates too (the phantom CLI run above is not scored)."""
    export_bids(exam_out, tmp_path / "bids", subject=SUBJECT, session=SESSION)
    errors = [_describe(i) for i in _validate(tmp_path / "bids") if i["severity"] == "error"]
    assert errors == [], "BIDS validator errors:\n" + "\n".join(errors)


def test_process_bids_out_writes_the_group_table(
    exam: PhantomExam, processed: tuple[Path, Path, Path]
) -> None:
    out_dir, bids, _ = processed
    key, _ = _subject(exam)
    summary = json.loads((out_dir / "summary.json").read_text())
    rows = _read_tsv(bids / "cordt1_regions.tsv")
    assert {(r["subject"], r["study_instance_uid"]) for r in rows} == {(key, exam.study_uid)}
    assert {r["session"] for r in rows} == {summary["exam"]["study_date"]}
    slab2_wm = next(r for r in rows if (r["slab"], r["region"], r["level"]) == ("2", "wm", "n/a"))
    assert float(slab2_wm["median_t1_ms"]) == summary["slabs"][1]["regions"]["wm"]["median_t1_ms"]
    columns = json.loads((bids / "cordt1_regions.json").read_text())
    assert list(columns) == list(rows[0])
    # The same table next to the outputs.
    assert _read_tsv(out_dir.parent / "cordt1_regions.tsv") == rows


def test_process_lesions_become_reader_lesions_with_true_volumes(
    exam: PhantomExam, processed: tuple[Path, Path, Path]
) -> None:
    out_dir, bids, _ = processed
    truth = json.loads((exam.truth_dir / "truth.json").read_text())["lesions"]
    summary = json.loads((out_dir / "summary.json").read_text())
    reader = [les for les in summary["lesions"] if les["source"] == "reader"]
    expected = sorted((les["slab"], les["volume_mm3"]) for les in truth)
    assert sorted((les["slab"], les["volume_mm3"]) for les in reader) == [
        (slab, pytest.approx(volume, abs=0.01)) for slab, volume in expected
    ]
    assert summary["lesion_summary"]["count"] == len(truth)
    # The reader masks reach the research export voxel for voxel.
    masks = sorted(bids.rglob("*_desc-lesions_dseg.nii.gz"))
    assert len(masks) == 2
    for k, mask in enumerate(masks, start=1):
        assert f"acq-slab{k}_" in mask.name
        exported, _ = from_nifti(nib.load(mask))
        true, _ = from_nifti(nib.load(exam.truth_dir / f"slab{k}_lesions.nii.gz"))
        np.testing.assert_array_equal(exported > 0, true > 0)


def _shifted(source: Path, target: Path, shift_mm: float) -> Path:
    image = nib.load(source)
    affine = image.affine.copy()
    affine[2, 3] += shift_mm
    nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj), affine), target)
    return target


def test_lesion_mask_on_no_slab_grid_is_a_clear_error(
    exam: PhantomExam, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mask = _shifted(exam.truth_dir / "slab1_lesions.nii.gz", tmp_path / "lesions.nii.gz", 50.0)
    argv = ["process", str(exam.dicom_dir), "--out", str(tmp_path / "out")]
    argv += ["--site-protocols", str(exam.site_protocols), "--lesions", str(mask)]
    assert main(argv) == 1
    output = capsys.readouterr().out
    assert "FAILED" in output
    assert "lesions.nii.gz matches no slab" in output
    assert "differs from the grid of series" in output


def test_lesion_mask_named_for_another_slab_is_a_clear_error(
    exam: PhantomExam, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mask = tmp_path / "slab1_lesions.nii.gz"
    shutil.copy(exam.truth_dir / "slab2_lesions.nii.gz", mask)
    argv = ["process", str(exam.dicom_dir), "--out", str(tmp_path / "out")]
    argv += ["--site-protocols", str(exam.site_protocols), "--lesions", str(mask)]
    assert main(argv) == 1
    assert "named for slab 1 but lies on the grid of slab(s) [2]" in capsys.readouterr().out


def test_lesions_need_a_single_exam(
    exam: PhantomExam, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "two-exams"
    shutil.copytree(exam.dicom_dir, folder / "first")
    # A second study: one series of the exam copied under a new StudyInstanceUID.
    for index, path in enumerate(sorted(exam.dicom_dir.rglob("*UNI_slab1/*.dcm"))):
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
        ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.2"
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.3.{index + 1}"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        (folder / "second").mkdir(exist_ok=True)
        ds.save_as(folder / "second" / path.name)
    argv = ["process", str(folder), "--out", str(tmp_path / "out")]
    argv += ["--lesions", str(exam.truth_dir / "slab1_lesions.nii.gz")]
    assert main(argv) == 1
    assert "exactly one exam; it holds 2" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# The service worker exports when `bids_dir` is set
# ---------------------------------------------------------------------------------------------


def _queued_job(exam: PhantomExam, store: JobStore) -> int:
    series: set[str] = set()
    files = sorted(exam.dicom_dir.rglob("*.dcm"))
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        series.add(str(ds.SeriesInstanceUID))
        store.record_instance(
            sop_instance_uid=str(ds.SOPInstanceUID),
            study_uid=str(ds.StudyInstanceUID),
            series_uid=str(ds.SeriesInstanceUID),
            component=str(classify(ds)),
            path=str(path),
            calling_ae="SCANNER",
            received_at=0.0,
            own_result=False,
            info={},
        )
    return store.create_job(
        study_uid=exam.study_uid,
        patient_key=_subject(exam)[0],
        series_uids=sorted(series),
        n_instances=len(files),
        complete=True,
    )


def _run_job(exam: PhantomExam, tmp_path: Path, bids_dir: Path) -> tuple[JobState, str]:
    store = JobStore(f"sqlite:///{tmp_path / 'jobs.sqlite'}")
    try:
        settings = Settings(
            data_dir=tmp_path / "data",
            site_protocols=exam.site_protocols,
            bids_dir=bids_dir,
            pseudonym_secret=SITE_SECRET,
        )
        job_id = _queued_job(exam, store)
        JobRunner(settings, store).process(job_id)
        job = store.get_job(job_id)
        return job.state, job.error
    finally:
        store.close()


@pytest.mark.slow
def test_worker_exports_bids_when_configured(exam: PhantomExam, tmp_path: Path) -> None:
    bids = tmp_path / "bids"
    state, error = _run_job(exam, tmp_path, bids)
    assert (state, error) == (JobState.DONE, "")
    key, _ = _subject(exam)
    assert len(list(bids.glob(f"sub-{key}/ses-*/anat/*_acq-slab2_T1map.nii.gz"))) == 1
    # The group table at the BIDS root grows as exams arrive; the same exam again (another
    # worker, another job) replaces its rows instead of adding them twice.
    rows = _read_tsv(bids / "cordt1_regions.tsv")
    assert rows and {r["study_instance_uid"] for r in rows} == {exam.study_uid}
    (tmp_path / "again").mkdir()
    assert _run_job(exam, tmp_path / "again", bids) == (JobState.DONE, "")
    assert _read_tsv(bids / "cordt1_regions.tsv") == rows


@pytest.mark.slow
def test_worker_fails_the_job_when_the_export_fails(exam: PhantomExam, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the BIDS folder should be")
    state, error = _run_job(exam, tmp_path, blocker)
    assert state is JobState.FAILED
    assert (
        error
        == f"BIDS export to {blocker} failed: BIDS folder {blocker} exists and is not a folder"
    )
