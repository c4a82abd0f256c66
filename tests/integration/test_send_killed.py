"""A send job killed mid-request and run again: a real `arq` worker process is SIGKILLed while the gateway
(a real local HTTP server) holds its request, and a new worker takes the job over. app.workers.sending
documents the outcome: the claim left behind means the gateway may have the message, so the message is
failed with INTERRUPTED instead of being sent a second time, and the job ends there."""

from __future__ import annotations

from uuid import UUID

from arq.constants import in_progress_key_prefix, retry_key_prefix
from arq.jobs import Job
from litestar import Litestar
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.config import Settings
from app.db.models import Message
from app.lib.jobs import deserialize_job, queue_name, send_job_id
from app.workers.sending import INTERRUPTED
from tests.fake_gateway import FakeGateway, hang
from tests.kit.api import eventually, login, send
from tests.kit.ingested import tenant_with_chat
from tests.kit.processes import arq_worker

Client = AsyncTestClient[Litestar]


async def stored(session: AsyncSession, message_id: UUID) -> Message:
    session.expire_all()
    return await session.get_one(Message, message_id)


async def test_a_send_killed_mid_request_is_failed_on_retry_not_sent_twice(
    client: Client, session: AsyncSession, engine: AsyncEngine, settings: Settings, redis: Redis
):
    async with FakeGateway() as gateway:
        gateway.respond(r"/send-message$", hang(120))  # holds the request until the worker is gone
        tenant, conversation_id = await tenant_with_chat(session, engine, gateway.base_url)
        headers = await login(client, tenant.agent.email)
        history_url = f"/api/whatsapp-optimized/messages/{conversation_id}"
        job_id = ""

        with arq_worker(settings) as first:
            response = await send(client, headers, conversation_id, "Pedido confirmado", "killed-send-1")
            assert response.status_code == 201, response.text
            message_id = UUID(response.json()["id"])
            job_id = send_job_id(message_id)

            async def gateway_has_it() -> bool:
                return len(gateway.requests) == 1

            await eventually(gateway_has_it, "the worker's request reaches the gateway")
            claimed = await stored(session, message_id)
            assert (claimed.status.value, claimed.send_attempts) == ("pending", 1)
            assert claimed.sending_since is not None
            first.kill()

        # The dead worker left the job queued and "in progress". arq hands it to another worker when that
        # lease key expires (the longest job timeout + 10 s); the test expires it now instead of waiting.
        queue = queue_name(settings.redis.key_prefix)
        assert await redis.zscore(queue, job_id) is not None
        lease = in_progress_key_prefix + job_id
        assert await redis.pttl(lease) > 0  # a lease that ends by itself: the job is not stuck forever
        await redis.pexpire(lease, 1)
        assert (await stored(session, message_id)).status.value == "pending"

        with arq_worker(settings):
            job = Job(job_id, redis, _queue_name=queue, _deserializer=deserialize_job)

            async def job_finished() -> bool:
                return await job.result_info() is not None

            await eventually(job_finished, "the new worker runs the job to its end")
            result = await job.result_info()
            assert result is not None
            assert (result.success, result.result, result.job_try) == (True, "failed: interrupted earlier", 2)

            failed = await stored(session, message_id)
            assert (failed.status.value, failed.error, failed.sending_since) == ("failed", INTERRUPTED, None)
            assert failed.send_attempts == 1  # claimed once, sent (at most) once

            # The job is over: no longer queued, no retry counter, nothing left to pick up.
            assert await redis.zscore(queue, job_id) is None
            assert await redis.exists(retry_key_prefix + job_id, lease) == 0

            # Agents see it failed (the worker's publish made the cached page stale).
            async def agents_see_failed() -> bool:
                page = (await client.get(history_url, headers=headers)).json()
                mine = [m for m in page["items"] if m["id"] == str(message_id)]
                return bool(mine and mine[0]["status"] == "failed")

            await eventually(agents_see_failed, "the history shows the message failed", timeout=5)

        assert len(gateway.requests) == 1, "the gateway got the message a second time"
        assert gateway.requests[0].json["message"] == "Pedido confirmado"
