#!/usr/bin/env bash
# Checks the msgraph test fixture's responses against Microsoft's own Python
# SDK (msgraph-sdk, its kiota models and JSON parse node): a response shape
# the SDK cannot read fails. Installs the SDK once into a venv.
#
#   scripts/graph-sdk-check.sh DIR
#
# DIR holds KIND__NAME.json files (see scripts/graph-sdk-check.py for the
# kinds). The venv lives under ${IDSYNC_TOOLS:-$HOME/.cache/idsync-tools}/graph-sdk-venv.
# Needs python3 with the venv module (Debian: python3-venv).
set -euo pipefail

MSGRAPH_SDK_VERSION=1.65.0

if [ "$#" -ne 1 ]; then
  echo "usage: $0 DIR" >&2
  exit 2
fi
here=$(cd "$(dirname "$0")" && pwd)
tools=${IDSYNC_TOOLS:-$HOME/.cache/idsync-tools}
venv=$tools/graph-sdk-venv

installed_version() {
  "$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("msgraph-sdk"))' 2>/dev/null || true
}

if [ "$(installed_version)" != "$MSGRAPH_SDK_VERSION" ]; then
  mkdir -p "$tools"
  # Several tests may check at once: install under a lock.
  exec 9>"$tools/graph-sdk-venv.lock"
  flock 9
  if [ "$(installed_version)" != "$MSGRAPH_SDK_VERSION" ]; then
    if [ ! -x "$venv/bin/python" ]; then
      python3 -m venv "$venv" >&2
    fi
    "$venv/bin/pip" install --quiet --disable-pip-version-check "msgraph-sdk==$MSGRAPH_SDK_VERSION" >&2
  fi
  flock -u 9
  exec 9>&-
fi

exec "$venv/bin/python" "$here/graph-sdk-check.py" "$1"
