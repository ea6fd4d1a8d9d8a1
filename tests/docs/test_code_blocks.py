"""Every code block of README.md and docs/ runs (issue 16: the docs site).

Each ```python block is one test, named ``file:line`` (the line of its
fence). It runs as a module of its own, in a temporary folder, against real
parts: a Redis server this module starts, moto's DynamoDB server, the memory
and SQLite stores. What a snippet leaves to the reader is given to it:

- the address ``localhost:6379`` in a block is replaced with this module's
  Redis server, and ``REDIS_URL`` names it (one rule for every block, so the
  docs keep the address a reader types; the server is flushed before each
  block);
- ``AWS_ENDPOINT_URL_DYNAMODB``, a region and dummy credentials point boto3
  at moto's server, so ``DynamoDBStore("idempotency")`` works as written,
  with the tables ``idempotency`` (also ``IDEMPOTENCY_TABLE``) and
  ``IdempotencyTable`` created;
- the names ``store`` (a ``MemoryStore``), ``charge`` (the side effect: it
  counts its calls and returns the count), ``create_order`` and
  ``persistence_layer`` (Powertools' layer on ``IdempotencyTable``).

An HTML comment right above a fence says more. ``<!-- invoke: EVENT -->``
calls the block's ``handler(event, context)`` twice with the sample event
``EVENT`` (below) and a ``LambdaContext``: both answers must be equal and the
second must charge nothing. A block that defines ``test_*`` functions is run
by pytest in a subprocess, and must pass. ``<!-- not run: REASON -->`` leaves
a block out; it needs a reason and must still compile. ```json blocks must
parse; blocks in other languages are not run.
"""

from __future__ import annotations

import base64
import contextlib
import contextvars
import json
import os
import re
import subprocess
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

import redis_harness as harness
from dynamodb_harness import CREDENTIALS, REGION, MotoServer
from onceonly.stores import MemoryStore
from onceonly.stores.dynamodb import DynamoDBStore
from onceonly.testing import LambdaContext

ROOT = Path(__file__).resolve().parents[2]
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
TABLES = ("idempotency", "IdempotencyTable")
MARKER = re.compile(r"^<!--\s*([a-z ]+):(.*?)-->\s*$")
KNOWN_MARKERS = {"not run", "invoke"}


@dataclass(frozen=True)
class Block:
    """One fenced block: where it is, its language, its code and the markers above it."""

    path: Path
    line: int
    language: str
    code: str
    markers: dict[str, str]

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def read_blocks(path: Path) -> list[Block]:
    """The fenced blocks of a Markdown file (fences at the start of a line)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        opening = re.match(r"^```([\w+-]*)\s*$", lines[index])
        if opening is None:
            index += 1
            continue
        start = index
        index += 1
        body: list[str] = []
        while index < len(lines) and lines[index].rstrip() != "```":
            body.append(lines[index])
            index += 1
        assert index < len(lines), f"{path}:{start + 1}: a fence that is never closed"
        markers: dict[str, str] = {}
        above = start - 1
        while above >= 0 and lines[above].startswith("<!--"):
            found = MARKER.match(lines[above].strip())
            assert found, f"{path}:{above + 1}: a comment above a fence that is no marker"
            markers[found.group(1).strip()] = found.group(2).strip()
            above -= 1
        blocks.append(Block(path, start + 1, opening.group(1), "\n".join(body) + "\n", markers))
        index += 1
    return blocks


BLOCKS = [block for path in FILES for block in read_blocks(path)]
PYTHON = [block for block in BLOCKS if block.language == "python"]
JSON = [block for block in BLOCKS if block.language == "json"]


# -- sample events (the ``invoke`` marker) -----------------------------------------------


def _order(order_id: str, amount: int) -> str:
    return json.dumps({"order_id": order_id, "amount": amount})


def _kinesis_record(sequence: str, event_id: str, amount: int) -> dict[str, Any]:
    data = json.dumps({"event_id": event_id, "order_id": event_id, "amount": amount})
    return {
        "kinesis": {
            "partitionKey": "1",
            "sequenceNumber": sequence,
            "data": base64.b64encode(data.encode()).decode(),
        },
        "eventSource": "aws:kinesis",
        "eventID": f"shardId-000000000006:{sequence}",
    }


def _stream_record(sequence: str, order_id: str) -> dict[str, Any]:
    return {
        "eventID": f"c4ca4238a0b923820dcc509a6f75849{sequence[-1]}",
        "eventName": "INSERT",
        "eventSource": "aws:dynamodb",
        "dynamodb": {
            "Keys": {"order_id": {"S": order_id}},
            "NewImage": {"order_id": {"S": order_id}, "amount": {"N": "1299"}},
            "SequenceNumber": sequence,
            "StreamViewType": "NEW_IMAGE",
        },
    }


EVENTS: dict[str, dict[str, Any]] = {
    "api-gateway": {
        "resource": "/payments",
        "path": "/payments",
        "httpMethod": "POST",
        "headers": {"Content-Type": "application/json"},
        "body": _order("o-1", 1299),
        "isBase64Encoded": False,
    },
    "sqs": {
        "Records": [
            {"messageId": "m-1", "body": _order("o-1", 1299), "eventSource": "aws:sqs"},
            {"messageId": "m-2", "body": _order("o-2", 500), "eventSource": "aws:sqs"},
        ]
    },
    "eventbridge": {
        "version": "0",
        "id": "6a7e8feb-b491-4cf7-a9f1-bf3703467718",
        "detail-type": "OrderPlaced",
        "source": "shop.orders",
        "detail": {"order_id": "o-1", "amount": 1299},
    },
    "kinesis": {
        "Records": [
            _kinesis_record("49590338271490256608559692538361571095921575989136588898", "ev-1", 1),
            _kinesis_record("49590338271490256608559692540925702759324208523137515618", "ev-2", 2),
        ]
    },
    "dynamodb-stream": {
        "Records": [_stream_record("111", "o-1"), _stream_record("222", "o-2")],
    },
}


# -- what the blocks run against ----------------------------------------------------------


class Charges:
    """The side effect a snippet leaves to the reader: counts calls, returns the count."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, int]:
        self.calls += 1
        return {"charge": self.calls}


