"""The decorators: ``idempotent`` for Lambda handlers, ``idempotent_function`` for any callable.

Both check their arguments when applied, pick the sync or async driver from
the function and the store, and expose ``wrapper.stats`` (counters of what
calls did) and ``wrapper.key_for(*args, **kwargs)`` (the key such a call uses).
"""

from __future__ import annotations

import functools
import inspect
import os
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar, cast

from . import _async, _sync
from .cache import LocalCache
from .config import IdempotencyConfig
from .engine import Invocation, Policy, flow
from .errors import (
    IdempotencyConfigError,
    IdempotencyKeyError,
    IdempotencySerializationError,
    OnceOnlyWarning,
)
from .keys import _UNSET, Keyer, canonical_json, hasher
from .metrics import Event, Stats
from .records import new_token
from .serializers import serializer_for
from .stores.protocol import AsyncStore, Store, wall_ms

__all__ = ["idempotent", "idempotent_function"]

F = TypeVar("F", bound=Callable[..., Any])

_DISABLED_VALUES = frozenset({"1", "true", "yes", "on"})

# A Lambda context's remaining time below this is not taken as the lease: a
# context made outside an invocation (a test's, at module level) runs down to
# 0, and a lease of a few ms would store nothing and let every delivery run.
MIN_LAMBDA_LEASE_MS = 1000

# Hex digits of the digest of a partial's bound arguments kept in its prefix.
_BOUND_DIGEST_CHARS = 16


def _disabled() -> bool:
    return os.environ.get("ONCEONLY_DISABLED", "").strip().lower() in _DISABLED_VALUES


def _is_async(func: Callable[..., Any]) -> bool:
    target: Any = func
    while isinstance(target, functools.partial):
        target = target.func
    if inspect.iscoroutinefunction(target):
        return True
    call = getattr(target, "__call__", None)  # noqa: B004 - an object with async __call__
    return not inspect.isfunction(target) and inspect.iscoroutinefunction(call)


def _check_store(store: object, is_async: bool, name: str) -> None:
    if is_async:
        if isinstance(store, AsyncStore) and inspect.iscoroutinefunction(store.claim):
            return
        raise IdempotencyConfigError(
            f"{name} is async, so its store must be async (AsyncMemoryStore, AsyncSQLiteStore, "
            f"AsyncRedisStore, AsyncDynamoDBStore); got {type(store).__name__}"
        )
    if isinstance(store, Store) and not inspect.iscoroutinefunction(store.claim):
        return
    raise IdempotencyConfigError(
        f"{name} is not async, so its store must be sync (MemoryStore, SQLiteStore, RedisStore, "
        f"DynamoDBStore); got {type(store).__name__}"
    )


def _outcome_limit(store: Any) -> int | None:
    # A store with a size limit says so (DynamoDB's items hold at most 400 KB).
    sync = getattr(store, "sync", store)  # the async twins wrap a sync store
    limit = getattr(sync, "max_outcome_bytes", None)
    return limit if type(limit) is int else None


def _named_target(func: Callable[..., Any]) -> tuple[Any, list[Any]]:
    """The callable under any ``functools.partial`` layers, and their bound arguments."""
    target: Any = func
    bound: list[Any] = []
    while isinstance(target, functools.partial):
        if target.args or target.keywords:
            bound.append([list(target.args), dict(target.keywords)])
        target = target.func
    return target, bound


def _display_name(func: Callable[..., Any]) -> str:
    """The name of a callable in messages: its qualname, or its class's."""
    target, _ = _named_target(func)
    qualname = getattr(target, "__qualname__", None)
    return qualname if isinstance(qualname, str) else type(target).__qualname__


def _default_prefix(func: Callable[..., Any], hash_function: str) -> str:
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


class _Call(NamedTuple):
    """What one call carries: payload, key material, lease, and the args to call with."""

    payload: Any
    material: Any
    lease_ms: int | None
    args: tuple[Any, ...]
    deadline_ms: int | None = None


