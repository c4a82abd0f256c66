"""The one `?token=` of a query string, read the same way everywhere it is accepted (/ws, webhooks).

Every query parser decodes parameter names, so `?%74oken=…` is `token` to Litestar and to `parse_qs`; a
proxy or a log filter that looks for the literal `token=` does not see it. Issue 12 (finding 11) found such
a token accepted and written to the access log in clear. So the token is accepted only as the plain name
`token`, once: a query in which another spelling decodes to `token` (`%74oken`, `t%6Fken`), or `token`
comes twice, is ambiguous and refused. `?TOKEN=` is another parameter, as for every parser, and is not a
token. What the logs do about all of these is app.lib.redaction's job (it redacts every spelling).
"""

from __future__ import annotations

from urllib.parse import unquote_plus

TOKEN = "token"


class AmbiguousQueryToken(ValueError):
    """The query names `token` more than once, or in a spelling other than the plain one."""


def query_token(query_string: bytes | str, name: str = TOKEN) -> str | None:
    """The value of the single plain `name=` parameter (None when absent); AmbiguousQueryToken otherwise."""
    raw = query_string.decode("latin-1") if isinstance(query_string, bytes) else query_string
    found: list[str] = []
    for part in raw.split("&"):
        raw_name, _, value = part.partition("=")
        if unquote_plus(raw_name) != name:
            continue
        if raw_name != name:
            raise AmbiguousQueryToken(f"?{name}= must be spelt plainly")
        found.append(unquote_plus(value))
    if len(found) > 1:
        raise AmbiguousQueryToken(f"?{name}= given {len(found)} times")
    return found[0] if found else None
