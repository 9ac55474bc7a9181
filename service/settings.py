"""One typed settings object: defaults < TOML file < environment (CORDT1_*) < command-line flags.

Build it once at start-up with :func:`load_settings` and pass it down; no module reads
configuration by itself.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

__all__ = ["JobSettings", "NodeSettings", "SendSettings", "Settings", "load_settings"]

CONFIG_ENV = "CORDT1_CONFIG"
#: Result objects are written by this many processes at most unless configured: the report
#: and the rendered figures are the two largest tasks, the SEGs and maps together the third.
MAX_AUTO_WRITER_PROCESSES = 3


class NodeSettings(BaseModel):
    """The DICOM receiver (SCP)."""

    ae_title: str = "CORDT1"
    host: str = "0.0.0.0"
    port: int = Field(11112, ge=0, le=65535)
    allowed_calling_aes: dict[str, str | None] = Field(
        default_factory=dict,
        description="AE title -> allowed IP address (None: any address). Empty: accept any AE.",
    )
    max_associations: int = Field(10, ge=1)
    max_associations_per_ae: int = Field(
        4, ge=1, description="Concurrent associations of one calling AE; more are rejected."
    )
    idle_timeout_s: float = Field(
        30.0, gt=0, description="An association on which nothing arrives this long is aborted."
    )
    max_pixel_mb: int = Field(
        2048, ge=1, description="Refuse instances whose header declares more pixel data."
    )
    min_free_mb: int = Field(1024, ge=0, description="Refuse C-STORE below this free space.")
    settle_s: float = Field(5.0, gt=0, description="Silence after a complete exam before a job.")
    stale_s: float = Field(120.0, gt=0, description="Silence after which an incomplete exam runs.")

    @field_validator("ae_title")
    @classmethod
    def _check_ae(cls, value: str) -> str:
        if not 0 < len(value) <= 16 or "\\" in value or not value.isprintable():
            raise ValueError(f"AE title must be 1-16 printable characters, got {value!r}")
        return value


class SendSettings(BaseModel):
    """Where results go and how hard we try."""

    destinations: list[str] = Field(
        default_factory=list, description='Result destinations, each "AET@HOST:PORT".'
    )
    calling_ae: str = "CORDT1"
    attempts: int = Field(5, ge=1)
    retry_interval_s: float = Field(60.0, ge=0)
    timeout_s: float = Field(60.0, gt=0)

    @field_validator("destinations")
    @classmethod
    def _check_destinations(cls, value: list[str]) -> list[str]:
        from dicom_node.scu import Destination

        for text in value:
            Destination.parse(text)  # ValueError names the destination and the expected form
        return value


class JobSettings(BaseModel):
    """How workers hold jobs, and how the worker pool is kept small and stopped."""

    lease_s: float = Field(
        60.0,
        gt=0,
        description="A worker holds a job for this long and renews it every third of it; a "
        "job whose lease expired (worker killed or hung) is taken again.",
    )
    reconcile_interval_s: float = Field(
        15.0, gt=0, description="How often `serve` looks for jobs whose lease expired."
    )
    worker_max_tasks_per_child: int | None = Field(
        20,
        ge=1,
        description="A pool child is replaced after this many tasks (None: never); an exam "
        "takes two (processing, sending). A child grows by about 10 MB per exam "
        "(benchmarks/bench_soak.py), so 20 bounds that to about 100 MB.",
    )
    worker_max_memory_per_child_mb: int | None = Field(
        1536,
        ge=64,
        description="A pool child is replaced after a task that left it above this resident "
        "memory (None: never).",
    )
    shutdown_timeout_s: float = Field(
        20.0,
        gt=0,
        description="On SIGTERM `serve` waits this long for its workers to finish their "
        "tasks, then kills them (their jobs are taken again from the job store).",
    )


class Settings(BaseSettings):
    """Everything the service needs to run."""

    model_config = SettingsConfigDict(
        env_prefix="CORDT1_", env_nested_delimiter="__", extra="forbid"
    )

    data_dir: Path = Path("cordt1-data")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL of the job store; default SQLite in data_dir."
    )
    broker_url: str | None = Field(
        None,
        description="Celery broker; default an embedded filesystem queue in data_dir. "
        "Use redis://host:6379/0 for workers on other hosts.",
    )
    workers: int = Field(1, ge=0, description="Worker processes `serve` starts itself.")
    site_protocols: Path | None = Field(
        None, description="TOML file with the protocol values the headers do not carry."
    )
    model_dir: Path | None = Field(
        None, description="Normative model directory (`cordt1 model build`); none: T1 only."
    )
    bids_dir: Path | None = Field(
        None,
        description="Also export every processed exam's NIfTI results as BIDS derivatives "
        "here (sub-<patient key>/ses-<study date>); a failing export fails the job.",
    )
    z_threshold: float = Field(
        1.96, gt=0, description="One-sided Z above which a voxel counts as abnormal."
    )
    nifti_results: bool = Field(
        False,
        description="Also keep NIfTI maps and masks in each job's results folder (always "
        "written when bids_dir is set; `cordt1 process` always writes them).",
    )
    writer_processes: int | None = Field(
        None,
        ge=1,
        description="Processes that write one exam's result objects, the job's own included "
        "(helpers are forked for the writing only); 1: the job's process alone; default: "
        "the CPUs this process may use, at most 3 (more gains nothing: 2 big objects).",
    )
    node: NodeSettings = Field(default_factory=NodeSettings)
    send: SendSettings = Field(default_factory=SendSettings)
    jobs: JobSettings = Field(default_factory=JobSettings)
    research_use_text: str = "RESEARCH USE ONLY - NOT FOR DIAGNOSIS"
    log_level: str = "INFO"

    @property
    def spool_dir(self) -> Path:
        """Where received instances are kept."""
        return self.data_dir / "spool"

    @property
    def results_dir(self) -> Path:
        """Where every job writes its outputs."""
        return self.data_dir / "results"

    @property
    def result_writer_processes(self) -> int:
        """``writer_processes``, or the usable CPUs (at most 3) when it is not set."""
        if self.writer_processes is not None:
            return self.writer_processes
        return max(1, min(MAX_AUTO_WRITER_PROCESSES, len(os.sched_getaffinity(0))))

    @property
    def job_store_url(self) -> str:
        """The job store URL, SQLite in ``data_dir`` unless configured."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'jobs.sqlite').resolve()}"

    @property
    def celery_broker_url(self) -> str:
        """The Celery broker URL (embedded filesystem queue unless configured)."""
        return self.broker_url or "filesystem://"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_path = os.environ.get(CONFIG_ENV)
        if config_path:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config_path)))
        return tuple(sources)


def _drop_none(mapping: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, dict):
            nested = _drop_none(value)
            if nested:
                out[key] = nested
        elif value is not None:
            out[key] = value
    return out


def load_settings(config: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings from a TOML file, the environment and explicit overrides.

    Parameters
    ----------
    config : Path or None
        TOML configuration file; ``None`` uses ``$CORDT1_CONFIG`` when set.
    **overrides
        Values from command-line flags; ``None`` values are ignored, nested sections are
        dictionaries (``node={"port": 4242}``).

    Raises
    ------
    FileNotFoundError
        If ``config`` does not exist.
    pydantic.ValidationError
        If a value is invalid (the message names the setting).
    """
    if config is not None:
        config = Path(config).resolve()
        if not config.is_file():
            raise FileNotFoundError(f"configuration file not found: {config}")
        os.environ[CONFIG_ENV] = str(config)
    settings = Settings(**_drop_none(overrides))
    if settings.data_dir.is_absolute() is False:
        settings = settings.model_copy(update={"data_dir": settings.data_dir.resolve()})
    return settings
