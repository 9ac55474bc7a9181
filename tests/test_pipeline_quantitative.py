"""The quantitative pipeline on phantom cohorts: model build, scoring, lesions, follow-up,
and the bad inputs that must end an exam with a clear error."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from service.cli import main
from service.inputs.exam import ExamError, find_exam_series
from service.inputs.nifti import from_nifti
from service.inputs.protocol import load_site_protocols
from service.pipeline.identity import result_identity
from service.pipeline.model_build import build_model, load_scoring_model
from service.pipeline.run import process_exam
from service.settings import Settings
from tests.service_harness import PhantomExam, make_exams

pytestmark = pytest.mark.slow

REQUIRED_KEYS = {"t1_ms", "abnormal_percent", "mean_z", "z_threshold", "lesions", "model", "qc"}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[PhantomExam]]:
    root = tmp_path_factory.mktemp("cohort")
    exams = make_exams(root / "controls", controls=5, patients=0, seed=31)
    patients = make_exams(root / "patients", controls=0, patients=2, seed=32)
    return root, exams + patients


@pytest.fixture(scope="module")
def model_dir(cohort: tuple[Path, list[PhantomExam]]) -> Path:
    root, exams = cohort
    out = root / "model"
    build_model(
        root / "controls",
        out,
        profiles=load_site_protocols(exams[0].site_protocols),
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    return out


def _score(exam: PhantomExam, model_dir: Path | None, out: Path, **kwargs: object) -> dict:
    series = find_exam_series(sorted(exam.dicom_dir.rglob("*.dcm")))[exam.study_uid]
    outputs = process_exam(
        series,
        out,
        profiles=load_site_protocols(exam.site_protocols),
        identity=result_identity(Settings()),
        model=load_scoring_model(model_dir) if model_dir else None,
        **kwargs,  # type: ignore[arg-type]
    )
    return outputs.summary


def test_model_directory_is_versioned_and_reloadable(model_dir: Path) -> None:
    scoring = load_scoring_model(model_dir)
    assert scoring.metadata.n_controls == 5
    assert scoring.metadata.model_version.startswith("nm-")
    assert scoring.metadata.protocol_name == "mp2rage_cspine_0.3"
    assert scoring.n_slabs == 2
    prior = model_dir / "gm_prior.npz"
    prior.write_bytes(prior.read_bytes() + b"x")
    with pytest.raises(ValueError, match="GM prior does not belong"):
        load_scoring_model(model_dir)
    prior.write_bytes(prior.read_bytes()[:-1])


def test_patient_summary_has_the_output_contract(
    cohort: tuple[Path, list[PhantomExam]], model_dir: Path, tmp_path: Path
) -> None:
    patient = cohort[1][-1]
    summary = _score(patient, model_dir, tmp_path)
    assert set(summary) >= REQUIRED_KEYS
    for key in ("cord", "wm", "gm", "wm_dorsal_columns", "gm_ventral_horns_left"):
        assert key in summary["t1_ms"] and key in summary["abnormal_percent"]
    assert summary["qc"]["verdict"] in ("pass", "warn")
    for lesion in summary["lesions"]:
        assert lesion["source"] == "candidate"
        for field in (
            "volume_mm3",
            "extent_mm",
            "location",
            "composition",
            "gm_percent",
            "mean_t1_ms",
            "side",
            "level",
        ):
            assert field in lesion
    for name in ("t1_ms", "z", "cord", "gm", "wm", "labels", "lesions_candidates"):
        assert (tmp_path / "nifti" / f"slab1_{name}.nii.gz").exists()
    _check_per_slab_regions(summary)
    _check_report_regions(summary, tmp_path / "dicom" / "report_sr.dcm")
    # The largest truth lesion is found by an automatic candidate.
    truth = json.loads((patient.truth_dir / "truth.json").read_text())
    biggest = max(truth["lesions"], key=lambda lesion: lesion["volume_mm3"])
    slab = biggest["slab"]
    truth_labels, _ = from_nifti(nib.load(patient.truth_dir / f"slab{slab}_lesions.nii.gz"))
    found, _ = from_nifti(nib.load(tmp_path / "nifti" / f"slab{slab}_lesions_candidates.nii.gz"))
    assert np.any(found[truth_labels == biggest["id"]] > 0)


def _check_per_slab_regions(summary: dict) -> None:
    """Each slab's own region statistics add up to the exam's (pooled) ones."""
    slabs = summary["slabs"]
    assert len(slabs) == 2
    for key, pooled in summary["regions"].items():
        own = [entry["regions"].get(key) for entry in slabs]
        assert sum(block["voxels"] for block in own if block) == pooled["voxels"], key
    cord_t1 = [entry["regions"]["cord"]["mean_t1_ms"] for entry in slabs]
    assert min(cord_t1) - 0.1 <= summary["regions"]["cord"]["mean_t1_ms"] <= max(cord_t1) + 0.1


def _check_report_regions(summary: dict, sr_path: Path) -> None:
    """Per-slab SR groups carry their slab's values and SEG; the pooled ones the exam's."""
    from tests.test_reports_sr import expected_values, region_values, report_of

    report = report_of(pydicom.dcmread(sr_path))
    per_slab: set[str] = set()
    for group in report.get_volumetric_roi_measurement_groups():
        text = group.tracking_identifier
        if not text.startswith("Region "):
            continue
        key, slab_text = text.removeprefix("Region ").split(", slab ")
        entry = summary["slabs"][int(slab_text.split(" of ")[0]) - 1]
        assert region_values(group) == expected_values(entry["regions"][key]), text
        segment = group.referenced_segment
        # the cord is in the clinical SEG, the tissues and regions in the anatomy SEG
        layer = "seg_sop_instance_uid" if key == "cord" else "anatomy_seg_sop_instance_uid"
        assert segment.referenced_sop_instance_uid == entry[layer], text
        per_slab.add(key)
    pooled: set[str] = set()
    for group in report.get_image_measurement_groups():
        key = group.tracking_identifier.removeprefix("Region ").removesuffix(", all slabs")
        assert region_values(group) == expected_values(summary["regions"][key]), key
        pooled.add(key)
    assert {"cord", "wm", "gm", "gm_ventral_horns_left"} <= pooled == per_slab


def test_patients_have_more_abnormal_cord_than_a_control(
    cohort: tuple[Path, list[PhantomExam]], model_dir: Path, tmp_path: Path
) -> None:
    control = cohort[1][0]
    control_summary = _score(control, model_dir, tmp_path / "c")
    patients = [e for e in cohort[1] if e.dicom_dir.is_relative_to(cohort[0] / "patients")]
    assert len(patients) == 2
    for i, patient in enumerate(patients):
        patient_summary = _score(patient, model_dir, tmp_path / f"p{i}")
        assert (
            patient_summary["abnormal_percent"]["cord"]
            > control_summary["abnormal_percent"]["cord"]
        )


@pytest.mark.xfail(
    strict=True,
    reason="known limit on real anatomy: with a model of 5 controls the mean cord Z of single "
    "subjects spreads by about +-0.3 (controls -0.29..+0.38), as much as a 5 % diffuse T1 rise "
    "moves it, so one patient (diffuse rise 5.4 %, one lesion) scores below one control; the "
    "cohort benchmark (benchmarks/validate_pipeline) measures the separation (AUC) instead",
)
def test_every_patient_has_a_higher_mean_cord_z_than_a_control(
    cohort: tuple[Path, list[PhantomExam]], model_dir: Path, tmp_path: Path
) -> None:
    control_summary = _score(cohort[1][0], model_dir, tmp_path / "c")
    patient_summary = _score(cohort[1][-1], model_dir, tmp_path / "p")
    assert patient_summary["mean_z"]["cord"] > control_summary["mean_z"]["cord"]


def test_other_protocol_is_refused(model_dir: Path, tmp_path: Path) -> None:
    other = make_exams(tmp_path / "other", seed=33, protocol="siemens-7t-cspine-tr6")[0]
    with pytest.raises(ExamError, match="TI1"):
        _score(other, model_dir, tmp_path / "out")


def test_missing_slab_is_refused(
    cohort: tuple[Path, list[PhantomExam]], model_dir: Path, tmp_path: Path
) -> None:
    exam = cohort[1][-1]
    copy = tmp_path / "exam"
    shutil.copytree(exam.root, copy)
    for folder in (copy / "dicom").glob("*slab2"):
        shutil.rmtree(folder)
    cut = PhantomExam(copy, copy / "dicom", copy / "truth", exam.study_uid, exam.site_protocols)
    with pytest.raises(ExamError, match="slab"):
        _score(cut, model_dir, tmp_path / "out")


def test_exam_without_a_cord_is_a_clear_error(
    cohort: tuple[Path, list[PhantomExam]], tmp_path: Path
) -> None:
    exam = cohort[1][0]
    copy = tmp_path / "exam"
    shutil.copytree(exam.root, copy)
    for path in (copy / "dicom").rglob("*.dcm"):
        ds = pydicom.dcmread(path)
        ds.PixelData = np.full(ds.pixel_array.shape, 2000, ds.pixel_array.dtype).tobytes()
        ds.save_as(path)
    blank = PhantomExam(copy, copy / "dicom", copy / "truth", exam.study_uid, exam.site_protocols)
    with pytest.raises(ExamError, match="no spinal cord found"):
        _score(blank, None, tmp_path / "out")


def test_follow_up_compares_with_the_earlier_exam(model_dir: Path, tmp_path: Path) -> None:
    from service.phantom import write_cohort
    from tests.service_harness import SMALL_EXAM

    write_cohort(
        tmp_path / "fu", controls=0, patients=1, follow_up=True, seed=34, options=SMALL_EXAM
    )
    out = tmp_path / "out"
    argv = ["process", str(tmp_path / "fu"), "--out", str(out), "--model", str(model_dir)]
    argv += ["--site-protocols", str(tmp_path / "fu" / "site-protocols.toml")]
    assert main(argv) == 0
    summaries = [json.loads(p.read_text()) for p in out.glob("*/summary.json")]
    summaries.sort(key=lambda s: s["exam"]["study_date"])
    assert "follow_up" not in summaries[0]
    follow_up = summaries[1]["follow_up"]
    assert follow_up["compared"] is True
    assert follow_up["prior_study_instance_uid"] == summaries[0]["exam"]["study_instance_uid"]
    assert follow_up["trend"] in ("worse", "stable", "better")
    assert "cord" in follow_up["regions"]
    assert isinstance(follow_up["lesions"], list)
    # The follow-up reaches the radiologist: the SR is written and a trend chart is drawn.
    assert summaries[1]["sr_sop_instance_uid"]
    assert any("trend" in name for name in summaries[1]["rendered"]["figures"])


def test_model_build_needs_three_controls_of_one_protocol(
    cohort: tuple[Path, list[PhantomExam]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    two = tmp_path / "two"
    for exam in cohort[1][:2]:
        shutil.copytree(exam.dicom_dir, two / exam.study_uid)
    argv = ["model", "build", str(two), "--out", str(tmp_path / "m")]
    argv += ["--site-protocols", str(cohort[1][0].site_protocols)]
    assert main(argv) == 1
    assert "at least 3" in capsys.readouterr().err


def test_reader_lesions_sent_as_seg_are_characterised(
    cohort: tuple[Path, list[PhantomExam]], model_dir: Path, tmp_path: Path
) -> None:
    from service.inputs.exam import match_slabs
    from tests.test_reader_lesions import _one_hot, _seg

    patient = cohort[1][-1]
    copy = tmp_path / "exam"
    shutil.copytree(patient.root, copy)
    series = find_exam_series(sorted((copy / "dicom").rglob("*.dcm")))[patient.study_uid]
    truth = json.loads((patient.truth_dir / "truth.json").read_text())
    for slab in match_slabs(series):
        labels, _ = from_nifti(nib.load(copy / "truth" / f"slab{slab.index}_lesions.nii.gz"))
        ids = sorted(int(v) for v in np.unique(labels) if v)
        if ids:
            seg = _seg(slab.reference, _one_hot(labels, ids))
            seg.save_as(copy / "dicom" / f"reader_seg_slab{slab.index}.dcm")
    exam = PhantomExam(
        copy, copy / "dicom", copy / "truth", patient.study_uid, patient.site_protocols
    )
    summary = _score(exam, model_dir, tmp_path / "out")
    reader = [lesion for lesion in summary["lesions"] if lesion["source"] == "reader"]
    by_volume = {round(les["volume_mm3"], 1): les for les in reader}
    assert sorted(by_volume) == sorted(round(t["volume_mm3"], 1) for t in truth["lesions"])
    for expected in truth["lesions"]:
        found = by_volume[round(expected["volume_mm3"], 1)]
        assert found["extent_mm"] == pytest.approx(expected["extent_mm"])
        assert found["mean_t1_ms"] > 1.15 * summary["t1_ms"]["wm"]
        if expected["composition"] == "mixed":  # GM involvement is never missed
            assert found["composition"] == "mixed"
    assert summary["lesion_summary"]["source"] == "reader"
    assert all(les["segment_number"] for les in reader)


@pytest.mark.parametrize("processes", [1, 2])
def test_a_failing_writer_fails_the_exam_with_a_clear_error(
    cohort: tuple[Path, list[PhantomExam]],
    model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    processes: int,
) -> None:
    import service.pipeline.result_writer

    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("disk quota exceeded")

    monkeypatch.setattr(service.pipeline.result_writer, "build_measurement_report", broken)
    with pytest.raises(ExamError, match=r"writing the structured report failed.*disk quota"):
        _score(cohort[1][-1], model_dir, tmp_path / "out", writer_processes=processes)


def test_a_writing_helper_that_dies_fails_the_exam(
    cohort: tuple[Path, list[PhantomExam]],
    model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import os
    import signal

    import service.pipeline.result_writer

    parent = os.getpid()
    for name in (
        "build_parametric_map",
        "build_segmentation",
        "build_measurement_report",
        "render_exam_figures",
    ):
        real = getattr(service.pipeline.result_writer, name)

        def killed_in_helper(*args: object, _real: object = real, **kwargs: object) -> object:
            if os.getpid() != parent:  # out of memory, say
                os.kill(os.getpid(), signal.SIGKILL)
            return _real(*args, **kwargs)  # type: ignore[operator]

        monkeypatch.setattr(service.pipeline.result_writer, name, killed_in_helper)
    with pytest.raises(ExamError, match=r"helper process died \(killed by signal 9"):
        _score(cohort[1][-1], model_dir, tmp_path / "out", writer_processes=2)


def test_results_written_by_two_processes_reference_each_other(
    cohort: tuple[Path, list[PhantomExam]], model_dir: Path, tmp_path: Path
) -> None:
    """The report lists the SEGs and maps written in the other process, by their real UIDs."""
    summary = _score(cohort[1][-1], model_dir, tmp_path, writer_processes=2, write_nifti=False)
    assert not (tmp_path / "nifti").exists() and summary["outputs"]["nifti"] == []
    written = {
        path.name: pydicom.dcmread(path, stop_before_pixels=True)
        for path in sorted((tmp_path / "dicom").glob("*.dcm"))
    }
    assert sorted(written) == sorted(summary["outputs"]["dicom"])
    uids = {name: str(ds.SOPInstanceUID) for name, ds in written.items()}
    for k, entry in enumerate(summary["slabs"], start=1):
        assert uids[f"t1map_slab{k}.dcm"] == entry["result_sop_instance_uid"]
        assert uids[f"zmap_slab{k}.dcm"] == entry["z_sop_instance_uid"]
        assert uids[f"seg_slab{k}.dcm"] == entry["seg_sop_instance_uid"]
        labels = {
            str(item.SegmentLabel): int(item.SegmentNumber)
            for item in written[f"seg_slab{k}.dcm"].SegmentSequence
        }
        assert labels == entry["segment_numbers"]
        assert uids[f"seg_anatomy_slab{k}.dcm"] == entry["anatomy_seg_sop_instance_uid"]
    assert uids["report_sr.dcm"] == summary["sr_sop_instance_uid"]
    assert uids["report_pdf.dcm"] == summary["rendered"]["pdf_sop_instance_uid"]
    captures = [uids[name] for name in sorted(written) if name.endswith("_sc.dcm")]
    assert captures == summary["rendered"]["sc_sop_instance_uids"]
    sr = written["report_sr.dcm"]
    evidence = {
        str(item.ReferencedSOPInstanceUID): str(item.ReferencedSOPClassUID)
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    for name in (
        "t1map_slab1.dcm",
        "zmap_slab2.dcm",
        "seg_slab1.dcm",
        "seg_slab2.dcm",
        "seg_anatomy_slab2.dcm",
    ):
        assert evidence[uids[name]] == str(written[name].SOPClassUID), name
    _check_report_regions(summary, tmp_path / "dicom" / "report_sr.dcm")


def test_every_result_object_of_a_scored_exam_passes_dciodvfy(
    cohort: tuple[Path, list[PhantomExam]], model_dir: Path, tmp_path: Path
) -> None:
    import subprocess

    _score(cohort[1][-1], model_dir, tmp_path, writer_processes=2)
    files = sorted((tmp_path / "dicom").glob("*.dcm"))
    kinds = {path.name.split("_")[0] for path in files}
    assert {"t1map", "zmap", "seg", "report"} <= kinds
    for path in files:
        out = subprocess.run(["dciodvfy", "-new", str(path)], capture_output=True, text=True)
        errors = [x for x in (out.stdout + out.stderr).splitlines() if x.startswith("Error")]
        assert errors == [], (path.name, errors)


def _blank(
    exam: PhantomExam, out: Path, *, slab: int | None = None, slice_k: int = 0
) -> PhantomExam:
    """A copy of ``exam`` whose images hold no cord: all of them, or one slice of one slab."""
    shutil.copytree(exam.root, out)
    for path in (out / "dicom").rglob("*.dcm"):
        ds = pydicom.dcmread(path)
        if slab is not None:
            if not path.parent.name.endswith(f"slab{slab}"):
                continue
            positions = sorted(
                float(p.ImagePositionPatient[2])
                for p in map(pydicom.dcmread, path.parent.glob("*.dcm"))
            )
            if float(ds.ImagePositionPatient[2]) != positions[slice_k]:
                continue
        value = int(np.median(ds.pixel_array))
        ds.PixelData = np.full(ds.pixel_array.shape, value, ds.pixel_array.dtype).tobytes()
        ds.save_as(path)
    return PhantomExam(out, out / "dicom", out / "truth", exam.study_uid, exam.site_protocols)


def test_slices_without_a_cord_are_named_in_summary_qc_report_and_pdf(
    cohort: tuple[Path, list[PhantomExam]], model_dir: Path, tmp_path: Path
) -> None:
    exam = _blank(cohort[1][-1], tmp_path / "exam", slab=2, slice_k=0)
    summary = _score(exam, model_dir, tmp_path / "out")
    inferior_first = summary["slabs"][1]["cord_missing_slices"]
    assert len(inferior_first) == 1
    coverage = summary["coverage"]
    assert coverage["missing_slices"] == {"2": inferior_first}
    assert coverage["cord_slices_found"] == coverage["slices"] - 1
    named = f"slab 2: slice {inferior_first[0]}"
    assert named in coverage["statement"]
    assert any(named in reason for reason in summary["qc"]["reasons"])
    sr = pydicom.dcmread(tmp_path / "out" / "dicom" / "report_sr.dcm")
    texts = [
        item.TextValue
        for container in sr.ContentSequence
        for item in getattr(container, "ContentSequence", [])
        if "TextValue" in item
    ]
    assert coverage["statement"] in texts
    pdfs = sorted((tmp_path / "out" / "figures").glob("*.pdf"))
    assert pdfs
    import subprocess

    text = subprocess.run(
        ["pdftotext", "-layout", str(pdfs[0]), "-"], capture_output=True, text=True, check=True
    ).stdout
    assert "Numbers rest on" in text and named in " ".join(text.split())


def test_model_build_leaves_out_controls_that_fail_qc_and_refuses_too_few(
    cohort: tuple[Path, list[PhantomExam]], tmp_path: Path
) -> None:
    root, exams = cohort
    controls = [e for e in exams if e.dicom_dir.is_relative_to(root / "controls")]
    folder = tmp_path / "controls"
    for i, exam in enumerate(controls[:3]):
        shutil.copytree(exam.root, folder / f"control{i}")
    bad = _blank(controls[3], folder / "blank")
    metadata = build_model(
        folder,
        tmp_path / "model",
        profiles=load_site_protocols(bad.site_protocols),
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    assert metadata.n_controls == 3
    excluded = metadata.extra["excluded_controls"]
    assert [e["study_instance_uid"] for e in excluded] == [bad.study_uid]
    assert any("no spinal cord" in r or "no cord found" in r for r in excluded[0]["reasons"])
    assert load_scoring_model(tmp_path / "model").metadata.extra["excluded_controls"] == excluded

    shutil.rmtree(folder / "control0")
    with pytest.raises(ExamError, match=rf"only 2 of 3 controls pass QC.*{bad.study_uid}"):
        build_model(
            folder,
            tmp_path / "model2",
            profiles=load_site_protocols(bad.site_protocols),
            created_at=datetime(2026, 1, 1, tzinfo=UTC),
        )


def test_what_a_reader_sees_in_a_viewer(
    cohort: tuple[Path, list[PhantomExam]], model_dir: Path, tmp_path: Path
) -> None:
    """Descriptions, one lesion numbering, SR groups on UNI images, T1/Z as MR images."""
    from reports.derived_image import decode_values
    from reports.identity import DEFAULT_RESEARCH_USE_TEXT
    from reports.segmentation import lesion_label

    patient = cohort[1][-1]
    summary = _score(patient, model_dir, tmp_path, write_nifti=False)
    files = sorted((tmp_path / "dicom").glob("*.dcm"))
    headers = {path.name: pydicom.dcmread(path, stop_before_pixels=True) for path in files}
    # Every description fits, ends with the research text, names the slab where per-slab and
    # is built of whole words of the planned text (never cut mid-word).
    planned = {  # file name prefix -> description before the research text
        "t1map": "T1 param map slab {k}",
        "zmap": "Z param map slab {k}",
        "t1img": "cordt1 T1 map ms slab {k}",
        "zimg": "Z-score map slab {k}",
        "seg_anatomy": "GM WM regions seg slab {k}",
        "seg": "Cord lesions seg slab {k}",
        "report_sr": "T1 measurement report",
        "report_pdf": "cordt1 report (PDF)",
        "figure": "cordt1 report figures",
    }
    for name, ds in headers.items():
        description = str(ds.SeriesDescription)
        assert len(description) <= 64, name
        head = description.removesuffix(f" - {DEFAULT_RESEARCH_USE_TEXT}")
        assert head != description, name
        key = next(prefix for prefix in planned if name.startswith(prefix))
        k = name.split("_slab")[1][0] if "_slab" in name else ""
        expected = planned[key].format(k=k)
        assert head == expected, name
    # T1 and Z as derived MR images, one series per slab, same grid, values of the maps
    for k, entry in enumerate(summary["slabs"], start=1):
        pm = pydicom.dcmread(tmp_path / "dicom" / f"t1map_slab{k}.dcm")
        images = [
            pydicom.dcmread(p) for p in sorted((tmp_path / "dicom").glob(f"t1img_slab{k}_*"))
        ]
        assert {str(ds.SeriesInstanceUID) for ds in images} == {
            entry["t1_image_series_instance_uid"]
        }
        assert {int(ds.SeriesNumber) for ds in images} == {9110 + k}
        pm_planes = {
            tuple(
                round(float(v), 3) for v in frame.PlanePositionSequence[0].ImagePositionPatient
            ): f
            for f, frame in enumerate(pm.PerFrameFunctionalGroupsSequence)
        }
        pm_values = pm.pixel_array.reshape((-1, *pm.pixel_array.shape[-2:]))
        for image in images:
            position = tuple(round(float(v), 3) for v in image.ImagePositionPatient)
            t1 = pm_values[pm_planes[position]]
            shown = decode_values(image)
            known = t1 > 0
            assert np.max(np.abs(shown[known] - t1[known])) <= 0.5 + 1e-3
        assert len(list((tmp_path / "dicom").glob(f"zimg_slab{k}_*"))) == len(images)
    # One lesion numbering: summary ids = SEG labels = SR tracking identifiers
    seg_labels = {
        str(item.SegmentLabel)
        for name, ds in headers.items()
        if name.startswith("seg_slab")
        for item in ds.SegmentSequence
        if str(item.SegmentLabel).startswith("Lesion")
    }
    expected_labels = {lesion_label(les["id"], les["source"]) for les in summary["lesions"]}
    assert summary["lesions"] and seg_labels == expected_labels
    sr = pydicom.dcmread(tmp_path / "dicom" / "report_sr.dcm")
    (measurements,) = [
        item
        for item in sr.ContentSequence
        if item.ConceptNameCodeSequence[0].CodeValue == "126010"
    ]
    uni = {
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
        for p in patient.dicom_dir.rglob("*UNI*/*.dcm")
    }
    texts = []
    for group in measurements.ContentSequence:
        text = next(i.TextValue for i in group.ContentSequence if i.ValueType == "TEXT")
        texts.append(text)
        nums = [i for i in group.ContentSequence if i.ValueType == "NUM"]
        assert nums, text
        for num in nums:
            (point,) = [i for i in num.ContentSequence if i.ValueType == "SCOORD"]
            ref = point.ContentSequence[0].ReferencedSOPSequence[0]
            assert str(ref.ReferencedSOPInstanceUID) in uni, text
    assert {t for t in texts if t.startswith("Lesion")} == expected_labels
    # two SEGs per slab: clinical (cord, lesions, abnormal) and anatomy (GM, WM, regions)
    for entry in summary["slabs"]:
        assert set(entry["segment_numbers"]) >= {"Spinal cord"}
        assert "Grey matter" in entry["anatomy_segment_numbers"]
        assert not set(entry["segment_numbers"]) & set(entry["anatomy_segment_numbers"])
