"""Nothing silent at start: each mistake an operator makes ends in one clear line, no traceback.

The CLI runs in a subprocess as an operator would start it; each test asserts a non-zero exit,
one ``Error:`` line on stderr naming the setting and saying what to do, and no traceback.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _environment() -> dict[str, str]:
    """This process's environment without cordt1 settings (conftest sets api.port 0)."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CORDT1_")}
    environment["PYTHONPATH"] = str(ROOT)
    return environment


def _cli(
    *args: str, env: dict[str, str] | None = None, timeout_s: float = 60.0
) -> subprocess.CompletedProcess[str]:
    environment = _environment()
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        capture_output=True,
        text=True,
        env=environment,
        timeout=timeout_s,
        cwd=ROOT,
    )


def _serve(tmp_path: Path, *extra: str, config: str = "") -> list[str]:
    """`serve` with a fresh data_dir, free ports, no workers; the config's extra TOML lines."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "cordt1.toml"
    if "[api]" not in config:
        config += "[api]\nport = 0\n"
    path.write_text(f'data_dir = "{tmp_path / "data"}"\nworkers = 0\n{config}')
    return ["--config", str(path), "serve", "--port", "0", "--host", "127.0.0.1", *extra]


def _one_clear_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert result.returncode != 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    assert "listening" not in result.stderr
    return errors[0]


def test_missing_site_protocols_file_stops_serve(tmp_path: Path) -> None:
    missing = tmp_path / "site.toml"
    result = _cli(*_serve(tmp_path, config=f'site_protocols = "{missing}"\n'))
    _one_clear_error(result, "site_protocols", str(missing), "not found")


def test_missing_model_dir_stops_serve(tmp_path: Path) -> None:
    result = _cli(*_serve(tmp_path, config=f'model_dir = "{tmp_path / "model"}"\n'))
    _one_clear_error(result, "model_dir", "cordt1 model build")


def test_malformed_destination_is_one_line_naming_the_setting(tmp_path: Path) -> None:
    result = _cli(*_serve(tmp_path, "--destination", "PACS-at-10.0.0.5"))
    _one_clear_error(result, "send.destinations", "AET@HOST:PORT")


def test_unreachable_redis_stops_serve(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = _cli(*_serve(tmp_path, "--broker", f"redis://127.0.0.1:{port}/0"))
    _one_clear_error(result, "broker_url", "unreachable")


def test_worker_with_an_unreachable_broker_stops(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = _cli("worker", "--data-dir", str(tmp_path), "--broker", f"redis://127.0.0.1:{port}/0")
    _one_clear_error(result, "broker_url", "unreachable")


def test_port_in_use_stops_serve(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = _cli(*_serve(tmp_path, config=f'[api]\nhost = "127.0.0.1"\nport = {port}\n'))
        _one_clear_error(result, "api.port", f"127.0.0.1:{port}", "in use")
        dicom = _cli(*_serve(tmp_path / "b", "--port", str(port)))
        _one_clear_error(dicom, "node.port", "in use")


def test_unwritable_data_dir_stops_serve(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")  # a file where a folder must be: unwritable even for root
    result = _cli("serve", "--data-dir", str(blocker / "data"), "--workers", "0", "--port", "0")
    _one_clear_error(result, "data_dir", "cannot create or write")


def test_status_on_a_fresh_machine_says_what_to_do(tmp_path: Path) -> None:
    result = _cli("status", "--data-dir", str(tmp_path / "never-used"))
    _one_clear_error(result, "data_dir", "--data-dir", "cordt1 serve")


def test_unreachable_postgresql_is_one_line_without_the_password(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"postgresql+psycopg2://cordt1:s3cret@127.0.0.1:{port}/jobs"
    result = _cli("status", "--data-dir", str(tmp_path), "--database-url", url)
    line = _one_clear_error(result, "database_url", "unreachable", "start the database")
    assert "s3cret" not in result.stderr and "***" in line


def test_unknown_log_level_is_refused(tmp_path: Path) -> None:
    result = _cli("--log-level", "LOUD", "status", "--data-dir", str(tmp_path))
    _one_clear_error(result, "--log-level", "LOUD")
    from_config = _cli(*_serve(tmp_path, config='log_level = "LOUD"\n'))
    _one_clear_error(from_config, "log level", "LOUD")


def test_environment_variable_typo_is_refused(tmp_path: Path) -> None:
    result = _cli("status", "--data-dir", str(tmp_path), env={"CORDT1_DAT_DIR": "/srv/x"})
    _one_clear_error(result, "CORDT1_DAT_DIR", "did you mean CORDT1_DATA_DIR?")
    nested = _cli("status", "--data-dir", str(tmp_path), env={"CORDT1_NODE__PORTT": "104"})
    _one_clear_error(nested, "CORDT1_NODE__PORTT", "CORDT1_NODE__PORT")


def test_unreadable_configuration_file_is_one_line_naming_it(tmp_path: Path) -> None:
    broken = tmp_path / "cordt1.toml"
    broken.write_text("data_dir = \n")
    result = _cli("--config", str(broken), "status")
    _one_clear_error(result, str(broken), "cannot be read", "line 1")
    missing = tmp_path / "gone.toml"  # pydantic-settings would ignore it silently
    from_env = _cli("status", env={"CORDT1_CONFIG": str(missing)})
    _one_clear_error(from_env, str(missing), "cannot be read")


def test_several_bad_settings_give_one_line_each(tmp_path: Path) -> None:
    config = '[node]\nae_title = "A-TITLE-FAR-TOO-LONG"\nmax_associations = 0\n'
    result = _cli(*_serve(tmp_path, config=config))
    assert result.returncode != 0 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 2, result.stderr
    assert any("node.ae_title" in e for e in errors)
    assert any("node.max_associations" in e for e in errors)


@pytest.mark.slow
def test_unreachable_destination_is_a_warning_and_serve_starts(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = _serve(tmp_path, "--destination", f"PACS@127.0.0.1:{port}")
    environment = _environment()
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.cli", *args],
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
        cwd=ROOT,
    )
    ready = tmp_path / "data" / "run" / "ready.json"
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert ready.exists() and json.loads(ready.read_text())["pid"] == proc.pid
        status = _cli("status", "--data-dir", str(tmp_path / "data"))
        assert f"service: running (pid {proc.pid})" in status.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    warnings = [line for line in stderr.splitlines() if "does not answer C-ECHO" in line]
    assert len(warnings) == 1 and "send.destinations" in warnings[0]
    assert "WARNING" in warnings[0] and "Traceback" not in stderr
