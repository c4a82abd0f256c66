"""What the OpenAPI document says about errors and authentication, so that it matches what the API answers.

Left alone, Litestar's generated document gets both wrong for this app:
- it documents a `400` in its own exception shape as `application/json` on every operation that has a
  parameter (even where no parameter can fail, e.g. a path `uuid`, which 404s when malformed), while every
  error here is an RFC 9457 `application/problem+json` document (app.lib.errors) and routes answer many
  other codes;
- `JWTAuth` puts the bearer requirement on the whole document, so the webhooks, the login, `/health` and
  `/ready` read as needing an agent's token. A route handler's `security=[]` cannot lift it (Litestar
  treats an empty list as "not set").

So routes declare their error answers with `problems(...)` in `responses=`, and `document_api` (called once
by the app factory) finishes the document from the same rule the JWT middleware applies: a route it guards
gets the bearer requirement, its 401 and a 503 (a token this process has not verified yet cannot be checked
while the database is unavailable: accounts/auth.py); a route it skips gets `security: []`; error responses
a route did not declare are dropped.
"""

from __future__ import annotations

import re
from typing import Any

from litestar import Litestar
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIResponse, Operation, Reference
from litestar.routes import HTTPRoute
from litestar.security.base import AbstractSecurityConfig

from app.lib.schema import Schema

PROBLEM_JSON = "application/problem+json"


class ProblemDetails(Schema):
    """RFC 9457 problem details: the body of every 4xx/5xx this API answers."""

    type: str  # always "about:blank": the status and title say what happened
    title: str  # the status's standard phrase
    status: int
    detail: str  # what went wrong with this request, for a person
    errors: list[dict[str, Any]] | None = None  # 400 from validation: each offending parameter or field


# What each status means wherever it is answered; a route passes its own wording when it knows more.
_MEANING: dict[int, str] = {
    400: "A parameter or the body does not validate (`errors` names which)",
    401: "Not authenticated",
    403: "Authenticated, but not allowed to do this",
    404: "Not found",
    410: "Gone for good",
    413: "The request body is larger than this route accepts",
    422: "Well-formed, but cannot be processed",
    429: "Too many requests; retry after `Retry-After` seconds",
    503: "The database is unavailable; retry after `Retry-After` seconds",
}
BEARER_REFUSED = "The bearer token is missing, invalid or expired"


def problem_response(status: int, description: str | None = None) -> ResponseSpec:
    """One error response: a problem document with `description` (or what the status generally means)."""
    return ResponseSpec(
        data_container=ProblemDetails,
        media_type=PROBLEM_JSON,
        description=description or _MEANING[status],
        generate_examples=False,
    )


def problems(*answers: int | tuple[int, str]) -> dict[int, ResponseSpec]:
    """A route's error responses for `responses=`: statuses, or (status, why this route answers it) pairs."""
    specs: dict[int, ResponseSpec] = {}
    for answer in answers:
        status, description = answer if isinstance(answer, tuple) else (answer, None)
        specs[status] = problem_response(status, description)
    return specs


def _is_error(status: str) -> bool:
    return status.isdigit() and int(status) >= 400


def _operations(app: Litestar) -> list[tuple[str, HTTPRouteHandler, Operation]]:
    """(path, handler, its operation in the app's document) for every documented route handler."""
    paths = app.openapi_schema.paths or {}
    found = []
    for route in app.routes:
        if not isinstance(route, HTTPRoute) or route.path_format not in paths:
            continue
        path_item = paths[route.path_format]
        for handler in route.route_handlers:
            for method in handler.http_methods:
                operation = getattr(path_item, method.lower(), None)
                if handler.include_in_schema and isinstance(operation, Operation):
                    found.append((route.path_format, handler, operation))
    return found


def document_api(app: Litestar, auth: AbstractSecurityConfig[Any, Any]) -> None:
    """Finish the app's document (built here, once, before anything serves it) from `auth`'s own rule."""
    excluded = auth.exclude if isinstance(auth.exclude, list) else [auth.exclude] if auth.exclude else []
    skipped_paths = re.compile("|".join(excluded)) if excluded else None
    bearer = auth.security_requirement
    for path, handler, operation in _operations(app):
        declared = {str(status) for status in handler.responses or {}}
        responses = {
            status: response
            for status, response in (operation.responses or {}).items()
            if not _is_error(status) or status in declared
        }
        skipped = bool(auth.exclude_opt_key and handler.opt.get(auth.exclude_opt_key))
        if skipped or (skipped_paths is not None and skipped_paths.search(path)):
            operation.security = []
        else:
            operation.security = [bearer]
            responses.setdefault("401", _problem(app, BEARER_REFUSED))
            responses.setdefault("503", _problem(app, _MEANING[503]))
        operation.responses = dict(sorted(responses.items()))


def _problem(app: Litestar, description: str) -> OpenAPIResponse:
    """An answer of the JWT middleware (401, 503), referring to the same ProblemDetails component as declared
    ones."""
    if ProblemDetails.__name__ not in (app.openapi_schema.components.schemas or {}):
        raise RuntimeError("no route declares problems(...): the ProblemDetails component is missing")
    reference = Reference(ref=f"#/components/schemas/{ProblemDetails.__name__}")
    content = {PROBLEM_JSON: OpenAPIMediaType(schema=reference)}
    return OpenAPIResponse(description=description, content=content)
