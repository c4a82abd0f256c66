"""Property tests of the webhook endpoint of every gateway, fed hostile bodies through the real app.

Each example is a body (a real fixture with one to three mutations, a random envelope built from the keys the
parsers read, random JSON, or random bytes), posted with the receiving instance's real secret or signature so
that verification passes and the parser, the ingest function and Postgres all see it. For every example:

- the answer is a 200 acknowledgement, or a 400/422 `application/problem+json` — never a 5xx, and never a
  401 (the secret was right) or any other 4xx;
- a refused body stored nothing; an accepted one stored exactly the messages it acknowledged, each in a
  conversation whose `last_seq` is its highest `seq`, with seq gapless from 1; no conversation without a
  message, no contact without its conversation (nor with an empty WhatsApp id), no media without its message;
- delivered again, the same body stores nothing more.

The same bodies without the secret or signature are a 401 problem, whatever they contain.

Every example gets a tenant of its own, so "nothing stored" is a plain count. Deterministic (derandomize, no
example database) and bounded (a few dozen examples per gateway). `test_found_by_fuzzing` keeps one minimal
body per defect the fuzzing found, so each is checked by name on every run.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, currently_in_test_context, event, given, settings
from hypothesis import strategies as st
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from tests.fuzz.payloads import GATEWAYS, TEMPLATES, Body, bodies, encode
from tests.kit.data import signed_headers
from tests.kit.factories import Tenant, create_tenant

Client = AsyncTestClient[Litestar]
TEXT = {"wppconnect": "onmessage_text", "evolution": "v2_messages_upsert_text", "cloudapi": "inbound_text"}


def _fuzz_settings(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples,
        derandomize=True,  # the same examples on every run and every machine
        database=None,
        deadline=None,
        print_blob=False,
        # No shrinking: a failure is reported as generated (bounded time); the minimal bodies are the
        # explicit cases of test_found_by_fuzzing.
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,  # client and engine serve every example alike
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )


_COUNTS = text(
    """
    SELECT (SELECT count(*) FROM messages WHERE org_id = :org) AS messages,
           (SELECT count(*) FROM conversations WHERE org_id = :org) AS conversations,
           (SELECT count(*) FROM contacts WHERE org_id = :org) AS contacts,
           (SELECT count(*) FROM media WHERE org_id = :org) AS media
    """
)
# Conversations whose messages are not exactly seq 1..n with last_seq = n, n >= 1.
_BROKEN_SEQUENCES = text(
    """
    SELECT c.id, c.last_seq, count(m.id) AS n, min(m.seq) AS first, max(m.seq) AS last,
           count(DISTINCT m.seq) AS distinct_seqs
      FROM conversations c LEFT JOIN messages m ON m.conversation_id = c.id
     WHERE c.org_id = :org
     GROUP BY c.id, c.last_seq
    HAVING count(m.id) = 0 OR min(m.seq) <> 1 OR max(m.seq) <> count(m.id)
        OR count(DISTINCT m.seq) <> count(m.id) OR c.last_seq <> max(m.seq)
    """
)
_HALF_WRITTEN = text(
    """
    SELECT
      (SELECT count(*) FROM messages m LEFT JOIN conversations c ON c.id = m.conversation_id
        WHERE m.org_id = :org AND (c.id IS NULL OR c.org_id <> m.org_id OR c.instance_id <> m.instance_id))
        AS messages_without_conversation,
      (SELECT count(*) FROM contacts ct WHERE ct.org_id = :org
          AND NOT EXISTS (SELECT 1 FROM conversations c WHERE c.contact_id = ct.id))
        AS contacts_without_conversation,
      (SELECT count(*) FROM contacts ct WHERE ct.org_id = :org AND btrim(ct.wa_id) = '')
        AS contacts_without_wa_id,
      (SELECT count(*) FROM media md LEFT JOIN messages m ON m.id = md.message_id
        WHERE md.org_id = :org AND (m.id IS NULL OR m.org_id <> md.org_id))
        AS media_without_message
    """
)


async def _rows(engine: AsyncEngine, tenant: Tenant) -> dict[str, int]:
    async with engine.connect() as conn:
        return dict((await conn.execute(_COUNTS, {"org": tenant.org_id})).one()._mapping)


async def _assert_consistent(engine: AsyncEngine, tenant: Tenant) -> None:
    async with engine.connect() as conn:
        broken = (await conn.execute(_BROKEN_SEQUENCES, {"org": tenant.org_id})).all()
        half_written = dict((await conn.execute(_HALF_WRITTEN, {"org": tenant.org_id})).one()._mapping)
    assert not broken, f"conversations with a broken seq: {[dict(row._mapping) for row in broken]}"
    assert set(half_written.values()) == {0}, f"half-written or unaddressable rows: {half_written}"


async def _new_tenant(engine: AsyncEngine) -> Tenant:
    async with async_sessionmaker(engine, expire_on_commit=False)() as session:
        return await create_tenant(session)


def _note(status: int, answer: Any) -> None:
    """What the examples reached, for `pytest --hypothesis-show-statistics`."""
    if not currently_in_test_context():  # the fixture baseline and the named defects run outside hypothesis
        return
    if status == 200:
        event("200 stored a message" if answer["created"] else "200 nothing stored")
    else:
        event(f"{status} {str(answer.get('detail', ''))[:40]}")


async def _post(client: Client, gateway: str, tenant: Tenant, body: Body, *, signed: bool = True) -> Any:
    """Post `body` to the tenant's instance; the answer's status and JSON, checked to be 2xx or a problem."""
    instance = tenant.instance(gateway)
    raw = body.for_instance(instance.name, instance.phone_number_id)
    headers = signed_headers(gateway, raw, instance) if signed else {"content-type": "application/json"}
    response = await client.post(f"/api/webhooks/{gateway}/{instance.name}", content=raw, headers=headers)
    assert response.status_code < 500, f"{response.status_code} for {body!r}: {response.text[:300]}"
    if response.status_code >= 400:
        content_type = response.headers.get("content-type", "")
        assert content_type.startswith("application/problem+json"), content_type
        problem = response.json()
        assert problem["status"] == response.status_code and problem["title"], problem
    return response.status_code, response.json()


async def check_body(client: Client, engine: AsyncEngine, gateway: str, body: Body) -> int:
    """The whole property for one correctly signed body, in a tenant of its own; the answer's status."""
    tenant = await _new_tenant(engine)
    status, answer = await _post(client, gateway, tenant, body)
    # Verification passed (right secret or signature) and the instance exists: only the body can be wrong.
    assert status in (200, 400, 422), f"{status} for {body!r}: {answer}"
    _note(status, answer)
    rows = await _rows(engine, tenant)
    if status != 200:
        assert set(rows.values()) == {0}, f"refused with {status} ({answer.get('detail')}) but stored {rows}"
        return status
    assert answer["status"] == "ok"
    assert rows["messages"] == answer["created"], f"acknowledged {answer}, stored {rows}"
    await _assert_consistent(engine, tenant)
    # A gateway redelivers whatever it is unsure of: the same body again stores nothing more.
    again_status, again = await _post(client, gateway, tenant, body)
    assert again_status == 200 and again["created"] == 0, again
    assert await _rows(engine, tenant) == rows
    await _assert_consistent(engine, tenant)
    return status


