"""Shared pieces of the security suite: two organisations with data worth stealing, tokens, row snapshots.

Everything runs against the real Postgres, Redis and media directory of the test run; nothing is mocked.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from websockets.exceptions import ConnectionClosed

from app.config import Settings
from app.db.models import Contact, Conversation, Media, MediaState, Message, WhatsAppInstance
from app.domain.conversations.ingest import IngestService
from app.domain.media.storage import MediaStorage, original_key, thumbnail_key
from app.server.fastpath import CachedPageFastPath
from tests.kit.api import post_signed
from tests.kit.clients import WsClient
from tests.kit.data import fixture_for, image_message, text_message, with_message_id
from tests.kit.factories import PASSWORD, Tenant, create_tenant

Client = AsyncTestClient[Litestar]
API = "/api/whatsapp-optimized"
INBOX = f"{API}/conversations"


def history(conversation_id: UUID | str) -> str:
    return f"{API}/messages/{conversation_id}"


@dataclass
class Org:
    """A tenant with one conversation of text and media messages, every message text carrying `marker`."""

    tenant: Tenant
    marker: str
    conversation_id: UUID
    ready_media_id: UUID  # an image, stored, with a thumbnail
    pending_media_id: UUID
    failed_media_id: UUID
    message_count: int
    media_sha: str
    media_size: int
    chat: str  # the customer's WhatsApp number in the conversation

    @property
    def org_id(self) -> UUID:
        return self.tenant.org_id

    def identifiers(self) -> list[str]:
        """Strings that must never appear in an answer to another organisation."""
        return [
            self.marker,
            str(self.org_id),
            str(self.conversation_id),
            str(self.ready_media_id),
            str(self.pending_media_id),
            str(self.failed_media_id),
            str(self.tenant.agent.id),
            str(self.tenant.admin.id),
            self.tenant.agent.email,
            self.media_sha,
            *(str(i.id) for i in self.tenant.instances.values()),
        ]


async def seed_org(
    engine: AsyncEngine, session: AsyncSession, settings: Settings, *, texts: int = 2, can_send: bool = False
) -> Org:
    """An org with `texts` text messages and three image messages (ready, pending, failed) in one chat."""
    tenant = await create_tenant(session)
    marker = f"secret-{secrets.token_hex(6)}"
    chat = f"55119{secrets.randbelow(10**8):08d}"
    instance = tenant.instance("evolution")
    events: list[Any] = [text_message(chat, f"{marker} text {i}") for i in range(texts)]
    events += [image_message(chat) for _ in range(3)]
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    async with sessions() as s:
        result = await IngestService(s).apply(org_id=tenant.org_id, instance_id=instance.id, events=events)
        if can_send:  # with credentials a send would succeed, so only the org check can stop it
            await s.execute(
                update(WhatsAppInstance)
                .where(WhatsAppInstance.id == instance.id)
                .values(api_base_url="http://127.0.0.1:9", api_token=f"token-{marker}")
            )
        await s.commit()
    conversation_id = result.created[0].conversation_id
    ready, pending, failed = (m.media_id for m in result.created[texts:])
    assert ready and pending and failed

    data = f"{marker} image bytes".encode() + secrets.token_bytes(64)
    sha = hashlib.sha256(data).hexdigest()
    storage = MediaStorage.from_url(settings.media.storage_url)
    await storage.put_if_absent(original_key(sha), data)
    await storage.put_if_absent(thumbnail_key(sha), b"RIFF-thumbnail-" + data)
    async with sessions() as s:
        await s.execute(
            update(Media)
            .where(Media.id == ready)
            .values(
                state=MediaState.READY,
                content_sha256=sha,
                content_type="image/png",
                size_bytes=len(data),
                has_thumbnail=True,
                width=10,
                height=10,
            )
        )
        await s.execute(
            update(Media).where(Media.id == failed).values(state=MediaState.FAILED, error="gateway said no")
        )
        await s.commit()
    return Org(
        tenant=tenant,
        marker=marker,
        conversation_id=conversation_id,
        ready_media_id=ready,
        pending_media_id=pending,
        failed_media_id=failed,
        message_count=texts + 3,
        media_sha=sha,
        media_size=len(data),
        chat=chat,
    )


async def org_rows(engine: AsyncEngine, org_id: UUID) -> dict[str, Any]:
    """Everything a write could change in an organisation, to compare before and after an attack."""
    async with async_sessionmaker(engine)() as s:
        conversations = (
            await s.execute(
                select(
                    Conversation.id,
                    Conversation.last_seq,
                    Conversation.unread_count,
                    Conversation.last_message_preview,
                    Conversation.last_message_at,
                    Conversation.status,
                    Conversation.updated_at,
                )
                .where(Conversation.org_id == org_id)
                .order_by(Conversation.id)
            )
        ).all()
        messages = (
            await s.execute(
                select(Message.id, Message.seq, Message.status, Message.body)
                .where(Message.org_id == org_id)
                .order_by(Message.id)
            )
        ).all()
        media = (
            await s.execute(
                select(Media.id, Media.state, Media.content_sha256)
                .where(Media.org_id == org_id)
                .order_by(Media.id)
            )
        ).all()
        contacts = await s.scalar(select(func.count()).select_from(Contact).where(Contact.org_id == org_id))
    return {
        "conversations": [tuple(r) for r in conversations],
        "messages": [tuple(r) for r in messages],
        "media": [tuple(r) for r in media],
        "contacts": contacts,
    }


NOTHING = {"messages": 0, "conversations": 0, "contacts": 0, "media": 0}  # row_counts of an untouched org


async def row_counts(engine: AsyncEngine, org_id: UUID) -> dict[str, int]:
    async with async_sessionmaker(engine)() as s:
        counts = {}
        for name, model in (
            ("messages", Message),
            ("conversations", Conversation),
            ("contacts", Contact),
            ("media", Media),
        ):
            counts[name] = int(
                await s.scalar(select(func.count()).select_from(model).where(model.org_id == org_id)) or 0
            )
    return counts


async def login(client: Client, email: str, password: str = PASSWORD) -> str:
    response = await client.post("/api/auth/login", json={"email": email, "password": password})
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def prime_fast_path(fast: CachedPageFastPath, client: Client, path: str, token: str) -> bytes:
    """Read `path` twice with `token`: Litestar answers and caches, then the fast path serves the repeat.
    Returns the page; fails unless the second read really came from the fast path."""
    first = await client.get(path, headers=bearer(token))
    assert first.status_code == 200, first.text
    served = fast.served
    second = await client.get(path, headers=bearer(token))
    assert second.status_code == 200 and second.content == first.content
    assert fast.served == served + 1, f"{path} was not served by the fast path"
    return second.content


async def wait_memory_live(fast: CachedPageFastPath) -> None:
    async with asyncio.timeout(10):
        while not fast.cache.memory_live:
            await asyncio.sleep(0.02)


# --- JWTs built by hand ------------------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_json(obj: Any) -> str:
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


def unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return f"{b64url_json(header)}.{b64url_json(claims)}"


def hmac_jwt(
    claims: dict[str, Any], key: bytes, alg: str = "HS256", header: dict[str, Any] | None = None
) -> str:
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    signing_input = unsigned({"alg": alg, "typ": "JWT", **(header or {})}, claims)
    signature = hmac.new(key, signing_input.encode(), digest).digest()
    return f"{signing_input}.{b64url(signature)}"


def claims_for(
    tenant: Tenant, *, role: str = "agent", lifetime_s: float = 600, **changes: Any
) -> dict[str, Any]:
    """The claims TokenIssuer puts in a login token (changes override; a None value removes the claim)."""
    agent = tenant.admin if role == "admin" else tenant.agent
    now = datetime.now(UTC)
    claims: dict[str, Any] = {
        "sub": str(agent.id),
        "exp": int((now + timedelta(seconds=lifetime_s)).timestamp()),
        "iat": int(now.timestamp()),
        "org_id": str(tenant.org_id),
        "role": role,
        "email": agent.email,
        "gen": agent.token_generation,
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def valid_token(settings: Settings, tenant: Tenant, **changes: Any) -> str:
    return hmac_jwt(claims_for(tenant, **changes), settings.auth.jwt_secret.encode())


# --- RS256 without a crypto library: an attacker's own RSA key, PKCS#1 v1.5 signatures, its public PEM ---

_SMALL_PRIMES = [p for p in range(3, 2000, 2) if all(p % d for d in range(3, int(p**0.5) + 1, 2))]
_SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")


def _probably_prime(n: int, rounds: int = 16) -> bool:
    if any(n % p == 0 for p in _SMALL_PRIMES):
        return n in _SMALL_PRIMES
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for _ in range(rounds):
        x = pow(secrets.randbelow(n - 3) + 2, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def _prime(bits: int) -> int:
    while True:
        candidate = secrets.randbits(bits) | (1 << (bits - 1)) | (1 << (bits - 2)) | 1
        if _probably_prime(candidate):
            return candidate


@dataclass(frozen=True)
class RsaKey:
    n: int
    e: int
    d: int

    @classmethod
    def generate(cls, bits: int = 2048) -> RsaKey:
        e = 65537
        while True:
            p, q = _prime(bits // 2), _prime(bits // 2)
            phi = (p - 1) * (q - 1)
            if p != q and phi % e:
                return cls(n=p * q, e=e, d=pow(e, -1, phi))

    @property
    def size(self) -> int:
        return (self.n.bit_length() + 7) // 8

    def sign_sha256(self, message: bytes) -> bytes:
        """RSASSA-PKCS1-v1_5 with SHA-256, as RS256 signs."""
        t = _SHA256_DIGEST_INFO + hashlib.sha256(message).digest()
        encoded = b"\x00\x01" + b"\xff" * (self.size - len(t) - 3) + b"\x00" + t
        signature = pow(int.from_bytes(encoded, "big"), self.d, self.n).to_bytes(self.size, "big")
        assert pow(int.from_bytes(signature, "big"), self.e, self.n) == int.from_bytes(encoded, "big")
        return signature

    def public_pem(self) -> bytes:
        """SubjectPublicKeyInfo, PEM: what a server using RS256 would publish and verify with."""
        rsa_public = _der(0x30, _der_int(self.n) + _der_int(self.e))
        algorithm = _der(0x30, bytes.fromhex("06092a864886f70d010101") + b"\x05\x00")
        spki = _der(0x30, algorithm + _der(0x03, b"\x00" + rsa_public))
        body = base64.encodebytes(spki).replace(b"\n", b"")
        lines = [body[i : i + 64] for i in range(0, len(body), 64)]
        return b"-----BEGIN PUBLIC KEY-----\n" + b"\n".join(lines) + b"\n-----END PUBLIC KEY-----\n"


def _der(tag: int, content: bytes) -> bytes:
    length = len(content)
    if length < 0x80:
        return bytes([tag, length]) + content
    size = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + content


def _der_int(value: int) -> bytes:
    raw = value.to_bytes((value.bit_length() + 8) // 8, "big")  # a leading 0 keeps it positive
    return _der(0x02, raw)


def rs256_jwt(claims: dict[str, Any], key: RsaKey) -> str:
    signing_input = unsigned({"alg": "RS256", "typ": "JWT"}, claims)
    return f"{signing_input}.{b64url(key.sign_sha256(signing_input.encode()))}"


# --- real processes -------------------------------------------------------------------------------------


async def post_evolution_text(process: Any, org: Org, message_id: str, text: str) -> None:
    """An Evolution `messages.upsert` into `org`'s conversation, posted to a real API process."""
    instance = org.tenant.instance("evolution")
    data = with_message_id(
        "evolution", fixture_for("evolution", "v2_messages_upsert_text", instance), message_id, text=text
    )
    data["data"]["key"]["remoteJid"] = f"{org.chat}@s.whatsapp.net"
    response = await post_signed(process.base_url, "evolution", instance, json.dumps(data).encode())
    assert response.status_code == 200 and response.json()["created"] == 1, response.text


