#!/usr/bin/env bash
# The whole test suite, real peers included: ./scripts/test.sh [pytest args]
# Quick loop without the slow end-to-end tests: ./scripts/test.sh -m "not slow"
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
./scripts/ensure_redis.sh || echo "test: no Redis; the Redis tests will fail" >&2
VENV=${CORDT1_VENV:-$(pwd)/.venv}
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
set +e
"$VENV/bin/python" -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "test: pytest collected no tests; that is a failure" >&2
  exit 1
fi
exit "$rc"
