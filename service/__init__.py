"""cordt1 service: CLI, configuration, job store, Celery app and pipeline orchestration."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cordt1")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.1.0+src"
