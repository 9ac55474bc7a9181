#!/usr/bin/env bash
# The demo: a synthetic 7 T exam goes from a simulated scanner through cordt1 into a PACS.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
VENV=${CORDT1_VENV:-$(pwd)/.venv}
exec "$VENV/bin/cordt1" demo "$@"
