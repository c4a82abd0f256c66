"""One place wires the application: settings, database, Redis, auth, errors, logging, routes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from advanced_alchemy.extensions.litestar import (
    AsyncSessionConfig,
    SQLAlchemyAsyncConfig,
    SQLAlchemyPlugin,
)
from litestar import Litestar, Router
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi.config import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin
from litestar.plugins.problem_details import ProblemDetailsPlugin
from litestar.types import BeforeMessageSendHookHandler, Message, Scope
from redis.asyncio import BlockingConnectionPool, Redis

from app.config import Settings, get_settings
from app.db.engine import build_engine
from app.domain.accounts.auth import TokenIssuer, VerifiedTokens, build_jwt_auth
from app.domain.accounts.controllers import AuthController
from app.domain.accounts.login_slots import LoginSlots
from app.domain.accounts.revocations import TokenRevocations, asyncpg_dsn
from app.domain.accounts.throttle import LoginThrottle
from app.domain.conversations.cache import CacheKeys, PageCache
from app.domain.conversations.controllers import ConversationController
from app.domain.conversations.reads import PageReader
from app.domain.ingest.batcher import IngestBatcher
from app.domain.ingest.bodies import WebhookBodies
from app.domain.ingest.controllers import WebhookController
from app.domain.ingest.intake import WebhookIntake
from app.domain.ingest.recent_instances import RecentInstances
from app.domain.ingest.throttle import WebhookAuthThrottle
from app.domain.media.controllers import MediaController
from app.domain.media.storage import MediaStorage
from app.domain.realtime.controllers import realtime_socket, websocket_info
from app.domain.realtime.history import History
from app.domain.realtime.hub import Hub
from app.domain.realtime.publisher import EventPublisher
from app.domain.stats.controllers import StatsController
from app.domain.stats.health import HealthController
from app.domain.stats.process import ProcessSnapshots
from app.lib.dbstats import count_queries
from app.lib.driver_sql import DriverConnections
from app.lib.errors import is_database_unavailable, problem_details_config, server_error_handlers
from app.lib.jobs import ArqPlugin, JobQueue
from app.lib.json_requests import JsonDepthGuardedRequest
from app.lib.logging import outermost_request_ids, structlog_plugin
from app.lib.metrics import metrics_route, prometheus_config
from app.lib.openapi import document_api
from app.lib.redaction import redact_server_logs
from app.lib.throttle_calls import ThrottleCalls
from app.server.fastpath import CachedPageFastPath
from app.server.gc_tuning import settle_collector
from app.server.shedding import RefusedLoginShedding
from app.server.signals import close_sockets_on_sigterm
from app.server.webhook_path import WebhookPath

log = structlog.get_logger()

# Ordinary JSON requests are small; only webhooks may carry inline base64 media.
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
REVOCATIONS_STARTUP_WAIT_S = 3.0


def tolerating_lost_connections(close_session: BeforeMessageSendHookHandler) -> BeforeMessageSendHookHandler:
    """advanced-alchemy's hook closes the request's session as the answer starts. A connection the database
    dropped after the handler had its data (Postgres shutting down) makes that close fail; the answer must
    still go out as it was, not as a 500: the rollback has nothing left to undo, and the pool discards the
    connection."""

    async def handler(message: Message, scope: Scope) -> None:
        try:
            closing = close_session(message, scope)
            if closing is not None:
                await closing
        except Exception as exc:
            if not is_database_unavailable(exc):
                raise
            log.warning("request session closed on a lost connection", error=type(exc).__name__)

    return handler


def sqlalchemy_config(settings: Settings) -> SQLAlchemyAsyncConfig:
    config = SQLAlchemyAsyncConfig(
        engine_instance=build_engine(settings.db),  # every DB_* setting: app.db.engine
        session_config=AsyncSessionConfig(expire_on_commit=False),
        session_dependency_key="db_session",
        # Services commit explicitly; the stock autocommit handler would swallow a failed commit.
        before_send_handler=None,  # advanced-alchemy's closing hook, wrapped below
        create_all=False,
    )
    assert callable(config.before_send_handler)  # resolved by __post_init__
    config.before_send_handler = tolerating_lost_connections(config.before_send_handler)
    return config


def create_asgi(settings: Settings | None = None) -> CachedPageFastPath:
    """The app uvicorn serves: Litestar behind the fast path for pages already in this process's memory,
    the door that sheds logins from addresses already over their budget, and the lean webhook path."""
    app = create_app(settings)
    state = app.state
    assert app.cors_config is not None
    webhooks = WebhookPath(app, app, state.webhook_intake)
    shedding = RefusedLoginShedding(webhooks, state.login_throttle, app.cors_config)
    return CachedPageFastPath(shedding, state.page_cache, state.verified_tokens, app.cors_config, state.pages)


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or get_settings()
    redact_server_logs()
    redis = Redis.from_url(settings.redis.url)
    prefix = settings.redis.key_prefix
    database = sqlalchemy_config(settings)
    sessions = database.create_session_maker()
    count_queries(database.get_engine())
    revocations = TokenRevocations(
        database.get_engine(),
        asyncpg_dsn(settings.db.listen_url or settings.db.url),
        token_ttl_s=settings.auth.token_ttl_seconds,
        check_interval_s=settings.auth.revocation_check_s,
        standing_reads=max(1, settings.db.pool_size // 4),  # a quarter of the pool, as replays by default
        statement_cache_size=settings.db.statement_cache_size,
    )
    verified_tokens = VerifiedTokens(revocations)
    jwt_auth = build_jwt_auth(settings, verified_tokens)
    token_issuer = TokenIssuer(settings.auth)
    page_cache = PageCache(redis, CacheKeys(prefix), settings.cache)
    pages = PageReader(page_cache, DriverConnections(database.get_engine()))
    media_storage = MediaStorage.from_url(settings.media.storage_url)
    publisher = EventPublisher(redis, prefix, page_cache)
    jobs = JobQueue(settings.redis.url, prefix)
    hub = Hub(
        settings.redis.url,
        prefix,
        History(
            sessions,
            settings.realtime.replay_reads(settings.db.pool_size),
            settings.realtime.replay_reads_per_agent(settings.db.pool_size),
        ),
        settings.realtime,
        cache=page_cache,
    )
    snapshots = ProcessSnapshots(redis, prefix, hub, page_cache)
    revocations.on_revoked(hub.close_revoked)
    recent_instances = RecentInstances(settings.app.webhook_instance_cache_s)
    webhook_bodies = WebhookBodies.from_settings(settings.app)
    ingest_batcher = IngestBatcher(
        database.get_engine(), publisher, jobs, max_flights=max(1, settings.app.ingest_flights)
    )

    @asynccontextmanager
    async def realtime_lifespan(_: Litestar) -> AsyncIterator[None]:
        hub.start()
        background = [asyncio.create_task(snapshots.run()), asyncio.create_task(revocations.run())]
        # Answer knowing the recent revocations; with Postgres down, start anyway (see revocations.py).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(revocations.loaded.wait(), REVOCATIONS_STARTUP_WAIT_S)
        restore_signals = close_sockets_on_sigterm(hub)
        settle_collector()  # startup's objects out of every later collection (gc_tuning, issue 13)
        try:
            yield
        finally:
            restore_signals()
            await ingest_batcher.drain()
            for task in background:
                task.cancel()
            for task in background:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await hub.stop()
            await redis.aclose()
            await throttle_redis.aclose()
            throttle_calls.close()

    # Brute-force guards on the one endpoint that takes a password and on webhook secrets; counted in Redis
    # so every process agrees, timed by Redis's own answers rather than this process's loop.
    throttle_calls = ThrottleCalls(settings.redis.url)
    # Their own few connections: a flood of 600 requests must not open 600 connections to Redis at once.
    throttle_redis = Redis(
        connection_pool=BlockingConnectionPool.from_url(settings.redis.url, max_connections=8)
    )
    login_throttle = LoginThrottle(
        throttle_redis,
        throttle_calls,
        prefix,
        settings.auth.login_attempts_per_minute,
        settings.auth.login_failures_per_account,
        settings.auth.login_account_window_s,
    )
    login_slots = LoginSlots(settings.auth.login_slots())
    webhook_intake = WebhookIntake(
        WebhookAuthThrottle(
            throttle_redis, throttle_calls, prefix, settings.auth.webhook_auth_failures_per_minute
        ),
        recent_instances,
        webhook_bodies,
        ingest_batcher,
        sessions,
    )
    webhooks = Router(
        path="/",
        route_handlers=[WebhookController],
        request_max_body_size=webhook_bodies.largest_limit,  # each gateway's own limit: ingest/bodies.py
    )
    app = Litestar(
        route_handlers=[
            AuthController,
            ConversationController,
            HealthController,
            StatsController,
            MediaController,
            webhooks,
            realtime_socket,
            websocket_info,
            metrics_route(settings.app.metrics_token),
        ],
        middleware=[prometheus_config().middleware],
        state=State(
            {
                "page_cache": page_cache,
                "pages": pages,
                "verified_tokens": verified_tokens,
                "login_throttle": login_throttle,
                "webhook_throttle": webhook_intake.throttle,
                "webhook_intake": webhook_intake,
            }
        ),
        dependencies={
            "settings": Provide(lambda: settings, use_cache=True, sync_to_thread=False),
            "token_issuer": Provide(lambda: token_issuer, use_cache=True, sync_to_thread=False),
            "login_throttle": Provide(lambda: login_throttle, use_cache=True, sync_to_thread=False),
            "login_slots": Provide(lambda: login_slots, use_cache=True, sync_to_thread=False),
            "redis": Provide(lambda: redis, use_cache=True, sync_to_thread=False),
            "publisher": Provide(lambda: publisher, use_cache=True, sync_to_thread=False),
            "pages": Provide(lambda: pages, use_cache=True, sync_to_thread=False),
            "media_storage": Provide(lambda: media_storage, use_cache=True, sync_to_thread=False),
            "hub": Provide(lambda: hub, use_cache=True, sync_to_thread=False),
            "verified_tokens": Provide(lambda: verified_tokens, use_cache=True, sync_to_thread=False),
            "webhook_bodies": Provide(lambda: webhook_bodies, use_cache=True, sync_to_thread=False),
            "webhook_intake": Provide(lambda: webhook_intake, use_cache=True, sync_to_thread=False),
            "snapshots": Provide(lambda: snapshots, use_cache=True, sync_to_thread=False),
        },
        plugins=[
            SQLAlchemyPlugin(config=database),
            ArqPlugin(jobs),
            ProblemDetailsPlugin(problem_details_config),
            structlog_plugin(settings.app.log_level, settings.app.log_json),
        ],
        on_app_init=[jwt_auth.on_app_init, outermost_request_ids],
        exception_handlers=server_error_handlers,  # type: ignore[arg-type]
        lifespan=[realtime_lifespan],
        cors_config=CORSConfig(
            allow_origins=settings.app.cors_allowed_origins,
            allow_credentials=True,
            allow_headers=["Authorization", "Content-Type"],
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
        ),
        openapi_config=OpenAPIConfig(
            title="WhatsApp CRM API",
            version="0.1.0",
            path="/schema",
            render_plugins=[ScalarRenderPlugin()],
        ),
        request_max_body_size=DEFAULT_MAX_BODY_BYTES,
        request_class=JsonDepthGuardedRequest,  # a JSON body nested too deeply: 400, not 500
    )
    document_api(app, jwt_auth)  # errors as problem documents; the bearer requirement where JWT applies
    return app
