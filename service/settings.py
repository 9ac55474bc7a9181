"""One typed settings object: defaults < TOML file < environment (CORDT1_*) < command-line flags.

Build it once at start-up with :func:`load_settings` and pass it down; no module reads
configuration by itself.
"""

from __future__ import annotations

import difflib
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from dicom_node.scu import TLS_PREFIX, Destination
from dicom_node.tls import ClientTls, ServerTls

__all__ = [
    "ApiSettings",
    "ApiUser",
    "JobSettings",
    "NodeSettings",
    "NodeTlsSettings",
    "PriorsSettings",
    "RetentionSettings",
    "SendSettings",
    "SendTlsSettings",
    "Settings",
    "load_settings",
    "unknown_environment",
    "validation_lines",
]

CONFIG_ENV = "CORDT1_CONFIG"
ENV_PREFIX = "CORDT1_"
#: CORDT1_* variables that are not settings: the configuration file, and the test and
#: documentation tooling (tests/conftest.py, scripts/viewer.sh).
NON_SETTING_ENV = (CONFIG_ENV, "CORDT1_SCREENSHOTS", "CORDT1_OHIF_DIST", "CORDT1_VIEWER_ARTEFACTS")
NON_SETTING_ENV_PREFIXES = ("CORDT1_TEST_",)
#: Result objects are written by this many processes at most unless configured: the report
#: and the rendered figures are the two largest tasks, the SEGs and maps together the third.
MAX_AUTO_WRITER_PROCESSES = 3


class NodeTlsSettings(BaseModel):
    """The receiver's DICOM TLS port (section ``[node.tls]``; absent: no TLS port)."""

    model_config = {"extra": "forbid"}

    port: int = Field(2762, ge=0, le=65535, description="TCP port of DICOM over TLS.")
    certificate: Path = Field(
        description="Our certificate (PEM), optionally followed by intermediate CAs."
    )
    private_key: Path = Field(description="Its private key (PEM, not encrypted, mode 0600).")
    ca_certificates: Path | None = Field(
        None, description="CAs (PEM bundle) that client certificates are verified against."
    )
    require_client_certificate: bool = Field(
        False, description="Refuse clients without a certificate from ca_certificates."
    )

    def server_tls(self) -> ServerTls:
        """The checked TLS settings of the SCP.

        Raises
        ------
        ValueError
            Naming the setting and the file that is missing, unreadable or invalid.
        """
        return ServerTls(
            certificate=self.certificate,
            private_key=self.private_key,
            ca_certificates=self.ca_certificates,
            require_client_certificate=self.require_client_certificate,
            setting="node.tls",
        )


class NodeSettings(BaseModel):
    """The DICOM receiver (SCP)."""

    ae_title: str = Field("CORDT1", description="Our AE title (1-16 characters).")
    host: str = Field("0.0.0.0", description="Address to listen on.")
    port: int = Field(11112, ge=0, le=65535, description="TCP port of plain DICOM.")
    allowed_calling_aes: dict[str, str | None] = Field(
        default_factory=dict,
        description="AE title -> allowed IP address (None: any address). Empty: accept any AE.",
    )
    max_associations: int = Field(
        10, ge=1, description="Concurrent associations; more are rejected."
    )
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
    record_flush_ms: float = Field(
        50.0,
        gt=0,
        le=10000,
        description="Job-store rows of received instances are committed in batches at most "
        "this often (the files themselves are fsynced before the C-STORE answer).",
    )
    tls: NodeTlsSettings | None = Field(
        None,
        description="A DICOM TLS port besides (or, with listen_plain false, instead of) "
        "the plain one.",
    )
    listen_plain: bool = Field(
        True, description="Listen for plain DICOM on port; false: the TLS port only."
    )
    acceptor_processes: int = Field(
        2,
        ge=1,
        le=32,
        description="Processes that serve the associations of the plain port; the service "
        "process accepts and hands each connection to the one with the fewest open "
        "connections, so concurrent senders use several cores. 1: all in the service process. "
        "Admission, limits, job-store rows and the audit trail stay in the service process.",
    )
    direct_pdata: bool = Field(
        True,
        description="Read the P-DATA-TF PDUs of C-STORE requests in our own code instead of "
        "through pynetdicom's PDU decoding and message assembly (faster ingest); other "
        "messages still go through pynetdicom. false: pynetdicom reads everything.",
    )

    @field_validator("ae_title")
    @classmethod
    def _check_ae(cls, value: str) -> str:
        if not 0 < len(value) <= 16 or "\\" in value or not value.isprintable():
            raise ValueError(f"AE title must be 1-16 printable characters, got {value!r}")
        return value

    @model_validator(mode="after")
    def _check_ports(self) -> NodeSettings:
        if not self.listen_plain and self.tls is None:
            raise ValueError("node.listen_plain = false needs a [node.tls] section")
        if self.tls is not None and self.listen_plain and self.port == self.tls.port != 0:
            raise ValueError(f"node.port and node.tls.port are both {self.port}")
        return self


