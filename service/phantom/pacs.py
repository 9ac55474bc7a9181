"""A PACS to receive results in the demo and the end-to-end tests.

Orthanc (Debian package ``orthanc``) when installed; otherwise a small folder-backed receiver
built on our own SCP, so the demo still shows results arriving somewhere.
"""

from __future__ import annotations

import base64
import json
import secrets
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pydicom

from dicom_node.instance import InstanceInfo, PseudonymKey
from dicom_node.scp import ScpConfig, StorageSCP
from dicom_node.spool import Spool

__all__ = [
    "FolderPacs",
    "OrthancPacs",
    "OrthancTls",
    "Pacs",
    "free_port",
    "start_pacs",
    "wait_for_port",
]

ORTHANC_BINARY = "Orthanc"
ORTHANC_SEARCH = ("/usr/sbin/Orthanc", "/usr/bin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
DICOMWEB_CONFIG: dict[str, Any] = {
    "Enable": True,
    "Root": "/dicom-web/",
    "EnableWado": True,
    "WadoRoot": "/wado",
    "StudiesMetadata": "Full",
    "SeriesMetadata": "Full",
}


def free_port() -> int:
    """A TCP port nobody listens on right now (loopback)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout_s: float = 30.0, host: str = "127.0.0.1") -> None:
    """Return when something accepts connections on ``port``.

    Raises
    ------
    TimeoutError
        If nothing listens within ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout_s:.0f} s")


class Pacs(Protocol):
    """What the demo and tests need of a PACS."""

    ae_title: str
    port: int

    @property
    def destination(self) -> str: ...

    def sop_instance_uids(self, study_uid: str) -> set[str]: ...

    def where(self, study_uid: str) -> str: ...

    def stop(self) -> None: ...


def orthanc_binary() -> str | None:
    """Path of the Orthanc executable, or None."""
    found = shutil.which(ORTHANC_BINARY)
    if found:
        return found
    return next((p for p in ORTHANC_SEARCH if Path(p).exists()), None)


@dataclass(frozen=True)
class OrthancTls:
    """PEM files of a DICOM TLS Orthanc (Orthanc's ``DicomTls*`` settings).

    Attributes
    ----------
    certificate, private_key : pathlib.Path
        Orthanc's certificate and its unencrypted key, used as server and as client.
    trusted_certificates : pathlib.Path
        CA certificates the peers' certificates must chain to (peers must present one).
    """

    certificate: Path
    private_key: Path
    trusted_certificates: Path


