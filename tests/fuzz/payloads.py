"""Hypothesis strategies for hostile webhook bodies: real gateway fixtures mutated, random JSON, random bytes.

Bodies are built addressed to placeholders (ACCOUNT_NAME, ACCOUNT_PHONE) and turned into bytes by `encode`,
which puts the receiving instance's name and phone number id in their place. So one strategy serves every
tenant an example creates, and a mutation may still move, drop or retype the addressing fields.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from types import ModuleType, SimpleNamespace
from typing import Any

import msgspec
from hypothesis import strategies as st

from app.domain.gateways.cloudapi import schemas as cloudapi_schemas
from app.domain.gateways.evolution import schemas as evolution_schemas
from app.domain.gateways.wppconnect import schemas as wppconnect_schemas
from tests.fixtures import GATEWAY_FIXTURES, load_fixture_json
from tests.kit.data import retarget

GATEWAYS = ("wppconnect", "evolution", "cloudapi")

ACCOUNT_NAME = "@@instance-name@@"
ACCOUNT_PHONE = "@@phone-number-id@@"
_PLACEHOLDERS = SimpleNamespace(name=ACCOUNT_NAME, phone_number_id=ACCOUNT_PHONE)

Path = tuple[str | int, ...]


@dataclass(frozen=True)
class Deep:
    """A value nested `depth` lists deep; written straight into the bytes (json.dumps would recurse)."""

    depth: int


def _encoded_field_names(module: ModuleType) -> frozenset[str]:
    """Every JSON key the gateway's schemas read: mutations aim at these more often than at the rest."""
    names: set[str] = set()
    for obj in vars(module).values():
        if isinstance(obj, type) and issubclass(obj, msgspec.Struct) and obj.__module__ == module.__name__:
            names.update(field.encode_name for field in msgspec.structs.fields(obj))
    return frozenset(names)


SCHEMA_KEYS: dict[str, frozenset[str]] = {
    "wppconnect": _encoded_field_names(wppconnect_schemas),
    "evolution": _encoded_field_names(evolution_schemas),
    "cloudapi": _encoded_field_names(cloudapi_schemas),
}

EVENT_NAMES: dict[str, list[str]] = {
    "wppconnect": [
        "onmessage",
        "onanymessage",
        "onselfmessage",
        "unreadmessages",
        "onack",
        "ONMESSAGE",
        "onpresencechanged",
        "status-find",
        "",
        "on message",
    ],
    "evolution": [
        "messages.upsert",
        "MESSAGES_UPSERT",
        "messages-upsert",
        "messages.update",
        "MESSAGES_UPDATE",
        "send.message",
        "connection.update",
        "",
        " messages.upsert ",
        "messages..upsert",
    ],
    "cloudapi": ["messages", "smb_message_echoes", "statuses", "account_update", "", "MESSAGES"],
}


def _fixtures(gateway: str) -> dict[str, Any]:
    names = sorted(path.stem for path in (GATEWAY_FIXTURES / gateway).glob("*.json"))
    return {name: retarget(gateway, load_fixture_json(gateway, name), _PLACEHOLDERS) for name in names}


TEMPLATES: dict[str, dict[str, Any]] = {gateway: _fixtures(gateway) for gateway in GATEWAYS}


# --- values -------------------------------------------------------------------------------------------------

_EDGE_INTEGERS = [
    0,
    -1,
    1,
    2**31 - 1,
    2**31,
    2**53 + 1,
    2**63 - 1,
    2**63,
    2**64 - 1,
    2**64,
    -(2**63) - 1,
    10**30,
]
_EDGE_TIMES: list[Any] = [
    -1,
    -62135596800,  # 0001-01-01
    -(10**12),
    253402300800,  # 10000-01-01
    10**11 - 1,
    10**11,
    10**13,
    10**16,
    10**20,
    1e300,
    "1750264000",
    "1750264000000",
    "-1",
    "1e10",
    "nan",
    "inf",
    "2024-06-05T14:10:20Z",
    "2024-06-05T14:10:20+14:00",
    "0001-01-01T00:00:00",
    "9999-12-31T23:59:59-23:59",
    "not a time",
    {"low": -1, "high": 2**31},
    {"low": 0, "high": 2**40},
]
_EDGE_STRINGS = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\ud800",  # lone surrogates: escaped by json.dumps, raw (invalid UTF-8) with ensure_ascii=False
    "x\udfffy",
    "\u202e\u200b\ufeff",
    "😀" * 3,
    "status@broadcast",
    "@",
    ":@s.whatsapp.net",
    "123@lid",
    "+5511999990000",
    "true_5511999990000@c.us_ABC",
    "DELIVERY_ACK",
    "READ",
    "0",
    "7",
    "-4",
    "sha256=" + "0" * 64,
    "AAAA",
    "=",
    "data:image/png;base64,AAAA",
]


