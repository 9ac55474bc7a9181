"""Throw-away test PKI made with the openssl command at test time (no key is committed)."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["OPENSSL", "Pki", "make_pki"]

OPENSSL = shutil.which("openssl")


@dataclass(frozen=True)
class Pki:
    """Paths of a test CA, a server and client certificate it signed, and a rogue client.

    The server certificate names ``localhost`` and ``127.0.0.1``; the rogue client's
    certificate is signed by another CA that nobody trusts.
    """

    folder: Path
    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_ca_cert: Path
    rogue_client_cert: Path
    rogue_client_key: Path


def _run(*args: str, cwd: Path) -> None:
    assert OPENSSL is not None, "openssl not installed"
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _ca(folder: Path, name: str) -> tuple[Path, Path]:
    key, cert = folder / f"{name}.key", folder / f"{name}.pem"
    _run(
        *("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
        *("-subj", f"/CN={name}", "-keyout", key.name, "-out", cert.name),
        *("-addext", "basicConstraints=critical,CA:TRUE"),
        *("-addext", "keyUsage=critical,keyCertSign,cRLSign"),
        cwd=folder,
    )
    return cert, key


def _leaf(folder: Path, name: str, ca: tuple[Path, Path], usage: str) -> tuple[Path, Path]:
    key, csr, cert = folder / f"{name}.key", folder / f"{name}.csr", folder / f"{name}.pem"
    ext = folder / f"{name}.ext"
    ext.write_text(
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        f"extendedKeyUsage={usage}\n"
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
    )
    _run(
        *("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}"),
        *("-keyout", key.name, "-out", csr.name),
        cwd=folder,
    )
    _run(
        *("x509", "-req", "-in", csr.name, "-CA", ca[0].name, "-CAkey", ca[1].name),
        *("-CAcreateserial", "-days", "2", "-extfile", ext.name, "-out", cert.name),
        cwd=folder,
    )
    key.chmod(0o600)
    return cert, key


def make_pki(folder: Path) -> Pki:
    """Create the test PKI in ``folder`` (about a second)."""
    folder.mkdir(parents=True, exist_ok=True)
    ca = _ca(folder, "test-ca")
    rogue_ca = _ca(folder, "rogue-ca")
    server = _leaf(folder, "cordt1-server", ca, "serverAuth,clientAuth")
    client = _leaf(folder, "scanner", ca, "clientAuth,serverAuth")
    rogue = _leaf(folder, "rogue", rogue_ca, "clientAuth,serverAuth")
    return Pki(
        folder=folder,
        ca_cert=ca[0],
        server_cert=server[0],
        server_key=server[1],
        client_cert=client[0],
        client_key=client[1],
        rogue_ca_cert=rogue_ca[0],
        rogue_client_cert=rogue[0],
        rogue_client_key=rogue[1],
    )