class _Guard:
    """Everything one decorated function needs at call time, built once."""

    def __init__(
        self,
        func: Callable[..., Any],
        store: Any,
        config: IdempotencyConfig | None,
        output_serializer: Any,
    ) -> None:
        if not callable(func):
            raise IdempotencyConfigError(f"can only decorate a callable, got {func!r}")
        if config is None:
            config = IdempotencyConfig()
        elif not isinstance(config, IdempotencyConfig):
            raise IdempotencyConfigError(
                f"config must be an IdempotencyConfig, got {type(config).__name__}"
            )
        self.name = _display_name(func)
        self.is_async = _is_async(func)
        _check_store(store, self.is_async, self.name)
        self.store = store
        self.config = config
        self.keyer = Keyer(
            config.key_prefix or _default_prefix(func, config.hash_function),
            config.hash_function,
            config._key_expr,
            config._validation_expr,
        )
        # A store that shards keys (Redis Cluster) warns about a key_prefix
        # that would put every key of this function in one slot.
        check_key_prefix = getattr(store, "check_key_prefix", None)
        if config.key_prefix is not None and callable(check_key_prefix):
            check_key_prefix(config.key_prefix, stacklevel=3)
        self.stats = Stats()
        # The config is frozen: its derived figures are read once, not per call.
        self.lease_ms = config.lease_ms
        self.ttl_ms = config.ttl_ms
        # Read once, when the decorator is applied (at import in a Lambda):
        # a per-call os.environ read costs more than the rest of a cache hit.
        self.switched_off = _disabled()
        self.warned_lease = False
        self.policy = Policy(
            name=self.name,
            config=config,
            serializer=serializer_for(func, output_serializer),
            stats=self.stats,
            cache=LocalCache(config.local_cache_max_items) if config.use_local_cache else None,
            clock=wall_ms,
            max_outcome_bytes=_outcome_limit(store),
        )

    def invocation(
        self,
        payload: Any,
        key_material: Any = _UNSET,
        lease_ms: int | None = None,
        deadline_ms: int | None = None,
    ) -> Invocation | None:
        """Return the call's invocation, or None to run it unprotected."""
        key, fingerprint = self.keyer.key_and_fingerprint(payload, key_material)
        if key is None:
            if self.config.raise_on_no_idempotency_key:
                self.stats.add(Event.UNPROTECTED)
                raise IdempotencyKeyError(
                    f"{self.name}: no idempotency key in the payload "
                    f"(event_key_jmespath={self.config.event_key_jmespath!r} selected nothing)"
                )
            warnings.warn(
                f"{self.name}: no idempotency key in the payload "
                f"(event_key_jmespath={self.config.event_key_jmespath!r}); running without "
                "idempotency",
                OnceOnlyWarning,
                stacklevel=4,
            )
            self.stats.add(Event.UNPROTECTED)
            return None
        # Positional: a NamedTuple built from keywords costs more, on every call.
        return Invocation(
            key,
            fingerprint,
            new_token(),
            lease_ms if lease_ms is not None else self.lease_ms,
            self.ttl_ms,
            deadline_ms,
        )

    def lambda_lease(self, context: Any) -> tuple[int | None, int | None]:
        """The lease and deadline a Lambda context gives: ``(None, None)`` for the default.

        The remaining time is the lease, and now plus it the invocation's
        deadline, when it is an int of at least ``MIN_LAMBDA_LEASE_MS``.
        Otherwise (no time left, or a test double's odd value) the lease is
        ``lease_seconds``, with a warning the first time.
        """
        remaining = getattr(context, "get_remaining_time_in_millis", None)
        if not callable(remaining):
            return None, None  # not a Lambda context (None when called as handler(event))
        ms = remaining()
        if type(ms) is int and ms >= MIN_LAMBDA_LEASE_MS:
            return ms, self.policy.clock() + ms
        if not self.warned_lease:
            self.warned_lease = True
            warnings.warn(
                f"{self.name}: the Lambda context's get_remaining_time_in_millis() gave "
                f"{type(ms).__name__} {str(ms)[:20]!r}, not an int of at least "
                f"{MIN_LAMBDA_LEASE_MS} ms (a context made outside an invocation runs down to "
                f"0); claims use lease_seconds={self.config.lease_seconds} instead",
                OnceOnlyWarning,
                stacklevel=5,
            )
        return None, None

    def disabled(self) -> bool:
        if not self.switched_off:
            return False
        warnings.warn(
            f"{self.name}: ONCEONLY_DISABLED is set; running without idempotency",
            OnceOnlyWarning,
            stacklevel=3,
        )
        self.stats.add(Event.UNPROTECTED)
        return True

    def call(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        inv: Invocation | None,
    ) -> Any:
        """Run a sync ``func(*args, **kwargs)`` under ``inv``, or plainly when None."""
        if inv is None:
            return func(*args, **kwargs)
        policy = self.policy
        return _sync.drive(
            flow(policy, inv), self.store, inv, lambda: func(*args, **kwargs), policy.clock
        )

    async def call_async(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        inv: Invocation | None,
    ) -> Any:
        """Await an async ``func(*args, **kwargs)`` under ``inv``, or plainly when None."""
        if inv is None:
            return await func(*args, **kwargs)
        policy = self.policy
        return await _async.drive(
            flow(policy, inv), self.store, inv, lambda: func(*args, **kwargs), policy.clock
        )

    def wrap(self, func: F, split: Callable[..., _Call]) -> F:
        """Build the wrapper; ``split(*args, **kwargs)`` says what a call carries."""

        def invocation(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, _Call]:
            call = split(*args, **kwargs)
            return (
                self.invocation(call.payload, call.material, call.lease_ms, call.deadline_ms),
                call,
            )

        if self.is_async:

            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                if self.disabled():
                    return await func(*args, **kwargs)
                inv, call = invocation(args, kwargs)
                return await self.call_async(func, call.args, kwargs, inv)

            wrapper: Callable[..., Any] = async_wrapper
        else:

            def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
                if self.disabled():
                    return func(*args, **kwargs)
                inv, call = invocation(args, kwargs)
                return self.call(func, call.args, kwargs, inv)

            wrapper = sync_wrapper

        def key_for(*args: Any, **kwargs: Any) -> str | None:
            """The idempotency key a call with these arguments uses (None: no key)."""
            call = split(*args, **kwargs)
            return self.keyer.key_and_fingerprint(call.payload, call.material)[0]

        functools.update_wrapper(wrapper, func)
        wrapper.stats = self.stats  # type: ignore[attr-defined]
        wrapper.key_for = key_for  # type: ignore[attr-defined]
        wrapper.guard = self  # type: ignore[attr-defined]
        return cast(F, wrapper)


