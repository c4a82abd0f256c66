"""Settings: dataclasses read once from the environment (and `.env` in development).

Secrets come only from the environment. With no DATABASE_URL / REDIS_URL the dev launcher
(`app.lib.embedded`) starts embedded servers and exports their URLs before this module is read.

JWT_SECRET may be missing (then generated once into DEV_STATE_DIR) or short only when APP_ENV is exactly
`dev` or `test`, which the dev launchers and the test rig set; anything else — unset, `production`, a typo
such as `prod` — refuses to start without a secret of at least 32 bytes (issue 12, finding 12: a typo used
to accept a short secret or silently generate one).
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

DEFAULT_DEV_STATE_DIR = ".dev"
# The only environments that may run without a configured JWT secret of full length.
LENIENT_ENVIRONMENTS = ("dev", "test")
MIN_JWT_SECRET_BYTES = 32  # HS256's key: at least its 256 bits


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def _env_int(name: str, default: int) -> int:
    value = _env(name)
    return int(value) if value is not None else default


def _env_list(name: str, default: list[str]) -> list[str]:
    value = _env(name)
    if value is None:
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


def load_dotenv(path: Path = Path(".env")) -> None:
    """Read KEY=VALUE lines into the environment without overriding what is already set."""
    if not path.is_file():
        return
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        os.environ.setdefault(key.strip(), value.strip().strip("'\""))


def dev_state_dir() -> Path:
    """Where a dev run keeps its embedded servers' data and its JWT secret: DEV_STATE_DIR, else ./.dev."""
    return Path(_env("DEV_STATE_DIR", DEFAULT_DEV_STATE_DIR) or DEFAULT_DEV_STATE_DIR)


def _dev_jwt_secret(state_dir: Path) -> str:
    """A per-state-dir random secret so `just dev` works without setup; never used outside dev/test.

    Written to a temporary file and linked into place, so processes starting together (API, workers) all
    end up with the one secret that won, never an empty or half-written file."""
    path = state_dir / "jwt-secret"
    if not path.is_file():
        state_dir.mkdir(parents=True, exist_ok=True)
        draft = state_dir / f".jwt-secret.{os.getpid()}"
        draft.write_text(secrets.token_urlsafe(48))
        draft.chmod(0o600)
        try:
            os.link(draft, path)
        except FileExistsError:
            pass  # another process of this run was first: use its secret
        except OSError:  # a filesystem without hard links
            os.replace(draft, path)
        finally:
            draft.unlink(missing_ok=True)
    return path.read_text().strip()


def jwt_secret_for(environment: str, configured: str | None) -> str:
    """The secret tokens are signed with; RuntimeError (naming the variable, never its value) if unfit."""
    if environment in LENIENT_ENVIRONMENTS:
        return configured if configured is not None else _dev_jwt_secret(dev_state_dir())
    where = f"with APP_ENV={environment!r} (only 'dev' and 'test' may do without)"
    if configured is None:
        raise RuntimeError(f"JWT_SECRET must be set {where}")
    if len(configured.encode()) < MIN_JWT_SECRET_BYTES:
        raise RuntimeError(f"JWT_SECRET must be at least {MIN_JWT_SECRET_BYTES} bytes {where}")
    return configured


@dataclass(frozen=True)
class DatabaseSettings:
    url: str
    pool_size: int = 20
    max_overflow: int = 10
    pool_timeout: float = 10.0  # waiting longer than this for a connection answers 503 + Retry-After
    # Supabase's transaction pooler (port 6543) cannot keep prepared statements:
    # set DB_STATEMENT_CACHE_SIZE=0 there.
    statement_cache_size: int | None = None
    echo: bool = False
    # LISTEN needs a session connection: behind a transaction pooler, point this at a direct/session one.
    listen_url: str | None = None


@dataclass(frozen=True)
class RedisSettings:
    url: str
    # Prefix of every key and channel this deployment uses, so several can share one Redis.
    key_prefix: str = "crm"


