"""A small Django project for the middleware's tests: settings, urls, views, a test auth middleware.

:func:`setup` configures Django once per process from :mod:`djangoproject.settings`
(``settings.configure``, no environment variable), so other tests are untouched;
each test gives the middleware its store with ``override_settings(ONCEONLY_HTTP=...)``
and a fresh test ``Client`` (which builds the middleware chain on its first request).
"""

from __future__ import annotations


def setup() -> None:
    """Configure Django from this project's settings and load its apps, once per process."""
    import django
    from django.apps import apps
    from django.conf import settings

    from . import settings as project

    if not settings.configured:
        settings.configure(
            **{name: getattr(project, name) for name in dir(project) if name.isupper()}
        )
    if not apps.ready:
        django.setup()
