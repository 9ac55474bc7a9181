#!/usr/bin/env bash
# The viewer check (issue 11): a processed phantom exam stored in Orthanc with DICOMweb and
# opened in the OHIF viewer in the system Chromium (study list, SEGs, SR, T1 map, PDF).
# Screenshots and the browser console go to DIR (default benchmarks/results/viewer/).
# Needs what scripts/bootstrap.sh installs.  Usage: ./scripts/viewer.sh [DIR] [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results/viewer}
shift || true
VENV=${CORDT1_VENV:-$(pwd)/.venv}
mkdir -p "$OUT"
export CORDT1_VIEWER_ARTEFACTS
CORDT1_VIEWER_ARTEFACTS=$(cd "$OUT" && pwd)
export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
set +e
"$VENV/bin/python" -m pytest tests/test_viewer_ohif.py -p no:cacheprovider -q "$@"
rc=$?
set -e
echo "viewer: screenshots in $OUT"
exit "$rc"
