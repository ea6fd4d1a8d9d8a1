"""What a fault is run against: a library on a store, and the one function both decorate.

A :class:`Target` is plain data (it travels to worker processes as JSON). The
function is the same for every target: it records ``run`` and ``done`` in the
ledger around its (optional) work and returns a fresh nonce, so the ledger
tells which execution's result each caller got. Both libraries select the key
with the JMESPath ``id`` from the same payload.
"""

from __future__ import annotations

import datetime
import os
import signal
import time
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

from faultlab.ledger import Ledger

ONCEONLY = "onceonly"
POWERTOOLS = "powertools"
KEY_PREFIX = "faultlab"
REGION = "us-east-1"
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


@dataclass(frozen=True)
class Target:
    """A library on a store, as the workers build it.

    Attributes:
        name: How the figures name it, e.g. ``onceonly/redis-aof-always``.
        library: ``onceonly`` or ``powertools``.
        store: ``redis``, ``sentinel``, ``cluster``, ``sqlite`` or ``dynamodb``.
        address: A Redis URL, the SQLite file, or the DynamoDB endpoint URL.
        table: The DynamoDB table.
        wait_replicas: onceonly's ``wait_replicas``.
        lease_ms: The lease (onceonly's ``lease_seconds``; for Powertools the
            remaining time of the stand-in Lambda context, which sets its
            in-progress expiry).
        heartbeat: onceonly's ``heartbeat``.
        clock_offset_ms: How far this host's clock is ahead (injected into the
            stores that judge time on the client: SQLite, DynamoDB; for
            Powertools its ``datetime.now``).
        clock_skew_ms: onceonly's DynamoDB ``clock_skew_ms`` (None: default).
        socket_timeout_s: The Redis / DynamoDB client's read timeout.
    """

    name: str
    library: str
    store: str
    address: str = ""
    table: str = ""
    wait_replicas: int = 0
    lease_ms: int = 2_000
    heartbeat: bool = False
    clock_offset_ms: int = 0
    clock_skew_ms: int | None = None
    socket_timeout_s: float = 1.0

    def with_(self, **changes: Any) -> Target:
        return replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Failure(Exception):
    """The function's own failure (the payload asked for it)."""


@dataclass
class Outcome:
    """What one call gave: the result's nonce, or the kind of error."""

    nonce: str | None
    own: bool
    error: str | None
    elapsed_ms: float


def classify(exc: BaseException) -> str:
    """The kind of a call's error, the same for both libraries."""
    if isinstance(exc, Failure):
        return "failed"
    name = type(exc).__name__
    if "AlreadyInProgress" in name:
        return "in_progress"
    module = type(exc).__module__
    store_like = (
        "StoreError" in name
        or "PersistenceLayer" in name
        or "CorruptRecord" in name
        or module.startswith(("redis", "botocore", "boto3", "sqlite3", "urllib3"))
        or isinstance(exc, (ConnectionError, TimeoutError, OSError))
    )
    return "store" if store_like else f"other:{name}"


