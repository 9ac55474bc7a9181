"""deploy/viewer/ohif_proxy.py: the viewer's files and Orthanc's DICOMweb on one origin."""

from __future__ import annotations

import importlib.util
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

PROXY = Path(__file__).resolve().parents[1] / "deploy" / "viewer" / "ohif_proxy.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ohif_proxy", PROXY)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ohif_proxy = _load()


class _Echo(BaseHTTPRequestHandler):
    """A stand-in Orthanc: answers with what it was asked."""

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        body = json.dumps({"path": self.path, "headers": dict(self.headers.items())}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def upstream() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture
def viewer(tmp_path: Path, upstream: str) -> Iterator[str]:
    dist = tmp_path / "dist"
    (dist / "assets").mkdir(parents=True)
    (dist / "index.html").write_text("<html>viewer</html>")
    (dist / "app.wasm").write_bytes(b"\0asm")
    (dist / "app-config.js").write_text("window.config = {shipped: true};")
    (tmp_path / "secret.txt").write_text("outside dist")
    config = tmp_path / "site-config.js"
    config.write_text("window.config = {site: true};")
    server = ohif_proxy.serve(
        dist=dist,
        app_config=config,
        orthanc_url=upstream,
        port=0,
        orthanc_user="viewer",
        orthanc_password="s3cret",
    )
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _get(url: str) -> tuple[str, bytes]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.headers.get("Content-Type", ""), response.read()


def test_comma_separated_includefield_is_split_into_repeated_parameters() -> None:
    query = "limit=25&includefield=00081030,00080060&StudyDate=2022"
    assert ohif_proxy.split_includefield(query) == (
        "limit=25&includefield=00081030&includefield=00080060&StudyDate=2022"
    )


def test_dicomweb_is_forwarded_with_credentials_host_and_split_fields(viewer: str) -> None:
    content_type, body = _get(f"{viewer}/dicom-web/studies?includefield=00081030,00080060")
    echoed: dict[str, Any] = json.loads(body)
    assert content_type == "application/dicom+json"
    assert echoed["path"] == "/dicom-web/studies?includefield=00081030&includefield=00080060"
    assert echoed["headers"]["Authorization"] == "Basic dmlld2VyOnMzY3JldA=="
    assert echoed["headers"]["Host"] == viewer.removeprefix("http://")
    assert json.loads(_get(f"{viewer}/wado?requestType=WADO")[1])["path"].startswith("/wado")


def test_site_config_replaces_the_shipped_one_and_routes_fall_back_to_the_app(
    viewer: str,
) -> None:
    assert _get(f"{viewer}/app-config.js")[1] == b"window.config = {site: true};"
    assert _get(f"{viewer}/viewer?StudyInstanceUIDs=1.2.3")[1] == b"<html>viewer</html>"
    assert _get(f"{viewer}/app.wasm") == ("application/wasm", b"\0asm")
    assert _get(f"{viewer}/../secret.txt")[1] == b"<html>viewer</html>"
    assert _get(f"{viewer}/%2e%2e/secret.txt")[1] == b"<html>viewer</html>"


def test_orthanc_down_is_a_bad_gateway(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("x")
    config = tmp_path / "c.js"
    config.write_text("")
    server = ohif_proxy.serve(
        dist=tmp_path, app_config=config, orthanc_url="http://127.0.0.1:9", port=0
    )
    try:
        with pytest.raises(urllib.error.HTTPError) as raised:
            _get(f"http://127.0.0.1:{server.server_address[1]}/dicom-web/studies")
        assert raised.value.code == 502
    finally:
        server.shutdown()


def test_a_folder_without_the_viewer_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not an OHIF dist"):
        ohif_proxy.serve(
            dist=tmp_path, app_config=tmp_path / "c.js", orthanc_url="http://x:1", port=0
        )


@pytest.mark.slow
def test_a_real_orthanc_answers_the_viewer_through_the_proxy(tmp_path: Path) -> None:
    """QIDO and WADO-RS metadata from Orthanc's DICOMweb plugin, credentials added on the way."""
    import numpy as np

    from service.phantom.pacs import OrthancPacs
    from tests.dicom_factory import make_legacy_series, write_datasets

    pacs = OrthancPacs.start(tmp_path / "orthanc", dicomweb=True)
    server = None
    try:
        series = make_legacy_series(
            np.zeros((2, 8, 8), np.uint16), np.eye(4), series_description="viewer check"
        )
        pacs.upload(write_datasets(series, tmp_path / "mr"))
        dist = tmp_path / "dist"
        dist.mkdir()
        (dist / "index.html").write_text("x")
        server = ohif_proxy.serve(
            dist=dist,
            app_config=dist / "index.html",
            orthanc_url=f"http://127.0.0.1:{pacs.http_port}",
            port=0,
            orthanc_user=pacs.user,
            orthanc_password=pacs.password,
        )
        root = f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
        study_uid = str(series[0].StudyInstanceUID)
        studies = json.loads(_get(f"{root}/studies?includefield=00081030,00080060")[1])
        assert [s["0020000D"]["Value"][0] for s in studies] == [study_uid]
        found = json.loads(_get(f"{root}/studies/{study_uid}/series")[1])
        assert found[0]["0008103E"]["Value"] == ["viewer check"]
        metadata = json.loads(_get(f"{root}/studies/{study_uid}/metadata")[1])
        assert len(metadata) == 2
    finally:
        if server is not None:
            server.shutdown()
        pacs.stop()
