#!/usr/bin/env bash
# Reads an Okta org with Okta's official Python SDK (PyPI `okta`) and prints
# what it read as JSON: the okta provider's fixture org is checked with it,
# so a response shape, a Link header, an error body or a rate-limit header
# the SDK cannot read fails the test (tests/integration/okta.rs).
#
#   scripts/okta-sdk-check.sh --install        install the SDK (scripts/test does)
#   scripts/okta-sdk-check.sh ORG_URL API_TOKEN [CLIENT_ID PRIVATE_KEY_FILE]
#
# The SDK lives in a venv under $IDSYNC_TOOLS (default ~/.cache/idsync-tools);
# installing it takes about half a minute.
set -euo pipefail

OKTA_SDK_VERSION=3.4.6
tools=${IDSYNC_TOOLS:-$HOME/.cache/idsync-tools}
venv="$tools/okta-venv"

if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import okta" 2>/dev/null; then
  echo "okta-sdk-check: installing okta $OKTA_SDK_VERSION" >&2
  mkdir -p "$tools"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "okta==$OKTA_SDK_VERSION"
fi
if [ "${1:-}" = "--install" ]; then
  exit 0
fi

exec "$venv/bin/python" - "$@" <<'PY'
import asyncio
import json
import os
import sys

# The fixture org is on http://127.0.0.1: the SDK allows that only in its
# testing mode, which it reads from the environment alone.
os.environ["OKTA_TESTING_TESTINGDISABLEHTTPSCHECK"] = "true"

from okta.client import Client
from okta.models import Group, User
from okta.pagination import PaginationHelper

org, token = sys.argv[1], sys.argv[2]
service_app = sys.argv[3:5] if len(sys.argv) >= 5 else None


def fail(message):
    print(f"okta-sdk-check: {message}", file=sys.stderr)
    sys.exit(1)


def config():
    base = {
        "orgUrl": org,
        "rateLimit": {"maxRetries": 2},
        "requestTimeout": 30,
    }
    if service_app:
        client_id, key_file = service_app
        with open(key_file) as f:
            key = f.read()
        return {**base, "authorizationMode": "PrivateKey", "clientId": client_id,
                "scopes": ["okta.users.read", "okta.groups.read"], "privateKey": key}
    return {**base, "token": token}


async def every(method, *args, **kwargs):
    """Every item of a listing, page after page by the cursor of its Link
    rel="next", as the SDK's own PaginationHelper reads it."""
    out, after = [], None
    while True:
        if after:
            kwargs["after"] = after
        items, resp, err = await method(*args, limit=2, **kwargs)
        if err:
            fail(f"{method.__name__}{args} after {after}: {err}")
        out.extend(items or [])
        after = PaginationHelper.extract_next_cursor(resp.headers)
        if not after:
            return out


def check_user(user):
    if not isinstance(user, User):
        user = User.from_dict(user)
    # Round trip: what the SDK read is what was sent.
    return {"id": user.id, "status": user.status.value, "login": user.profile.login,
            "lastUpdated": user.last_updated.isoformat()}


async def main():
    result = {}
    async with Client(config()) as client:
        users = await every(client.list_users)
        result["users"] = [check_user(u) for u in users]
        gone = await every(client.list_users, search='status eq "DEPROVISIONED"')
        result["deprovisioned"] = [check_user(u)["id"] for u in gone]
        groups = await every(client.list_groups)
        result["groups"] = {}
        for group in groups:
            group = group if isinstance(group, Group) else Group.from_dict(group)
            members = await every(client.list_group_users, group.id)
            result["groups"][group.profile.actual_instance.name] = sorted(check_user(m)["id"] for m in members)
        if users:
            one, _, err = await client.get_user(users[0].id)
            if err:
                fail(f"get_user: {err}")
            result["user"] = check_user(one)
        _, _, err = await client.get_user("00unobody000000000000")
        result["missing"] = {"status": getattr(err, "status", None), "errorCode": getattr(err, "error_code", None)}
    bad = {**config(), "token": "not-the-token"}
    bad.pop("authorizationMode", None)
    async with Client(bad) as client:
        _, _, err = await client.list_users(limit=2)
        result["badToken"] = {"status": getattr(err, "status", None), "errorCode": getattr(err, "error_code", None)}
    print(json.dumps(result))


asyncio.run(main())
PY