class Caller:
    """The decorated function of one target in this process, and its ledger."""

    def __init__(self, target: Target, ledger: Ledger) -> None:
        self.target = target
        self.ledger = ledger
        # The nonce each call's own body made, by call id (the payload carries
        # it): a result with it is the call's own; any other was replayed.
        # Plain dict operations: safe across threads and tasks.
        self._made: dict[str, str] = {}
        self.function = build_function(target, self.body)

    def body(self, event: dict[str, Any]) -> dict[str, str]:
        nonce = uuid.uuid4().hex[:16]
        self._made[event["call"]] = nonce
        key = event["id"]
        self.ledger.write("run", k=key, n=nonce)
        if event.get("pause"):
            # A process paused in the middle of the work (a GC pause, a frozen VM):
            # the driver sees the stopped process and sends SIGCONT later.
            os.kill(os.getpid(), signal.SIGSTOP)
        work_ms = event.get("work_ms", 0)
        if work_ms:
            time.sleep(work_ms / 1000)
        if event.get("fail"):
            raise Failure(key)
        self.ledger.write("done", k=key, n=nonce)
        return {"n": nonce}

    def event(self, key: str, payload: dict[str, Any]) -> dict[str, Any]:
        """The payload of one call: the key, the call's id, the scenario's fields."""
        return {"id": key, "call": uuid.uuid4().hex, **payload}

    def record(
        self, key: str, event: dict[str, Any], result: Any, *, ack: bool | None = None, **where: Any
    ) -> Outcome:
        """Record the result a call returned (its own or a replayed one).

        Args:
            ack: Whether the store acknowledged the call's own outcome (None:
                not known); written on own results only.
        """
        nonce = result["n"]
        own = self._made.pop(event["call"], None) == nonce
        fields: dict[str, Any] = {"ack": ack} if own and ack is not None else {}
        self.ledger.write("got", k=key, n=nonce, own=own, **fields, **where)
        return Outcome(nonce, own, None, 0.0)

    def record_error(
        self, key: str, event: dict[str, Any], exc: BaseException, **where: Any
    ) -> str:
        """Record the error a call raised; return its kind."""
        self._made.pop(event["call"], None)
        kind = classify(exc)
        self.ledger.write("err", k=key, kind=kind, **where)
        return kind

    def call(self, key: str, *, phase: str, delivery: int = -1, **payload: Any) -> Outcome:
        """Call the function for ``key`` once; record and return what happened."""
        event = self.event(key, payload)
        unstored = self._unstored()
        started = time.perf_counter()
        try:
            result = self.function(event=event)
        except BaseException as exc:  # every error is counted, none is lost
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            elapsed = (time.perf_counter() - started) * 1000
            where = {"ms": round(elapsed, 1), "ph": phase, "d": delivery}
            kind = self.record_error(key, event, exc, **where)
            return Outcome(None, False, kind, elapsed)
        elapsed = (time.perf_counter() - started) * 1000
        # ``ack``: the store acknowledged this call's own outcome (onceonly hands
        # the result back even when it could not store it; Powertools raises).
        # With several threads another call's failure can clear it: never a false yes.
        ack = self._unstored() == unstored
        where = {"ms": round(elapsed, 1), "ph": phase, "d": delivery}
        outcome = self.record(key, event, result, ack=ack, **where)
        outcome.elapsed_ms = elapsed
        return outcome

    def _unstored(self) -> int:
        """onceonly's count of outcomes it could not store (store errors, lost leases)."""
        stats = getattr(self.function, "stats", None)
        if stats is None:  # Powertools: a failed save raises, so every returned result is stored
            return 0
        counts = stats.snapshot()
        return int(counts["store_error"]) + int(counts["lease_lost"])


# -- building each library's function ------------------------------------------------


def build_function(target: Target, body: Callable[..., Any]) -> Callable[..., Any]:
    if target.library == ONCEONLY:
        return _onceonly(target, body)
    if target.library == POWERTOOLS:
        return _powertools(target, body)
    raise ValueError(f"unknown library {target.library!r}")


def _skewed_ms(offset_ms: int) -> Callable[[], int]:
    return lambda: time.time_ns() // 1_000_000 + offset_ms


def dynamodb_client(endpoint: str, timeout_s: float) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "dynamodb",
        endpoint_url=endpoint,
        region_name=REGION,
        config=Config(
            connect_timeout=timeout_s,
            read_timeout=timeout_s,
            retries={"mode": "standard", "total_max_attempts": 3},
            max_pool_connections=32,
        ),
        **CREDENTIALS,
    )


def redis_options(target: Target) -> dict[str, Any]:
    """onceonly's ``RedisStore.from_url`` / ``AsyncRedisStore.from_url`` options for ``target``."""
    return {
        "cluster": target.store == "cluster",
        "prefix": KEY_PREFIX,
        "wait_replicas": target.wait_replicas,
        "socket_timeout": target.socket_timeout_s,
        "socket_connect_timeout": target.socket_timeout_s,
    }


