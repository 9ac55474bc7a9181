"""The worker's warm-up before its pool forks (service.pipeline.warmup)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from service.pipeline.warmup import warm_up


def test_warm_up_builds_in_memory_only_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.INFO, logger="service.pipeline.warmup"):
        seconds = warm_up()
    assert seconds > 0
    assert os.listdir(tmp_path) == []  # nothing written, nothing that could be sent
    assert any("worker warmed up" in record.getMessage() for record in caplog.records)
    assert "WARM" not in caplog.text  # the invented patient never reaches a log
