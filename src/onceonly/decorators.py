"""The decorators: ``idempotent`` for Lambda handlers, ``idempotent_function`` for any callable.

Both check their arguments when applied, pick the sync or async driver from
the function and the store, and expose ``wrapper.stats`` (counters of what
calls did) and ``wrapper.key_for(*args, **kwargs)`` (the key such a call uses).
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar, cast

from . import _sync
from .cache import LocalCache
from .config import IdempotencyConfig
from .engine import Invocation, Policy, flow, store_kind
from .errors import (
    IdempotencyConfigError,
    IdempotencyKeyError,
    OnceOnlyWarning,
)
from .keys import _UNSET, Keyer, KeyScheme
from .metrics import Event, Stats
from .naming import default_prefix, display_name
from .records import new_token
from .runtime import LAMBDA_CONTEXT, SWITCH
from .serializers import serializer_for
from .stores.protocol import AsyncStore, Store, wall_ms
from .telemetry import Watcher

__all__ = ["idempotent", "idempotent_function"]

F = TypeVar("F", bound=Callable[..., Any])

# A Lambda context's remaining time below this is not taken as the lease: a
# context made outside an invocation (a test's, at module level) runs down to
# 0, and a lease of a few ms would store nothing and let every delivery run.
MIN_LAMBDA_LEASE_MS = 1000

# Powertools' names for our arguments: refused with a hint (the compat module maps them).
_POWERTOOLS_NAMES = {"persistence_store": "store", "data_keyword_argument": "data"}

_NO_STORE: Any = object()


def _check_names(where: str, store: Any, extra: dict[str, Any]) -> None:
    """Refuse Powertools' argument names with ours, and anything else as Python would."""
    for name in extra:
        if name in _POWERTOOLS_NAMES:
            ours = _POWERTOOLS_NAMES[name]
            raise IdempotencyConfigError(
                f"{where}() takes {ours}=, not Powertools' {name}=; pass {ours}=... instead"
            )
    if extra:
        raise TypeError(f"{where}() got an unexpected keyword argument {next(iter(extra))!r}")
    if store is _NO_STORE:
        raise TypeError(f"{where}() missing 1 required keyword-only argument: 'store'")


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


class _Call(NamedTuple):
    """What one call carries: payload, key material, lease, and the args to call with."""

    payload: Any
    material: Any
    lease_ms: int | None
    args: tuple[Any, ...]
    deadline_ms: int | None = None
    context: Any = None  # a handler's Lambda context, current while it runs


class Naming(NamedTuple):
    """How a decorated function's keys are named, when not as onceonly names them.

    Attributes:
        prefix: ``prefix(func, config)``: the key prefix of a function.
        scheme: How the rest of the key is written.
    """

    prefix: Callable[[Callable[..., Any], IdempotencyConfig], str]
    scheme: KeyScheme