def onceonly_store(target: Target) -> Any:
    """onceonly's store for ``target`` (sync)."""
    clock = _skewed_ms(target.clock_offset_ms) if target.clock_offset_ms else None
    if target.store in ("redis", "sentinel", "cluster"):
        from onceonly.stores.redis import RedisStore

        return RedisStore.from_url(target.address, **redis_options(target))
    if target.store == "sqlite":
        from onceonly.stores import SQLiteStore

        return SQLiteStore(target.address, clock=clock)
    if target.store == "dynamodb":
        from onceonly.stores.dynamodb import DynamoDBStore

        options: dict[str, Any] = {"clock": clock}
        if target.clock_skew_ms is not None:
            options["clock_skew_ms"] = target.clock_skew_ms
        return DynamoDBStore(
            target.table,
            client=dynamodb_client(target.address, target.socket_timeout_s),
            **options,
        )
    raise ValueError(f"onceonly has no {target.store!r} target here")


def _onceonly(target: Target, body: Callable[..., Any]) -> Callable[..., Any]:
    from onceonly import IdempotencyConfig, idempotent_function

    config = IdempotencyConfig(
        event_key_jmespath="id",
        key_prefix=KEY_PREFIX,
        lease_seconds=target.lease_ms / 1000,
        heartbeat=target.heartbeat,
    )
    return idempotent_function(body, store=onceonly_store(target), data="event", config=config)


class _LambdaContext:
    """Stands in for a LambdaContext: its remaining time is Powertools' in-progress lease."""

    def __init__(self, remaining_ms: int) -> None:
        self._remaining_ms = remaining_ms

    def get_remaining_time_in_millis(self) -> int:
        return self._remaining_ms


def _shift_powertools_clock(offset_ms: int) -> None:
    """Move Powertools' ``datetime.now`` ahead by ``offset_ms`` in this process (a skewed host)."""
    import importlib
    import types

    offset = datetime.timedelta(milliseconds=offset_ms)

    class Shifted(datetime.datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Any:  # type: ignore[override]
            return datetime.datetime.now(tz) + offset

    shim = types.ModuleType("datetime")
    shim.__dict__.update(datetime.__dict__)
    shim.datetime = Shifted  # type: ignore[attr-defined]
    for name in ("base", "datarecord", "dynamodb", "redis"):
        module = importlib.import_module(
            f"aws_lambda_powertools.utilities.idempotency.persistence.{name}"
        )
        if getattr(module, "dt", None) is datetime:
            module.dt = shim


def _powertools(target: Target, body: Callable[..., Any]) -> Callable[..., Any]:
    from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig as PTConfig
    from aws_lambda_powertools.utilities.idempotency import idempotent_function as pt_function

    if target.store == "redis":
        import redis
        from aws_lambda_powertools.utilities.idempotency.persistence.redis import (
            RedisCachePersistenceLayer,
        )

        # Host and port, as Powertools' documentation builds its layer: redis-py
        # then retries a failed command (3 times); a client made from a URL
        # does not. The same timeouts as onceonly's client.
        address = urllib.parse.urlsplit(target.address)
        client = redis.Redis(
            host=address.hostname or "127.0.0.1",
            port=address.port or 6379,
            socket_timeout=target.socket_timeout_s,
            socket_connect_timeout=target.socket_timeout_s,
        )
        layer: Any = RedisCachePersistenceLayer(client=client)
    elif target.store == "dynamodb":
        from aws_lambda_powertools.utilities.idempotency.persistence.dynamodb import (
            DynamoDBPersistenceLayer,
        )

        layer = DynamoDBPersistenceLayer(
            table_name=target.table,
            boto3_client=dynamodb_client(target.address, target.socket_timeout_s),
        )
    else:
        raise ValueError(f"Powertools has no {target.store!r} target here")
    if target.clock_offset_ms:
        _shift_powertools_clock(target.clock_offset_ms)
    config = PTConfig(event_key_jmespath="id", use_local_cache=False)
    config.register_lambda_context(_LambdaContext(target.lease_ms))
    return pt_function(body, data_keyword_argument="event", persistence_store=layer, config=config)
