"""Password hashes for [[api.users]] and `cordt1 user hash-password`."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from service.api.passwords import hash_password, verify_password
from service.cli import cli
from service.settings import Settings


@pytest.fixture(autouse=True)
def _no_config_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings from the arguments only: no $CORDT1_CONFIG left by another test's load."""
    monkeypatch.delenv("CORDT1_CONFIG", raising=False)


def test_a_hash_verifies_only_its_password_and_is_salted() -> None:
    first = hash_password("correct horse")
    assert first.startswith("scrypt$")
    assert verify_password("correct horse", first)
    assert not verify_password("correct hors", first)
    assert hash_password("correct horse") != first  # a new salt each time
    assert not verify_password("correct horse", "scrypt$1$2$3$@@@$###")
    assert not verify_password("correct horse", "md5$abc")
    with pytest.raises(ValueError, match="at least 8"):
        hash_password("short")


def test_cli_makes_a_hash_the_settings_accept(tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = CliRunner().invoke(
        cli, ["user", "hash-password", "--password-stdin"], input="s3cret-pass\n"
    )
    assert result.exit_code == 0, result.output
    digest = result.output.strip()
    assert verify_password("s3cret-pass", digest)
    settings = Settings(
        data_dir=tmp_path, api={"users": [{"name": "it", "password_hash": digest}]}
    )
    assert settings.api.users[0].role == "viewer"
    with pytest.raises(ValidationError, match="hash-password"):
        Settings(data_dir=tmp_path, api={"users": [{"name": "it", "password_hash": "plain"}]})
    with pytest.raises(ValidationError, match="role"):
        Settings(
            data_dir=tmp_path,
            api={"users": [{"name": "it", "password_hash": digest, "role": "admin"}]},
        )
    with pytest.raises(ValidationError, match="duplicate names: it"):
        Settings(
            data_dir=tmp_path,
            api={"users": [{"name": "it", "password_hash": digest}] * 2},
        )
    short = CliRunner().invoke(cli, ["user", "hash-password", "--password-stdin"], input="x\n")
    assert short.exit_code == 1 and "at least 8" in short.output
