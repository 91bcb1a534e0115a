"""Parses the msgraph fixture's responses with Microsoft's msgraph-sdk models
(kiota's JSON parse node), and checks that every field landed where the SDK
reads it: links, ids and properties in the typed model, annotations such as
@removed, members@delta and manager@delta in additional_data. Exits 1 on the
first response the SDK reads differently from what the fixture meant.

Kinds (file KIND__NAME.json): users_delta, groups_delta, user,
group_collection, user_collection, odata_error, token, oauth_error.
"""

import datetime
import json
import pathlib
import re
import sys

from kiota_serialization_json.json_parse_node_factory import JsonParseNodeFactory
from msgraph.generated.groups.delta.delta_get_response import DeltaGetResponse as GroupsDelta
from msgraph.generated.models.group_collection_response import GroupCollectionResponse
from msgraph.generated.models.o_data_errors.o_data_error import ODataError
from msgraph.generated.models.user import User
from msgraph.generated.models.user_collection_response import UserCollectionResponse
from msgraph.generated.users.delta.delta_get_response import DeltaGetResponse as UsersDelta

FACTORY = JsonParseNodeFactory()


def parse(raw: bytes, model):
    node = FACTORY.get_root_parse_node("application/json", raw)
    return node.get_object_value(model)


def snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


class Mismatch(Exception):
    pass


def expect(cond, what):
    if not cond:
        raise Mismatch(what)


def same(value, parsed, what):
    if value is None:
        expect(parsed is None, f"{what}: null became {parsed!r}")
    elif isinstance(value, (bool, str)) and not isinstance(parsed, (datetime.datetime, datetime.date)):
        expect(parsed == value, f"{what}: {value!r} became {parsed!r}")
    elif isinstance(value, str):
        # Dates and times are typed: they must parse to the same instant.
        expect(parsed is not None, f"{what}: {value!r} was not read")
        text = value.replace("Z", "+00:00")
        expect(parsed == datetime.datetime.fromisoformat(text), f"{what}: {value!r} became {parsed!r}")
    elif isinstance(value, list):
        expect(parsed is not None and len(parsed) == len(value), f"{what}: a list of {len(value)} became {parsed!r}")
    else:
        expect(parsed is not None, f"{what}: {value!r} was not read")


def check_entity(raw: dict, parsed, what: str):
    """Every property of a user or group in its typed attribute, every
    annotation in additional_data."""
    for key, value in raw.items():
        if key == "@odata.type":
            expect(parsed.odata_type == value, f"{what}: @odata.type")
        elif "@" in key:
            expect(key in parsed.additional_data, f"{what}: {key} is not in additional_data")
            expect(parsed.additional_data[key] is not None, f"{what}: {key} was lost")
        else:
            attribute = snake(key)
            expect(hasattr(parsed, attribute), f"{what}: the model has no {attribute} for {key}")
            same(value, getattr(parsed, attribute), f"{what}.{key}")
            expect(key not in (parsed.additional_data or {}), f"{what}: {key} fell into additional_data")


def check_collection(raw: dict, parsed, what: str, delta: bool):
    known = {"@odata.context", "@odata.nextLink", "value"} | ({"@odata.deltaLink"} if delta else set())
    unknown = set(raw) - known
    expect(not unknown, f"{what}: the SDK has no place for {sorted(unknown)}")
    expect(parsed.value is not None and len(parsed.value) == len(raw["value"]), f"{what}: value")
    expect(parsed.odata_next_link == raw.get("@odata.nextLink"), f"{what}: @odata.nextLink")
    if delta:
        expect(parsed.odata_delta_link == raw.get("@odata.deltaLink"), f"{what}: @odata.deltaLink")
    for i, (entry, model) in enumerate(zip(raw["value"], parsed.value)):
        check_entity(entry, model, f"{what}.value[{i}]")


def check(kind: str, raw_bytes: bytes, name: str):
    raw = json.loads(raw_bytes)
    if kind == "users_delta":
        check_collection(raw, parse(raw_bytes, UsersDelta), name, True)
    elif kind == "groups_delta":
        check_collection(raw, parse(raw_bytes, GroupsDelta), name, True)
    elif kind == "user_collection":
        check_collection(raw, parse(raw_bytes, UserCollectionResponse), name, False)
    elif kind == "group_collection":
        check_collection(raw, parse(raw_bytes, GroupCollectionResponse), name, False)
    elif kind == "user":
        check_entity({k: v for k, v in raw.items() if k != "@odata.context"}, parse(raw_bytes, User), name)
    elif kind == "odata_error":
        parsed = parse(raw_bytes, ODataError)
        expect(parsed.error is not None, f"{name}: no error")
        expect(parsed.error.code == raw["error"]["code"], f"{name}: error.code")
        expect(parsed.error.message == raw["error"]["message"], f"{name}: error.message")
        expect(parsed.error.inner_error is not None, f"{name}: error.innerError")
    elif kind == "token":
        # RFC 6749 5.1, as MSAL (which azure-identity uses) reads it.
        expect(isinstance(raw.get("access_token"), str) and raw["access_token"], f"{name}: access_token")
        expect(str(raw.get("token_type", "")).lower() == "bearer", f"{name}: token_type")
        expect(isinstance(raw.get("expires_in"), int) and raw["expires_in"] > 0, f"{name}: expires_in")
    elif kind == "oauth_error":
        # RFC 6749 5.2 and the identity platform's additions.
        codes = {"invalid_request", "invalid_client", "invalid_grant", "unauthorized_client",
                 "unsupported_grant_type", "invalid_scope"}
        expect(raw.get("error") in codes, f"{name}: error {raw.get('error')!r}")
        expect(str(raw.get("error_description", "")).startswith("AADSTS"), f"{name}: error_description")
        expect(isinstance(raw.get("error_codes"), list), f"{name}: error_codes")
    else:
        raise Mismatch(f"{name}: unknown kind {kind}")


def main():
    folder = pathlib.Path(sys.argv[1])
    files = sorted(folder.glob("*.json"))
    if not files:
        print(f"no responses in {folder}", file=sys.stderr)
        return 1
    for path in files:
        kind = path.name.split("__", 1)[0]
        try:
            check(kind, path.read_bytes(), path.stem)
        except Mismatch as e:
            print(f"msgraph-sdk reads {path.name} differently: {e}", file=sys.stderr)
            return 1
        print(f"ok {path.name}")
    print(f"{len(files)} responses read by msgraph-sdk as the fixture meant them")
    return 0


if __name__ == "__main__":
    sys.exit(main())
