#!/usr/bin/env bash
# Orthanc (with DICOMweb) + the OHIF viewer on one origin, for looking at cordt1 results.
# See README.md beside this file. Settings (environment):
#   OHIF_DIST       OHIF dist/ folder        (default: <repo>/.cache/ohif/3.13.2/dist, made by
#                                              scripts/bootstrap.sh)
#   ORTHANC_CONFIG  Orthanc JSON config      (default: orthanc.json beside this script)
#   START_ORTHANC   1: start Orthanc here; 0: use a running one at ORTHANC_URL  (default 1)
#   ORTHANC_URL     Orthanc HTTP root        (default http://127.0.0.1:8042)
#   ORTHANC_USER / ORTHANC_PASSWORD   a user of that Orthanc (default viewer / change-me)
#   VIEWER_HOST / VIEWER_PORT         where the viewer listens (default 127.0.0.1:3000)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
OHIF_DIST=${OHIF_DIST:-$ROOT/.cache/ohif/3.13.2/dist}
ORTHANC_CONFIG=${ORTHANC_CONFIG:-$HERE/orthanc.json}
START_ORTHANC=${START_ORTHANC:-1}
ORTHANC_URL=${ORTHANC_URL:-http://127.0.0.1:8042}
export ORTHANC_USER=${ORTHANC_USER:-viewer}
export ORTHANC_PASSWORD=${ORTHANC_PASSWORD:-change-me}
VIEWER_HOST=${VIEWER_HOST:-127.0.0.1}
VIEWER_PORT=${VIEWER_PORT:-3000}
PYTHON=${PYTHON:-python3}

if [ ! -f "$OHIF_DIST/index.html" ]; then
  echo "viewer: no OHIF viewer at $OHIF_DIST (run scripts/bootstrap.sh as root, or set OHIF_DIST)" >&2
  exit 1
fi
if [ "$START_ORTHANC" = 1 ]; then
  [ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || {
    echo "viewer: the DICOMweb plugin is missing (apt-get install orthanc-dicomweb)" >&2
    exit 1
  }
  storage=$("$PYTHON" -c 'import json,sys; print(json.load(open(sys.argv[1]))["StorageDirectory"])' "$ORTHANC_CONFIG")
  mkdir -p "$storage"
  /usr/sbin/Orthanc "$ORTHANC_CONFIG" >"$storage/../orthanc.log" 2>&1 &
  orthanc_pid=$!
  trap 'kill "$orthanc_pid" 2>/dev/null || true; wait "$orthanc_pid" 2>/dev/null || true' EXIT
  for _ in $(seq 1 100); do
    curl -fsS -u "$ORTHANC_USER:$ORTHANC_PASSWORD" "$ORTHANC_URL/system" >/dev/null 2>&1 && break
    kill -0 "$orthanc_pid" 2>/dev/null || { echo "viewer: Orthanc did not start (see $storage/../orthanc.log)" >&2; exit 1; }
    sleep 0.2
  done
  echo "viewer: Orthanc on $ORTHANC_URL (DICOM: see $ORTHANC_CONFIG)"
fi
"$PYTHON" "$HERE/ohif_proxy.py" --dist "$OHIF_DIST" --app-config "$HERE/app-config.js" \
  --orthanc "$ORTHANC_URL" --host "$VIEWER_HOST" --port "$VIEWER_PORT"
