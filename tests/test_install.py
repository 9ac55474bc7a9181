"""deploy/install.sh into a throw-away root; the units checked by systemd-analyze verify."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIDS = "/srv/cordt1-bids"
UNITS = ("cordt1.service", "cordt1-worker@.service")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def prefix(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("install") / "root"
    command = [str(ROOT / "deploy" / "install.sh"), "--prefix", str(root), "--bids-dir", BIDS]
    command += ["--with-redis", "--with-postgresql", "--python", sys.executable]
    build_dirs = {p for p in ROOT.glob("build") if p.is_dir()}
    run = subprocess.run(command, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "no user, no chown, no systemctl" in run.stdout
    assert {p for p in ROOT.glob("build") if p.is_dir()} == build_dirs  # source left clean
    return root


@pytest.mark.slow
def test_install_lays_out_config_data_venv_and_units(prefix: Path) -> None:
    etc, data = prefix / "etc" / "cordt1", prefix / "var" / "lib" / "cordt1"
    assert (_mode(etc), _mode(data)) == (0o750, 0o750)
    config = etc / "cordt1.toml"
    assert _mode(config) == 0o640 and _mode(etc / "site-protocols.toml") == 0o640
    assert config.read_text() == (ROOT / "deploy" / "cordt1.example.toml").read_text()
    assert config.read_text().count("\n# ") > 10  # the commented example
    assert _mode(prefix / BIDS.lstrip("/")) == 0o750
    # the venv runs the installed project (not the source tree): same settings, same reference
    cordt1 = prefix / "opt" / "cordt1" / ".venv" / "bin" / "cordt1"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    ref = subprocess.run(
        [str(cordt1), "config", "reference"], capture_output=True, text=True, env=env, cwd="/"
    )
    assert ref.returncode == 0, ref.stderr
    assert ref.stdout == (ROOT / "docs" / "configuration.md").read_text()
    units = prefix / "etc" / "systemd" / "system"
    for unit in UNITS:
        text = (units / unit).read_text()
        assert "ProtectSystem=strict" in text and "User=cordt1" in text
        assert "ExecStart=/opt/cordt1/.venv/bin/cordt1 " in text
        # data_dir of the installed configuration is writable despite ProtectSystem=strict
        data_dir = tomllib.loads(config.read_text())["data_dir"]
        assert f"ReadWritePaths={data_dir}" in text
        assert f"ReadWritePaths={BIDS}" in (units / f"{unit}.d" / "bids-dir.conf").read_text()
        peers = (units / f"{unit}.d" / "peers.conf").read_text()
        assert "Wants=redis-server.service postgresql.service" in peers
        assert "After=redis-server.service postgresql.service" in peers


@pytest.mark.slow
def test_systemd_analyze_verifies_the_installed_units(prefix: Path, tmp_path: Path) -> None:
    """The units as installed, their ExecStart pointed into the test root (drop-ins included)."""
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing (scripts/bootstrap.sh installs systemd)"
    installed = prefix / "etc" / "systemd" / "system"
    shutil.copytree(installed, tmp_path / "units")
    for path in (tmp_path / "units").rglob("*"):
        if path.is_file():
            path.write_text(path.read_text().replace("/opt/cordt1", str(prefix / "opt/cordt1")))
    shutil.copy(tmp_path / "units" / UNITS[1], tmp_path / "units" / "cordt1-worker@1.service")
    for unit in (UNITS[0], "cordt1-worker@1.service"):
        run = subprocess.run(
            [analyze, "verify", str(tmp_path / "units" / unit)], capture_output=True, text=True
        )
        assert (run.returncode, run.stdout + run.stderr) == (0, ""), unit
    # the check does see a broken drop-in
    bad = tmp_path / "units" / f"{UNITS[0]}.d" / "bids-dir.conf"
    bad.write_text("[Service]\nReadWritePaths=relative/path\n")
    run = subprocess.run(
        [analyze, "verify", str(tmp_path / "units" / UNITS[0])], capture_output=True, text=True
    )
    assert "not absolute" in run.stdout + run.stderr


@pytest.mark.slow
def test_a_second_install_keeps_the_edited_configuration(prefix: Path) -> None:
    config = prefix / "etc" / "cordt1" / "cordt1.toml"
    config.write_text(config.read_text() + "\n# edited by the site\n")
    command = [str(ROOT / "deploy" / "install.sh"), "--prefix", str(prefix)]
    run = subprocess.run(
        [*command, "--python", sys.executable], capture_output=True, text=True, timeout=1200
    )
    assert run.returncode == 0, run.stderr
    assert f"keeping {config}" in run.stdout
    assert config.read_text().endswith("# edited by the site\n")


def test_install_refuses_unknown_options() -> None:
    run = subprocess.run(
        [str(ROOT / "deploy" / "install.sh"), "--prefx", "/tmp/x"], capture_output=True, text=True
    )
    assert run.returncode == 2 and "unknown option --prefx" in run.stderr


@pytest.mark.skipif(
    os.geteuid() != 0 or not Path("/etc/init.d/orthanc").exists(),
    reason="only where the orthanc package is installed and bootstrap ran as root",
)
def test_bootstrap_leaves_no_system_orthanc_enabled() -> None:
    """scripts/bootstrap.sh (run by scripts/test.sh first) disables the package's service."""
    state = subprocess.run(
        ["systemctl", "is-enabled", "orthanc.service"], capture_output=True, text=True
    )
    assert state.stdout.strip() != "enabled"
    starts = [p.name for p in Path("/etc").glob("rc?.d/S*orthanc")]
    assert starts == []
