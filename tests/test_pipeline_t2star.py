"""Whole exams with a T2*-weighted multi-echo GRE on its own grid: it sharpens the GM/WM split."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from service.inputs.exam import find_exam_series
from service.inputs.nifti import from_nifti
from service.inputs.protocol import load_site_protocols
from service.pipeline.identity import result_identity
from service.pipeline.run import process_exam
from service.settings import Settings
from tests.service_harness import PhantomExam, make_exams

pytestmark = pytest.mark.slow

#: Subject motion between the MP2RAGE and the GRE (LPS mm): 0.4 mm along y, -0.3 mm along x.
SHIFT_MM = (-0.3, 0.4, 0.0)


def _process(exam_dir: Path, exam: PhantomExam, out: Path) -> dict[str, Any]:
    series = find_exam_series(sorted(exam_dir.rglob("*.dcm")))[exam.study_uid]
    return process_exam(
        series,
        out,
        profiles=load_site_protocols(exam.site_protocols),
        identity=result_identity(Settings()),
    ).summary


def _gm_dice(out: Path, exam: PhantomExam) -> float:
    ours, _ = from_nifti(nib.load(out / "nifti" / "slab1_gm.nii.gz"))
    truth, _ = from_nifti(nib.load(exam.truth_dir / "slab1_gm.nii.gz"))
    ours, truth = ours.astype(bool), truth.astype(bool)
    return float(2 * (ours & truth).sum() / (ours.sum() + truth.sum()))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("t2star")
    exam = make_exams(
        root / "phantom",
        seed=17,
        slabs=1,
        slices_per_slab=8,
        t2star=True,
        t2star_shift_mm=SHIFT_MM,
    )[0]
    without = root / "without"
    shutil.copytree(exam.dicom_dir, without)
    for folder in without.glob("*T2STAR*"):
        shutil.rmtree(folder)
    return {
        "exam": exam,
        "with": _process(exam.dicom_dir, exam, root / "out-with"),
        "without": _process(without, exam, root / "out-without"),
        "dice_with": _gm_dice(root / "out-with", exam),
        "dice_without": _gm_dice(root / "out-without", exam),
    }


def test_the_gre_is_used_for_the_grey_white_split_and_said_so(runs: dict[str, Any]) -> None:
    entry = runs["with"]["slabs"][0]
    assert "t2star" in entry["components"]
    evidence = entry["gm_wm_evidence"]
    assert evidence["source"] == "T1 + T2*-weighted GRE"
    assert evidence["t2star_echo_times_ms"] == [5.0, 10.0, 15.0, 20.0]
    assert evidence["t2star_grid"] == "0.22 x 0.22 x 3 mm"
    assert evidence["t2star_cord_covered_percent"] > 95
    without = runs["without"]["slabs"][0]["gm_wm_evidence"]
    assert without["source"] == "T1"
    assert not [key for key in without if key.startswith("t2star")]
    assert set(without["gm_prior_warp"]) >= {"scale_anterior", "t1_prior_correlation"}


def test_subject_motion_between_the_series_is_found_and_undone(runs: dict[str, Any]) -> None:
    alignment = runs["with"]["slabs"][0]["gm_wm_evidence"]["t2star_alignment"]
    # axial slab: rows run along +y (posterior), columns along +x (left)
    np.testing.assert_allclose(alignment["shift_mm"], [SHIFT_MM[1], SHIFT_MM[0]], atol=0.1)
    assert alignment["correlation"] > 0.5


def test_grey_matter_outline_is_closer_to_the_truth_with_the_gre(runs: dict[str, Any]) -> None:
    assert runs["dice_with"] > runs["dice_without"] + 0.03, (
        runs["dice_with"],
        runs["dice_without"],
    )
    assert runs["dice_with"] > 0.82
