"""Powertools' idempotency names over onceonly: moving over is a change of imports.

``from onceonly.compat.powertools import idempotent, idempotent_function,
IdempotencyConfig, DynamoDBPersistenceLayer`` in place of Powertools' imports
keeps a handler's code as it was. Keys are formed as Powertools forms them
(``"{function name}.{module}.{qualname}#{digest}"``, or ``"{key_prefix}#{digest}"``,
over the same JSON and hash), and the DynamoDB and Redis stores read the
records Powertools wrote, so a retry of a request Powertools already handled
replays its stored response instead of running again.

What runs is onceonly: one store call per duplicate, fencing tokens, falsy
results replayed as they were, ``async def`` support. The differences a
Powertools user could notice are listed in the README ("Coming from
Powertools").
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import json
import math
import os
import pathlib
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from .. import errors
from ..config import IdempotencyConfig
from ..decorators import Naming, function_decorator, handler_decorator
from ..keys import KeyScheme
from ..serializers import CustomSerializer, JsonSerializer
from ..serializers import DataclassSerializer as _DataclassSerializer
from ..serializers import PydanticSerializer as _PydanticSerializer
from ..stores.dynamodb import DynamoDBStore
from ..stores.redis import RedisStore
from ..stores.redis.clients import url_client

__all__ = [
    "POWERTOOLS_KEYS",
    "BaseError",
    "CachePersistenceLayer",
    "CustomDictSerializer",
    "DataclassSerializer",
    "DynamoDBPersistenceLayer",
    "IdempotencyAlreadyInProgressError",
    "IdempotencyConfig",
    "IdempotencyInconsistentStateError",
    "IdempotencyInvalidStatusError",
    "IdempotencyItemAlreadyExistsError",
    "IdempotencyItemNotFoundError",
    "IdempotencyKeyError",
    "IdempotencyModelTypeError",
    "IdempotencyNoSerializationModelError",
    "IdempotencyPersistenceConfigError",
    "IdempotencyPersistenceConnectionError",
    "IdempotencyPersistenceConsistencyError",
    "IdempotencyPersistenceLayerError",
    "IdempotencyValidationError",
    "NoOpSerializer",
    "PydanticSerializer",
    "RedisCachePersistenceLayer",
    "idempotent",
    "idempotent_function",
]

F = TypeVar("F", bound=Callable[..., Any])

# -- exceptions: Powertools' names for ours ------------------------------------------

BaseError = errors.IdempotencyError
IdempotencyAlreadyInProgressError = errors.IdempotencyAlreadyInProgressError
IdempotencyValidationError = errors.IdempotencyKeyReuseError
IdempotencyKeyError = errors.IdempotencyKeyError
IdempotencyPersistenceLayerError = errors.IdempotencyStoreError
IdempotencyPersistenceConnectionError = errors.IdempotencyStoreError
IdempotencyPersistenceConsistencyError = errors.CorruptRecordError
IdempotencyPersistenceConfigError = errors.IdempotencyConfigError
# Powertools raises these when a serializer is given without a usable model;
# onceonly refuses that when the decorator is applied, as a config error.
IdempotencyModelTypeError = errors.IdempotencyConfigError
IdempotencyNoSerializationModelError = errors.IdempotencyConfigError


class IdempotencyItemAlreadyExistsError(errors.IdempotencyError):
    """Never raised: Powertools' internal "the item is there" (one claim call answers it here)."""


class IdempotencyItemNotFoundError(errors.IdempotencyError):
    """Never raised: Powertools' internal "the item vanished between two calls"."""


class IdempotencyInconsistentStateError(errors.IdempotencyError):
    """Never raised: Powertools' "put and get disagree"; a single atomic claim has no such gap."""


class IdempotencyInvalidStatusError(errors.IdempotencyError):
    """Never raised: a record with an unknown status is a ``CorruptRecordError`` here."""


# -- keys as Powertools forms them ---------------------------------------------------


def _powertools_default(value: Any) -> Any:
    # What Powertools' JSON encoder writes for values json cannot write itself.
    if isinstance(value, decimal.Decimal):
        return math.nan if value.is_nan() else str(value)
    dump = getattr(value, "model_dump", None)
    if callable(dump) and not isinstance(value, type):
        return dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, (uuid.UUID, pathlib.PurePath)):
        return str(value)
    raw = getattr(value, "raw_event", None)
    if raw is not None:
        return raw
    raise TypeError(f"{type(value).__qualname__} is not JSON serializable")


