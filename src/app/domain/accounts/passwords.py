"""Password hashing with the standard library's scrypt (memory-hard; no extra dependency).

Stored form: ``scrypt$<n>$<r>$<p>$<salt b64>$<hash b64>`` so parameters can be raised later and old
hashes still verify.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

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
