"""The default key prefix of a decorated callable, and its name in messages."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

from .errors import IdempotencyConfigError, IdempotencySerializationError
from .keys import canonical_json, hasher

__all__ = ["default_prefix", "display_name"]

# Hex digits of the digest of a partial's bound arguments kept in its prefix.
_BOUND_DIGEST_CHARS = 16


def _named_target(func: Callable[..., Any]) -> tuple[Any, list[Any]]:
    """The callable under any ``functools.partial`` layers, and their bound arguments."""
    target: Any = func
    bound: list[Any] = []
    while isinstance(target, functools.partial):
        if target.args or target.keywords:
            bound.append([list(target.args), dict(target.keywords)])
        target = target.func
    return target, bound


def display_name(func: Callable[..., Any]) -> str:
    """The name of a callable in messages: its qualname, or its class's."""
    target, _ = _named_target(func)
    qualname = getattr(target, "__qualname__", None)
    return qualname if isinstance(qualname, str) else type(target).__qualname__


def default_prefix(func: Callable[..., Any], hash_function: str) -> str:
    """The key prefix of a function without ``key_prefix``: what tells it apart.

    ``module.qualname``; for a ``functools.partial``, that of the function it
    wraps plus ``#`` and a digest of the bound arguments (so partials binding
    other arguments keep their own records); with ``AWS_LAMBDA_FUNCTION_NAME``
    set, the function name and a dot before it (two Lambda functions whose
    handlers share a name, on one table, keep their own records).

    Raises:
        IdempotencyConfigError: The callable has no name of its own (a lambda,
            an instance of a callable class) or a partial binds arguments that
            are not JSON: ``key_prefix`` must name it.
    """
    target, bound = _named_target(func)
    qualname = getattr(target, "__qualname__", None)
    if not isinstance(qualname, str):
        raise IdempotencyConfigError(
            f"a {type(target).__qualname__} instance has no name of its own (every instance "
            "of a callable class would share one key prefix and replay each other's "
            "results); give it one with IdempotencyConfig(key_prefix=...)"
        )
    if qualname.rpartition(".")[2] == "<lambda>":
        raise IdempotencyConfigError(
            f"{qualname} has no name of its own (every lambda of its scope would share one "
            "key prefix and replay each other's results); give it one with "
            "IdempotencyConfig(key_prefix=...)"
        )
    module = getattr(target, "__module__", None) or type(target).__module__
    prefix = f"{module}.{qualname}"
    if bound:
        try:
            material = canonical_json(bound)
        except IdempotencySerializationError as exc:
            raise IdempotencyConfigError(
                f"functools.partial of {qualname} binds arguments that are not JSON ({exc}), "
                "so they cannot tell its records from another partial's; give it a name with "
                "IdempotencyConfig(key_prefix=...)"
            ) from exc
        prefix += "#" + hasher(hash_function)(material)[:_BOUND_DIGEST_CHARS]
    function_name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "").strip()
    return f"{function_name}.{prefix}" if function_name else prefix