class _Guard:
    """Everything one decorated function needs at call time, built once."""

    def __init__(
        self,
        func: Callable[..., Any],
        store: Any,
        config: IdempotencyConfig | None,
        output_serializer: Any,
        naming: Naming | None = None,
        stats: Stats | None = None,
    ) -> None:
        if not callable(func):
            raise IdempotencyConfigError(f"can only decorate a callable, got {func!r}")
        if config is None:
            config = IdempotencyConfig()
        elif not isinstance(config, IdempotencyConfig):
            raise IdempotencyConfigError(
                f"config must be an IdempotencyConfig, got {type(config).__name__}"
            )
        self.name = display_name(func)
        self.is_async = _is_async(func)
        _check_store(store, self.is_async, self.name)
        self.store = store
        self.config = config
        if naming is None:
            prefix = config.key_prefix or default_prefix(func, config.hash_function)
            scheme = None
        else:
            prefix, scheme = naming.prefix(func, config), naming.scheme
        self.keyer = Keyer(
            prefix, config.hash_function, config._key_expr, config._validation_expr, scheme
        )
        # A store that shards keys (Redis Cluster) warns about a key_prefix
        # that would put every key of this function in one slot.
        check_key_prefix = getattr(store, "check_key_prefix", None)
        if config.key_prefix is not None and callable(check_key_prefix):
            check_key_prefix(config.key_prefix, stacklevel=3)
        self.stats = Stats() if stats is None else stats
        # The config is frozen: its derived figures are read once, not per call.
        self.lease_ms = config.lease_ms
        self.ttl_ms = config.ttl_ms
        self.warned_lease = False
        kind = store_kind(store)
        self.policy = Policy(
            name=self.name,
            config=config,
            serializer=serializer_for(func, output_serializer),
            stats=self.stats,
            cache=LocalCache(config.local_cache_max_items) if config.use_local_cache else None,
            clock=wall_ms,
            max_outcome_bytes=_outcome_limit(store),
            store=kind,
        )
        self.watcher = Watcher(self.name, kind)

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
                self.policy.count(Event.UNPROTECTED)
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
            self.policy.count(Event.UNPROTECTED)
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

    def function_lease(self) -> tuple[int | None, int | None]:
        """The lease and deadline of a function's call: the current Lambda context's."""
        context = LAMBDA_CONTEXT.get()
        return (None, None) if context is None else self.lambda_lease(context)

    def switched_off(self, stacklevel: int = 3, count: bool = True) -> bool:
        """Whether idempotency is off (``runtime.SWITCH``); warns and counts when it is.

        One module attribute read per call, not an environment read: the
        variables are followed by ``runtime`` as they change.
        """
        if not SWITCH.off:
            return False
        warnings.warn(
            f"{self.name}: idempotency is switched off (ONCEONLY_DISABLED, "
            "POWERTOOLS_IDEMPOTENCY_DISABLED or onceonly.testing.disabled()); running without "
            "idempotency",
            OnceOnlyWarning,
            stacklevel=stacklevel,
        )
        if count:  # a batch counts each of its records itself
            self.policy.count(Event.UNPROTECTED)
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
            watch = self.watcher.watch(None)
            if watch is None:
                return func(*args, **kwargs)
            with watch:
                return func(*args, **kwargs)
        policy = self.policy
        return _sync.drive(
            self.watcher.flow(flow(policy, inv), inv.key),
            self.store,
            inv,
            lambda: func(*args, **kwargs),
            policy.clock,
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
            watch = self.watcher.watch(None)
            if watch is None:
                return await func(*args, **kwargs)
            with watch:
                return await func(*args, **kwargs)
        from . import _async  # here: a sync program's cold start never loads asyncio

        policy = self.policy
        return await _async.drive(
            self.watcher.flow(flow(policy, inv), inv.key),
            self.store,
            inv,
            lambda: func(*args, **kwargs),
            policy.clock,
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
                if SWITCH.off and self.switched_off():
                    return await func(*args, **kwargs)
                inv, call = invocation(args, kwargs)
                if call.context is None:
                    return await self.call_async(func, call.args, kwargs, inv)
                token = LAMBDA_CONTEXT.set(call.context)
                try:
                    return await self.call_async(func, call.args, kwargs, inv)
                finally:
                    LAMBDA_CONTEXT.reset(token)

            wrapper: Callable[..., Any] = async_wrapper
        else:

            def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
                if SWITCH.off and self.switched_off():
                    return func(*args, **kwargs)
                inv, call = invocation(args, kwargs)
                if call.context is None:
                    return self.call(func, call.args, kwargs, inv)
                # Functions called inside the handler take its remaining time.
                token = LAMBDA_CONTEXT.set(call.context)
                try:
                    return self.call(func, call.args, kwargs, inv)
                finally:
                    LAMBDA_CONTEXT.reset(token)

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
    store: Store | AsyncStore = _NO_STORE,
    config: IdempotencyConfig | None = None,
    output_serializer: Any = None,
    **powertools: Any,
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
        IdempotencyConfigError: Bad options, a store of the wrong kind, or
            Powertools' ``persistence_store=`` (the message names ``store=``).
    """
    _check_names("idempotent", store, powertools)
    decorate = handler_decorator(store, config, output_serializer)
    return decorate if handler is None else decorate(handler)


def handler_decorator(
    store: Any,
    config: IdempotencyConfig | None,
    output_serializer: Any,
    naming: Naming | None = None,
) -> Callable[[F], F]:
    """The decorator ``idempotent`` applies, with keys named by ``naming`` (for ``compat``)."""

    def decorate(func: F) -> F:
        guard = _Guard(func, store, config, output_serializer, naming)

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
            return _Call(event, _UNSET, lease_ms, args, deadline_ms, context)

        return guard.wrap(func, split)

    return decorate


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
    store: Store | AsyncStore = _NO_STORE,
    data: str | None = None,
    key: Callable[..., Any] | None = None,
    config: IdempotencyConfig | None = None,
    output_serializer: Any = None,
    **powertools: Any,
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

    Called inside an ``@idempotent`` handler (or after
    ``config.register_lambda_context(context)`` in the same invocation), its
    claims' lease is the invocation's remaining time, as the handler's is.

    Returns:
        The wrapped function.

    Raises:
        IdempotencyConfigError: Neither ``data`` nor ``key`` given, ``data`` not
            a parameter, ``key`` not callable, bad options, a store of the
            wrong kind, or Powertools' ``persistence_store=`` /
            ``data_keyword_argument=`` (the message names ours).
    """
    _check_names("idempotent_function", store, powertools)
    decorate = function_decorator(store, data, key, config, output_serializer)
    return decorate if func is None else decorate(func)


def function_decorator(
    store: Any,
    data: str | None,
    key: Callable[..., Any] | None,
    config: IdempotencyConfig | None,
    output_serializer: Any,
    naming: Naming | None = None,
) -> Callable[[F], F]:
    """The decorator ``idempotent_function`` applies (arguments checked); ``naming`` names keys."""
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
        guard = _Guard(f, store, config, output_serializer, naming)
        locate = _payload_locator(f, data) if data is not None else None

        def split(*args: Any, **kwargs: Any) -> _Call:
            payload = locate(args, kwargs) if locate is not None else None
            material = key(*args, **kwargs) if key is not None else _UNSET
            lease_ms, deadline_ms = guard.function_lease()
            return _Call(payload, material, lease_ms, args, deadline_ms)

        return guard.wrap(f, split)

    return decorate
