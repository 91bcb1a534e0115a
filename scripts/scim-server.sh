#!/usr/bin/env bash
# Installs (once) and starts the real SCIM 2.0 server the scim provider's
# tests run against: scim2-server (python-scim), in memory, on 127.0.0.1.
#
#   scripts/scim-server.sh PORT TOKEN
#
# The venv lives under ${IDSYNC_TOOLS:-$HOME/.cache/idsync-tools}/scim-venv.
# Needs python3 with the venv module (Debian: python3-venv).
set -euo pipefail

SCIM2_SERVER_VERSION=0.8.3

if [ "$#" -ne 2 ]; then
  echo "usage: $0 PORT TOKEN" >&2
  exit 2
fi
port=$1
token=$2

tools=${IDSYNC_TOOLS:-$HOME/.cache/idsync-tools}
venv=$tools/scim-venv
server=$venv/bin/scim2-server

installed_version() {
  "$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("scim2-server"))' 2>/dev/null || true
}

if [ ! -x "$server" ] || [ "$(installed_version)" != "$SCIM2_SERVER_VERSION" ]; then
  mkdir -p "$tools"
  # Several tests may start a server at once: install under a lock.
  exec 9>"$tools/scim-venv.lock"
  flock 9
  if [ ! -x "$server" ] || [ "$(installed_version)" != "$SCIM2_SERVER_VERSION" ]; then
    if [ ! -x "$venv/bin/python" ]; then
      python3 -m venv "$venv" >&2
    fi
    "$venv/bin/pip" install --quiet --disable-pip-version-check "scim2-server==$SCIM2_SERVER_VERSION" >&2
  fi
  flock -u 9
  exec 9>&-
fi

exec "$server" --hostname 127.0.0.1 --port "$port" --bearer-token "$token"