async def check_unauthenticated(client: Client, engine: AsyncEngine, gateway: str, body: Body) -> None:
    """Without the secret or signature, any body is a 401 problem and stores nothing."""
    tenant = await _new_tenant(engine)
    status, answer = await _post(client, gateway, tenant, body, signed=False)
    assert status == 401, f"{status} for {body!r}: {answer}"
    assert set((await _rows(engine, tenant)).values()) == {0}


@pytest.mark.parametrize("gateway", GATEWAYS)
async def test_unmutated_fixtures_are_stored_consistently(client: Client, engine: AsyncEngine, gateway: str):
    """The baseline the fuzzing starts from: every real fixture, addressed through the placeholders, is
    acknowledged and stored consistently (so the mutated ones do reach the parser and the database)."""
    for name, doc in sorted(TEMPLATES[gateway].items()):
        body = Body(f"fixture {name}", encode(doc, ascii_only=False))
        assert await check_body(client, engine, gateway, body) == 200, name
    tenant = await _new_tenant(engine)
    await _post(
        client, gateway, tenant, Body("text", encode(TEMPLATES[gateway][TEXT[gateway]], ascii_only=True))
    )
    assert (await _rows(engine, tenant))["messages"] == 1


@pytest.mark.parametrize("gateway", GATEWAYS)
@_fuzz_settings(max_examples=80)
@given(data=st.data())
async def test_hostile_bodies_never_5xx_nor_half_written(
    client: Client, engine: AsyncEngine, gateway: str, data: st.DataObject
):
    await check_body(client, engine, gateway, data.draw(bodies(gateway), label="body"))


