"""The login throttles, shared by every API process through Redis (`app.lib.throttle`); both fail open, so
agents can still log in with Redis down.

- Per client address: LOGIN_ATTEMPTS_PER_MINUTE attempts, every attempt counted (right or wrong password)
  before the body is even parsed, so a flood from one address costs no scrypt.
- Per account (issue 12, finding 8): LOGIN_FAILURES_PER_ACCOUNT failed attempts per e-mail per
  LOGIN_ACCOUNT_WINDOW_SECONDS, whatever the address, so rotating addresses cannot go on guessing one
  account's password. Each attempt reserves its slot before the password is checked (concurrent guesses
  cannot outrun it) and a successful login gives it back. Once spent, the account refuses every login,
  the right password included, until the window closes. The cost, accepted: anyone who knows an e-mail can
  lock that account out for one window with that many wrong guesses; the agent is told to retry later
  (429 with Retry-After), nothing is revealed, and other accounts are unaffected. Unknown e-mails are counted
  the same way, so the answer does not tell them apart. Keys carry a hash of the e-mail, not the e-mail.
"""

from __future__ import annotations

import hashlib
from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import TooManyRequestsException
from litestar.handlers.base import BaseRouteHandler
from redis.asyncio import Redis

from app.lib.throttle import ClientThrottle, Reservation, client_address
from app.lib.throttle_calls import ThrottleCalls


class LoginThrottle:
    def __init__(
        self,
        redis: Redis,
        calls: ThrottleCalls,
        key_prefix: str,
        per_minute: int,
        failures_per_account: int,
        account_window_s: int,
    ) -> None:
        self._addresses = ClientThrottle(
            redis,
            calls,
            f"{key_prefix}:login-attempts",
            per_minute,
            "too many login attempts; try again later",
        )
        self._accounts = ClientThrottle(
            redis,
            calls,
            f"{key_prefix}:login-account-failures",
            failures_per_account,
            "too many failed logins for this account; try again later",
            window_s=account_window_s,
        )

    async def check(self, client: str) -> None:
        self._addresses.refuse_if_over(await self._addresses.count(client))

    def refused_locally(self, client: str) -> TooManyRequestsException | None:
        """The 429 for an address this process already knows is over its budget, else None (nothing is
        counted or asked of Redis; `app.server.shedding`)."""
        window = self._addresses.already_refused(client)
        return self._addresses.refused(window.resets_in_s) if window is not None else None

    async def reserve_account(self, email: str) -> Reservation:
        """A slot of the account's failure budget; settle it with the attempt's outcome."""
        subject = hashlib.sha256(email.strip().lower().encode()).hexdigest()[:32]
        return await self._accounts.reserve(subject)


async def throttle_logins(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Guard for the login route."""
    throttle: LoginThrottle = connection.app.state.login_throttle
    await throttle.check(client_address(connection))
