"""One place wires the application: settings, database, Redis, auth, errors, logging, routes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from advanced_alchemy.extensions.litestar import (
    AsyncSessionConfig,
    EngineConfig,
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
from redis.asyncio import Redis

from app.config import Settings, get_settings
from app.domain.accounts.auth import TokenIssuer, VerifiedTokens, build_jwt_auth
from app.domain.accounts.controllers import AuthController
from app.domain.accounts.throttle import LoginThrottle
from app.domain.conversations.cache import CacheKeys, PageCache
from app.domain.conversations.controllers import ConversationController
from app.domain.conversations.reads import PageReader
from app.domain.gateways.controllers import WebhookController
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
from app.lib.errors import problem_details_config, server_error_handlers
from app.lib.jobs import ArqPlugin, JobQueue
from app.lib.logging import outermost_request_ids, structlog_plugin
from app.lib.metrics import metrics_route, prometheus_config
from app.lib.redaction import redact_server_logs
from app.server.fastpath import CachedPageFastPath
from app.server.signals import close_sockets_on_sigterm

# Ordinary JSON requests are small; only webhooks may carry inline base64 media.
DEFAULT_MAX_BODY_BYTES = 1024 * 1024


def sqlalchemy_config(settings: Settings) -> SQLAlchemyAsyncConfig:
    connect_args: dict[str, Any] = {"server_settings": {"application_name": "whatsapp-crm"}}
    if settings.db.statement_cache_size is not None:
        connect_args["statement_cache_size"] = settings.db.statement_cache_size
    return SQLAlchemyAsyncConfig(
        connection_string=settings.db.url,
        engine_config=EngineConfig(
            pool_size=settings.db.pool_size,
            max_overflow=settings.db.max_overflow,
            pool_timeout=int(settings.db.pool_timeout),
            pool_pre_ping=False,
            echo=settings.db.echo,
            # Statement parameters are customer messages and secrets: keep them out of error logs.
            hide_parameters=True,
            connect_args=connect_args,
        ),
        session_config=AsyncSessionConfig(expire_on_commit=False),
        session_dependency_key="db_session",
        # Services commit explicitly; the stock autocommit handler would swallow a failed commit.
        before_send_handler=None,
        create_all=False,
    )


def create_asgi(settings: Settings | None = None) -> CachedPageFastPath:
    """The app uvicorn serves: Litestar behind the fast path for pages already in this process's memory."""
    app = create_app(settings)
    state = app.state
    assert app.cors_config is not None
    return CachedPageFastPath(app, state.page_cache, state.verified_tokens, app.cors_config)


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or get_settings()
    redact_server_logs()
    verified_tokens = VerifiedTokens()
    jwt_auth = build_jwt_auth(settings, verified_tokens)
    token_issuer = TokenIssuer(jwt_auth, settings.auth.token_ttl_seconds)
    redis = Redis.from_url(settings.redis.url)
    prefix = settings.redis.key_prefix
    database = sqlalchemy_config(settings)
    sessions = database.create_session_maker()
    count_queries(database.get_engine())
    page_cache = PageCache(redis, CacheKeys(prefix), settings.cache)
    pages = PageReader(page_cache, sessions)
    media_storage = MediaStorage.from_url(settings.media.storage_url)
    publisher = EventPublisher(redis, prefix, page_cache)
    jobs = JobQueue(settings.redis.url, prefix)
    hub = Hub(
        settings.redis.url,
        prefix,
        History(sessions, settings.realtime.replay_reads(settings.db.pool_size)),
        settings.realtime,
        cache=page_cache,
    )
    snapshots = ProcessSnapshots(redis, prefix, hub, page_cache)

    @asynccontextmanager
    async def realtime_lifespan(_: Litestar) -> AsyncIterator[None]:
        hub.start()
        publishing = asyncio.create_task(snapshots.run())
        restore_signals = close_sockets_on_sigterm(hub)
        try:
            yield
        finally:
            restore_signals()
            publishing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await publishing
            await hub.stop()
            await redis.aclose()

    # Brute-force guard on the one endpoint that takes a password; counted in Redis so every process agrees.
    login_throttle = LoginThrottle(redis, prefix, settings.auth.login_attempts_per_minute)
    webhooks = Router(
        path="/",
        route_handlers=[WebhookController],
        request_max_body_size=settings.app.webhook_max_body_bytes,
    )
    return Litestar(
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
            {"page_cache": page_cache, "verified_tokens": verified_tokens, "login_throttle": login_throttle}
        ),
        dependencies={
            "settings": Provide(lambda: settings, use_cache=True, sync_to_thread=False),
            "token_issuer": Provide(lambda: token_issuer, use_cache=True, sync_to_thread=False),
            "redis": Provide(lambda: redis, use_cache=True, sync_to_thread=False),
            "publisher": Provide(lambda: publisher, use_cache=True, sync_to_thread=False),
            "pages": Provide(lambda: pages, use_cache=True, sync_to_thread=False),
            "media_storage": Provide(lambda: media_storage, use_cache=True, sync_to_thread=False),
            "hub": Provide(lambda: hub, use_cache=True, sync_to_thread=False),
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
    )