@pytest.mark.parametrize("gateway", GATEWAYS)
@_fuzz_settings(max_examples=30)
@given(data=st.data())
async def test_hostile_bodies_without_credentials_are_401(
    client: Client, engine: AsyncEngine, gateway: str, data: st.DataObject
):
    await check_unauthenticated(client, engine, gateway, data.draw(bodies(gateway), label="body"))


# --- one minimal body per defect the fuzzing found ----------------------------------------------------------


def _edited(gateway: str, name: str, path: tuple[str | int, ...], value: Any) -> Body:
    """Fixture `name` with the value at `path` replaced."""
    doc = copy.deepcopy(TEMPLATES[gateway][name])
    target = doc
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return Body(f"{name}: {'.'.join(map(str, path))} = {value!r:.40}", encode(doc, ascii_only=True))


def _with_extra(gateway: str, name: str, extra: bytes) -> Body:
    """Fixture `name` with `"junk": <extra>` spliced in as raw bytes (for what json.dumps cannot write)."""
    raw = encode(TEMPLATES[gateway][name], ascii_only=True)
    return Body(f"{name} + junk {extra[:20]!r}", raw[:-1] + b', "junk": ' + extra + b"}")


_WPP_TEXT, _WPP_IMAGE = TEXT["wppconnect"], "onmessage_image"
_EVO_TEXT, _EVO_AUDIO = TEXT["evolution"], "v2_messages_upsert_audio"
_CLOUD_TEXT, _CLOUD_IMAGE, _CLOUD_DOC = TEXT["cloudapi"], "inbound_image", "inbound_document"
_CLOUD_VALUE = ("entry", 0, "changes", 0, "value")
_CLOUD_MESSAGE = (*_CLOUD_VALUE, "messages", 0)
_DEEP = b"[" * 5000 + b"]" * 5000

