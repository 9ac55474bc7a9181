"""The identity every result object carries (software version, research-use text)."""

from __future__ import annotations

from reports.identity import ResultIdentity
from service import __version__
from service.settings import Settings

__all__ = ["result_identity"]


def result_identity(settings: Settings) -> ResultIdentity:
    """The identity every result object carries, from the settings.

    Parameters
    ----------
    settings : Settings
        The site's settings (``research_use_text``).

    Returns
    -------
    ResultIdentity
        This software's version and the site's research-use text.
    """
    return ResultIdentity(
        software_version=__version__, research_use_text=settings.research_use_text
    )