class SendTlsSettings(BaseModel):
    """TLS for destinations written ``tls://AET@HOST:PORT`` (section ``[send.tls]``)."""

    model_config = {"extra": "forbid"}

    ca_certificates: Path | None = Field(
        None,
        description="CAs (PEM bundle) destination certificates must chain to; "
        "none: the system's trusted CAs.",
    )
    certificate: Path | None = Field(
        None, description="Our client certificate (PEM), for destinations requiring one."
    )
    private_key: Path | None = Field(None, description="Its private key (PEM, not encrypted).")
    check_hostname: bool = Field(
        True, description="The destination's host name or IP must be in its certificate."
    )

    def client_tls(self) -> ClientTls:
        """The checked TLS settings for sending.

        Raises
        ------
        ValueError
            Naming the setting and the file that is missing, unreadable or invalid.
        """
        return ClientTls(
            ca_certificates=self.ca_certificates,
            certificate=self.certificate,
            private_key=self.private_key,
            check_hostname=self.check_hostname,
            setting="send.tls",
        )


class SendSettings(BaseModel):
    """Where results go and how hard we try."""

    destinations: list[str] = Field(
        default_factory=list,
        description='Result destinations, each "AET@HOST:PORT" or "tls://AET@HOST:PORT".',
    )
    calling_ae: str = Field("CORDT1", description="Our AE title when sending results.")
    attempts: int = Field(5, ge=1, description="Tries per destination before the job fails.")
    retry_interval_s: float = Field(
        60.0, ge=0, description="Wait before the second try; later waits grow by retry_backoff."
    )
    retry_backoff: float = Field(
        2.0, ge=1.0, description="Factor by which each further wait grows (1 = a fixed wait)."
    )
    retry_max_interval_s: float = Field(
        900.0, ge=0, description="Longest wait between two tries, however many failed."
    )
    timeout_s: float = Field(60.0, gt=0, description="Network timeout of one send.")
    tls: SendTlsSettings | None = Field(None, description="TLS for tls:// destinations.")

    @field_validator("destinations")
    @classmethod
    def _check_destinations(cls, value: list[str]) -> list[str]:
        for text in value:
            Destination.parse(text)  # ValueError names the destination and the expected form
        return value

    @model_validator(mode="after")
    def _check_tls(self) -> SendSettings:
        if self.tls is None:
            for text in self.destinations:
                if text.strip().lower().startswith(TLS_PREFIX):
                    raise ValueError(
                        f"send.destinations has the TLS destination {text!r} but there is no "
                        "[send.tls] section (CA certificates, client certificate if required)"
                    )
        return self

    def retry_delay_s(self, failed_attempts: int) -> float:
        """Seconds to wait after ``failed_attempts`` failed tries (exponential back-off).

        Parameters
        ----------
        failed_attempts : int
            Tries that failed so far (1 after the first).

        Returns
        -------
        float
            ``retry_interval_s * retry_backoff ** (failed_attempts - 1)``, at most
            ``retry_max_interval_s``.
        """
        if failed_attempts < 1:
            raise ValueError(f"failed_attempts must be >= 1, got {failed_attempts}")
        delay_s = self.retry_interval_s * self.retry_backoff ** (failed_attempts - 1)
        return min(delay_s, max(self.retry_max_interval_s, self.retry_interval_s))

    def client_tls(self) -> ClientTls | None:
        """The checked TLS settings, or ``None`` without a ``[send.tls]`` section.

        Raises
        ------
        ValueError
            Naming the setting and the file that is missing, unreadable or invalid.
        """
        return self.tls.client_tls() if self.tls is not None else None