class Order:
    def __init__(self, event: Any) -> None:
        self.event = event

    def to_json(self) -> str:
        return json.dumps({"created": True})


@dataclass
class Parts:
    redis_url: str
    redis_client: redis.Redis
    dynamodb_url: str


@pytest.fixture(scope="module")
def parts(moto_server: MotoServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Parts]:
    """A Redis server of this module's own, and the tables on the session's moto server."""
    engine = harness.engines_or_fail()[0]
    server = harness.standalone(engine, tmp_path_factory.mktemp("docs-redis"), aof=False)
    client = server.client()
    try:
        for table in TABLES:
            DynamoDBStore.create_table(table, client=moto_server.shared_client)
        yield Parts(f"redis://{server.client_host()}:{server.port}", client, moto_server.url)
    finally:
        client.close()
        server.stop()


@pytest.fixture
def block_env(parts: Parts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Parts:
    """The environment a block runs in: a temporary folder, the servers' addresses."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", parts.dynamodb_url)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", CREDENTIALS["aws_access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", CREDENTIALS["aws_secret_access_key"])
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("IDEMPOTENCY_TABLE", TABLES[0])
    monkeypatch.setenv("REDIS_URL", parts.redis_url)
    parts.redis_client.flushall()
    return parts


def _close(namespace: dict[str, Any]) -> None:
    """Close what a block opened (stores, clients), so nothing is left to the collector."""
    for value in namespace.values():
        if isinstance(value, types.ModuleType | type) or not hasattr(value, "close"):
            continue
        if type(value).__module__.startswith(("onceonly.stores", "redis", "sqlite3")):
            with contextlib.suppress(Exception):
                value.close()
            client = getattr(value, "client", None)
            if type(client).__module__.startswith("redis.client"):
                client.close()


def _run_tests(block: Block, code: str, folder: Path) -> None:
    """A block that defines tests: pytest runs it, in a folder of its own."""
    (folder / "pytest.ini").write_text("[pytest]\n")
    (folder / "test_block.py").write_text(code)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-W", "error", "-p", "no:cacheprovider"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"{block.id}: its tests failed\n{done.stdout}\n{done.stderr}"


def _invoke(block: Block, namespace: dict[str, Any], event_name: str) -> None:
    assert event_name in EVENTS, f"{block.id}: no sample event {event_name!r}"
    handler = namespace.get("handler")
    assert callable(handler), f"{block.id}: invoke, but the block defines no handler"
    charges: Charges = namespace["charge"]
    event = EVENTS[event_name]
    first = handler(json.loads(json.dumps(event)), LambdaContext())
    ran = charges.calls
    second = handler(json.loads(json.dumps(event)), LambdaContext())
    assert second == first, f"{block.id}: the duplicate got {second!r}, the first {first!r}"
    assert charges.calls == ran, f"{block.id}: the duplicate charged again"
    assert ran >= 1, f"{block.id}: the handler charged nothing"


@pytest.mark.parametrize("block", PYTHON, ids=[block.id for block in PYTHON])
def test_python_block(block: Block, block_env: Parts, tmp_path: Path) -> None:
    unknown = set(block.markers) - KNOWN_MARKERS
    assert not unknown, f"{block.id}: unknown markers {unknown}"
    if "not run" in block.markers:
        assert block.markers["not run"], f"{block.id}: marked not run without a reason"
        assert "invoke" not in block.markers, f"{block.id}: not run, but invoked"
        compile(block.code, block.id, "exec")
        return
    code = block.code.replace("localhost:6379", block_env.redis_url.removeprefix("redis://"))
    if re.search(r"^def test_", code, re.M):
        _run_tests(block, code, tmp_path)
        return
    name = "docs_block_" + re.sub(r"\W", "_", block.id)
    module = types.ModuleType(name)
    module.__dict__.update(store=MemoryStore(), charge=Charges(), create_order=Order)
    if "persistence_layer" in code:
        from onceonly.compat.powertools import DynamoDBPersistenceLayer

        module.__dict__["persistence_layer"] = DynamoDBPersistenceLayer(table_name=TABLES[1])
    sys.modules[name] = module

    def run() -> None:
        exec(compile(code, block.id, "exec"), module.__dict__)
        if "invoke" in block.markers:
            _invoke(block, module.__dict__, block.markers["invoke"])

    try:
        # A context of its own, as each Lambda invocation has: a block that calls
        # config.register_lambda_context leaves it behind in no other test.
        contextvars.copy_context().run(run)
    finally:
        _close(module.__dict__)
        del sys.modules[name]


@pytest.mark.parametrize("block", JSON, ids=[block.id for block in JSON])
def test_json_block(block: Block) -> None:
    assert not block.markers, f"{block.id}: markers are for python blocks"
    json.loads(block.code)


def test_markers_sit_above_python_blocks() -> None:
    misplaced = [block.id for block in BLOCKS if block.markers and block.language != "python"]
    assert not misplaced
    assert len(PYTHON) >= 30, "the docs' python blocks were not found"
