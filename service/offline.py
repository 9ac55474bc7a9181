"""`cordt1 process`: every exam in a folder, processed without the network."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from service.exam import ExamError, find_exam_series
from service.jobs import result_identity
from service.pipeline import process_exam
from service.protocol import load_site_protocols
from service.settings import Settings

__all__ = ["FolderReport", "process_folder"]

log = logging.getLogger(__name__)


@dataclass
class FolderReport:
    """Per exam: output folder or error."""

    done: dict[str, Path] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """Human-readable lines, one per exam."""
        out = [f"done   {uid}: {path}" for uid, path in self.done.items()]
        out += [f"FAILED {uid}: {error}" for uid, error in self.failed.items()]
        if not self.done and not self.failed:
            out.append("no DICOM exam found")
        return out


def _dicom_files(folder: Path) -> list[Path]:
    files = []
    for root, _dirs, names in os.walk(folder):
        for name in names:
            path = Path(root) / name
            with path.open("rb") as fh:
                head = fh.read(132)
            if head[128:132] == b"DICM":
                files.append(path)
    return sorted(files)


def process_folder(input_dir: Path, out_dir: Path, settings: Settings) -> FolderReport:
    """Process every exam under ``input_dir`` (any folder layout) into ``out_dir/<study UID>``.

    One exam failing does not stop the others; its error is in the report.
    """
    report = FolderReport()
    profiles = load_site_protocols(settings.site_protocols)
    identity = result_identity(settings)
    for study_uid, exam in sorted(find_exam_series(_dicom_files(input_dir)).items()):
        target = out_dir / study_uid
        try:
            process_exam(exam, target, profiles=profiles, identity=identity)
        except ExamError as exc:
            log.warning("exam %s failed: %s", study_uid, exc)
            report.failed[study_uid] = str(exc)
            continue
        report.done[study_uid] = target
    return report