def idempotent(
    handler: F | None = None,
    *,
    store: Store | AsyncStore,
    config: IdempotencyConfig | None = None,
    output_serializer: Any = None,
) -> Any:
    """Make a Lambda handler ``handler(event, context)`` run once per idempotency key.

    The payload is the event (``config.event_key_jmespath`` selects the key);
    the lease is the invocation's remaining time when the context tells it,
    else ``config.lease_seconds``.

    Args:
        handler: The handler (when used as ``@idempotent(...)`` it is given later).
        store: A sync store, or an async one for an ``async def`` handler.
        config: Options; defaults apply when None.
        output_serializer: How results are stored (see ``serializers``).

    Returns:
        The wrapped handler.

    Raises:
        IdempotencyConfigError: Bad options or a store of the wrong kind.
    """

    def decorate(func: F) -> F:
        guard = _Guard(func, store, config, output_serializer)

        def split(*args: Any, **kwargs: Any) -> _Call:
            # The wrapper calls the handler with these args and the caller's own
            # kwargs, so an event or context given by keyword stays a keyword.
            if not args and "event" not in kwargs:
                raise TypeError(f"{guard.name}() missing its event argument")
            event = args[0] if args else kwargs["event"]
            context = args[1] if len(args) > 1 else kwargs.get("context")
            if len(args) == 1 and "context" not in kwargs:
                args = (*args, None)  # handler(event): the context is None
            lease_ms, deadline_ms = guard.lambda_lease(context)
            return _Call(event, _UNSET, lease_ms, args, deadline_ms)

        return guard.wrap(func, split)

    return decorate if handler is None else decorate(handler)