def powertools_json(value: Any) -> bytes:
    """The bytes Powertools hashes: ``json.dumps`` with sorted keys and its default spacing.

    Raises:
        IdempotencySerializationError: The value holds something JSON cannot write.
    """
    try:
        return json.dumps(value, sort_keys=True, default=_powertools_default).encode()
    except (TypeError, ValueError, RecursionError) as exc:
        raise errors.IdempotencySerializationError(
            f"payload cannot be written as JSON: {exc}; pass JSON-native data, a dataclass or "
            "a pydantic model"
        ) from exc


def powertools_missing(selected: Any) -> bool:
    """Whether Powertools finds no key in a selection (None, or all None, or empty)."""
    if isinstance(selected, dict):
        return all(item is None for item in selected.values())
    if isinstance(selected, (list, tuple)):
        return all(item is None for item in selected)
    if isinstance(selected, (int, float)):  # bool too: 0 and False are keys
        return False
    return not selected


POWERTOOLS_KEYS = KeyScheme("#", powertools_json, powertools_missing)


def _naming(key_prefix: str | None) -> Naming:
    if key_prefix is not None and (not isinstance(key_prefix, str) or not key_prefix):
        raise errors.IdempotencyConfigError(
            f"key_prefix must be a non-empty string, got {key_prefix!r}"
        )

    def prefix(func: Callable[..., Any], config: IdempotencyConfig) -> str:
        if key_prefix is not None:
            return key_prefix
        if config.key_prefix is not None:
            return config.key_prefix
        # Powertools' default: read once here (Lambda sets it before any import).
        function_name = os.getenv("AWS_LAMBDA_FUNCTION_NAME", "test-func")
        module = getattr(func, "__module__", None) or type(func).__module__
        qualname = getattr(func, "__qualname__", None) or type(func).__qualname__
        return f"{function_name}.{module}.{qualname}"

    return Naming(prefix, POWERTOOLS_KEYS)


# -- serializers ---------------------------------------------------------------------


class DataclassSerializer(_DataclassSerializer[Any]):
    """Powertools' ``DataclassSerializer(model=...)``: onceonly's, under that argument name."""

    def __init__(self, model: type[Any]) -> None:
        super().__init__(model)


class PydanticSerializer(_PydanticSerializer[Any]):
    """Powertools' ``PydanticSerializer(model=...)``: onceonly's, under that argument name."""

    def __init__(self, model: type[Any]) -> None:
        super().__init__(model)


class CustomDictSerializer(CustomSerializer):
    """Powertools' ``CustomDictSerializer(to_dict=..., from_dict=...)``.

    Neither function is called for a ``None`` result (it replays as ``None``).
    """

    def __init__(self, to_dict: Callable[[Any], Any], from_dict: Callable[[Any], Any]) -> None:
        super().__init__(to_dict, from_dict)


class NoOpSerializer(JsonSerializer):
    """Powertools' default: results that are JSON already, stored as they are."""


def _serializer(given: Any) -> Any:
    # A serializer object written for Powertools (to_dict / from_dict) works as it is.
    if (
        given is not None
        and not isinstance(given, type)
        and not callable(getattr(given, "to_json", None))
        and callable(getattr(given, "to_dict", None))
        and callable(getattr(given, "from_dict", None))
    ):
        return CustomSerializer(given.to_dict, given.from_dict)
    return given


# -- decorators ----------------------------------------------------------------------

_MISSING: Any = object()


def _check_store(where: str, store: Any) -> None:
    if store is _MISSING:
        raise TypeError(f"{where}() missing 1 required keyword-only argument: 'persistence_store'")


def idempotent(
    handler: F | None = None,
    *,
    persistence_store: Any = _MISSING,
    config: IdempotencyConfig | None = None,
    key_prefix: str | None = None,
    output_serializer: Any = None,
) -> Any:
    """Powertools' ``@idempotent``: a Lambda handler ``handler(event, context)`` runs once per key.

    Args:
        handler: The handler (given later when used as ``@idempotent(...)``).
        persistence_store: Any onceonly store (``DynamoDBPersistenceLayer``,
            ``RedisCachePersistenceLayer``, ``SQLiteStore``...), async for an
            ``async def`` handler.
        config: An ``IdempotencyConfig``.
        key_prefix: The key is ``"{key_prefix}#{digest}"`` instead of
            ``"{function name}.{module}.{qualname}#{digest}"``.
        output_serializer: As for ``onceonly.idempotent``.

    Returns:
        The wrapped handler.

    Raises:
        IdempotencyConfigError: Bad options or a store of the wrong kind.
    """
    _check_store("idempotent", persistence_store)
    decorate = handler_decorator(
        persistence_store, config, _serializer(output_serializer), _naming(key_prefix)
    )
    return decorate if handler is None else decorate(handler)