@dataclass(frozen=True)
class AuthSettings:
    jwt_secret: str = field(repr=False)
    token_ttl_seconds: int = 8 * 3600
    algorithm: str = "HS256"
    login_attempts_per_minute: int = 10  # per client address, shared by all API processes (Redis)
    # Failed logins per account (e-mail) per window, whatever the address; past it the account refuses logins,
    # the right password too, until the window closes (accounts/throttle.py says what that costs).
    login_failures_per_account: int = 10
    login_account_window_s: int = 900
    # Password checks at once per process (the rest wait their turn). 0: half the CPUs this process may use,
    # between 1 and 4 — scrypt is CPU-bound, and the event loop that acks webhooks needs a core of its own
    # (issue 12: on 2 cores, 4 concurrent checks during a login flood pushed webhook acks to ~300 ms).
    login_concurrency: int = 0
    # Failed webhook verifications (wrong/missing secret or signature, unknown instance) per client address;
    # above it the address gets 429 on webhook routes until its minute passes. Verified traffic never counts.
    webhook_auth_failures_per_minute: int = 30
    # Emails of the operators who may see deployment-wide figures (every org's); org admins see their own.
    deployment_admins: list[str] = field(default_factory=list)
    # How often each API process re-reads agent_revocations, in case a NOTIFY was missed.
    revocation_check_s: float = 30.0

    def login_slots(self) -> int:
        if self.login_concurrency > 0:
            return self.login_concurrency
        return max(1, min(4, len(os.sched_getaffinity(0)) // 2))


@dataclass(frozen=True)
class RealtimeSettings:
    heartbeat_s: int = 25  # protocol ping interval; a connection missing two is closed
    queue_size: int = 512  # frames waiting for one slow socket before it gets `resync` and is closed
    max_frame_bytes: int = 4096  # client frames are small commands
    frames_per_second: float = 20.0  # per connection, with a burst of twice that
    catch_up_interval_s: float = 2.0  # how often rooms are checked against Postgres for lost publishes
    replay_page: int = 200  # messages per query while replaying
    # Replay / gap-fill / subscribe reads running at once per process (the rest wait their turn), so a
    # reconnect storm cannot take the pool from ingest. 0: a quarter of the pool (DB_POOL_SIZE // 4, >= 1).
    replay_concurrency: int = 0
    # Of those, at most this many for one agent at a time (its other reads wait for its own turn, not in
    # the shared line), so one agent's subscribe flood cannot delay another's (issue 12). 0: half of the
    # process-wide limit, at least 1.
    replay_concurrency_per_agent: int = 0
    # Open sockets one agent may hold on one API process (a browser agent has a few tabs); the next is
    # closed with 4429.
    max_sockets_per_agent: int = 20

    def replay_reads(self, pool_size: int) -> int:
        return self.replay_concurrency if self.replay_concurrency > 0 else max(1, pool_size // 4)

    def replay_reads_per_agent(self, pool_size: int) -> int:
        total = self.replay_reads(pool_size)
        share = self.replay_concurrency_per_agent or max(1, total // 2)
        return max(1, min(share, total))


@dataclass(frozen=True)
class HttpServerSettings:
    """What the API's HTTP protocol (app.server.http_protocol) allows a client connection (issue 12)."""

    # From a connection's start, or a kept-alive request's first byte, to the end of the request head.
    header_timeout_s: float = 10.0
    body_idle_timeout_s: float = 20.0  # longest silence while a request body is arriving
    body_timeout_s: float = 120.0  # a whole request body (24 MiB at 200 KB/s)
    # Open connections (HTTP and WebSocket) per process; the next ones get 503 at once. 0: derived from the
    # file descriptor limit (RLIMIT_NOFILE), leaving room for the pools, logs and files.
    max_connections: int = 0


@dataclass(frozen=True)
class CacheSettings:
    memory_max_bytes: int = 32 * 1024 * 1024  # per API process: pages, keys and bookkeeping
    memory_ttl_s: float = 30.0  # bounds how stale a page can be if an invalidation is lost
    redis_ttl_s: int = 300
    page_size: int = 50  # the page size warm_cache precomputes (the API's default)
    warm_conversations: int = 200  # warm_cache: this many most recently active conversations
    idle_after_s: int = 3600  # expire_cache: drop pages of conversations quiet for this long
    redis_max_keys: int = 50_000  # expire_cache: keep at most this many pages in Redis


@dataclass(frozen=True)
class MediaSettings:
    # Where processed media lives: file:///abs/dir, s3://bucket/prefix (S3-compatible, e.g. Supabase
    # Storage; credentials from the AWS_* environment), or memory:// in tests. Default: ./var/media.
    storage_url: str = ""
    max_bytes: int = 100 * 1024 * 1024  # WhatsApp's own limit for documents
    thumbnail_px: int = 320
    max_attempts: int = 5  # per media, for transient gateway errors
    concurrency: int = 4  # media jobs one worker runs at once (its own queue: they never delay sends)
    # Decoded image bytes one media worker holds at once, all its jobs together (issue 12, finding 9): a
    # 40 MP RGBA PNG costs ~162 MiB, so it fits; an image costing more alone is stored without thumbnail.
    decode_budget_bytes: int = 256 * 1024 * 1024


@dataclass(frozen=True)
class WorkersSettings:
    # How often each arq worker writes its health check (which lives one second longer): /ready needs both
    # workers' to be present, so after Redis comes back empty /ready waits up to this long for them.
    health_check_s: float = 30.0


@dataclass(frozen=True)
class AppSettings:
    environment: str = "dev"
    public_base_url: str = "http://127.0.0.1:3001"
    cors_allowed_origins: list[str] = field(default_factory=lambda: ["http://localhost:5173"])
    # Gateways push media as inline base64 (wppconnect-server #1775, evolution-api #956): 16 MiB of video
    # is ~22 MiB of base64 plus JSON, so the default admits that and refuses anything bigger.
    webhook_max_body_bytes: int = 24 * 1024 * 1024
    # Cloud API never inlines media (its webhooks are KBs, media comes by id): a smaller limit (issue 12).
    webhook_cloudapi_max_body_bytes: int = 1024 * 1024
    # Bodies read before the request is verified (Cloud API's signature, Evolution's in-body apikey), per
    # process: at most this many at once and this many bytes (Content-Length, else the gateway's limit);
    # the rest wait briefly, then 503 + Retry-After (see ingest/bodies.py).
    webhook_unverified_reads: int = 16
    webhook_unverified_bytes: int = 48 * 1024 * 1024
    # How long a process trusts an instance a webhook found (secret, org): see ingest/recent_instances.py.
    webhook_instance_cache_s: float = 5.0
    # Group commit (issue 13, domain/ingest/batcher.py): ingest batches in flight at once per process, each
    # one statement and one transaction on a connection of its own; the webhooks arriving meanwhile wait
    # for the next one.
    ingest_flights: int = 4
    log_level: str = "INFO"
    log_json: bool = True
    metrics_token: str | None = field(default=None, repr=False)  # enables /metrics for this bearer token


@dataclass(frozen=True)
class Settings:
    app: AppSettings
    db: DatabaseSettings
    redis: RedisSettings
    auth: AuthSettings
    realtime: RealtimeSettings = field(default_factory=RealtimeSettings)
    cache: CacheSettings = field(default_factory=CacheSettings)
    media: MediaSettings = field(default_factory=MediaSettings)
    workers: WorkersSettings = field(default_factory=WorkersSettings)
    http: HttpServerSettings = field(default_factory=HttpServerSettings)

    @classmethod
    def from_env(cls) -> Settings:
        load_dotenv()
        # Unset counts as production: only an explicit dev or test relaxes anything.
        environment = _env("APP_ENV", "production") or "production"
        jwt_secret = jwt_secret_for(environment, _env("JWT_SECRET"))
        database_url = _env("DATABASE_URL")
        redis_url = _env("REDIS_URL")
        if database_url is None or redis_url is None:
            raise RuntimeError(
                "DATABASE_URL and REDIS_URL must be set; `just dev` starts embedded servers and sets them"
            )
        cache_size = _env("DB_STATEMENT_CACHE_SIZE")
        return cls(
            realtime=RealtimeSettings(
                heartbeat_s=_env_int("WS_HEARTBEAT_SECONDS", RealtimeSettings.heartbeat_s),
                queue_size=_env_int("WS_QUEUE_SIZE", RealtimeSettings.queue_size),
                max_frame_bytes=_env_int("WS_MAX_FRAME_BYTES", RealtimeSettings.max_frame_bytes),
                frames_per_second=float(_env("WS_FRAMES_PER_SECOND") or RealtimeSettings.frames_per_second),
                catch_up_interval_s=float(
                    _env("WS_CATCH_UP_SECONDS") or RealtimeSettings.catch_up_interval_s
                ),
                replay_concurrency=_env_int("WS_REPLAY_CONCURRENCY", RealtimeSettings.replay_concurrency),
                replay_concurrency_per_agent=_env_int(
                    "WS_REPLAY_CONCURRENCY_PER_AGENT", RealtimeSettings.replay_concurrency_per_agent
                ),
                max_sockets_per_agent=_env_int(
                    "WS_MAX_SOCKETS_PER_AGENT", RealtimeSettings.max_sockets_per_agent
                ),
            ),
            http=HttpServerSettings(
                header_timeout_s=float(
                    _env("HTTP_HEADER_TIMEOUT_SECONDS") or HttpServerSettings.header_timeout_s
                ),
                body_idle_timeout_s=float(
                    _env("HTTP_BODY_IDLE_TIMEOUT_SECONDS") or HttpServerSettings.body_idle_timeout_s
                ),
                body_timeout_s=float(_env("HTTP_BODY_TIMEOUT_SECONDS") or HttpServerSettings.body_timeout_s),
                max_connections=_env_int("HTTP_MAX_CONNECTIONS", HttpServerSettings.max_connections),
            ),
            cache=CacheSettings(
                memory_max_bytes=_env_int("CACHE_MEMORY_MAX_BYTES", CacheSettings.memory_max_bytes),
                memory_ttl_s=float(_env("CACHE_MEMORY_TTL_SECONDS") or CacheSettings.memory_ttl_s),
                redis_ttl_s=_env_int("CACHE_REDIS_TTL_SECONDS", CacheSettings.redis_ttl_s),
                warm_conversations=_env_int("CACHE_WARM_CONVERSATIONS", CacheSettings.warm_conversations),
                idle_after_s=_env_int("CACHE_IDLE_SECONDS", CacheSettings.idle_after_s),
                redis_max_keys=_env_int("CACHE_REDIS_MAX_KEYS", CacheSettings.redis_max_keys),
            ),
            media=MediaSettings(
                storage_url=_env("MEDIA_STORAGE_URL") or (Path("var/media").resolve().as_uri()),
                max_bytes=_env_int("MEDIA_MAX_BYTES", MediaSettings.max_bytes),
                concurrency=_env_int("MEDIA_CONCURRENCY", MediaSettings.concurrency),
                decode_budget_bytes=_env_int("MEDIA_DECODE_BUDGET_BYTES", MediaSettings.decode_budget_bytes),
            ),
            workers=WorkersSettings(
                health_check_s=float(_env("WORKER_HEALTH_CHECK_SECONDS") or WorkersSettings.health_check_s)
            ),
            app=AppSettings(
                environment=environment,
                public_base_url=(_env("PUBLIC_BASE_URL", AppSettings.public_base_url) or "").rstrip("/"),
                cors_allowed_origins=_env_list("CORS_ALLOWED_ORIGINS", ["http://localhost:5173"]),
                webhook_max_body_bytes=_env_int("WEBHOOK_MAX_BODY_BYTES", AppSettings.webhook_max_body_bytes),
                webhook_cloudapi_max_body_bytes=_env_int(
                    "WEBHOOK_CLOUDAPI_MAX_BODY_BYTES", AppSettings.webhook_cloudapi_max_body_bytes
                ),
                webhook_unverified_reads=_env_int(
                    "WEBHOOK_UNVERIFIED_READS", AppSettings.webhook_unverified_reads
                ),
                webhook_unverified_bytes=_env_int(
                    "WEBHOOK_UNVERIFIED_BYTES", AppSettings.webhook_unverified_bytes
                ),
                webhook_instance_cache_s=float(
                    _env("WEBHOOK_INSTANCE_CACHE_SECONDS") or AppSettings.webhook_instance_cache_s
                ),
                ingest_flights=_env_int("INGEST_BATCH_FLIGHTS", AppSettings.ingest_flights),
                log_level=_env("LOG_LEVEL", "INFO") or "INFO",
                log_json=(_env("LOG_FORMAT", "json") == "json"),
                metrics_token=_env("METRICS_TOKEN"),
            ),
            db=DatabaseSettings(
                url=normalise_database_url(database_url),
                pool_size=_env_int("DB_POOL_SIZE", DatabaseSettings.pool_size),
                max_overflow=_env_int("DB_MAX_OVERFLOW", DatabaseSettings.max_overflow),
                pool_timeout=float(_env("DB_POOL_TIMEOUT") or DatabaseSettings.pool_timeout),
                statement_cache_size=int(cache_size) if cache_size is not None else None,
                echo=_env("DB_ECHO") == "1",
                listen_url=normalise_database_url(listen) if (listen := _env("DB_LISTEN_URL")) else None,
            ),
            redis=RedisSettings(url=redis_url, key_prefix=_env("REDIS_KEY_PREFIX", "crm") or "crm"),
            auth=AuthSettings(
                jwt_secret=jwt_secret,
                token_ttl_seconds=_env_int("JWT_TTL_SECONDS", AuthSettings.token_ttl_seconds),
                login_attempts_per_minute=_env_int(
                    "LOGIN_ATTEMPTS_PER_MINUTE", AuthSettings.login_attempts_per_minute
                ),
                login_failures_per_account=_env_int(
                    "LOGIN_FAILURES_PER_ACCOUNT", AuthSettings.login_failures_per_account
                ),
                login_account_window_s=_env_int(
                    "LOGIN_ACCOUNT_WINDOW_SECONDS", AuthSettings.login_account_window_s
                ),
                login_concurrency=_env_int("LOGIN_CONCURRENCY", AuthSettings.login_concurrency),
                webhook_auth_failures_per_minute=_env_int(
                    "WEBHOOK_AUTH_FAILURES_PER_MINUTE", AuthSettings.webhook_auth_failures_per_minute
                ),
                deployment_admins=[email.lower() for email in _env_list("DEPLOYMENT_ADMINS", [])],
                revocation_check_s=float(
                    _env("TOKEN_REVOCATION_CHECK_SECONDS") or AuthSettings.revocation_check_s
                ),
            ),
        )


def normalise_database_url(url: str) -> str:
    """Accept the plain `postgres://` / `postgresql://` URLs Supabase and Heroku print; we drive asyncpg."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    return url


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings.from_env()
