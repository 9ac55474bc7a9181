"""What the whole-service benchmarks share: a phantom exam to send, and `cordt1 serve` started.

Used by :mod:`benchmarks.bench_soak`, :mod:`benchmarks.bench_load` and
:mod:`benchmarks.bench_throughput`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from service.phantom import PhantomOptions, write_cohort

__all__ = ["one_patient_exam", "start_serve"]


def one_patient_exam(folder: Path, options: PhantomOptions, *, seed: int = 5) -> Path:
    """Write one phantom patient exam under ``folder``; the folder of its DICOM files.

    The site protocol profile the exam needs is ``folder/site-protocols.toml``.
    """
    write_cohort(folder, controls=0, patients=1, follow_up=False, seed=seed, options=options)
    return next(folder.glob("*/exam-1/dicom"))


def start_serve(config: Path, log_path: Path) -> subprocess.Popen[bytes]:
    """Start `cordt1 serve` with ``config``, its output appended to ``log_path``."""
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "service.cli", "--config", str(config), "serve"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
