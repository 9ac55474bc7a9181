"""Logging: one configuration for every command, JSON lines, rotation, checked levels."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from service.cli import cli
from service.logs import configure_logging, role_log_file


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    yield
    configure_logging("INFO")


def test_json_lines_carry_level_logger_message_and_exception(tmp_path: Path) -> None:
    log_file = tmp_path / "logs" / "cordt1.log"
    configure_logging("DEBUG", log_format="json", log_file=log_file)
    logging.getLogger("cordt1.test").info("job %d done", 7)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("cordt1.test").exception("job %d crashed", 8)
    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert [(e["level"], e["logger"], e["message"]) for e in lines] == [
        ("INFO", "cordt1.test", "job 7 done"),
        ("ERROR", "cordt1.test", "job 8 crashed"),
    ]
    assert "RuntimeError: boom" in lines[1]["exception"]
    assert lines[0]["time"].endswith("+00:00")


def test_the_file_rotates_at_the_size_and_keeps_the_count(tmp_path: Path) -> None:
    log_file = tmp_path / "cordt1.log"
    configure_logging("INFO", log_file=log_file, max_mb=0.01, backups=2)  # ~10 kB
    for i in range(400):
        logging.getLogger("cordt1.test").info("line %04d %s", i, "x" * 60)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["cordt1.log", "cordt1.log.1", "cordt1.log.2"]
    assert all(p.stat().st_size <= 10_486 + 200 for p in tmp_path.iterdir())
    assert "line 0399" in log_file.read_text()


def test_a_second_configuration_replaces_the_first(tmp_path: Path) -> None:
    configure_logging("INFO", log_file=tmp_path / "a.log")
    configure_logging("WARNING", log_file=tmp_path / "b.log")
    logging.getLogger("cordt1.test").warning("only in b")
    logging.getLogger("cordt1.test").info("not at all")
    assert not (tmp_path / "a.log").exists()
    assert (tmp_path / "b.log").read_text().count("only in b") == 1
    assert "not at all" not in (tmp_path / "b.log").read_text()


def test_worker_writes_its_own_file_beside_the_service_log() -> None:
    assert role_log_file(Path("/var/log/cordt1/cordt1.log"), "worker") == Path(
        "/var/log/cordt1/cordt1-worker.log"
    )
    assert role_log_file(Path("/x/cordt1.log"), "serve") == Path("/x/cordt1.log")


def test_unknown_levels_and_formats_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CORDT1_CONFIG", "")  # `--config` sets it; undone after the test
    with pytest.raises(ValueError, match="LOUD"):
        configure_logging("LOUD")
    runner = CliRunner()
    result = runner.invoke(cli, ["--log-level", "LOUD", "status"])
    assert result.exit_code == 2 and "'LOUD' is not one of" in result.output
    config = tmp_path / "cordt1.toml"
    config.write_text(f'data_dir = "{tmp_path}"\nlog_level = "LOUD"\n')
    result = runner.invoke(cli, ["--config", str(config), "status"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "Error: cannot start: log level 'LOUD' is not one of DEBUG, INFO, WARNING, ERROR, CRITICAL"
    ]
    config.write_text(f'data_dir = "{tmp_path}"\nlog_format = "xml"\n')
    result = runner.invoke(cli, ["--config", str(config), "status"])
    assert result.exit_code == 1 and "log_format" in result.output