@dataclass
class OrthancPacs:
    """A throw-away Orthanc on free ports with its own storage folder."""

    folder: Path
    ae_title: str = "ORTHANC"
    user: str = "demo"
    password: str = "demo"
    port: int = 0
    http_port: int = 0
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @classmethod
    def start(
        cls,
        folder: Path,
        *,
        ae_title: str = "ORTHANC",
        dicomweb: bool = False,
        tls: OrthancTls | None = None,
    ) -> OrthancPacs:
        """Start Orthanc and wait until both its HTTP and DICOM ports answer.

        ``dicomweb`` loads the DICOMweb plugin (Debian ``orthanc-dicomweb``) with its REST root
        at ``/dicom-web/`` and WADO-URI at ``/wado``, as a web viewer needs them. With
        ``tls`` its DICOM port speaks DICOM TLS only, and it uses TLS towards modalities
        registered with ``UseDicomTls``.
        """
        binary = orthanc_binary()
        if binary is None:
            raise FileNotFoundError("Orthanc is not installed (Debian package 'orthanc')")
        if dicomweb and not DICOMWEB_PLUGIN.is_file():
            raise FileNotFoundError(
                f"{DICOMWEB_PLUGIN} is missing (Debian package 'orthanc-dicomweb')"
            )
        pacs = cls(folder=folder, ae_title=ae_title, port=free_port(), http_port=free_port())
        folder.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "cordt1-test-pacs",
            "StorageDirectory": str(folder / "db"),
            "IndexDirectory": str(folder / "db"),
            "Plugins": [],
            "HttpPort": pacs.http_port,
            "DicomPort": pacs.port,
            "DicomAet": ae_title,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {pacs.user: pacs.password},
            "DicomCheckCalledAet": True,
            "UnknownSopClassAccepted": True,
            "SaveJobs": False,
            "StableAge": 2,
        }
        if tls is not None:
            config.update(
                DicomTlsEnabled=True,
                DicomTlsCertificate=str(tls.certificate),
                DicomTlsPrivateKey=str(tls.private_key),
                DicomTlsTrustedCertificates=str(tls.trusted_certificates),
                DicomTlsRemoteCertificateRequired=True,
            )
        if dicomweb:
            config["Plugins"] = [str(DICOMWEB_PLUGIN)]
            config["DicomWeb"] = DICOMWEB_CONFIG
        config_path = folder / "orthanc.json"
        config_path.write_text(json.dumps(config, indent=2))
        log = (folder / "orthanc.log").open("ab")
        pacs._process = subprocess.Popen(
            [binary, str(config_path)], stdout=log, stderr=subprocess.STDOUT
        )
        try:
            wait_for_port(pacs.http_port)
            wait_for_port(pacs.port)
        except TimeoutError:
            pacs.stop()
            raise
        return pacs

    @property
    def destination(self) -> str:
        """``AET@HOST:PORT`` of its DICOM port."""
        return f"{self.ae_title}@127.0.0.1:{self.port}"

    def _request(self, path: str, body: dict[str, Any] | None = None) -> Any:
        url = f"http://127.0.0.1:{self.http_port}{path}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, method="POST" if data else "GET")
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def find(self, level: str, query: dict[str, str]) -> list[dict[str, Any]]:
        """Orthanc ``/tools/find`` with ``Expand``."""
        result: list[dict[str, Any]] = self._request(
            "/tools/find", {"Level": level, "Query": query, "Expand": True}
        )
        return result

    def sop_instance_uids(self, study_uid: str) -> set[str]:
        """SOP Instance UIDs Orthanc holds for a study."""
        found = self.find("Instance", {"StudyInstanceUID": study_uid})
        return {item["MainDicomTags"]["SOPInstanceUID"] for item in found}

    def instance_file(self, sop_instance_uid: str) -> bytes:
        """The stored Part-10 bytes of one instance."""
        ids = self.find("Instance", {"SOPInstanceUID": sop_instance_uid})
        if not ids:
            raise KeyError(sop_instance_uid)
        url = f"http://127.0.0.1:{self.http_port}/instances/{ids[0]['ID']}/file"
        request = urllib.request.Request(url)
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(request, timeout=10) as response:
            return bytes(response.read())

    def upload(self, paths: list[Path]) -> list[str]:
        """Store Part-10 files through the REST API; returns their Orthanc instance IDs.

        Raises
        ------
        urllib.error.HTTPError
            If Orthanc refuses a file.
        """
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        ids = []
        for path in paths:
            request = urllib.request.Request(
                f"http://127.0.0.1:{self.http_port}/instances",
                data=path.read_bytes(),
                method="POST",
                headers={"Authorization": f"Basic {token}", "Content-Type": "application/dicom"},
            )
            with urllib.request.urlopen(request, timeout=30) as response:
                ids.append(str(json.loads(response.read())["ID"]))
        return ids

    def where(self, study_uid: str) -> str:
        """Where a person opens the study."""
        studies = self.find("Study", {"StudyInstanceUID": study_uid})
        suffix = f"#study?uuid={studies[0]['ID']}" if studies else ""
        return (
            f"Orthanc explorer http://127.0.0.1:{self.http_port}/app/explorer.html{suffix} "
            f"(user {self.user} / password {self.password})"
        )

    def stop(self) -> None:
        """Stop Orthanc."""
        if self._process and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._process.kill()


@dataclass
class FolderPacs:
    """Our own SCP storing into a folder: a stand-in PACS when Orthanc is missing."""

    folder: Path
    ae_title: str = "FOLDERPACS"
    port: int = 0
    _scp: StorageSCP | None = field(default=None, repr=False)
    _received: dict[str, set[str]] = field(default_factory=dict, repr=False)

    @classmethod
    def start(cls, folder: Path, *, ae_title: str = "FOLDERPACS") -> FolderPacs:
        """Listen on a free port and store everything into ``folder``."""
        from service.inputs.exam import own_markers

        pacs = cls(folder=folder, ae_title=ae_title)
        folder.mkdir(parents=True, exist_ok=True)

        def on_instance(info: InstanceInfo) -> None:
            pacs._received.setdefault(info.study_uid, set()).add(info.sop_instance_uid)

        pacs._scp = StorageSCP(
            ScpConfig(ae_title=ae_title, host="127.0.0.1", port=0, min_free_bytes=0),
            Spool(folder),
            on_instance=on_instance,
            on_association=None,
            own_markers=own_markers(),
            pseudonyms=PseudonymKey(secrets.token_bytes(32)),  # a test peer keeps no keys
        )
        pacs._scp.start()
        pacs.port = pacs._scp.port
        return pacs

    @property
    def destination(self) -> str:
        """``AET@HOST:PORT`` of its DICOM port."""
        return f"{self.ae_title}@127.0.0.1:{self.port}"

    def sop_instance_uids(self, study_uid: str) -> set[str]:
        """SOP Instance UIDs received for a study (read back from the folder)."""
        out = set()
        for path in (self.folder / study_uid).rglob("*.dcm"):
            out.add(str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID))
        return out

    def where(self, study_uid: str) -> str:
        """Where a person finds the files."""
        return f"folder {self.folder / study_uid}"

    def stop(self) -> None:
        """Stop listening."""
        if self._scp:
            self._scp.stop()


def start_pacs(folder: Path) -> OrthancPacs | FolderPacs:
    """Orthanc when installed, else the folder receiver."""
    if orthanc_binary():
        try:
            return OrthancPacs.start(folder)
        except (OSError, TimeoutError, urllib.error.URLError):
            pass
    return FolderPacs.start(folder)