def idempotent_function(
    function: F | None = None,
    *,
    data_keyword_argument: str = "",
    persistence_store: Any = _MISSING,
    config: IdempotencyConfig | None = None,
    output_serializer: Any = None,
    key_prefix: str | None = None,
) -> Any:
    """Powertools' ``@idempotent_function``: any function runs once per key of one argument.

    Args:
        function: The function (given later when used as a decorator factory).
        data_keyword_argument: The parameter that carries the payload; by
            keyword as in Powertools, or by position.
        persistence_store: Any onceonly store, async for an ``async def`` function.
        config: An ``IdempotencyConfig``.
        output_serializer: ``DataclassSerializer``, ``PydanticSerializer``
            (the class, or an instance with ``model``), ``CustomDictSerializer``,
            or a Powertools serializer object with ``to_dict``/``from_dict``.
        key_prefix: As for :func:`idempotent`.

    Returns:
        The wrapped function.

    Raises:
        IdempotencyConfigError: No ``data_keyword_argument``, it names no
            parameter, bad options, or a store of the wrong kind.
    """
    _check_store("idempotent_function", persistence_store)
    if not isinstance(data_keyword_argument, str) or not data_keyword_argument:
        raise errors.IdempotencyConfigError(
            "idempotent_function needs data_keyword_argument='<parameter name>'"
        )
    decorate = function_decorator(
        persistence_store,
        data_keyword_argument,
        None,
        config,
        _serializer(output_serializer),
        _naming(key_prefix),
    )
    return decorate if function is None else decorate(function)


# -- persistence layers: onceonly's stores under Powertools' constructors ---------------

# Powertools' attribute names for the parts of its records that onceonly reads.
_POWERTOOLS_ATTRS = {
    "in_progress_expiry_attr": "in_progress_expiration",
    "status_attr": "status",
    "data_attr": "data",
    "validation_key_attr": "validation",
}


def _default_attrs(given: dict[str, str]) -> None:
    for name, value in given.items():
        if value != _POWERTOOLS_ATTRS[name]:
            raise errors.IdempotencyConfigError(
                f"{name}={value!r}: onceonly reads the records Powertools wrote under its default "
                f"attribute names only ({name}={_POWERTOOLS_ATTRS[name]!r}); drop the option, "
                "or move over once the records written under it have expired"
            )


class DynamoDBPersistenceLayer(DynamoDBStore):
    """Powertools' DynamoDB layer: a :class:`~onceonly.stores.dynamodb.DynamoDBStore`.

    The table Powertools used keeps working: the same key attribute(s) and
    TTL attribute; the items Powertools wrote are read (a completed one
    replays, one in progress holds until its in-progress expiry); the items
    written here are onceonly's.

    Args:
        table_name: The table.
        key_attr: The partition key attribute (default ``id``).
        static_pk_value: The partition value when ``sort_key_attr`` is set;
            default ``"idempotency#{AWS_LAMBDA_FUNCTION_NAME}"`` as in Powertools.
        sort_key_attr: A sort key attribute that holds the idempotency key.
        expiry_attr: The TTL attribute (epoch seconds), default ``expiration``.
        in_progress_expiry_attr, status_attr, data_attr, validation_key_attr:
            Only Powertools' defaults are accepted (the names its records are read by).
        boto_config: A ``botocore.config.Config`` for the client built here.
        boto3_session: A ``boto3.session.Session`` to build the client from.
        boto3_client: A boto3 DynamoDB client to use as it is.

    Raises:
        IdempotencyConfigError: Bad options, boto3 missing, or attribute names
            other than Powertools' defaults.
    """

    def __init__(
        self,
        table_name: str,
        key_attr: str = "id",
        static_pk_value: str | None = None,
        sort_key_attr: str | None = None,
        expiry_attr: str = "expiration",
        in_progress_expiry_attr: str = "in_progress_expiration",
        status_attr: str = "status",
        data_attr: str = "data",
        validation_key_attr: str = "validation",
        boto_config: Any = None,
        boto3_session: Any = None,
        boto3_client: Any = None,
    ) -> None:
        _default_attrs(
            {
                "in_progress_expiry_attr": in_progress_expiry_attr,
                "status_attr": status_attr,
                "data_attr": data_attr,
                "validation_key_attr": validation_key_attr,
            }
        )
        if boto3_client is None and boto3_session is not None:
            boto3_client = boto3_session.client("dynamodb", config=boto_config)
            boto_config = None
        if sort_key_attr is not None and static_pk_value is None:
            static_pk_value = f"idempotency#{os.getenv('AWS_LAMBDA_FUNCTION_NAME', '')}"
        super().__init__(
            table_name,
            client=boto3_client,
            boto_config=boto_config if boto3_client is None else None,
            key_attr=key_attr,
            sort_key_attr=sort_key_attr,
            static_pk_value=static_pk_value,
            expiry_attr=expiry_attr,
        )


