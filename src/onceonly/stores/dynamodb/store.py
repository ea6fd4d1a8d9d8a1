"""The DynamoDB store: one item per key, one conditional call per step.

The claim is a conditional ``PutItem`` that takes the key when it is absent.
It asks for ``ReturnValuesOnConditionCheckFailure=ALL_OLD``, so a duplicate
gets the holder's item from the failed call itself (one call, no ``GetItem``).
That item is checked with the codec's rules (one that breaks them raises
``CorruptRecordError`` and is never replaced); if it has ended (its deadline
passed) or is IN_PROGRESS under the caller's own token, a second ``PutItem``
replaces it on condition that it is still that item (status, token and
deadline), and reports a takeover when it was another token's claim. A
condition alone cannot take such an item over safely: DynamoDB conditions
cannot tell whether a token or fingerprint is lower-case hex. ``complete``
and ``renew`` are an ``UpdateItem``, ``release`` a ``DeleteItem``, each
conditioned on status, token and deadline: the token fences every write.

Items that Powertools' idempotency utility wrote on the same table (a team
moving a function over without a gap) are read as records (see
``onceonly.powertools_records``): a duplicate finds their COMPLETED or live
INPROGRESS record, a claim replaces an ended one on condition that it is still
that item (status, no token, ``expiration`` and ``in_progress_expiration``, or
its absence), and complete / renew / release never take one for their own.

The default layout is the one Powertools' DynamoDB persistence layer uses: a
string partition key ``id`` and DynamoDB TTL on ``expiration`` (epoch
seconds), so a table made for Powertools, and its TTL setting, can be reused.
With ``sort_key_attr`` the partition value is a constant and the idempotency
key goes in the sort key. See ``items.py`` for the item's fields.

boto3 is imported when a store is built, so this module imports without it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Mapping
from typing import Any

from ...errors import CorruptRecordError, IdempotencyConfigError, IdempotencyStoreError
from ...records import Acquired, ClaimResult, Found, Record, Status
from ..protocol import check_claim, check_complete, check_key, check_ms, check_token, wall_ms
from . import items
from .many import DEFAULT_MAX_PARALLEL, ManyCalls, ParallelCalls

__all__ = ["DEFAULT_MAX_OUTCOME_BYTES", "DynamoDBStore", "OutcomeTooLargeError"]

# DynamoDB's item limit is 400 KB, attribute names and the key included.
DEFAULT_MAX_OUTCOME_BYTES = 350_000
_P, _C = Status.IN_PROGRESS.value, Status.COMPLETED.value
# A claim whose item ends between its failed PutItem and the GetItem that a
# backend without ALL_OLD on failure needs tries again; a few always suffice.
_CLAIM_ATTEMPTS = 8
_NUMBER = {"S": "N"}  # for attribute_type(#d, :n): a deadline that is not a number never ends


class OutcomeTooLargeError(IdempotencyStoreError):
    """An outcome is too large for a DynamoDB item; raised by ``complete`` before any write.

    The function has run by then: the decorators return its result, log a
    warning, and leave the claim to end with its lease (as for any failure to
    store an outcome).
    """


class DynamoDBStore(ManyCalls):
    """A store in one DynamoDB table.

    Leases and expiry are judged by this client's clock: DynamoDB has no clock
    that a condition can read. ``clock_skew_ms`` is the allowance for clocks
    that disagree across hosts. A claim counts a record as ended only once
    ``deadline + clock_skew_ms <= now``, so a host whose clock runs up to that
    far ahead of the owner's still waits out the owner's whole lease instead
    of running the function beside it. The cost: an orphan is taken over, and
    a completed record stops replaying, that much later. The owner's own
    writes need no allowance (the token fences them).

    Args:
        table_name: The table (see :meth:`create_table`).
        client: A boto3 DynamoDB client (``boto3.client("dynamodb")``). When
            None one is built from ``boto_config``, ``region_name`` and
            ``endpoint_url``, with 5 s connect and 10 s read timeouts, the
            "standard" retry mode (3 attempts) and 32 pooled connections
            unless ``boto_config`` says otherwise.
        boto_config: A ``botocore.config.Config`` for the client built here.
        region_name: Region of the client built here (else the AWS default chain).
        endpoint_url: Endpoint of the client built here (DynamoDB Local, moto).
        key_attr: The partition key attribute (a string).
        sort_key_attr: A sort key attribute (a string) to hold the idempotency
            key, under the constant partition value ``static_pk_value``.
        static_pk_value: The partition value in sort-key mode; default
            ``"idempotency#<table_name>"``.
        expiry_attr: The TTL attribute, epoch seconds: the deadline (lease end
            while IN_PROGRESS, retention end once COMPLETED) plus the skew
            allowance, rounded up. DynamoDB deletes ended items by itself, up
            to days late, so every read still checks the deadline.
        clock: Integer milliseconds since the epoch; the host clock by default.
        clock_skew_ms: The allowance above, in ms (default 1000; 0 judges
            deadlines exactly, for tests on a manual clock).
        max_outcome_bytes: The largest outcome ``complete`` writes (default
            350 000, leaving room in the 400 KB item for the key and fields);
            a larger one raises :class:`OutcomeTooLargeError` naming its size.
        max_parallel: The most conditional calls of one record batch
            (``claim_many``... of ``process_batch``) in flight at once, each on
            a thread of the store's own (default 10). It is capped at the
            client's ``max_pool_connections`` (botocore's default 10; 32 for a
            client built here): give an injected client at least as many.

    Raises:
        IdempotencyConfigError: Bad options, boto3 missing, or no region.
    """

    def __init__(
        self,
        table_name: str,
        *,
        client: Any = None,
        boto_config: Any = None,
        region_name: str | None = None,
        endpoint_url: str | None = None,
        key_attr: str = "id",
        sort_key_attr: str | None = None,
        static_pk_value: str | None = None,
        expiry_attr: str = "expiration",
        clock: Callable[[], int] | None = None,
        clock_skew_ms: int = 1_000,
        max_outcome_bytes: int = DEFAULT_MAX_OUTCOME_BYTES,
        max_parallel: int = DEFAULT_MAX_PARALLEL,
    ) -> None:
        items.check_layout(table_name, key_attr, sort_key_attr, static_pk_value, expiry_attr)
        if clock is not None and not callable(clock):
            raise IdempotencyConfigError("clock must be a callable returning integer milliseconds")
        if type(clock_skew_ms) is not int or not 0 <= clock_skew_ms <= 3_600_000:
            raise IdempotencyConfigError(
                f"clock_skew_ms must be an integer from 0 to 3600000, got {clock_skew_ms!r}"
            )
        if type(max_outcome_bytes) is not int or not 1 <= max_outcome_bytes <= 400_000:
            raise IdempotencyConfigError(
                "max_outcome_bytes must be an integer from 1 to 400000 (an item holds at most "
                f"400 KB with its key and fields), got {max_outcome_bytes!r}"
            )
        _, self._exceptions = items.import_boto3()
        self._owns_client = client is None
        if client is None:
            client = items.build_client(boto_config, region_name, endpoint_url)
        elif boto_config is not None or region_name is not None or endpoint_url is not None:
            raise IdempotencyConfigError(
                "pass either client= or the options to build one (boto_config, region_name, "
                "endpoint_url), not both"
            )
        if not callable(getattr(client, "put_item", None)):
            raise IdempotencyConfigError(
                f"client must be a boto3 DynamoDB client (boto3.client('dynamodb')), "
                f"got {type(client).__name__}"
            )
        self.client = client
        self.table_name = table_name
        self._name = f"DynamoDB table {table_name}"
        self.key_attr = key_attr
        self.sort_key_attr = sort_key_attr
        self.static_pk_value = static_pk_value or f"idempotency#{table_name}"
        self.expiry_attr = expiry_attr
        self.clock_skew_ms = clock_skew_ms
        self.max_outcome_bytes = max_outcome_bytes
        self._clock = clock or wall_ms
        self._parallel = ParallelCalls(max_parallel, client)
        self._key_kind = "partition" if sort_key_attr is None else "sort"
        self._key_attrs = (key_attr,) if sort_key_attr is None else (key_attr, sort_key_attr)
        # The table's key schema is checked against the layout before the
        # first claim (see _check_table); a lock keeps that to one DescribeTable.
        self._table_checked = False
        self._table_lock = threading.Lock()

    @classmethod
    def create_table(cls, table_name: str, **options: Any) -> bool:
        """Create the store's table unless a matching one exists; enable TTL on it.

        The table has on-demand billing (``PAY_PER_REQUEST``), the key schema
        the options describe (string keys) and TTL on ``expiry_attr``. Calling
        it again, from anywhere, is harmless. It waits until the table is
        ACTIVE (up to 3 minutes).

        Args:
            table_name: The table.
            **options: The constructor's options (``client``, ``region_name``,
                ``endpoint_url``, ``key_attr``, ``sort_key_attr``, ``expiry_attr``...).

        Returns:
            True when it created the table, False when a matching one was there.

        Raises:
            IdempotencyConfigError: The table exists with another key schema
                or TTL attribute, or bad options.
            IdempotencyStoreError: DynamoDB failed or could not be reached.
        """
        store = cls(table_name, **options)
        return items.ensure_table(
            store._call,
            store.client,
            store.table_name,
            store.key_attr,
            store.sort_key_attr,
            store.expiry_attr,
        )

    def close(self) -> None:
        """End the batch threads; close the client's connections if this store built it.

        An injected client stays open.
        """
        self._parallel.close()
        if self._owns_client:
            self.client.close()

    # -- I/O ---------------------------------------------------------------

    def _call(
        self, method: Any, tolerate: Collection[str] = (), key: str | None = None, **request: Any
    ) -> tuple[str | None, Any]:
        """Run one client call: ``(None, response)``, or ``(code, error response)`` if tolerated."""
        exceptions = self._exceptions
        try:
            return None, method(**request)
        except exceptions.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code in tolerate:
                return str(code), exc.response
            raise items.store_error(exc, exceptions, self.table_name, key) from exc
        except exceptions.BotoCoreError as exc:
            raise items.store_error(exc, exceptions, self.table_name, key) from exc

    def _check_table(self) -> None:
        """Compare the table's key schema with the layout, once per store (see ``items``)."""
        with self._table_lock:
            if not self._table_checked:
                items.check_table(
                    self._call, self.client, self.table_name, self.key_attr, self.sort_key_attr
                )
                self._table_checked = True

    def _key(self, key: str) -> dict[str, Any]:
        items.check_key_size(key, self._key_kind)
        if self.sort_key_attr is None:
            return {self.key_attr: {"S": key}}
        return {self.key_attr: {"S": self.static_pk_value}, self.sort_key_attr: {"S": key}}

    def _expiry(self, deadline_ms: int) -> dict[str, str]:
        # TTL deletion runs on AWS's clock: never before a claim here may take the key.
        return {"N": str(-(-(deadline_ms + self.clock_skew_ms) // 1000))}

    def _write(self, method: Any, key: str, condition: str, **request: Any) -> tuple[bool, Any]:
        """A conditional write: (True, response), or (False, the item as it was or {})."""
        failed, response = self._call(
            method,
            ("ConditionalCheckFailedException",),
            key,
            TableName=self.table_name,
            ConditionExpression=condition,
            ReturnValuesOnConditionCheckFailure="ALL_OLD",
            **request,
        )
        if failed is None:
            return True, response
        return False, response.get("Item") or {}

    def _owned(self, token: str, now: int) -> tuple[str, dict[str, str], dict[str, Any]]:
        """(condition, names, values) of complete / release / renew: IN_PROGRESS, token, lease."""
        return (
            "#s = :p AND #t = :tok AND attribute_type(#d, :n) AND #d > :now",
            {"#s": items.STATUS, "#t": items.TOKEN, "#d": items.DEADLINE},
            {":p": {"S": _P}, ":tok": {"S": token}, ":n": _NUMBER, ":now": {"N": str(now)}},
        )

    def _claim_condition(
        self, seen: Record | None, item: Mapping[str, Any]
    ) -> tuple[str, dict[str, Any]]:
        """The condition of a claim's PutItem: the key is absent, or holds ``seen`` still.

        A condition cannot tell whether a token or fingerprint is lower-case
        hex (DynamoDB conditions have no character tests), so an item is never
        replaced on what a condition can check: the claim first reads it (the
        failed PutItem returns it), checks it with the codec's rules (a value
        that breaks them raises CorruptRecordError and is left as it was), and
        then replaces it only while it is still that item: same status, token
        (unique per claim) and deadline; an item Powertools wrote, by the
        fields it has instead (``items.still_powertools_item``, on ``item`` as read).
        """
        if seen is None:
            return "attribute_not_exists(#k)", {"ExpressionAttributeNames": {"#k": self.key_attr}}
        if items.is_powertools_item(item):
            return items.still_powertools_item(item, self.expiry_attr)
        return "#s = :s AND #t = :t AND #d = :d", {
            "ExpressionAttributeNames": {
                "#s": items.STATUS,
                "#t": items.TOKEN,
                "#d": items.DEADLINE,
            },
            "ExpressionAttributeValues": {
                ":s": {"S": seen.status.value},
                ":t": {"S": seen.token},
                ":d": {"N": str(seen.deadline_ms)},
            },
        }

    def _record(self, item: Mapping[str, Any]) -> Record:
        """The record an item holds, ours or Powertools' (see ``items.record_from_item``)."""
        return items.record_from_item(
            item, store=self._name, expiry_attr=self.expiry_attr, key_attrs=self._key_attrs
        )

    def _read(self, key: str) -> Mapping[str, Any]:
        """The item under ``key`` (a consistent GetItem), or {} when there is none."""
        _, response = self._call(
            self.client.get_item,
            (),
            key,
            TableName=self.table_name,
            Key=self._key(key),
            ConsistentRead=True,
        )
        item: Mapping[str, Any] = response.get("Item") or {}
        return item

    # -- the protocol ------------------------------------------------------
    #
    # The skew rule: a claim judges a record ended when deadline + skew <= now
    # (it compares deadline <= now - skew), and get agrees with it;
    # Found.now_ms is now - skew, the instant expiry is judged by here, so the
    # time left it implies is the time until a claim may take the key over.
    # complete / renew / release are fenced by the token and judge the lease on
    # the owner's clock, deadline > now, like stores/_rules.py: an owner whose
    # clock lags by up to the skew stops trusting its lease before anyone else
    # may take the key. With clock_skew_ms=0 every rule is the one of
    # _rules.py to the millisecond (the contract suite runs so).

    def claim(
        self, key: str, *, token: str, lease_ms: int, ttl_ms: int, fingerprint: str | None
    ) -> ClaimResult:
        """Take the key, or return the live record holding it.

        One conditional PutItem for an absent key or a live holder; two for an
        ended item or the caller's own claim (the second replaces the item read).

        Raises:
            IdempotencyConfigError: The table's key schema differs from the
                store's layout (checked before the first claim).
            CorruptRecordError: The item under the key is not a record.
            IdempotencyStoreError: DynamoDB failed or could not be reached,
                or the key is over DynamoDB's size limit.
        """
        check_claim(key, token, lease_ms, ttl_ms, fingerprint)
        if not self._table_checked:
            self._check_table()
        # The item this claim read and checked (codec rules) and may replace,
        # as a record and as stored: None and {} until then, or when the key
        # was found absent.
        seen: Record | None = None
        seen_item: Mapping[str, Any] = {}
        for _ in range(_CLAIM_ATTEMPTS):
            now = self._clock()
            ended = now - self.clock_skew_ms
            deadline = now + lease_ms
            item = {
                **self._key(key),
                items.STATUS: {"S": _P},
                items.TOKEN: {"S": token},
                items.DEADLINE: {"N": str(deadline)},
                self.expiry_attr: self._expiry(deadline),
            }
            if fingerprint is not None:
                item[items.FINGERPRINT] = {"S": fingerprint}
            condition, expression = self._claim_condition(seen, seen_item)
            done, response = self._write(
                self.client.put_item, key, condition, Item=item, **expression
            )
            if done:
                return Acquired(
                    takeover=seen is not None
                    and seen.status is Status.IN_PROGRESS
                    and (seen.token != token or items.is_powertools_item(seen_item))
                )
            # A backend that does not return the item on a failed condition
            # (old DynamoDB-compatible servers): read it.
            old = response or self._read(key)
            record = self._record(old) if old else None
            # A Powertools item is never the caller's own claim, whatever its token.
            own = (
                record is not None
                and record.status is Status.IN_PROGRESS
                and record.token == token
                and not items.is_powertools_item(old)
            )
            if record is not None and record.deadline_ms > ended and not own:
                return Found(record, ended)
            # Absent, ended, or our own claim: claim again, on what was just read.
            seen, seen_item = record, old
        raise IdempotencyStoreError(
            f"DynamoDB table {self.table_name}: key {key} changed hands {_CLAIM_ATTEMPTS} "
            "times during one claim; retry"
        )

    def complete(self, key: str, *, token: str, outcome: bytes, ttl_ms: int) -> bool:
        """Store the outcome if ``token`` still holds the claim: one conditional UpdateItem.

        Raises:
            OutcomeTooLargeError: The outcome is over ``max_outcome_bytes``
                (nothing is written; the claim ends with its lease).
            IdempotencyStoreError: DynamoDB failed or could not be reached.
        """
        check_complete(key, token, outcome, ttl_ms)
        if len(outcome) > self.max_outcome_bytes:
            raise OutcomeTooLargeError(
                f"the outcome for key {key} is {len(outcome)} bytes, over the DynamoDB store's "
                f"limit of {self.max_outcome_bytes} bytes (an item holds at most 400 KB); "
                "return less (e.g. a reference to data kept in S3), or use another store"
            )
        now = self._clock()
        deadline = now + ttl_ms
        condition, names, values = self._owned(token, now)
        done, old = self._write(
            self.client.update_item,
            key,
            condition,
            Key=self._key(key),
            UpdateExpression="SET #s = :c, #o = :o, #d = :dl, #e = :exp",
            ExpressionAttributeNames={**names, "#o": items.OUTCOME, "#e": self.expiry_attr},
            ExpressionAttributeValues={
                **values,
                ":c": {"S": _C},
                ":o": {"B": outcome},
                ":dl": {"N": str(deadline)},
                ":exp": self._expiry(deadline),
            },
        )
        if done:
            return True
        # A complete retried after its reply was lost finds its own COMPLETED
        # item: it succeeds again and changes nothing.
        old_deadline = items.value(old.get(items.DEADLINE))
        return (
            items.value(old.get(items.STATUS)) == _C
            and items.value(old.get(items.TOKEN)) == token
            and isinstance(old_deadline, int)
            and old_deadline > now
        )

    def release(self, key: str, *, token: str) -> bool:
        """Drop the claim if ``token`` still holds it: one conditional DeleteItem.

        True too when no live item is left (see the store protocol).
        """
        check_key(key)
        check_token(token)
        now = self._clock()
        condition, names, values = self._owned(token, now)
        done, old = self._write(
            self.client.delete_item,
            key,
            condition,
            Key=self._key(key),
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=values,
        )
        if done or not old:
            return True  # released, or no item at all (a retried release): done either way
        # Another item holds the key: done only if it has ended (the claim's skew rule).
        try:
            return self._record(old).deadline_ms + self.clock_skew_ms <= now
        except CorruptRecordError:
            return False

    def renew(self, key: str, *, token: str, lease_ms: int) -> bool:
        """Extend the lease if ``token`` still holds it: one conditional UpdateItem."""
        check_key(key)
        check_token(token)
        check_ms("lease_ms", lease_ms)
        now = self._clock()
        deadline = now + lease_ms
        condition, names, values = self._owned(token, now)
        done, _ = self._write(
            self.client.update_item,
            key,
            condition,
            Key=self._key(key),
            UpdateExpression="SET #d = :dl, #e = :exp",
            ExpressionAttributeNames={**names, "#e": self.expiry_attr},
            ExpressionAttributeValues={
                **values,
                ":dl": {"N": str(deadline)},
                ":exp": self._expiry(deadline),
            },
        )
        return done

    def get(self, key: str) -> Record | None:
        """Return the live record under ``key`` (a consistent GetItem), or None.

        Raises:
            CorruptRecordError: The item under the key is not a record.
        """
        check_key(key)
        item = self._read(key)
        record = self._record(item) if item else None
        if record is None or record.deadline_ms + self.clock_skew_ms <= self._clock():
            return None
        return record

    def delete(self, key: str) -> bool:
        """Remove ``key`` whatever it holds (a corrupt item too); True if an item was there."""
        check_key(key)
        _, response = self._call(
            self.client.delete_item,
            (),
            key,
            TableName=self.table_name,
            Key=self._key(key),
            ReturnValues="ALL_OLD",
        )
        return bool(response.get("Attributes"))
