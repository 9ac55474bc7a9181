"""The README's first command: the demo runs the whole path and reports success."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from dicom_node.scu import Destination, send
from service.cli import main
from service.phantom.pacs import FolderPacs
from tests.service_harness import make_exams


@pytest.mark.slow
def test_demo_sends_an_exam_and_finds_the_results_in_the_pacs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["demo", "--workdir", str(tmp_path), "--matrix", "160", "--controls", "4"]
    assert main(argv) == 0
    output = capsys.readouterr().out
    assert "results in the PACS" in output
    assert "result objects stored in Orthanc" in output
    for kind in (
        "Parametric Map Storage",
        "Segmentation Storage",
        "Comprehensive 3D SR Storage",
        "Secondary Capture Image Storage",
        "Encapsulated PDF Storage",
    ):
        assert kind in output
    assert "abnormal voxels in the cord" in output
    # the demo's exam has no B1 map: QC says so, not only "warn"
    assert "QC note: warn: T1 is not corrected for B1+ inhomogeneity (no B1 map)" in output
    results = list((tmp_path / "service" / "results").glob("job-*/current/dicom/*.dcm"))
    assert len(results) >= 9  # 2 T1 + 2 Z maps, 2 SEG, SR, >= 2 figures, PDF


def test_folder_pacs_stands_in_when_orthanc_is_missing(tmp_path: Path) -> None:
    exam = make_exams(tmp_path / "phantom", seed=4, slabs=1, slices_per_slab=3, matrix=128)[0]
    files = sorted(exam.dicom_dir.glob("*UNI*/*.dcm"))
    pacs = FolderPacs.start(tmp_path / "pacs")
    try:
        send(files, Destination.parse(pacs.destination), calling_ae="TEST", timeout_s=30)
        expected = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
        assert pacs.sop_instance_uids(exam.study_uid) == expected
        assert str(tmp_path / "pacs") in pacs.where(exam.study_uid)
    finally:
        pacs.stop()
