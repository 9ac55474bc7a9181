"""The site's pseudonym secret: configured, read from a file, or generated once.

Every pseudonymous patient key (job store, BIDS ``sub-`` label, follow-up pairing) is an
HMAC-SHA256 keyed with this secret (:class:`dicom_node.instance.PseudonymKey`). Without a
configured secret the first use generates 32 random bytes into ``data_dir/pseudonym.key``
(mode 0600) and says so in the log; later starts read that file.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from dicom_node.instance import MIN_SECRET_BYTES, PseudonymKey
from service.settings import Settings

__all__ = ["pseudonym_key"]

log = logging.getLogger(__name__)


def _read_secret_file(path: Path) -> bytes:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"pseudonym secret file {path} cannot be read: {exc}") from exc
    lines = text.strip().splitlines()
    secret = lines[0].strip().encode() if lines else b""
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(
            f"pseudonym secret file {path}: the secret must be at least "
            f"{MIN_SECRET_BYTES} characters on its first line"
        )
    return secret


def _generate_secret_file(path: Path) -> None:
    """Write a new secret, complete before its name appears (hard link: never overwrites)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(secrets.token_hex(32) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(partial, path)
        except FileExistsError:
            return  # another process (a worker on shared storage) was first: use theirs
    finally:
        partial.unlink(missing_ok=True)
    log.warning(
        "generated a new pseudonym secret in %s (mode 0600): back it up with the job store; "
        "losing or changing it changes every patient key and BIDS sub- label",
        path,
    )


def pseudonym_key(settings: Settings) -> PseudonymKey:
    """The site's pseudonym key from the settings (generated on first use when unset).

    Parameters
    ----------
    settings : Settings
        ``pseudonym_secret``, ``pseudonym_secret_file`` or, neither set,
        ``data_dir/pseudonym.key``.

    Returns
    -------
    PseudonymKey

    Raises
    ------
    ValueError
        If the configured secret is too short or its file cannot be read.
    """
    if settings.pseudonym_secret is not None:
        secret = settings.pseudonym_secret.get_secret_value().strip().encode()
        if len(secret) < MIN_SECRET_BYTES:
            raise ValueError(
                f"pseudonym_secret must be at least {MIN_SECRET_BYTES} characters long"
            )
        return PseudonymKey(secret)
    if settings.pseudonym_secret_file is not None:
        return PseudonymKey(_read_secret_file(settings.pseudonym_secret_file))
    path = settings.default_pseudonym_secret_file
    if not path.exists():
        _generate_secret_file(path)
    return PseudonymKey(_read_secret_file(path))
