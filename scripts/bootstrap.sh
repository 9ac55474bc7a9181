#!/usr/bin/env bash
# Install what cordt1 needs on a fresh Debian 12 machine: the DICOM peers used by the demo and
# the tests (DCMTK, dicom3tools, Orthanc with its DICOMweb plugin, Redis, the PixelMed SR validator,
# pdftotext, Chromium for the viewer test, PostgreSQL for throw-away clusters), a Python venv with the project in it, and the OHIF
# web viewer (npm package @ohif/app, prebuilt dist/) in .cache/ohif/<version>/.
# Safe to run again: it skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${CORDT1_VENV:-$ROOT/.venv}
PY=${PYTHON:-python3}

need_apt=()
command -v storescu >/dev/null 2>&1 || need_apt+=(dcmtk)
command -v dciodvfy >/dev/null 2>&1 || need_apt+=(dicom3tools)
{ command -v Orthanc >/dev/null 2>&1 || [ -x /usr/sbin/Orthanc ]; } || need_apt+=(orthanc)
[ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need_apt+=(orthanc-dicomweb)
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v pdftotext >/dev/null 2>&1 || need_apt+=(poppler-utils)
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)  # the install test
[ -f /usr/share/java/pixelmed.jar ] || need_apt+=(pixelmed-apps)
[ -x /usr/lib/postgresql/15/bin/initdb ] || need_apt+=(postgresql)  # throw-away clusters (fault suite)
if [ "${#need_apt[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap: installing Debian packages: ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  else
    echo "bootstrap: missing ${need_apt[*]} (install them as root with apt-get); continuing" >&2
  fi
fi

# The orthanc package enables and starts a system instance (4242/8042); the demo and the tests
# run their own peers, so the system one is disabled and stopped, on every run. Only that
# instance is stopped (systemd's unit, or the init script's pid file and user), never a peer.
quiet_system_orthanc() {
  [ "$(id -u)" = 0 ] || return 0
  [ -e /etc/init.d/orthanc ] || [ -e /lib/systemd/system/orthanc.service ] || return 0
  if [ -d /run/systemd/system ]; then
    systemctl disable --now orthanc.service >/dev/null 2>&1 || true
  else
    systemctl disable orthanc.service >/dev/null 2>&1 || true  # no systemd running: the links
    update-rc.d orthanc disable >/dev/null 2>&1 || true
    start-stop-daemon --stop --quiet --oknodo --pidfile /run/orthanc.pid --user orthanc \
      >/dev/null 2>&1 || true
  fi
}
quiet_system_orthanc

if [ ! -x "$VENV/bin/python" ]; then
  echo "bootstrap: creating $VENV"
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.cordt1-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "bootstrap: installing cordt1 and its dependencies into $VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -e ".[test]"
  touch "$stamp"
fi

# The OHIF viewer for tests/test_viewer_ohif.py and deploy/viewer/: the prebuilt dist/ of a pinned
# @ohif/app from the npm registry (no browser download: the tests use the system Chromium).
OHIF_VERSION=${CORDT1_OHIF_VERSION:-3.13.2}
OHIF_DIR=$ROOT/.cache/ohif/$OHIF_VERSION
if [ ! -f "$OHIF_DIR/dist/index.html" ]; then
  if command -v npm >/dev/null 2>&1; then
    echo "bootstrap: fetching @ohif/app@$OHIF_VERSION into $OHIF_DIR"
    tmp=$(mktemp -d)
    (cd "$tmp" && npm pack --silent "@ohif/app@$OHIF_VERSION" >/dev/null && tar xzf ohif-app-*.tgz)
    mkdir -p "$OHIF_DIR"
    rm -rf "$OHIF_DIR/dist"
    mv "$tmp/package/dist" "$OHIF_DIR/dist"
    cp "$tmp/package/package.json" "$OHIF_DIR/package.json"
    rm -rf "$tmp"
  else
    echo "bootstrap: npm missing, cannot fetch the OHIF viewer; the viewer test will fail" >&2
  fi
fi
