"""What a service raises when it refuses: an exception in the domain's words, never an HTTP response.

Why (issue 14): services raised HTTP problem details in some places and domain exceptions in others, so
the status of a refusal was decided wherever it happened. A service now raises one of these kinds, with a
`detail` the client may read (no internals), and app.lib.errors answers every one of them in one place,
with the status of its kind. The domain's own exceptions subclass them; this module knows none of them.
"""

from __future__ import annotations


class DomainError(Exception):
    """A refusal; `status_code` is its kind's HTTP answer (an instance may narrow it, as webhooks do)."""

    status_code: int = 400

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class Invalid(DomainError):
    """The request cannot be understood (malformed input)."""

    status_code = 400


class Unauthorized(DomainError):
    """A credential is missing or wrong."""

    status_code = 401


class NotFound(DomainError):
    """No such thing, or not the caller's (the two are not told apart)."""

    status_code = 404


class Gone(DomainError):
    """It existed and never will again (a media that could not be processed)."""

    status_code = 410


class Unprocessable(DomainError):
    """Understood, and refused as it stands (an instance without send credentials)."""

    status_code = 422


class Inconsistent(DomainError):
    """The service's own records disagree with what it holds (a ready media whose file is gone): the
    server's fault, logged as an error, answered 500 with a detail of its own."""

    status_code = 500
