"""Idempotency-Key for HTTP APIs: one I/O-free core and its adapters.

``onceonly.http.asgi.IdempotencyMiddleware`` (Starlette, FastAPI, any ASGI
app), ``onceonly.http.wsgi.IdempotencyMiddleware`` (Flask, any WSGI app) and
``onceonly.http.django.IdempotencyMiddleware`` share :class:`HttpConfig` and
the core in ``onceonly.http.core``; none of them is imported here, so this
package imports no web framework.
"""

from .config import HttpConfig
from .problems import ProblemType

__all__ = ["HttpConfig", "ProblemType"]
