"""Store URLs as messages and output may show them: no password, no query.

One reading of a URL for everything that prints or raises one (``onceonly
doctor``, the command line, ``RedisStore.from_url``'s errors). A password is
often written raw, so it may hold ``@``, ``/``, ``?``, ``#`` or ``:``; the
masking assumes the worst reading wherever two are possible, so that no
reading of the URL leaves a piece of the password shown.
"""

from __future__ import annotations

from typing import NamedTuple
from urllib.parse import parse_qsl, unquote

__all__ = ["hide_secrets", "redact_url", "split_inside_password"]

MASK = "***"


class _Parts(NamedTuple):
    scheme: str  # with its "://", or "" for text that is not a URL
    rest: str  # everything after the scheme
    at: int  # index in rest of the last "@", -1 without one
    cut: int  # index in rest of the first "?" or "#" (len(rest) without one)
    end: int  # index in rest of the first "/", "?" or "#" (len(rest) without one)


def _parts(url: str) -> _Parts:
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    else:
        scheme += sep
    cut = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    end = min((i for i in (rest.find("/"), cut) if i >= 0), default=len(rest))
    return _Parts(scheme, rest, rest.rfind("@"), cut, end)


def _user(userinfo: str) -> str:
    """What of a userinfo may be shown: the name before the first ``:`` and the mask."""
    name, colon, _ = userinfo.partition(":")
    # No colon: the one word may be a password (redis://secret@host).
    return f"{name}:{MASK}" if colon and "@" not in name else MASK


def redact_url(url: str) -> str:
    """Return ``url`` without its password and without its query.

    Everything between the scheme and the last ``@`` but the user name is
    replaced by ``***``; the query and fragment become ``?***``. When a ``?``
    or ``#`` comes before the last ``@`` (a password holding one, or a query
    holding an ``@``), only the scheme and the user name are shown.

    Args:
        url: A store URL as given, credentials included (or any text).

    Returns:
        The text to show, e.g. ``redis://app:***@host:6379/0?***``.
    """
    p = _parts(url)
    if p.at > p.cut:
        head = p.rest[: p.cut]
        return p.scheme + (_user(head) if ":" in head else MASK)
    shown = p.scheme
    start = 0
    if p.at >= 0:
        shown += _user(p.rest[: p.at]) + "@"
        start = p.at + 1
    shown += p.rest[start : p.cut]
    return shown + ("?" + MASK if p.cut < len(p.rest) else "")


def split_inside_password(url: str) -> bool:
    """Whether ``urllib`` (and so redis-py) would split ``url`` inside its password.

    True when an ``@`` comes after the first ``/``, ``?`` or ``#`` following the
    host: a password written with a raw ``/``, ``?`` or ``#`` (or a query value
    with a raw ``@``). redis-py would read a piece of the password as the host,
    port, database or query, and connect there.
    """
    p = _parts(url)
    return p.at > p.end


def _secrets(url: str) -> set[str]:
    """Every text of ``url`` that some reading makes a password."""
    p = _parts(url)
    found: set[str] = set()
    for at in (p.at, p.rest.rfind("@", 0, p.end)):  # the last '@', the last of the host
        if at >= 0:
            userinfo = p.rest[:at]
            found.add(userinfo.partition(":")[2] or userinfo)
    for query in (p.rest[p.cut + 1 :], p.rest.partition("?")[2]):
        for name, value in parse_qsl(query, keep_blank_values=True):
            if "password" in name.lower():
                found.add(value)
    return {form for raw in found for form in (raw, unquote(raw)) if form}


def hide_secrets(text: str, url: str) -> str:
    """Return ``text`` with every password of ``url`` (raw or decoded) replaced by ``***``.

    For messages that may repeat a piece of the URL (an error from a client
    library, a server's reply).
    """
    for secret in sorted(_secrets(url), key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text
