#!/usr/bin/env bash
# Install cordt1 on a production Debian host, as root:
#   deploy/install.sh [--prefix DIR] [--bids-dir DIR] [--with-redis] [--with-postgresql]
#                     [--python PYTHON] [--pip-args "ARGS"]
# Creates the system user cordt1, /etc/cordt1/cordt1.toml (the commented example; an existing
# file is kept), /var/lib/cordt1 (0750), a venv with the project under /opt/cordt1, installs the
# systemd units (cordt1.service, the extra-worker template cordt1-worker@.service) and enables
# cordt1.service. Drop-ins add ReadWritePaths for a bids_dir outside /var/lib/cordt1
# (ProtectSystem=strict) and Wants/After for a Redis or PostgreSQL on this host.
# --prefix DIR installs into a throw-away root for testing: no user is created, nothing is
# chowned and systemctl is never called.
set -euo pipefail

SOURCE=$(cd "$(dirname "$0")/.." && pwd)
PREFIX=""
BIDS_DIR=""
WITH_REDIS=0
WITH_POSTGRESQL=0
PYTHON=${PYTHON:-python3}
PIP_ARGS=""
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) PREFIX=$(realpath -m "$2"); shift 2 ;;
    --bids-dir) BIDS_DIR=$(realpath -m "$2"); shift 2 ;;
    --with-redis) WITH_REDIS=1; shift ;;
    --with-postgresql) WITH_POSTGRESQL=1; shift ;;
    --python) PYTHON=$2; shift 2 ;;
    --pip-args) PIP_ARGS=$2; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "install: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

if [ -z "$PREFIX" ] && [ "$(id -u)" != 0 ]; then
  echo "install: run as root (or with --prefix DIR for a test install)" >&2
  exit 1
fi
say() { echo "install: $*"; }

ETC=$PREFIX/etc/cordt1
DATA=$PREFIX/var/lib/cordt1
OPT=$PREFIX/opt/cordt1
UNITS=$PREFIX/etc/systemd/system

# 1. the system user (a real install only)
if [ -z "$PREFIX" ] && ! getent passwd cordt1 >/dev/null; then
  say "creating the system user cordt1"
  useradd --system --user-group --home-dir /var/lib/cordt1 --no-create-home \
    --shell /usr/sbin/nologin --comment "cordt1 DICOM service" cordt1
fi
owner() {  # owner USER:GROUP PATH... (skipped in a test root)
  local who=$1; shift
  [ -n "$PREFIX" ] || chown "$who" "$@"
}

# 2. folders: the configuration readable by the service only, the data its own
install -d -m 0755 "$OPT" "$UNITS"
install -d -m 0750 "$ETC" "$DATA"
owner root:cordt1 "$ETC"
owner cordt1:cordt1 "$DATA"

# 3. configuration: the commented example, never over an existing file
for name in cordt1 site-protocols; do
  target=$ETC/$name.toml
  if [ -e "$target" ]; then
    say "keeping $target"
  else
    install -m 0640 "$SOURCE/deploy/$name.example.toml" "$target"
    owner root:cordt1 "$target"
    say "wrote $target (edit it: destinations, allowed AEs, protocols)"
  fi
done

# 4. the venv with the project (not editable: the installed copy does not follow the source)
if [ ! -x "$OPT/.venv/bin/python" ]; then
  say "creating $OPT/.venv"
  "$PYTHON" -m venv "$OPT/.venv"
fi
say "installing cordt1 into $OPT/.venv"
# Built from a clean copy: an in-tree build would leave build/ in the source, and a stale
# build/lib could carry removed modules into the next install.
BUILD=$(mktemp -d)
trap 'rm -rf "$BUILD"' EXIT
cp -r "$SOURCE/pyproject.toml" "$SOURCE/README.md" "$SOURCE/service" "$SOURCE/dicom_node" \
  "$SOURCE/processing" "$SOURCE/reports" "$BUILD/"
# shellcheck disable=SC2086
"$OPT/.venv/bin/python" -m pip install -q $PIP_ARGS "$BUILD"
install -d -m 0755 "$OPT/share/doc"
install -m 0644 "$SOURCE/docs/operations.md" "$SOURCE/docs/configuration.md" "$OPT/share/doc/"

# 5. systemd units and drop-ins
install -m 0644 "$SOURCE/deploy/systemd/cordt1.service" \
  "$SOURCE/deploy/systemd/cordt1-worker@.service" "$UNITS/"
dropin() {  # dropin UNIT NAME TEXT: a drop-in beside UNIT
  install -d -m 0755 "$UNITS/$1.d"
  printf '%s\n' "$3" >"$UNITS/$1.d/$2.conf"
  chmod 0644 "$UNITS/$1.d/$2.conf"
}
if [ -n "$BIDS_DIR" ]; then
  install -d -m 0750 "$PREFIX$BIDS_DIR"
  owner cordt1:cordt1 "$PREFIX$BIDS_DIR"
  for unit in cordt1.service cordt1-worker@.service; do
    dropin "$unit" bids-dir "# written by install.sh: bids_dir is outside /var/lib/cordt1
[Service]
ReadWritePaths=$BIDS_DIR"
  done
  say "bids_dir $BIDS_DIR is writable for the service (set bids_dir in $ETC/cordt1.toml)"
fi
peers=()
[ "$WITH_REDIS" = 1 ] && peers+=(redis-server.service)
[ "$WITH_POSTGRESQL" = 1 ] && peers+=(postgresql.service)
if [ "${#peers[@]}" -gt 0 ]; then
  for unit in cordt1.service cordt1-worker@.service; do
    dropin "$unit" peers "# written by install.sh: the distribution's units on this host
[Unit]
Wants=${peers[*]}
After=${peers[*]}"
  done
fi

if [ -n "$PREFIX" ]; then
  say "test install into $PREFIX done (no user, no chown, no systemctl)"
  exit 0
fi
systemctl daemon-reload
systemctl enable cordt1.service
say "enabled cordt1.service; edit $ETC/cordt1.toml, then: systemctl start cordt1"
say "extra workers (multi-host, Redis + PostgreSQL): systemctl enable --now cordt1-worker@1"