async def ws_outcome(ws_url: str, token: str | None, *, origin: str | None = None) -> tuple[list[Any], int]:
    """The frames a new socket got before the server closed it, and the close code; 0 for a socket that was
    accepted (its `ready` frame arrived, or it stayed open for 5 s)."""
    client = await WsClient.connect(ws_url, token, origin=origin)
    frames: list[Any] = []
    try:
        async with asyncio.timeout(5):
            while True:
                frames.append(await client.recv_json())
                if frames[-1].get("type") == "ready":
                    await client.close()
                    return frames, 0
    except ConnectionClosed:
        pass
    except TimeoutError:
        await client.close()
        return frames, 0
    return frames, client.close_code or 1006


@dataclass
class Served:
    client: Client
    asgi: CachedPageFastPath


@dataclass
class Orgs:
    """The `world` fixture: two organisations with data of their own."""

    a: Org  # the caller
    b: Org  # the victim


# Limits of the API processes below (test_limits.py checks them). The login limit is low, so nothing logs in
# through these processes but the rate-limit test: the others log in through the in-process app (same JWT
# secret) and present that token to the processes.
LOGIN_LIMIT = 3
WEBHOOK_LIMIT = 64 * 1024
# Failed webhook verifications per address: the throttle's tests post from loopback addresses of their own.
WEBHOOK_AUTH_LIMIT = 5