class ApiUser(BaseModel):
    """One login of the web page and API (``[[api.users]]``)."""

    model_config = {"extra": "forbid"}

    name: str = Field(min_length=1, max_length=64, description="Login name.")
    password_hash: str = Field(
        description="Hash from `cordt1 user hash-password` (scrypt; never the password)."
    )
    role: Literal["viewer", "operator"] = Field(
        "viewer", description="viewer: read only; operator: also retry, pause and resume."
    )

    @field_validator("password_hash")
    @classmethod
    def _check_hash(cls, value: str) -> str:
        if not value.startswith("scrypt$") or value.count("$") != 5:
            raise ValueError(
                "api.users password_hash must come from `cordt1 user hash-password` "
                "(scrypt$n$r$p$salt$hash)"
            )
        return value


class ApiSettings(BaseModel):
    """The HTTP API and web page that `cordt1 serve` serves (section ``[api]``)."""

    model_config = {"extra": "forbid"}

    enabled: bool = Field(True, description="Serve the HTTP API, web page and metrics.")
    host: str = Field("127.0.0.1", description="Address of the HTTP server.")
    port: int = Field(8080, ge=0, le=65535, description="TCP port of the HTTP server.")
    session_hours: float = Field(8.0, gt=0, description="A login session ends after this long.")
    worker_heartbeat_s: float = Field(
        30.0, gt=0, description="/readyz counts a worker alive if it beat this recently."
    )
    users: list[ApiUser] = Field(
        default_factory=list,
        description="Who may log in; none: only /healthz, /readyz and /metrics answer.",
    )

    @model_validator(mode="after")
    def _check_users(self) -> ApiSettings:
        names = [user.name for user in self.users]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"api.users has duplicate names: {', '.join(duplicates)}")
        return self


