"""Settings: dataclasses read once from the environment (and `.env` in development).

Secrets come only from the environment. With no DATABASE_URL / REDIS_URL the dev launcher
(`app.lib.embedded`) starts embedded servers and exports their URLs before this module is read.

JWT_SECRET may be missing (then generated once into DEV_STATE_DIR) or short only when APP_ENV is exactly
`dev` or `test`, which the dev launchers and the test rig set; anything else — unset, `production`, a typo
such as `prod` — refuses to start without a secret of at least 32 bytes (issue 12, finding 12: a typo used
to accept a short secret or silently generate one).

Each setting's environment variable is named beside its field (`env_int("DB_POOL_SIZE", 20)`), and one
loader (app.lib.env_fields) reads them all (issue 14: the names were written here and again by hand in the
test rig). `Settings.to_env()` writes them back, which is how tests start child processes with the settings
they hold. A missing or unreadable value raises ConfigurationError naming the variable, never its value;
the CLI answers it with one line and exit 2.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field, fields, replace
from functools import lru_cache
from pathlib import Path

from app.lib.env_fields import (
    ConfigurationError,
    env_flag,
    env_float,
    env_int,
    env_list,
    env_text,
    env_value,
    load_section,
    section_env,
    split_list,
)

__all__ = ["ConfigurationError", "Settings", "get_settings"]

DEFAULT_DEV_STATE_DIR = ".dev"
# The only environments that may run without a configured JWT secret of full length.
LENIENT_ENVIRONMENTS = ("dev", "test")
MIN_JWT_SECRET_BYTES = 32  # HS256's key: at least its 256 bits


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
    return Path(env_value("DEV_STATE_DIR", DEFAULT_DEV_STATE_DIR) or DEFAULT_DEV_STATE_DIR)


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
    """The secret tokens are signed with; ConfigurationError (naming the variable, not its value) if unfit."""
    if environment in LENIENT_ENVIRONMENTS:
        return configured if configured is not None else _dev_jwt_secret(dev_state_dir())
    where = f"with APP_ENV={environment!r} (only 'dev' and 'test' may do without)"
    if configured is None:
        raise ConfigurationError(f"JWT_SECRET must be set {where}")
    if len(configured.encode()) < MIN_JWT_SECRET_BYTES:
        raise ConfigurationError(f"JWT_SECRET must be at least {MIN_JWT_SECRET_BYTES} bytes {where}")
    return configured


@dataclass(frozen=True)
class DatabaseSettings:
    url: str = env_text("DATABASE_URL", parse=lambda value: normalise_database_url(value))
    pool_size: int = env_int("DB_POOL_SIZE", 20)
    max_overflow: int = env_int("DB_MAX_OVERFLOW", 10)
    pool_timeout: float = env_float(
        "DB_POOL_TIMEOUT", 10.0
    )  # waiting longer than this for a connection answers 503 + Retry-After
    # Supabase's transaction pooler (port 6543) cannot keep prepared statements:
    # set DB_STATEMENT_CACHE_SIZE=0 there.
    # 0 also gives SQLAlchemy's prepared statements unique names (app.db.engine).
    statement_cache_size: int | None = env_int("DB_STATEMENT_CACHE_SIZE", None)
    echo: bool = env_flag("DB_ECHO", False)
    # LISTEN needs a session connection: behind a transaction pooler, point this at a direct/session one.
    listen_url: str | None = env_text(
        "DB_LISTEN_URL", None, parse=lambda value: normalise_database_url(value)
    )


@dataclass(frozen=True)
class RedisSettings:
    url: str = env_text("REDIS_URL")
    # Prefix of every key and channel this deployment uses, so several can share one Redis.
    key_prefix: str = env_text("REDIS_KEY_PREFIX", "crm")


@dataclass(frozen=True)
class AuthSettings:
    jwt_secret: str = env_text("JWT_SECRET", repr=False)  # read through jwt_secret_for
    token_ttl_seconds: int = env_int("JWT_TTL_SECONDS", 8 * 3600)
    algorithm: str = "HS256"
    login_attempts_per_minute: int = env_int(
        "LOGIN_ATTEMPTS_PER_MINUTE", 10
    )  # per client address, shared by all API processes (Redis)
    # Failed logins per account (e-mail) per window, whatever the address; past it the account refuses logins,
    # the right password too, until the window closes (accounts/throttle.py says what that costs).
    login_failures_per_account: int = env_int("LOGIN_FAILURES_PER_ACCOUNT", 10)
    login_account_window_s: int = env_int("LOGIN_ACCOUNT_WINDOW_SECONDS", 900)
    # Password checks at once per process (the rest wait their turn). 0: half the CPUs this process may use,
    # between 1 and 4 — scrypt is CPU-bound, and the event loop that acks webhooks needs a core of its own
    # (issue 12: on 2 cores, 4 concurrent checks during a login flood pushed webhook acks to ~300 ms).
    login_concurrency: int = env_int("LOGIN_CONCURRENCY", 0)
    # Failed webhook verifications (wrong/missing secret or signature, unknown instance) per client address;
    # above it the address gets 429 on webhook routes until its minute passes. Verified traffic never counts.
    webhook_auth_failures_per_minute: int = env_int("WEBHOOK_AUTH_FAILURES_PER_MINUTE", 30)
    # Emails of the operators who may see deployment-wide figures (every org's); org admins see their own.
    deployment_admins: list[str] = env_list(  # noqa: RUF009 (a field() with a default_factory)
        "DEPLOYMENT_ADMINS", parse=lambda value: [e.lower() for e in split_list(value)]
    )
    # How often each API process re-reads agent_revocations, in case a NOTIFY was missed.
    revocation_check_s: float = env_float("TOKEN_REVOCATION_CHECK_SECONDS", 30.0)

    def login_slots(self) -> int:
        if self.login_concurrency > 0:
            return self.login_concurrency
        return max(1, min(4, len(os.sched_getaffinity(0)) // 2))


@dataclass(frozen=True)
class RealtimeSettings:
    heartbeat_s: int = env_int(
        "WS_HEARTBEAT_SECONDS", 25
    )  # protocol ping interval; a connection missing two is closed
    queue_size: int = env_int(
        "WS_QUEUE_SIZE", 512
    )  # frames waiting for one slow socket before it gets `resync` and is closed
    max_frame_bytes: int = env_int("WS_MAX_FRAME_BYTES", 4096)  # client frames are small commands
    frames_per_second: float = env_float(
        "WS_FRAMES_PER_SECOND", 20.0
    )  # per connection, with a burst of twice that
    catch_up_interval_s: float = env_float(
        "WS_CATCH_UP_SECONDS", 2.0
    )  # how often rooms are checked against Postgres for lost publishes
    replay_page: int = 200  # messages per query while replaying
    # Replay / gap-fill / subscribe reads running at once per process (the rest wait their turn), so a
    # reconnect storm cannot take the pool from ingest. 0: a quarter of the pool (DB_POOL_SIZE // 4, >= 1).
    replay_concurrency: int = env_int("WS_REPLAY_CONCURRENCY", 0)
    # Of those, at most this many for one agent at a time (its other reads wait for its own turn, not in
    # the shared line), so one agent's subscribe flood cannot delay another's (issue 12). 0: half of the
    # process-wide limit, at least 1.
    replay_concurrency_per_agent: int = env_int("WS_REPLAY_CONCURRENCY_PER_AGENT", 0)
    # Open sockets one agent may hold on one API process (a browser agent has a few tabs); the next is
    # closed with 4429.
    max_sockets_per_agent: int = env_int("WS_MAX_SOCKETS_PER_AGENT", 20)

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
    header_timeout_s: float = env_float("HTTP_HEADER_TIMEOUT_SECONDS", 10.0)
    body_idle_timeout_s: float = env_float(
        "HTTP_BODY_IDLE_TIMEOUT_SECONDS", 20.0
    )  # longest silence while a request body is arriving
    body_timeout_s: float = env_float(
        "HTTP_BODY_TIMEOUT_SECONDS", 120.0
    )  # a whole request body (24 MiB at 200 KB/s)
    # Open connections (HTTP and WebSocket) per process; the next ones get 503 at once. 0: derived from the
    # file descriptor limit (RLIMIT_NOFILE), leaving room for the pools, logs and files.
    max_connections: int = env_int("HTTP_MAX_CONNECTIONS", 0)


@dataclass(frozen=True)
class CacheSettings:
    memory_max_bytes: int = env_int(
        "CACHE_MEMORY_MAX_BYTES", 32 * 1024 * 1024
    )  # per API process: pages, keys and bookkeeping
    memory_ttl_s: float = env_float(
        "CACHE_MEMORY_TTL_SECONDS", 30.0
    )  # bounds how stale a page can be if an invalidation is lost
    redis_ttl_s: int = env_int("CACHE_REDIS_TTL_SECONDS", 300)
    page_size: int = 50  # the page size warm_cache precomputes (the API's default)
    warm_conversations: int = env_int(
        "CACHE_WARM_CONVERSATIONS", 200
    )  # warm_cache: this many most recently active conversations
    idle_after_s: int = env_int(
        "CACHE_IDLE_SECONDS", 3600
    )  # expire_cache: drop pages of conversations quiet for this long
    redis_max_keys: int = env_int(
        "CACHE_REDIS_MAX_KEYS", 50_000
    )  # expire_cache: keep at most this many pages in Redis


@dataclass(frozen=True)
class MediaSettings:
    # Where processed media lives: file:///abs/dir, s3://bucket/prefix (S3-compatible, e.g. Supabase
    # Storage; credentials from the AWS_* environment), or memory:// in tests. Default: ./var/media.
    storage_url: str = env_text("MEDIA_STORAGE_URL", "")
    max_bytes: int = env_int("MEDIA_MAX_BYTES", 100 * 1024 * 1024)  # WhatsApp's own limit for documents
    thumbnail_px: int = 320
    max_attempts: int = 5  # per media, for transient gateway errors
    concurrency: int = env_int(
        "MEDIA_CONCURRENCY", 4
    )  # media jobs one worker runs at once (its own queue: they never delay sends)
    # Decoded image bytes one media worker holds at once, all its jobs together (issue 12, finding 9): a
    # 40 MP RGBA PNG costs ~162 MiB, so it fits; an image costing more alone is stored without thumbnail.
    decode_budget_bytes: int = env_int("MEDIA_DECODE_BUDGET_BYTES", 256 * 1024 * 1024)


@dataclass(frozen=True)
class WorkersSettings:
    # How often each arq worker writes its health check (which lives one second longer): /ready needs both
    # workers' to be present, so after Redis comes back empty /ready waits up to this long for them.
    health_check_s: float = env_float("WORKER_HEALTH_CHECK_SECONDS", 30.0)


@dataclass(frozen=True)
class AppSettings:
    environment: str = env_text("APP_ENV", "dev")  # unset in from_env: production
    public_base_url: str = env_text(
        "PUBLIC_BASE_URL", "http://127.0.0.1:3001", parse=lambda value: value.rstrip("/")
    )
    cors_allowed_origins: list[str] = env_list("CORS_ALLOWED_ORIGINS", ["http://localhost:5173"])  # noqa: RUF009
    # Gateways push media as inline base64 (wppconnect-server #1775, evolution-api #956): 16 MiB of video
    # is ~22 MiB of base64 plus JSON, so the default admits that and refuses anything bigger.
    webhook_max_body_bytes: int = env_int("WEBHOOK_MAX_BODY_BYTES", 24 * 1024 * 1024)
    # Cloud API never inlines media (its webhooks are KBs, media comes by id): a smaller limit (issue 12).
    webhook_cloudapi_max_body_bytes: int = env_int("WEBHOOK_CLOUDAPI_MAX_BODY_BYTES", 1024 * 1024)
    # Bodies read before the request is verified (Cloud API's signature, Evolution's in-body apikey), per
    # process: at most this many at once and this many bytes (Content-Length, else the gateway's limit);
    # the rest wait briefly, then 503 + Retry-After (see ingest/bodies.py).
    webhook_unverified_reads: int = env_int("WEBHOOK_UNVERIFIED_READS", 16)
    webhook_unverified_bytes: int = env_int("WEBHOOK_UNVERIFIED_BYTES", 48 * 1024 * 1024)
    # How long a process trusts an instance a webhook found (secret, org): see ingest/recent_instances.py.
    webhook_instance_cache_s: float = env_float("WEBHOOK_INSTANCE_CACHE_SECONDS", 5.0)
    # Group commit (issue 13, domain/ingest/batcher.py): ingest batches in flight at once per process, each
    # one statement and one transaction on a connection of its own; the webhooks arriving meanwhile wait
    # for the next one.
    ingest_flights: int = env_int("INGEST_BATCH_FLIGHTS", 4)
    log_level: str = env_text("LOG_LEVEL", "INFO")
    log_json: bool = env_text(
        "LOG_FORMAT",
        True,
        parse=lambda value: value == "json",
        render=lambda json: "json" if json else "console",
    )
    metrics_token: str | None = env_text(
        "METRICS_TOKEN", None, repr=False
    )  # enables /metrics for this bearer token


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
        environment = env_value("APP_ENV", "production") or "production"
        jwt_secret = jwt_secret_for(environment, env_value("JWT_SECRET"))
        if env_value("DATABASE_URL") is None or env_value("REDIS_URL") is None:
            raise ConfigurationError(
                "DATABASE_URL and REDIS_URL must be set; `just dev` starts embedded servers and sets them"
            )
        media = load_section(MediaSettings)
        if not media.storage_url:
            media = replace(media, storage_url=Path("var/media").resolve().as_uri())
        return cls(
            app=load_section(AppSettings, environment=environment),
            db=load_section(DatabaseSettings),
            redis=load_section(RedisSettings),
            auth=load_section(AuthSettings, jwt_secret=jwt_secret),
            realtime=load_section(RealtimeSettings),
            cache=load_section(CacheSettings),
            media=media,
            workers=load_section(WorkersSettings),
            http=load_section(HttpServerSettings),
        )

    def to_env(self) -> dict[str, str]:
        """Every setting's variable with its value here: a child's `from_env()` gives these settings back."""
        env: dict[str, str] = {}
        for item in fields(self):
            env.update(section_env(getattr(self, item.name)))
        return env


def normalise_database_url(url: str) -> str:
    """Accept the plain `postgres://` / `postgresql://` URLs Supabase and Heroku print; we drive asyncpg."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    return url


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings.from_env()