SIGNED_DEFECTS = [
    # D1 invalid UTF-8 inside a JSON string: msgspec raises UnicodeDecodeError, caught nowhere.
    pytest.param(
        "wppconnect", Body("invalid UTF-8", b'{"event":"onmessage","body":"\xff"}'), id="D1-utf8-typed"
    ),
    pytest.param("wppconnect", _with_extra("wppconnect", _WPP_TEXT, b'"\xff"'), id="D1-utf8-untyped-raw"),
    # D2 nesting past the interpreter's recursion limit: RecursionError, caught nowhere.
    pytest.param(
        "cloudapi", Body("deep", b'{"object":"x","entry":[],"pad":' + _DEEP + b"}"), id="D2-deep-cloudapi"
    ),
    pytest.param("wppconnect", _with_extra("wppconnect", _WPP_TEXT, _DEEP), id="D2-deep-wppconnect"),
    # D3 U+0000 anywhere in stored text or in the JSONB `raw`: Postgres refuses it.
    pytest.param(
        "wppconnect", _edited("wppconnect", _WPP_TEXT, ("body",), "a\x00b"), id="D3-nul-text-column"
    ),
    pytest.param(
        "evolution", _edited("evolution", _EVO_TEXT, ("data", "source"), "\x00"), id="D3-nul-jsonb-raw"
    ),
    pytest.param(
        "cloudapi",
        _edited("cloudapi", _CLOUD_TEXT, (*_CLOUD_MESSAGE, "text", "body"), "\x00"),
        id="D3-nul-cloudapi",
    ),
    # D4 strings longer than their varchar column.
    pytest.param("wppconnect", _edited("wppconnect", _WPP_TEXT, ("id",), "x" * 256), id="D4-message-id-256"),
    pytest.param(
        "evolution",
        _edited("evolution", _EVO_TEXT, ("data", "key", "remoteJid"), "5" * 129 + "@s.whatsapp.net"),
        id="D4-chat-id-129",
    ),
    pytest.param(
        "evolution", _edited("evolution", _EVO_TEXT, ("data", "pushName"), "n" * 201), id="D4-name-201"
    ),
    pytest.param(
        "cloudapi",
        _edited("cloudapi", _CLOUD_DOC, (*_CLOUD_MESSAGE, "document", "filename"), "f" * 501),
        id="D4-filename-501",
    ),
    pytest.param(
        "cloudapi",
        _edited("cloudapi", _CLOUD_IMAGE, (*_CLOUD_MESSAGE, "image", "mime_type"), "m" * 256),
        id="D4-mime-256",
    ),
    pytest.param(
        "cloudapi",
        _edited("cloudapi", _CLOUD_IMAGE, (*_CLOUD_MESSAGE, "image", "id"), "1" * 501),
        id="D4-media-id-501",
    ),
    # D5 a media size outside BIGINT.
    pytest.param("wppconnect", _edited("wppconnect", _WPP_IMAGE, ("size",), 2**63), id="D5-size-2**63"),
    pytest.param(
        "evolution",
        # fileLength is a uint64 in WhatsApp's protobuf: Baileys may well send one past BIGINT as a string.
        _edited("evolution", _EVO_AUDIO, ("data", "message", "audioMessage", "fileLength"), str(2**64 - 1)),
        id="D5-file-length-uint64",
    ),
    # D6 an ISO time at the edge of datetime's range with an offset: astimezone() overflows.
    pytest.param(
        "evolution",
        _edited("evolution", _EVO_TEXT, ("date_time",), "9999-12-31T23:59:59-01:00"),
        id="D6-iso-overflow",
    ),
    # D7 a status of Unicode digits that int() refuses.
    pytest.param(
        "evolution",
        _edited("evolution", "v2_messages_update_read", ("data", "status"), "\u00b2"),
        id="D7-status-digit",
    ),
    # D8 a chat id that normalises to "": stored as a contact without a WhatsApp id.
    pytest.param(
        "wppconnect", _edited("wppconnect", _WPP_TEXT, ("from",), "@c.us"), id="D8-empty-chat-wppconnect"
    ),
    pytest.param(
        "evolution",
        _edited("evolution", _EVO_TEXT, ("data", "key", "remoteJid"), ""),
        id="D8-empty-chat-evolution",
    ),
    pytest.param(
        "cloudapi",
        _edited("cloudapi", _CLOUD_TEXT, (*_CLOUD_MESSAGE, "from"), "+"),
        id="D8-empty-chat-cloudapi",
    ),
]

UNAUTHENTICATED_DEFECTS = [
    # Evolution reads `apikey` from the body before verifying: D1 and D2 there are 500s without any secret.
    pytest.param("evolution", Body("invalid UTF-8 apikey", b'{"apikey":"\xff"}'), id="D1-utf8-before-auth"),
    pytest.param("evolution", Body("deep", b'{"x":' + _DEEP + b"}"), id="D2-deep-before-auth"),
]


@pytest.mark.parametrize(("gateway", "body"), SIGNED_DEFECTS)
async def test_found_by_fuzzing(client: Client, engine: AsyncEngine, gateway: str, body: Body):
    await check_body(client, engine, gateway, body)


@pytest.mark.parametrize(("gateway", "body"), UNAUTHENTICATED_DEFECTS)
async def test_found_by_fuzzing_without_credentials(
    client: Client, engine: AsyncEngine, gateway: str, body: Body
):
    await check_unauthenticated(client, engine, gateway, body)