class PriorsSettings(BaseModel):
    """Where a patient's earlier exam is fetched from when it is not in our store."""

    source: str | None = Field(
        None,
        description='PACS to query (C-FIND) and retrieve from (C-MOVE), "AET@HOST:PORT" or '
        '"tls://AET@HOST:PORT" (TLS settings of [send.tls]); none: no fetching. The PACS must '
        "know our AE title (node.ae_title) as a move destination.",
    )
    max_age_days: int = Field(
        3650, ge=1, description="Only exams at most this many days older than the current one."
    )
    modality: str = Field(
        "MR", min_length=1, max_length=16, description="ModalitiesInStudy a prior must have."
    )
    timeout_s: float = Field(
        600.0, gt=0, description="C-FIND / C-MOVE timeout (a move of a large exam takes time)."
    )
    wait_s: float = Field(
        3600.0,
        gt=0,
        description="Longest an exam waits for its prior to be fetched and processed; then it "
        "is processed without it.",
    )

    @field_validator("source")
    @classmethod
    def _check_source(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        Destination.parse(value.strip())  # raises ValueError naming what is wrong
        return value.strip()

    def destination(self) -> Destination | None:
        """The parsed ``source``, or ``None`` when priors are not fetched."""
        return Destination.parse(self.source) if self.source else None


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


class RetentionSettings(BaseModel):
    """What `cordt1 serve` (and `cordt1 purge`) deletes, and when (section ``[retention]``).

    Only exams whose every job is done and delivered (each result object confirmed by every
    destination) are ever purged; a purged job keeps its row and summary, marked purged.
    """

    model_config = {"extra": "forbid"}

    enabled: bool = Field(
        True, description="`serve` purges periodically (`cordt1 purge` always can)."
    )
    interval_min: float = Field(60.0, gt=0, description="Minutes between two purges of `serve`.")
    spool_days: float | None = Field(
        30.0,
        gt=0,
        description="Received instances of a done and delivered exam are deleted this many "
        "days after its job finished (None: kept).",
    )
    results_days: float | None = Field(
        90.0,
        gt=0,
        description="A done and delivered job's results folder is deleted this many days after "
        "the job finished (None: kept).",
    )
    quarantine_days: float | None = Field(
        30.0,
        gt=0,
        description="Quarantined (refused) input older than this is deleted (None: kept).",
    )
    broker_days: float | None = Field(
        7.0,
        gt=0,
        description="Leftover files of the embedded queue (data_dir/broker) older than this "
        "whose job is finished are deleted (None: kept).",
    )
    min_free_mb: int | None = Field(
        None,
        ge=0,
        description="Disk pressure: while data_dir's file system has less free space than "
        "this, the spool and results of the oldest done and delivered exams are deleted, "
        "whatever their age (None: off). Keep it above node.min_free_mb.",
    )
    keep_received_s: float = Field(
        3600.0,
        ge=0,
        description="An exam that received an instance this recently, or after its newest job "
        "was made, is never purged (it may still be arriving).",
    )


class Settings(BaseSettings):
    """Everything the service needs to run."""

    model_config = SettingsConfigDict(
        env_prefix="CORDT1_", env_nested_delimiter="__", extra="forbid"
    )

    data_dir: Path = Field(
        Path("cordt1-data"),
        description="Where the spool, quarantine, results, job store (SQLite), embedded queue, "
        "run files and a generated pseudonym secret live.",
    )
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
    node: NodeSettings = Field(
        default_factory=NodeSettings, description="The DICOM receiver: see [node]."
    )
    send: SendSettings = Field(
        default_factory=SendSettings,
        description="Where results go and how hard we try: see [send].",
    )
    api: ApiSettings = Field(
        default_factory=ApiSettings,
        description="The HTTP API, web page, health and metrics: see [api].",
    )
    priors: PriorsSettings = Field(
        default_factory=PriorsSettings,
        description="Fetching a patient's earlier exam from a PACS: see [priors].",
    )
    jobs: JobSettings = Field(
        default_factory=JobSettings,
        description="Leases, reconciliation and the worker pool: see [jobs].",
    )
    retention: RetentionSettings = Field(
        default_factory=RetentionSettings,
        description="Purging old spool, results, quarantine and queue files: see [retention].",
    )
    research_use_text: str = Field(
        "RESEARCH USE ONLY - NOT FOR DIAGNOSIS",
        description="Burned into every rendered result and written into its DICOM descriptions.",
    )
    pseudonym_secret: SecretStr | None = Field(
        None,
        description="Site secret (at least 16 characters) keying every pseudonymous patient "
        "key and BIDS sub- label (HMAC-SHA256). Prefer pseudonym_secret_file; neither set: "
        "a random secret is generated once into data_dir/pseudonym.key (mode 0600). "
        "Changing it changes every label: back it up with the job store.",
    )
    pseudonym_secret_file: Path | None = Field(
        None,
        description="File holding the site secret (first line; at least 16 characters, "
        "readable by the service only).",
    )
    log_level: str = Field(
        "INFO",
        description="DEBUG, INFO, WARNING, ERROR or CRITICAL (`--log-level` overrides it).",
    )
    log_format: Literal["text", "json"] = Field(
        "text", description='Log lines as plain text or as JSON objects ("json").'
    )
    log_file: Path | None = Field(
        None,
        description="Also log to this file, rotated by size (a worker started by serve writes "
        "NAME-worker.log beside it). None: stderr only, which systemd sends to the journal.",
    )
    log_max_mb: float = Field(50.0, gt=0, description="Rotate log_file at this size.")
    log_backups: int = Field(5, ge=1, description="Rotated log files kept.")

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
    def default_pseudonym_secret_file(self) -> Path:
        """Where a generated pseudonym secret is kept when none is configured."""
        return self.data_dir / "pseudonym.key"

    @model_validator(mode="after")
    def _check_pseudonym_source(self) -> Settings:
        if self.pseudonym_secret is not None and self.pseudonym_secret_file is not None:
            raise ValueError("set pseudonym_secret or pseudonym_secret_file, not both")
        return self

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


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The settings section class behind a field's annotation (``X | None`` unwrapped)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _model_of(arg)
            if found is not None:
                return found
    return None


def _env_names(model: type[BaseModel], prefix: str) -> tuple[set[str], set[str]]:
    """Exact environment names of every setting, and prefixes of the free-form (dict) ones."""
    names: set[str] = set()
    open_prefixes: set[str] = set()
    for name, info in model.model_fields.items():
        env = f"{prefix}{name.upper()}"
        names.add(env)
        section = _model_of(info.annotation)
        if section is not None:
            inner, inner_open = _env_names(section, f"{env}__")
            names |= inner
            open_prefixes |= inner_open
        elif typing.get_origin(info.annotation) is dict:
            open_prefixes.add(f"{env}__")
    return names, open_prefixes


def unknown_environment(environ: Mapping[str, str]) -> list[str]:
    """One line per ``CORDT1_*`` environment variable that is not a setting (a typo).

    pydantic-settings ignores such variables; a mistyped ``CORDT1_DAT_DIR`` would silently
    leave the default in force.
    """
    names, open_prefixes = _env_names(Settings, ENV_PREFIX)
    problems = []
    for key in sorted(environ):
        upper = key.upper()
        if not upper.startswith(ENV_PREFIX) or upper in names or upper in NON_SETTING_ENV:
            continue
        if upper.startswith(NON_SETTING_ENV_PREFIXES + tuple(open_prefixes)):
            continue
        close = difflib.get_close_matches(upper, sorted(names), n=1, cutoff=0.75)
        hint = f"did you mean {close[0]}?" if close else "see docs/configuration.md"
        problems.append(
            f"environment variable {key} is not a setting ({hint}); rename or unset it"
        )
    return problems


def validation_lines(exc: ValidationError) -> list[str]:
    """One line per invalid setting: its dotted name, what is wrong and what is expected."""
    lines = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "settings"
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown setting (a typo?); see docs/configuration.md for the names"
        elif error["type"] == "missing":
            message = "required, but not set"
        elif "input" in error and error["type"] not in ("value_error", "assertion_error"):
            message = f"{message} (got {error['input']!r})"
        lines.append(f"setting {where}: {message}")
    return lines


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
        If a value is invalid (the message names the setting; :func:`validation_lines`
        gives one line per problem).
    ValueError
        If a ``CORDT1_*`` environment variable is not a setting (one line per variable), or
        the configuration file (``config`` or ``$CORDT1_CONFIG``) is missing or not TOML.
    """
    typos = unknown_environment(os.environ)
    if typos:
        raise ValueError("\n".join(typos))
    if config is not None:
        config = Path(config).resolve()
        if not config.is_file():
            raise FileNotFoundError(f"configuration file not found: {config}")
        os.environ[CONFIG_ENV] = str(config)
    in_use = os.environ.get(CONFIG_ENV)
    if in_use:
        try:
            tomllib.loads(Path(in_use).read_text())
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ValueError(f"configuration file {in_use} cannot be read: {exc}") from exc
    settings = Settings(**_drop_none(overrides))
    if settings.data_dir.is_absolute() is False:
        settings = settings.model_copy(update={"data_dir": settings.data_dir.resolve()})
    return settings
