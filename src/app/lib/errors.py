"""Every error the API answers is RFC 9457 problem details; this module maps exceptions to them, once.

Services raise domain errors (app.lib.domain_errors) and each kind has its status here. An unavailable
database answers 503 + Retry-After; an OSError counts as that only when it is a connection's
(ConnectionError: a refused or lost connection, app.db.engine's DatabaseUnreachable): issue 14 found a
ready media whose file was removed from storage (FileNotFoundError) answering "503 database unavailable"
with Postgres up.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import asyncpg
import structlog
from advanced_alchemy.exceptions import NotFoundError, RepositoryError
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.plugins.problem_details import ProblemDetailsConfig, ProblemDetailsException
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from app.lib.domain_errors import DomainError
from app.lib.pagination import InvalidCursor

log = structlog.get_logger()

_PROBLEM_TYPE = "about:blank"
# How long a client should wait when the database cannot take work (every 503 of an unavailable database).
DATABASE_RETRY_AFTER_S = "5"


def problem(status_code: int, detail: str | None = None, **extra: Any) -> ProblemDetailsException:
    return ProblemDetailsException(
        status_code=status_code,
        title=HTTPStatus(status_code).phrase,
        detail=detail or "",
        type_=_PROBLEM_TYPE,
        extra=extra or None,
    )


def problem_from_http_exception(exc: HTTPException) -> ProblemDetailsException:
    extra: dict[str, Any] = {}
    if isinstance(exc, ValidationException) and exc.extra:
        extra["errors"] = exc.extra
    detail = exc.detail if exc.detail != HTTPStatus(exc.status_code).phrase else None
    result = problem(exc.status_code, detail, **extra)
    result.headers = exc.headers
    return result


def _from_not_found(exc: NotFoundError) -> ProblemDetailsException:
    # The repository's message names tables and ids; the client only needs to know it is not there.
    return problem(404, "not found")


def _from_domain_error(exc: DomainError) -> ProblemDetailsException:
    if exc.status_code >= 500:
        log.error("domain error", kind=type(exc).__name__, detail=exc.detail, **_context_of(exc))
    return problem(exc.status_code, exc.detail)


def _context_of(exc: DomainError) -> dict[str, str]:
    """What a server-side domain error carries for the operator (ids and keys, never request data)."""
    return {name: str(value) for name, value in vars(exc).items() if name not in ("detail", "status_code")}


def _from_invalid_cursor(exc: InvalidCursor) -> ProblemDetailsException:
    return problem(400, str(exc))


# SQLSTATEs of a server that cannot take work now: connection exceptions (08…), shutting down or crashed
# (57P01, 57P02), starting up or shutting down (57P03 "cannot connect now"), too many connections (53300).
_UNAVAILABLE_SQLSTATES = ("08", "57P01", "57P02", "57P03", "53300")
# A socket's error is a ConnectionError (refused, reset, or DatabaseUnreachable when no connection could be
# opened); any other OSError (a file missing from media storage) is not the database's.
_UNAVAILABLE_TYPES = (
    OperationalError,
    InterfaceError,
    PoolTimeoutError,
    ConnectionError,
    asyncpg.PostgresConnectionError,
)


def is_database_unavailable(exc: BaseException) -> bool:
    """Errors that mean "the database cannot take work now" (connection lost, refused, pool exhausted)."""
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(sqlstate, str) and sqlstate.startswith(_UNAVAILABLE_SQLSTATES):
        return True
    if isinstance(exc, _UNAVAILABLE_TYPES):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    # advanced-alchemy's repositories wrap SQLAlchemy's errors in a RepositoryError (a pool timeout among
    # them: issue 12, finding 1c), and SQLAlchemy keeps the driver's in `orig`: look through both.
    inner = exc.__cause__ if isinstance(exc, RepositoryError) else getattr(exc, "orig", None)
    return inner is not None and inner is not exc and is_database_unavailable(inner)


def database_error_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """The database is down or overloaded: 503 so the gateway retries later; never a 2xx without a commit."""
    if is_database_unavailable(exc):
        log.warning("database unavailable", path=request.url.path, error=type(exc).__name__)
        response = problem(503, "database unavailable, retry later").to_response(request)
        response.headers["Retry-After"] = DATABASE_RETRY_AFTER_S
        return response
    log.exception("database error", path=request.url.path)
    return problem(500, "internal error").to_response(request)


def internal_error_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """Anything unexpected: logged once with its traceback, answered as a bare 500 (no internals leak)."""
    log.error("unhandled error", path=request.url.path, method=request.method, exc_info=exc)
    return problem(500, "internal error").to_response(request)


problem_details_config = ProblemDetailsConfig(
    enable_for_all_http_exceptions=True,
    exception_to_problem_detail_map={
        HTTPException: problem_from_http_exception,
        NotFoundError: _from_not_found,
        DomainError: _from_domain_error,
        InvalidCursor: _from_invalid_cursor,
    },
)

server_error_handlers = {
    Exception: internal_error_handler,
    DBAPIError: database_error_handler,
    RepositoryError: database_error_handler,
    PoolTimeoutError: database_error_handler,
    ConnectionError: database_error_handler,  # not every OSError: a missing file is no database outage
    asyncpg.PostgresConnectionError: database_error_handler,
}