class RedisCachePersistenceLayer(RedisStore):
    """Powertools' Redis layer: a :class:`~onceonly.stores.redis.RedisStore` with no key prefix.

    Keys are stored as Powertools stores them (no prefix), and the values
    Powertools wrote are read. A client is built from ``url``, or from
    ``host`` and the options after it, unless ``client`` is given.

    Args:
        url: ``redis://`` or ``rediss://`` URL (overrides host and port).
        host, port, username, password, db_index: The server.
        mode: ``"standalone"`` or ``"cluster"``.
        ssl: TLS for a client built from ``host`` (default True, as in Powertools).
        client: A redis-py client (``redis.Redis``, ``RedisCluster``, a Sentinel master).
        in_progress_expiry_attr, expiry_attr, status_attr, data_attr,
            validation_key_attr: Only Powertools' defaults are accepted.

    Raises:
        IdempotencyConfigError: No server given, bad options, redis missing,
            or attribute names other than Powertools' defaults.
    """

    def __init__(
        self,
        url: str = "",
        host: str = "",
        port: int = 6379,
        username: str = "",
        password: str = "",
        db_index: int = 0,
        mode: str = "standalone",
        ssl: bool = True,
        client: Any = None,
        in_progress_expiry_attr: str = "in_progress_expiration",
        expiry_attr: str = "expiration",
        status_attr: str = "status",
        data_attr: str = "data",
        validation_key_attr: str = "validation",
    ) -> None:
        _default_attrs(
            {
                "in_progress_expiry_attr": in_progress_expiry_attr,
                "status_attr": status_attr,
                "data_attr": data_attr,
                "validation_key_attr": validation_key_attr,
            }
        )
        if expiry_attr != "expiration":
            raise errors.IdempotencyConfigError(
                f"expiry_attr={expiry_attr!r}: onceonly reads the records Powertools wrote under "
                "its default attribute names only (expiry_attr='expiration')"
            )
        if mode not in ("standalone", "cluster"):
            raise errors.IdempotencyConfigError(
                f"mode must be 'standalone' or 'cluster', got {mode!r}"
            )
        if client is None:
            client = _redis_client(url, host, port, username, password, db_index, mode, ssl)
        super().__init__(client, prefix="")


def _redis_client(
    url: str,
    host: str,
    port: int,
    username: str,
    password: str,
    db_index: int,
    mode: str,
    ssl: bool,
) -> Any:
    """A client as Powertools' layer builds one, with onceonly's timeouts and retry."""
    options: dict[str, Any] = {}
    if not url:
        if not isinstance(host, str) or not host:
            raise errors.IdempotencyConfigError(
                "RedisCachePersistenceLayer needs url=, host= or client="
            )
        if type(port) is not int or not 0 < port < 65536:
            raise errors.IdempotencyConfigError(f"port must be 1-65535, got {port!r}")
        if type(db_index) is not int or db_index < 0:
            raise errors.IdempotencyConfigError(f"db_index must be 0 or more, got {db_index!r}")
        where = f"[{host}]" if ":" in host else host
        path = "" if mode == "cluster" else f"/{db_index}"  # a cluster has no databases
        url = f"{'rediss' if ssl else 'redis'}://{where}:{port}{path}"
        # Credentials as options, not in the URL: nothing to quote, nothing to leak.
        if username:
            options["username"] = username
        if password:
            options["password"] = password
    return url_client(url, cluster=mode == "cluster", asyncio=False, options=options)


# Powertools 3 renamed its Redis layer; both names work there, both work here.
CachePersistenceLayer = RedisCachePersistenceLayer
