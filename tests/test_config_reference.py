"""docs/configuration.md is generated from the settings object and kept current."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from service.cli import cli
from service.config_reference import iter_settings, meaning, render_reference

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def test_the_committed_reference_is_current() -> None:
    result = CliRunner().invoke(cli, ["config", "reference", "--check", str(DOC)])
    assert result.exit_code == 0, result.output


def test_a_stale_reference_is_refused_with_the_command_to_fix_it(tmp_path: Path) -> None:
    stale = tmp_path / "configuration.md"
    stale.write_text(DOC.read_text().replace("CORDT1_NODE__PORT", "CORDT1_PORT"))
    result = CliRunner().invoke(cli, ["config", "reference", "--check", str(stale)])
    assert result.exit_code == 1
    assert f"cordt1 config reference --out {stale}" in result.output


def test_every_setting_is_listed_with_its_variable_and_a_meaning() -> None:
    text = render_reference()
    for key, field in iter_settings():
        assert meaning(key, field), f"setting {key} has no description"
        name = key.rsplit(".", 1)[-1]
        assert f"| `{name}` |" in text
    assert "| `port` | int | `11112` | `CORDT1_NODE__PORT` |" in text
    assert "## [send.tls]" in text and "`CORDT1_PSEUDONYM_SECRET_FILE`" in text
