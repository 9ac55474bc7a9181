"""Configuration: defaults < TOML < environment < flags."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.settings import CONFIG_ENV, Settings, load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CONFIG_ENV, raising=False)


def test_layers_override_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "cordt1.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "data"}"\n'
        '[node]\nae_title = "FROMTOML"\nport = 1111\nsettle_s = 9\n'
        '[send]\ndestinations = ["PACS@10.0.0.1:104"]\n'
    )
    monkeypatch.setenv("CORDT1_NODE__PORT", "2222")
    monkeypatch.setenv("CORDT1_NODE__SETTLE_S", "3")
    settings = load_settings(config, node={"settle_s": 1.5})
    assert settings.node.ae_title == "FROMTOML"
    assert settings.node.port == 2222
    assert settings.node.settle_s == 1.5
    assert settings.send.destinations == ["PACS@10.0.0.1:104"]
    assert settings.job_store_url == f"sqlite:///{tmp_path / 'data' / 'jobs.sqlite'}"
    assert settings.celery_broker_url == "filesystem://"


def test_unknown_key_is_rejected(tmp_path: Path) -> None:
    config = tmp_path / "cordt1.toml"
    config.write_text("data_dri = '/tmp'\n")
    with pytest.raises(ValidationError, match="data_dri"):
        load_settings(config)


def test_invalid_ae_title_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="AE title"):
        load_settings(node={"ae_title": "WAY_TOO_LONG_AE_TITLE"})


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="configuration file not found"):
        load_settings(tmp_path / "nope.toml")


def test_relative_data_dir_becomes_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_settings(data_dir=Path("d")).data_dir == tmp_path / "d"


def test_shipped_example_configuration_is_valid() -> None:
    root = Path(__file__).resolve().parents[1]
    settings = load_settings(root / "deploy" / "cordt1.example.toml")
    assert settings.node.allowed_calling_aes == {"MR7T": "10.20.30.40", "PACS": ""}
    assert settings.send.retry_interval_s == 900
    assert settings.writer_processes is None and settings.nifti_results is False
    assert 1 <= settings.result_writer_processes <= 3


def test_result_writing_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORDT1_WRITER_PROCESSES", "1")
    monkeypatch.setenv("CORDT1_NIFTI_RESULTS", "true")
    settings = load_settings(None)
    assert settings.result_writer_processes == 1 and settings.nifti_results is True
    monkeypatch.setenv("CORDT1_WRITER_PROCESSES", "0")
    with pytest.raises(ValidationError, match="writer_processes"):
        load_settings(None)


def test_pool_children_are_recycled_by_count_and_memory_as_configured() -> None:
    from service.jobs.celery_app import create_app

    settings = Settings(
        broker_url="memory://",
        jobs={"worker_max_tasks_per_child": 7, "worker_max_memory_per_child_mb": 900},
    )
    conf = create_app(settings).conf
    assert conf.worker_max_tasks_per_child == 7
    assert conf.worker_max_memory_per_child == 900 * 1024  # Celery counts KiB
    never = create_app(
        Settings(
            broker_url="memory://",
            jobs={"worker_max_tasks_per_child": None, "worker_max_memory_per_child_mb": None},
        )
    ).conf
    assert never.worker_max_tasks_per_child is None and never.worker_max_memory_per_child is None


def test_send_retries_back_off_exponentially_up_to_the_longest_wait() -> None:
    send = Settings(
        send={"retry_interval_s": 30, "retry_backoff": 2, "retry_max_interval_s": 200}
    ).send
    assert [send.retry_delay_s(n) for n in (1, 2, 3, 4, 5)] == [30, 60, 120, 200, 200]
    fixed = Settings(send={"retry_interval_s": 5, "retry_backoff": 1}).send
    assert [fixed.retry_delay_s(n) for n in (1, 7)] == [5, 5]
    with pytest.raises(ValueError, match="failed_attempts"):
        send.retry_delay_s(0)
