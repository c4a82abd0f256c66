"""Password hashing with the standard library's scrypt (memory-hard; no extra dependency).

Stored form: ``scrypt$<n>$<r>$<p>$<salt b64>$<hash b64>`` so parameters can be raised later and old
hashes still verify.

A check is tens of milliseconds of a core. It runs in a thread of its own pool whose threads have a lower
CPU priority than the event loop's (`HASHING_NICENESS`; Linux keeps a nice value per thread): during a login
flood the handful of checks the throttle lets through used the cores the event loop needed to ack webhooks
(issue 12, finding 1). Checks still finish as fast when nothing else wants the CPU.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import os
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor

_N, _R, _P, _DKLEN = 2**14, 8, 1, 32


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=_DKLEN)
    return "$".join(
        [
            "scrypt",
            str(_N),
            str(_R),
            str(_P),
            base64.b64encode(salt).decode(),
            base64.b64encode(digest).decode(),
        ]
    )


_MIN_DIGEST, _MIN_SALT, _MIN_N, _MIN_R = 32, 16, 2**14, 8


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt_b64, digest_b64 = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest_b64)
        salt = base64.b64decode(salt_b64)
        # Parameters come from the stored string, so they are held to at least what hash_password writes:
        # a cut-short digest (scrypt's output for a shorter length is a prefix) must not verify.
        if len(expected) < _MIN_DIGEST or len(salt) < _MIN_SALT or int(n) < _MIN_N or int(r) < _MIN_R:
            return False
        actual = hashlib.scrypt(
            password.encode(),
            salt=salt,
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(expected),
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


# Verified against when the e-mail is unknown, so a login takes as long whether or not the account exists.
DUMMY_HASH = hash_password(secrets.token_urlsafe(16))


HASHING_NICENESS = 10  # CFS gives a nice-10 thread about a tenth of a nice-0 thread's share of a busy core
_HASHING_THREADS = 4  # the most that run at once anyway (LoginSlots bounds logins per process)


def _yield_to_the_event_loop() -> None:
    with contextlib.suppress(OSError, AttributeError):  # not Linux, or not allowed: normal priority
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HASHING_NICENESS)


_hashing = ThreadPoolExecutor(
    _HASHING_THREADS, thread_name_prefix="password-hashing", initializer=_yield_to_the_event_loop
)


async def verify_password_off_loop(password: str, stored: str) -> bool:
    """`verify_password` in a low-priority thread (module docstring)."""
    return await asyncio.get_running_loop().run_in_executor(_hashing, verify_password, password, stored)
