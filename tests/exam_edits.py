"""Copies of a phantom exam's series, some left out, some rewritten (no tests here)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

#: ``edit(series folder name, dataset)``: changes one file's data set in place.
Edit = Callable[[str, Dataset], None]


def copy_exam_series(
    source: Path, target: Path, keep: tuple[str, ...], edit: Edit | None = None
) -> Path:
    """Copy the series folders of ``source`` whose names contain one of ``keep`` to ``target``.

    Every copied file is rewritten with ``edit`` when one is given. Returns ``target``.
    """
    for folder in sorted(source.iterdir()):
        if not any(k in folder.name for k in keep):
            continue
        shutil.copytree(folder, target / folder.name)
        if edit is None:
            continue
        for path in sorted((target / folder.name).glob("*.dcm")):
            ds = pydicom.dcmread(path)
            edit(folder.name, ds)
            ds.save_as(path)
    return target
