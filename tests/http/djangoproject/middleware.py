"""A stand-in for an authentication middleware: ``X-Test-User: 7`` makes ``request.user`` user 7.

It builds a real (unsaved) ``django.contrib.auth`` user, so no database is
needed; without the header the user is anonymous, as Django's own
``AuthenticationMiddleware`` leaves it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class HeaderUserMiddleware:
    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> Any:
        from django.contrib.auth.models import AnonymousUser, User

        user_id = request.headers.get("X-Test-User")
        request.user = (
            User(pk=int(user_id), username=f"user{user_id}") if user_id else AnonymousUser()
        )
        return self.get_response(request)
