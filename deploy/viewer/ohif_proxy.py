#!/usr/bin/env python3
"""Serve the OHIF viewer and an Orthanc's DICOMweb from one origin (standard library only).

The viewer's prebuilt ``dist/`` folder (npm package ``@ohif/app``) is served as static files with
a fallback to ``index.html`` (the viewer routes in the browser); ``/app-config.js`` is answered
from the given configuration file; ``/dicom-web/...`` and ``/wado...`` are forwarded to Orthanc
with the browser's ``Host`` header kept, so the bulk-data addresses Orthanc writes into its
metadata point back at this server. A comma-separated ``includefield`` is sent on as repeated
parameters, the form every DICOMweb server understands (not all take the comma form).

Run ``python3 ohif_proxy.py --help``; see README.md beside this file.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import mimetypes
import os
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

FORWARDED_PREFIXES = ("/dicom-web", "/wado")
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
}
CHUNK_BYTES = 1 << 16
mimetypes.add_type("application/wasm", ".wasm")
mimetypes.add_type("text/javascript", ".js")
mimetypes.add_type("font/woff2", ".woff2")


def split_includefield(query: str) -> str:
    """Repeat ``includefield`` once per comma-separated value; other parameters unchanged.

    >>> split_includefield("limit=10&includefield=00081030,00080060")
    'limit=10&includefield=00081030&includefield=00080060'
    """
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
    out: list[tuple[str, str]] = []
    for key, value in pairs:
        if key.lower() == "includefield":
            out.extend((key, part) for part in value.split(",") if part)
        else:
            out.append((key, value))
    return urllib.parse.urlencode(out, safe=",*")


class ViewerServer(ThreadingHTTPServer):
    """The HTTP server with what the handler needs to know."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        *,
        dist: Path,
        app_config: Path,
        orthanc_url: str,
        orthanc_auth: str | None,
    ) -> None:
        if not (dist / "index.html").is_file():
            raise ValueError(f"{dist} is not an OHIF dist/ folder (no index.html)")
        if not app_config.is_file():
            raise ValueError(f"app config {app_config} does not exist")
        parsed = urllib.parse.urlsplit(orthanc_url)
        if parsed.scheme != "http" or not parsed.hostname:
            raise ValueError(f"Orthanc URL must be http://HOST:PORT, got {orthanc_url!r}")
        super().__init__(address, ViewerHandler)
        self.dist = dist.resolve()
        self.app_config = app_config
        self.orthanc_host = parsed.hostname
        self.orthanc_port = parsed.port or 80
        self.orthanc_auth = orthanc_auth


class ViewerHandler(BaseHTTPRequestHandler):
    """Static viewer files, the app config and the DICOMweb proxy."""

    server: ViewerServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        if os.environ.get("OHIF_PROXY_VERBOSE"):
            sys.stderr.write(f"{self.address_string()} {format % args}\n")

    def do_GET(self) -> None:
        self._answer(head=False)

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def _answer(self, *, head: bool) -> None:
        path = urllib.parse.urlsplit(self.path).path
        if path.startswith(FORWARDED_PREFIXES):
            self._forward(head=head)
        elif path == "/app-config.js":
            self._file(self.server.app_config, head=head)
        else:
            self._static(urllib.parse.unquote(path), head=head)

    def _static(self, path: str, *, head: bool) -> None:
        target = (self.server.dist / path.lstrip("/")).resolve()
        if not target.is_relative_to(self.server.dist) or not target.is_file():
            target = self.server.dist / "index.html"
        self._file(target, head=head)

    def _file(self, target: Path, *, head: bool) -> None:
        content_type = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        size = target.stat().st_size
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(size))
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        if head:
            return
        with target.open("rb") as handle:
            while chunk := handle.read(CHUNK_BYTES):
                self.wfile.write(chunk)

    def _forward(self, *, head: bool) -> None:
        parts = urllib.parse.urlsplit(self.path)
        target = parts.path + ("?" + split_includefield(parts.query) if parts.query else "")
        headers = {
            "Host": self.headers.get("Host", f"{self.server.server_address[0]}"),
            "Accept": self.headers.get("Accept", "*/*"),
        }
        if self.server.orthanc_auth:
            headers["Authorization"] = self.server.orthanc_auth
        connection = http.client.HTTPConnection(
            self.server.orthanc_host, self.server.orthanc_port, timeout=120
        )
        try:
            connection.request("HEAD" if head else "GET", target, headers=headers)
            response = connection.getresponse()
            body = response.read()
        except OSError as error:
            self.send_error(502, f"Orthanc did not answer: {error}")
            return
        finally:
            connection.close()
        self.send_response(response.status)
        for key, value in response.getheaders():
            if key.lower() not in HOP_BY_HOP and key.lower() != "content-length":
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)


def basic_auth(user: str | None, password: str | None) -> str | None:
    """The ``Authorization`` header value for Orthanc, or None without a user."""
    if not user:
        return None
    token = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
    return f"Basic {token}"


def serve(
    *,
    dist: Path,
    app_config: Path,
    orthanc_url: str,
    host: str = "127.0.0.1",
    port: int = 3000,
    orthanc_user: str | None = None,
    orthanc_password: str | None = None,
) -> ViewerServer:
    """Start the server in a background thread and return it (``shutdown()`` stops it)."""
    server = ViewerServer(
        (host, port),
        dist=dist,
        app_config=app_config,
        orthanc_url=orthanc_url,
        orthanc_auth=basic_auth(orthanc_user, orthanc_password),
    )
    threading.Thread(target=server.serve_forever, name="ohif-proxy", daemon=True).start()
    return server


def main(argv: list[str] | None = None) -> int:
    """Command line: serve until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dist", type=Path, required=True, help="OHIF dist/ folder")
    parser.add_argument("--app-config", type=Path, required=True, help="app-config.js to serve")
    parser.add_argument("--orthanc", default="http://127.0.0.1:8042", help="Orthanc HTTP root")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=3000)
    parser.add_argument(
        "--orthanc-user", default=os.environ.get("ORTHANC_USER"), help="or $ORTHANC_USER"
    )
    args = parser.parse_args(argv)
    server = ViewerServer(
        (args.host, args.port),
        dist=args.dist,
        app_config=args.app_config,
        orthanc_url=args.orthanc,
        orthanc_auth=basic_auth(args.orthanc_user, os.environ.get("ORTHANC_PASSWORD")),
    )
    print(f"OHIF viewer on http://{args.host}:{server.server_address[1]}/", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