def _long_strings() -> st.SearchStrategy[str]:
    # Around every column limit (String(64/128/200/255/500)) and well past them.
    return st.builds(
        lambda unit, count: unit * count,
        st.sampled_from(["x", "é", "😀", "0", "A=", "\x00"]),
        st.sampled_from([64, 65, 128, 129, 200, 201, 255, 256, 500, 501, 5_000, 70_000]),
    )


SCALARS: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from(_EDGE_INTEGERS),
    st.floats(),  # NaN and infinities are written as NaN/Infinity: not JSON, so a 400
    st.text(max_size=30),
    st.text(st.characters(codec=None, categories=None), max_size=12),  # surrogates and NUL included
    st.sampled_from(_EDGE_STRINGS),
    st.sampled_from(_EDGE_TIMES),
    _long_strings(),
)

JSON_VALUES: st.SearchStrategy[Any] = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def weird_values(gateway: str) -> st.SearchStrategy[Any]:
    keys = sorted(SCHEMA_KEYS[gateway])
    return st.one_of(
        SCALARS,
        st.sampled_from(EVENT_NAMES[gateway]),
        st.builds(Deep, st.sampled_from([2, 64, 500, 1_100, 5_000, 50_000])),
        st.just({}),
        st.just([]),
        st.recursive(
            SCALARS,
            lambda children: (
                st.lists(children, max_size=3) | st.dictionaries(st.sampled_from(keys), children, max_size=4)
            ),
            max_leaves=10,
        ),
    )


# --- mutation -----------------------------------------------------------------------------------------------


def _paths(doc: Any, prefix: Path = ()) -> list[Path]:
    found = [prefix]
    if isinstance(doc, dict):
        for key, value in doc.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for index, value in enumerate(doc):
            found += _paths(value, (*prefix, index))
    return found


def _get(doc: Any, path: Path) -> Any:
    for step in path:
        doc = doc[step]
    return doc


def _retyped(value: Any) -> Any:
    """The same value as another JSON type, the way a sloppy gateway version would send it."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return [value] if value else None
    if isinstance(value, list):
        return value[0] if value else {}
    if isinstance(value, dict):
        return list(value.values())
    return ""


def _tweaks(value: Any, gateway: str) -> st.SearchStrategy[Any]:
    """Near misses of a value, keeping its type: what a buggy gateway or a hostile sender would vary."""
    if isinstance(value, str):
        return st.sampled_from(
            [
                value + "\x00",
                "\x00" + value,
                value * (256 // max(len(value), 1) + 1),  # past String(255), and String(128/200) on the way
                value + "x" * 130,
                value + "\ud800",
                value + "😀" * 70,
                " " + value + " ",
                value.upper(),
                value[: len(value) // 2],
                "",
            ]
        )
    if isinstance(value, bool):
        return st.sampled_from([not value, None, 0, "true"])
    if isinstance(value, int):
        return st.sampled_from([-value, value * 1000, -1, 2**63, 2**64, 10**30, value + 1])
    if isinstance(value, float):
        return st.sampled_from([-value, 1e308, -1e308, 0.0, value * 1e6])
    return weird_values(gateway)


OPERATIONS = ("tweak", "tweak", "tweak", "replace", "drop", "retype", "duplicate", "wrap", "empty", "add_key")


@st.composite
def _mutated(draw: st.DrawFn, gateway: str, doc: Any) -> Any:
    paths = _paths(doc)
    hot = [p for p in paths if p and p[-1] in SCHEMA_KEYS[gateway]]
    path = draw(st.sampled_from(hot if hot and draw(st.integers(0, 3)) else paths))  # 3 in 4 on a read key
    operation = draw(st.sampled_from(OPERATIONS))
    value = _get(doc, path)
    if not path:  # the root itself
        return draw(weird_values(gateway)) if operation != "wrap" else [doc]
    parent, step = _get(doc, path[:-1]), path[-1]
    if operation == "drop":
        del parent[step]
    elif operation == "tweak":
        parent[step] = draw(_tweaks(value, gateway))
    elif operation == "retype":
        parent[step] = _retyped(value)
    elif operation == "duplicate" and isinstance(parent, list):
        parent.insert(step, copy.deepcopy(value))  # the same message/status twice in one body
    elif operation == "duplicate" and isinstance(value, list) and value:
        value.append(copy.deepcopy(value[-1]))
    elif operation == "wrap":
        parent[step] = draw(st.sampled_from([[value], {"message": value}, {str(step): value}]))
    elif operation == "empty":
        parent[step] = draw(st.sampled_from([{}, [], "", None]))
    elif operation == "add_key" and isinstance(value, dict):
        value[draw(st.sampled_from(sorted(SCHEMA_KEYS[gateway])))] = draw(weird_values(gateway))
    else:
        parent[step] = draw(weird_values(gateway))
    return doc


@st.composite
def mutated_fixtures(draw: st.DrawFn, gateway: str) -> tuple[str, Any]:
    """(fixture name, a real payload of the gateway with one mutation, sometimes two or three)."""
    name = draw(st.sampled_from(sorted(TEMPLATES[gateway])))
    doc = copy.deepcopy(TEMPLATES[gateway][name])
    for _ in range(draw(st.sampled_from([1, 1, 1, 2, 3]))):
        doc = draw(_mutated(gateway, doc))
    return name, doc


def _schema_shaped(gateway: str) -> st.SearchStrategy[Any]:
    """Random objects whose keys are the ones the gateway's schemas read, at every level."""
    keys = sorted(SCHEMA_KEYS[gateway])
    return st.recursive(
        SCALARS,
        lambda children: (
            st.lists(children, max_size=3) | st.dictionaries(st.sampled_from(keys), children, max_size=6)
        ),
        max_leaves=20,
    )


