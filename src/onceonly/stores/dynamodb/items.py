"""Items, errors and the table helper of the DynamoDB store (see ``store.py``).

An item holds the key attribute(s), then ``status`` ("P" or "C"), ``token``,
``deadline`` (integer ms since the epoch, a number), ``fingerprint``
(optional string), ``outcome`` (binary, COMPLETED only) and the expiry
attribute (epoch seconds, for DynamoDB's own TTL deletion). Items are read
with the low-level client, so every value arrives as ``{"S": ...}``,
``{"N": ...}`` or ``{"B": ...}``; :func:`record_from_item` checks each field
through ``codec.from_fields`` and raises ``CorruptRecordError`` on anything
else.

An item that Powertools' DynamoDB persistence layer wrote (same default key
and TTL attributes, so it can share the table) has no ``token`` and a
``status`` of ``COMPLETED``, ``INPROGRESS`` or ``EXPIRED``:
:func:`record_from_item` reads it through ``powertools_records`` instead.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Collection, Mapping
from typing import Any

from ... import codec, powertools_records
from ...errors import IdempotencyConfigError, IdempotencyStoreError
from ...metrics import log_extra
from ...records import Record

__all__ = [
    "DATA_ATTRS",
    "DEADLINE",
    "FINGERPRINT",
    "KEY_LIMITS",
    "OUTCOME",
    "STATUS",
    "TOKEN",
    "build_client",
    "check_key_size",
    "check_layout",
    "check_table",
    "ensure_table",
    "import_boto3",
    "is_powertools_item",
    "layout_mismatch",
    "record_from_item",
    "still_powertools_item",
    "store_error",
    "value",
]

logger = logging.getLogger("onceonly")

STATUS = "status"
TOKEN = "token"
DEADLINE = "deadline"
FINGERPRINT = "fingerprint"
OUTCOME = "outcome"
DATA_ATTRS = (STATUS, TOKEN, DEADLINE, FINGERPRINT, OUTCOME)

# DynamoDB's size limits of a key attribute's value, in UTF-8 bytes.
KEY_LIMITS = {"partition": 2048, "sort": 1024}
_INTEGER = re.compile(r"-?[0-9]{1,20}")
_TABLE_NAME = re.compile(r"[A-Za-z0-9_.-]{3,255}")
_THROTTLED = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "LimitExceededException",
    }
)
_DENIED = frozenset(
    {
        "AccessDeniedException",
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "ExpiredTokenException",
        "MissingAuthenticationTokenException",
    }
)


def import_boto3() -> tuple[Any, Any]:
    """Import boto3 and ``botocore.exceptions``, or say which extra installs them."""
    try:
        import boto3
        import botocore.exceptions
    except ImportError as exc:
        raise IdempotencyConfigError(
            "the DynamoDB store needs boto3: pip install 'onceonly[dynamodb]'"
        ) from exc
    return boto3, botocore.exceptions


def _attribute_name(option: str, name: object) -> None:
    if not isinstance(name, str) or not 1 <= len(name.encode()) <= 255:
        raise IdempotencyConfigError(f"{option} must be an attribute name of 1-255 bytes")


def check_layout(
    table_name: object,
    key_attr: object,
    sort_key_attr: object,
    static_pk_value: object,
    expiry_attr: object,
) -> None:
    """Raise IdempotencyConfigError unless the table name and attribute names make a layout."""
    if not isinstance(table_name, str) or _TABLE_NAME.fullmatch(table_name) is None:
        raise IdempotencyConfigError(
            f"table_name must be 3-255 letters, digits, '_', '-' or '.', got {table_name!r}"
        )
    _attribute_name("key_attr", key_attr)
    _attribute_name("expiry_attr", expiry_attr)
    own = [key_attr, expiry_attr]
    if sort_key_attr is not None:
        _attribute_name("sort_key_attr", sort_key_attr)
        own.append(sort_key_attr)
    if len(set(own)) != len(own) or set(own) & set(DATA_ATTRS):
        raise IdempotencyConfigError(
            "key_attr, sort_key_attr and expiry_attr must differ from each other and from "
            f"the record's own attributes ({', '.join(DATA_ATTRS)}), got {own}"
        )
    if static_pk_value is not None and (
        sort_key_attr is None or not isinstance(static_pk_value, str) or not static_pk_value
    ):
        raise IdempotencyConfigError(
            "static_pk_value needs sort_key_attr and must be a non-empty string"
        )
    if isinstance(static_pk_value, str) and len(static_pk_value.encode()) > KEY_LIMITS["partition"]:
        raise IdempotencyConfigError(
            f"static_pk_value is {len(static_pk_value.encode())} bytes, over DynamoDB's limit "
            f"of {KEY_LIMITS['partition']} bytes for a partition key; use a shorter one"
        )


def check_key_size(key: str, kind: str) -> None:
    """Raise IdempotencyStoreError if ``key`` is over DynamoDB's limit for a ``kind`` key.

    Args:
        key: The idempotency key, stored in the partition or the sort key.
        kind: ``"partition"`` or ``"sort"``.
    """
    size, limit = len(key.encode()), KEY_LIMITS[kind]
    if size > limit:
        raise IdempotencyStoreError(
            f"the key is {size} bytes, {size - limit} over DynamoDB's limit of {limit} bytes "
            f"for a {kind} key; use a shorter key_prefix (the rest of the key is the digest "
            "of the payload, a fixed size for a given hash_function)"
        )


def layout_mismatch(
    table: str, described: Mapping[str, Any], key_attr: str, sort_key_attr: str | None
) -> str | None:
    """Say how a table's key schema differs from the store's layout, or None if it matches.

    Args:
        table: The table's name, for the message.
        described: The ``Table`` of a ``DescribeTable`` answer.
        key_attr, sort_key_attr: The store's layout (string keys).

    Returns:
        None, or a message naming each difference and the option that fixes it.
    """
    keys = {kind: (name, kind_type) for name, kind, kind_type in _key_schema(described)}
    differences: list[str] = []
    pk_name, pk_type = keys.get("HASH", ("?", "?"))
    if pk_name != key_attr:
        differences.append(
            f"the table has the partition key {pk_name}, but the store has "
            f"key_attr={key_attr!r}: pass key_attr={pk_name!r}"
        )
    elif pk_type != "S":
        differences.append(
            f"the table's partition key {pk_name} is of type {pk_type}, but the store writes "
            "a string (S): use a table whose keys are strings (DynamoDBStore.create_table)"
        )
    sort = keys.get("RANGE")
    if sort is None and sort_key_attr is not None:
        differences.append(
            f"the table has no sort key, but the store has sort_key_attr={sort_key_attr!r}: "
            f"drop sort_key_attr (each key then has its own {pk_name}), or use a table with "
            f"the sort key {sort_key_attr} (S)"
        )
    elif sort is not None and sort_key_attr is None:
        differences.append(
            f"the table has the sort key {sort[0]}, but the store has none: "
            f"pass sort_key_attr={sort[0]!r}"
        )
    elif sort is not None and sort[0] != sort_key_attr:
        differences.append(
            f"the table has the sort key {sort[0]}, but the store has "
            f"sort_key_attr={sort_key_attr!r}: pass sort_key_attr={sort[0]!r}"
        )
    elif sort is not None and sort[1] != "S":
        differences.append(
            f"the table's sort key {sort[0]} is of type {sort[1]}, but the store writes a "
            "string (S): use a table whose keys are strings (DynamoDBStore.create_table)"
        )
    if not differences:
        return None
    return f"DynamoDB table {table} does not match the store's layout: " + "; ".join(differences)


def build_client(boto_config: Any, region_name: str | None, endpoint_url: str | None) -> Any:
    """Build a boto3 DynamoDB client with the store's defaults.

    The defaults are 5 s connect and 10 s read timeouts, "standard" retries (3
    attempts) and 32 pooled connections; ``boto_config`` overrides them.

    Raises:
        IdempotencyConfigError: boto3 missing, no region, or a bad option.
    """
    boto3, exceptions = import_boto3()
    from botocore.config import Config

    if boto_config is not None and not isinstance(boto_config, Config):
        raise IdempotencyConfigError("boto_config must be a botocore.config.Config")
    config = Config(
        connect_timeout=5,
        read_timeout=10,
        retries={"mode": "standard", "total_max_attempts": 3},
        max_pool_connections=32,
    )
    if boto_config is not None:
        config = config.merge(boto_config)
    try:
        return boto3.session.Session().client(
            "dynamodb", config=config, region_name=region_name, endpoint_url=endpoint_url
        )
    except exceptions.NoRegionError as exc:
        # boto3 reads AWS_DEFAULT_REGION and the profile's region, not AWS_REGION
        # (which Lambda sets beside AWS_DEFAULT_REGION, so it never shows there).
        raise IdempotencyConfigError(
            "no AWS region for DynamoDB: pass region_name=, set AWS_DEFAULT_REGION, or set "
            "a region in the AWS profile (AWS_PROFILE, ~/.aws/config)"
        ) from exc
    except ValueError as exc:  # a malformed endpoint_url
        raise IdempotencyConfigError(f"cannot build a DynamoDB client: {exc}") from exc


def value(attribute: object) -> object:
    """Return one low-level attribute value as Python: S -> str, N -> int, B -> bytes.

    A number that is not an integer, a type onceonly never writes, or anything
    that is not an attribute value comes back as it is, for
    ``codec.from_fields`` to reject. A missing attribute (None) stays None.
    """
    if not isinstance(attribute, Mapping) or len(attribute) != 1:
        return attribute
    ((kind, raw),) = attribute.items()
    if kind == "S" and isinstance(raw, str):
        return raw
    if kind == "N" and isinstance(raw, str) and _INTEGER.fullmatch(raw):
        return int(raw)
    if kind == "B" and isinstance(raw, (bytes, bytearray)):
        return bytes(raw)
    return attribute


def is_powertools_item(item: Mapping[str, Any]) -> bool:
    """Whether ``item`` is one that Powertools wrote: no token, and one of its statuses."""
    if TOKEN in item:  # every onceonly item: one lookup on their path
        return False
    status = value(item.get(STATUS))
    return isinstance(status, str) and status in powertools_records.STATUSES


def record_from_item(
    item: Mapping[str, Any],
    *,
    store: str = "the DynamoDB store",
    expiry_attr: str = "expiration",
    key_attrs: Collection[str] = ("id",),
) -> Record:
    """Build the record an item holds (one of onceonly's, or one Powertools wrote).

    Args:
        item: The item, as the low-level client returns it.
        store: Which table it comes from, for the error message.
        expiry_attr: The store's TTL attribute (Powertools' ``expiration``).
        key_attrs: The store's key attributes, which a Powertools item has
            besides its fields.

    Raises:
        CorruptRecordError: A field is missing or malformed.
    """
    if not is_powertools_item(item):
        return codec.from_fields(*(value(item.get(name)) for name in DATA_ATTRS), store=store)
    fields: dict[str, object] = {}
    for name, attribute in item.items():
        if name == expiry_attr:
            fields[powertools_records.EXPIRATION] = value(attribute)
        elif name in powertools_records.FIELDS and name != powertools_records.EXPIRATION:
            fields[name] = value(attribute)
        elif name not in key_attrs:
            # Not a field of Powertools' default layout: refused (a name that
            # cannot be one of them keeps it apart from the fields).
            fields[f"attribute {name}"] = value(attribute)
    return powertools_records.from_fields(fields, store=store)


def still_powertools_item(item: Mapping[str, Any], expiry_attr: str) -> tuple[str, dict[str, Any]]:
    """The condition (and its names and values) that a Powertools item is still ``item``.

    It has no token or deadline to tell one claim from the next: it is still
    that item while it has the same status, no token, the same expiration and
    the same ``in_progress_expiration`` (or none), as read in ``item``.
    """
    progress = item.get(powertools_records.IN_PROGRESS_EXPIRATION)
    values = {":s": item[STATUS], ":e": item[expiry_attr]}
    if progress is None:
        same_progress = "attribute_not_exists(#i)"
    else:
        same_progress = "#i = :i"
        values[":i"] = progress
    return f"#s = :s AND attribute_not_exists(#t) AND #e = :e AND {same_progress}", {
        "ExpressionAttributeNames": {
            "#s": STATUS,
            "#t": TOKEN,
            "#e": expiry_attr,
            "#i": powertools_records.IN_PROGRESS_EXPIRATION,
        },
        "ExpressionAttributeValues": values,
    }


def store_error(
    exc: BaseException, exceptions: Any, table: str, key: str | None
) -> IdempotencyStoreError:
    """Map a boto3 / botocore exception to the documented error (the caller chains it)."""
    where = f"table {table}" + (f", key {key}" if key is not None else "")
    if isinstance(exc, exceptions.ClientError):
        error = exc.response.get("Error", {})
        code, text = str(error.get("Code", "")), str(error.get("Message", ""))
        if code == "ResourceNotFoundException":
            return IdempotencyStoreError(
                f"DynamoDB table {table} does not exist in this account and region ({text}); "
                f"create it with `onceonly dynamodb create-table {table}` or "
                "DynamoDBStore.create_table(...), or check table_name and region"
            )
        if code in _THROTTLED:
            return IdempotencyStoreError(
                f"DynamoDB throttled the request ({where}): {code}: {text}; the client's "
                "retries ran out. Retry later, raise the table's capacity or use on-demand "
                "billing (PAY_PER_REQUEST)"
            )
        if code in _DENIED:
            return IdempotencyStoreError(
                f"DynamoDB refused the request ({where}): {code}: {text}; the credentials "
                "need dynamodb:PutItem, UpdateItem, DeleteItem and GetItem on the table "
                "(and DescribeTable, for the store's check of the key schema)"
            )
        if code == "ValidationException":
            return IdempotencyStoreError(
                f"DynamoDB rejected the request ({where}): {text}; check that key_attr and "
                "sort_key_attr match the table's key schema (both strings)"
            )
        return IdempotencyStoreError(f"DynamoDB failed ({where}): {code}: {text}")
    if isinstance(exc, (exceptions.EndpointConnectionError, exceptions.ConnectTimeoutError)):
        return IdempotencyStoreError(
            f"cannot reach DynamoDB ({where}): {type(exc).__name__}: {exc}; check the region, "
            "endpoint_url and the network (a VPC endpoint or NAT gateway for a Lambda in a VPC)"
        )
    if isinstance(exc, exceptions.NoCredentialsError):
        return IdempotencyStoreError(
            f"no AWS credentials for DynamoDB ({where}): {exc}; give the function a role or "
            "set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
        )
    return IdempotencyStoreError(f"DynamoDB failed ({where}): {type(exc).__name__}: {exc}")


def _key_schema(description: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    types = {d["AttributeName"]: d["AttributeType"] for d in description["AttributeDefinitions"]}
    order = {"HASH": 0, "RANGE": 1}
    schema = sorted(description["KeySchema"], key=lambda k: order.get(k["KeyType"], 2))
    return [(k["AttributeName"], k["KeyType"], types.get(k["AttributeName"], "?")) for k in schema]


def check_table(
    call: Callable[..., tuple[str | None, Any]],
    client: Any,
    table: str,
    key_attr: str,
    sort_key_attr: str | None,
) -> None:
    """Compare a table's key schema (``DescribeTable``) with the store's layout.

    A layout the table does not have can go unnoticed by DynamoDB: a
    ``sort_key_attr`` that the table lacks is written as a plain attribute, so
    every key lands on one item. The store calls this before its first claim.
    When the credentials may not call DescribeTable the check is skipped with
    a warning (the item calls still work).

    Args:
        call: As for :func:`ensure_table`.
        client: The boto3 client.
        table, key_attr, sort_key_attr: The layout.

    Raises:
        IdempotencyConfigError: The table's key schema differs from the layout.
        IdempotencyStoreError: DescribeTable failed (the next claim tries again).
    """
    denied, response = call(client.describe_table, ("AccessDeniedException",), TableName=table)
    if denied is not None:
        logger.warning(
            "onceonly: cannot check the key schema of DynamoDB table %s (%s on DescribeTable); "
            "grant dynamodb:DescribeTable to have the store check it",
            table,
            denied,
            extra=log_extra(None, None, "schema_unchecked", "DynamoDBStore"),
        )
        return
    mismatch = layout_mismatch(table, response["Table"], key_attr, sort_key_attr)
    if mismatch is not None:
        raise IdempotencyConfigError(mismatch)


def ensure_table(
    call: Callable[..., tuple[str | None, Any]],
    client: Any,
    table: str,
    key_attr: str,
    sort_key_attr: str | None,
    expiry_attr: str,
) -> bool:
    """Create the table (on-demand billing, TTL on ``expiry_attr``) unless it exists.

    Args:
        call: ``call(method, tolerate, **request)`` runs one client method and
            maps its errors; it returns ``(None, response)``, or ``(code,
            error response)`` for an error code in ``tolerate``.
        client: The boto3 client.
        table, key_attr, sort_key_attr, expiry_attr: The layout.

    Returns:
        True when the table was created now, False when a matching one was there.

    Raises:
        IdempotencyConfigError: The table exists with another key schema, or
            its TTL is on another attribute.
        IdempotencyStoreError: DynamoDB failed.
    """
    expected = [(key_attr, "HASH", "S")]
    if sort_key_attr is not None:
        expected.append((sort_key_attr, "RANGE", "S"))
    missing, found = call(client.describe_table, {"ResourceNotFoundException"}, TableName=table)
    created = False
    if missing is not None:
        busy, _ = call(
            client.create_table,
            # Another process creating the same table right now: wait for it too.
            {"ResourceInUseException"},
            TableName=table,
            KeySchema=[{"AttributeName": n, "KeyType": k} for n, k, _ in expected],
            AttributeDefinitions=[{"AttributeName": n, "AttributeType": t} for n, _, t in expected],
            BillingMode="PAY_PER_REQUEST",
        )
        created = busy is None
        waiter = client.get_waiter("table_exists")
        call(waiter.wait, set(), TableName=table, WaiterConfig={"Delay": 2, "MaxAttempts": 90})
        _, found = call(client.describe_table, set(), TableName=table)
    actual = _key_schema(found["Table"])
    if actual != expected:
        show = ", ".join(f"{n} ({k}, {t})" for n, k, t in actual)
        want = ", ".join(f"{n} ({k}, {t})" for n, k, t in expected)
        raise IdempotencyConfigError(
            f"DynamoDB table {table} has the key schema {show}, but the store expects {want}; "
            "pass key_attr= / sort_key_attr= to match the table, or use another table name"
        )
    _, ttl = call(client.describe_time_to_live, set(), TableName=table)
    described = ttl.get("TimeToLiveDescription", {})
    status, attribute = described.get("TimeToLiveStatus"), described.get("AttributeName")
    if status in ("ENABLED", "ENABLING"):
        if attribute != expiry_attr:
            raise IdempotencyConfigError(
                f"DynamoDB table {table} has TTL on attribute {attribute!r}, but the store "
                f"writes expiry to {expiry_attr!r}; pass expiry_attr={attribute!r}"
            )
    else:
        call(
            client.update_time_to_live,
            set(),
            TableName=table,
            TimeToLiveSpecification={"Enabled": True, "AttributeName": expiry_attr},
        )
    return created
