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
# Two pytest processes by default (CORDT1_TEST_WORKERS=1 for one): most slow tests wait on
# peers (DCMTK, Orthanc, Redis, a service) rather than compute. Each test file stays in one
# process, so its module fixtures are built once.
parallel=()
workers=${CORDT1_TEST_WORKERS:-2}
if [ "$workers" -gt 1 ]; then
  parallel=(-n "$workers" --dist loadfile)
fi
set +e
"$VENV/bin/python" -m pytest "${parallel[@]}" "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "test: pytest collected no tests; that is a failure" >&2
  exit 1
fi
exit "$rc"