def _payload_locator(
    func: Callable[..., Any], data: str
) -> Callable[[tuple[Any, ...], dict[str, Any]], Any]:
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError) as exc:
        raise IdempotencyConfigError(f"cannot read the signature of {func!r}: {exc}") from exc
    parameter = signature.parameters.get(data)
    if parameter is None or parameter.kind in (
        inspect.Parameter.VAR_POSITIONAL,
        inspect.Parameter.VAR_KEYWORD,
    ):
        names = ", ".join(signature.parameters) or "none"
        raise IdempotencyConfigError(
            f"data={data!r} is not a named parameter of {getattr(func, '__qualname__', func)} "
            f"(parameters: {names})"
        )
    position: int | None = None
    if parameter.kind in (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    ):
        position = list(signature.parameters).index(data)
    default = parameter.default

    def locate(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if data in kwargs and parameter.kind is not inspect.Parameter.POSITIONAL_ONLY:
            return kwargs[data]
        if position is not None and position < len(args):
            return args[position]
        if default is not inspect.Parameter.empty:
            return default
        raise TypeError(f"{getattr(func, '__qualname__', func)}() missing argument {data!r}")

    return locate


def idempotent_function(
    func: F | None = None,
    *,
    store: Store | AsyncStore,
    data: str | None = None,
    key: Callable[..., Any] | None = None,
    config: IdempotencyConfig | None = None,
    output_serializer: Any = None,
) -> Any:
    """Make any function run once per idempotency key.

    Args:
        func: The function (given later when used as ``@idempotent_function(...)``).
        store: A sync store, or an async one for an ``async def`` function.
        data: Name of the parameter that carries the payload; it may be
            passed by position or keyword.
        key: ``key(*args, **kwargs)`` returning the key material, instead of
            selecting it from ``data`` (``data`` still feeds payload validation).
        config: Options; defaults apply when None.
        output_serializer: A dataclass or pydantic class, or a serializer with
            ``to_json``/``from_json``; by default read from the return annotation.

    Returns:
        The wrapped function.

    Raises:
        IdempotencyConfigError: Neither ``data`` nor ``key`` given, ``data`` not
            a parameter, ``key`` not callable, bad options, or a store of the
            wrong kind.
    """
    if data is None and key is None:
        raise IdempotencyConfigError(
            "idempotent_function needs data='<parameter name>' or key=callable"
        )
    if data is not None and (not isinstance(data, str) or not data):
        raise IdempotencyConfigError(f"data must name a parameter, got {data!r}")
    if key is not None and not callable(key):
        raise IdempotencyConfigError(f"key must be callable(*args, **kwargs), got {key!r}")
    if (
        config is not None
        and isinstance(config, IdempotencyConfig)
        and data is None
        and (config.payload_validation_jmespath is not None)
    ):
        raise IdempotencyConfigError(
            "payload_validation_jmespath needs data='<parameter name>' to validate against"
        )

    def decorate(f: F) -> F:
        guard = _Guard(f, store, config, output_serializer)
        locate = _payload_locator(f, data) if data is not None else None

        def split(*args: Any, **kwargs: Any) -> _Call:
            payload = locate(args, kwargs) if locate is not None else None
            material = key(*args, **kwargs) if key is not None else _UNSET
            return _Call(payload, material, None, args)

        return guard.wrap(f, split)

    return decorate if func is None else decorate(func)
