"""The site pseudonym secret: configured, from a file, or generated once (0600)."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest

from dicom_node.instance import PseudonymKey
from service.pseudonym import pseudonym_key
from service.settings import Settings


@pytest.fixture(autouse=True)
def _no_secret_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CORDT1_PSEUDONYM_SECRET", raising=False)
    monkeypatch.delenv("CORDT1_PSEUDONYM_SECRET_FILE", raising=False)


def test_generated_once_into_data_dir_with_mode_0600_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(data_dir=tmp_path)
    with caplog.at_level(logging.WARNING, logger="service.pseudonym"):
        first = pseudonym_key(settings)
    path = tmp_path / "pseudonym.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "generated a new pseudonym secret" in caplog.text and str(path) in caplog.text
    assert path.read_text().strip() not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="service.pseudonym"):
        again = pseudonym_key(Settings(data_dir=tmp_path))
    assert again == first and caplog.text == ""
    assert [p.name for p in tmp_path.iterdir()] == ["pseudonym.key"]  # no partial files left
    other_site = pseudonym_key(Settings(data_dir=tmp_path / "other"))
    assert other_site.patient_key("H", "PAT-1") != first.patient_key("H", "PAT-1")


def test_configured_secret_and_secret_file_give_the_same_key(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("a-configured-site-secret\n")
    from_value = pseudonym_key(
        Settings(data_dir=tmp_path / "a", pseudonym_secret="a-configured-site-secret")
    )
    from_file = pseudonym_key(Settings(data_dir=tmp_path / "b", pseudonym_secret_file=secret_file))
    assert from_value == from_file == PseudonymKey(b"a-configured-site-secret")
    assert not (tmp_path / "a" / "pseudonym.key").exists()
    assert "a-configured-site-secret" not in repr(from_value)
    dumped = Settings(data_dir=tmp_path, pseudonym_secret="a-configured-site-secret")
    assert "a-configured-site-secret" not in dumped.model_dump_json()


def test_bad_secrets_are_refused_with_the_setting_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="pseudonym_secret must be at least 16"):
        pseudonym_key(Settings(data_dir=tmp_path, pseudonym_secret="short"))
    short = tmp_path / "short"
    short.write_text("tiny\n")
    with pytest.raises(ValueError, match=f"pseudonym secret file {short}"):
        pseudonym_key(Settings(data_dir=tmp_path, pseudonym_secret_file=short))
    with pytest.raises(ValueError, match="cannot be read"):
        pseudonym_key(Settings(data_dir=tmp_path, pseudonym_secret_file=tmp_path / "missing"))
    with pytest.raises(ValueError, match="not both"):
        Settings(pseudonym_secret="x" * 20, pseudonym_secret_file=short)