@st.composite
def random_envelopes(draw: st.DrawFn, gateway: str) -> Any:
    """A correct envelope (event name, addressing) around random content built from the schemas' keys."""
    shaped = _schema_shaped(gateway)
    event = draw(st.sampled_from(EVENT_NAMES[gateway]))
    if gateway == "wppconnect":
        body = draw(st.dictionaries(st.sampled_from(sorted(SCHEMA_KEYS[gateway])), shaped, max_size=10))
        return {**body, "event": event, "session": ACCOUNT_NAME}
    if gateway == "evolution":
        return {"event": event, "instance": ACCOUNT_NAME, "data": draw(shaped)}
    value = draw(st.dictionaries(st.sampled_from(sorted(SCHEMA_KEYS[gateway])), shaped, max_size=6))
    value["metadata"] = {"phone_number_id": ACCOUNT_PHONE}
    change = {"field": event, "value": value}
    return {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [change]}]}


# --- bytes --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Body:
    """What is posted: the bytes (placeholders still in) and how they were made, for the failure report."""

    origin: str
    raw: bytes

    def for_instance(self, name: str, phone_number_id: str | None) -> bytes:
        body = self.raw.replace(ACCOUNT_NAME.encode(), name.encode())
        return body.replace(ACCOUNT_PHONE.encode(), (phone_number_id or "").encode())

    def __repr__(self) -> str:  # hypothesis prints this for a failing example
        shown = self.raw if len(self.raw) <= 600 else self.raw[:600] + b"...(%d bytes)" % len(self.raw)
        return f"Body({self.origin!r}, {shown!r})"


def encode(doc: Any, *, ascii_only: bool) -> bytes:
    """JSON bytes of `doc`. Deep values are spliced in; lone surrogates become escapes (ascii_only) or the
    invalid UTF-8 a careless encoder would write."""
    deep: set[int] = set()

    def default(value: Any) -> str:
        if isinstance(value, Deep):
            deep.add(value.depth)
            return f"@@deep-{value.depth}@@"
        raise TypeError(type(value).__name__)

    text = json.dumps(doc, ensure_ascii=ascii_only, default=default)
    body = text.encode("utf-8", "surrogatepass")
    for depth in deep:
        body = body.replace(f'"@@deep-{depth}@@"'.encode(), b"[" * depth + b"]" * depth)
    return body


_STRING_VALUE = re.compile(rb'": "')


@st.composite
def _bytes_in_fixture(draw: st.DrawFn, gateway: str) -> bytes:
    """A real fixture with raw bytes (invalid UTF-8, control bytes, quotes…) spliced into one string value."""
    name = draw(st.sampled_from(sorted(TEMPLATES[gateway])))
    raw = encode(TEMPLATES[gateway][name], ascii_only=True)
    at = draw(st.sampled_from([match.end() for match in _STRING_VALUE.finditer(raw)]))
    return raw[:at] + draw(st.binary(min_size=1, max_size=24)) + raw[at:]


@st.composite
def bodies(draw: st.DrawFn, gateway: str) -> Body:
    """Every kind of hostile body for one gateway, mostly (7 in 10) a real payload with a mutation or two."""
    kind = draw(st.integers(min_value=0, max_value=9))
    ascii_only = draw(st.booleans())
    if kind <= 6:
        name, doc = draw(mutated_fixtures(gateway))
        return Body(f"mutated {name}", encode(doc, ascii_only=ascii_only))
    if kind == 7:
        return Body("random envelope", encode(draw(random_envelopes(gateway)), ascii_only=ascii_only))
    if kind == 8:
        return Body("random JSON", encode(draw(JSON_VALUES), ascii_only=ascii_only))
    raw = draw(st.one_of(_bytes_in_fixture(gateway), st.binary(max_size=200)))
    return Body("random bytes", raw)
