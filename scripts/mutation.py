"""A mutation-testing pass over the modules that carry onceonly's guarantees (issue 17).

Usage (from the repository root; not part of CI, and slow in full):

    bash scripts/mutation [--module NAME ...] [--max N] [--timeout S] [--report PATH] [--list]

Each mutant is one small, bug-like change to one file under src/ (a comparison
swapped, ``and``/``or`` swapped, a ``not`` dropped, an integer moved by one, a
returned boolean flipped, a call statement dropped; in the Redis Lua scripts a
comparison swapped, a token/status condition dropped, a ``'PX', ttl`` argument
dropped). The file is rewritten with the mutant, the module's own tests (the
explicit ``MODULES`` table below) run with ``-x -q -p no:cacheprovider`` under
``HYPOTHESIS_PROFILE=ci`` and a timeout, and the original bytes are put back
(try/finally, and SIGINT/SIGTERM/SIGHUP turned into an exception so the finally
runs). A mutant is killed when a run fails or times out, and survives when
every run passes. The pass refuses to start on a dirty src/ (``git diff
--quiet src/``) and checks, per module, that its tests pass on the real code
first. Output: a table (module, mutants, killed, equivalent, survived, and
killed of the non-equivalent ones), the equivalent mutants with why (the
``EQUIVALENT`` table below; they are not run) and each survivor's diff;
``--report`` writes the same as markdown.

Which tests run: one pass of the module's tests on the real code under
pytest-cov (``--cov-context=test``) records which tests execute each line; a
Python mutant then runs only those tests (a mutant on a line no test executes
survives without a run; a subprocess's lines count for the test that
started it; a line run only at import, a default value or a constant, runs
the tests that run where it is read: the function's body, or the lines that
load the name; when that is not known, all of them). ``--no-coverage``
runs every mutant against all of them; Lua mutants always do (coverage cannot
see inside Redis).

Why a mutator of our own (built on ``ast`` and ``tokenize``) rather than
mutmut or cosmic-ray: mutmut 3 copies the tree into ``mutants/`` and
trampolines every function, which does not fit a src layout whose tests need
``PYTHONPATH=src:tests``, start real servers (Redis, moto) in subprocesses
that import onceonly from src/, and run with ``-W error``; cosmic-ray needs
a session database and a config per module and has no Lua either way. Editing
the file in place and running plain pytest in a subprocess works with every
test as it is, the Lua scripts included, and the mutation operators are the
few that matched the bugs issue 17 is about. Bytecode: the children run with
``PYTHONDONTWRITEBYTECODE=1`` so no ``.pyc`` of a mutant is ever written (a
stale one could be read for the next mutant of the same size).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import hashlib
import io
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import tokenize
from collections.abc import Iterable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "onceonly"
PYTEST_ARGS = ["-x", "-q", "-p", "no:cacheprovider", "-W", "error"]

# One pytest run: test paths, then optional extra arguments (a -k filter).
Run = tuple[str, ...]

_CORE = "tests/unit/test_surviving_mutants_core.py"
_DRIVERS = "tests/unit/test_surviving_mutants_drivers.py"
_BATCH_DEC = "tests/unit/test_surviving_mutants_batch_decorators.py"
_STORES = "tests/stores/test_surviving_mutants_stores.py"
_CONTRACT = "tests/stores/test_store_contract.py"
_REDIS_FILES: Run = (
    "tests/stores/test_redis_store.py",
    "tests/stores/test_redis_native_claim.py",
    "tests/stores/test_redis_fast_paths.py",
    "tests/stores/test_redis_encoding_and_acl.py",
    "tests/stores/test_redis_clients.py",
    "tests/stores/test_redis_event_loops.py",
    "tests/stores/test_corrupt_records.py",
    "tests/faults/test_redis_reply_loss.py",
    "tests/faults/test_redis_faults.py",
    "tests/compat/test_powertools_records_redis.py",
    _STORES,
)
_REDIS_RUNS: tuple[Run, ...] = (_REDIS_FILES, (_CONTRACT, "-k", "redis"))
# Lua mutants run every test (coverage cannot see into Redis): the standalone
# contract first, because it is fast and catches most of them.
_LUA_RUNS: tuple[Run, ...] = ((_CONTRACT, "-k", "redis-standalone"), _REDIS_FILES)
_DYNAMODB_RUNS: tuple[Run, ...] = (
    (
        "tests/stores/test_dynamodb_store.py",
        "tests/stores/test_dynamodb_layout.py",
        "tests/stores/test_dynamodb_many.py",
        "tests/stores/test_corrupt_records.py",
        _STORES,
        "tests/stores/test_surviving_mutants_dynamodb.py",
    ),
    (_CONTRACT, "-k", "dynamodb"),
)

# module name -> (file under src/onceonly, the pytest runs that must kill its mutants).
MODULES: dict[str, tuple[str, tuple[Run, ...]]] = {
    "engine": (
        "engine.py",
        (
            (
                "tests/unit/test_engine.py",
                _CORE,
                "tests/unit/test_wrong_answers.py",
                "tests/unit/test_replay_messages.py",
                _DRIVERS,
            ),
        ),
    ),
    "batch_engine": (
        "batch_engine.py",
        (
            (
                _BATCH_DEC,
                "tests/integrations/test_async_and_batch.py",
                "tests/integrations/test_batch_faults.py",
                "tests/integrations/test_batch_stats.py",
                "tests/integrations/test_lambda_keys_and_leases.py",
                "tests/unit/test_observability.py",
            ),
        ),
    ),
    "keys": (
        "keys.py",
        (("tests/unit/test_keys.py", "tests/unit/test_input_bounds.py"),),
    ),
    "codec": (
        "codec.py",
        (
            (
                "tests/unit/test_codec.py",
                _CORE,
                "tests/stores/test_corrupt_records.py",
            ),
        ),
    ),
    "records": (
        "records.py",
        (
            (
                "tests/unit/test_codec.py",
                "tests/unit/test_engine.py",
                _CORE,
                "tests/stores/test_memory_store.py",
            ),
        ),
    ),
    "_sync": (
        "_sync.py",
        (
            (
                _DRIVERS,
                "tests/unit/test_wrong_answers.py",
                "tests/integrations/test_cancel_and_release.py",
                "tests/integrations/test_batch_faults.py",
                "tests/integrations/test_async_and_batch.py",
            ),
        ),
    ),
    "_async": (
        "_async.py",
        (
            (
                _DRIVERS,
                "tests/integrations/test_async_and_batch.py",
                "tests/integrations/test_cancel_and_release.py",
                "tests/integrations/test_batch_faults.py",
            ),
        ),
    ),
    "decorators": (
        "decorators.py",
        (
            (
                _BATCH_DEC,
                _STORES,
                "tests/integrations/test_async_and_batch.py",
                "tests/unit/test_wrong_answers.py",
                "tests/unit/test_replay_messages.py",
                "tests/integrations/test_lambda_events.py",
                "tests/integrations/test_replay_values.py",
                "tests/integrations/test_lambda_keys_and_leases.py",
            ),
        ),
    ),
    "batch": (
        "batch.py",
        (
            (
                _BATCH_DEC,
                "tests/unit/test_cold_start.py",
                "tests/integrations/test_async_and_batch.py",
                "tests/integrations/test_batch_faults.py",
                "tests/integrations/test_batch_stats.py",
                "tests/unit/test_observability.py",
            ),
        ),
    ),
    "sqlite": (
        "stores/sqlite.py",
        (
            ("tests/stores/test_sqlite_store.py", _STORES),
            (_CONTRACT, "-k", "sqlite"),
        ),
    ),
    **{
        f"redis/{name}": (f"stores/redis/{name}.py", _REDIS_RUNS)
        for name in ("store", "async_store", "async_batch", "common", "scripts", "clients")
    },
    **{
        f"dynamodb/{name}": (f"stores/dynamodb/{name}.py", _DYNAMODB_RUNS)
        for name in ("store", "async_store", "items", "many")
    },
    **{
        f"lua/{name}": (f"stores/redis/lua/{name}.lua", _LUA_RUNS)
        for name in ("_prelude", "claim", "complete", "release", "renew")
    },
}


# Reasons that serve several entries below.
_END_HALT_GUARD = (
    "(in _BatchHeartbeat.end) every way out of a batch's records passes a"
    " CompleteMany or ReleaseMany step, whose follow() has halted the heartbeat"
)
_ONE_COLUMN = "the row has one column: [-1] is [0]"
_INDENT_UNREAD = (
    "the indent level argument is read only when the encoder indents, and"
    " one_shot_encoder refuses encoders that indent"
)
_KEY_TYPE_DEFAULT = (
    "the default is never read: every KeyType of a key schema is HASH or RANGE"
    " (DynamoDB's enum), and both are in the table"
)
_GET_CONNECTION = (
    "conn = pool.get_connection(command[0]) if self._pool_wants_name else pool.get_connection()"
)
_ENTER_AGAIN = (
    "the store's current loop is then never the one compared (the batcher is), so the call"
    " always enters the running loop: for the current loop that finds its state and"
    " changes nothing"
)
_NAME_UNREAD = (
    "the command name goes only to a pool whose get_connection requires one (redis-py 5.0);"
    " such a pool ignores its value, and later ones take none"
)
_PID_UNREAD = (
    "(ParallelCalls' first _pid) never decides anything: _pool makes a pool whenever"
    " _executor is None, whatever _pid is, and sets both; close() shuts down only an"
    " executor that _pool made, so _pid is then the one _pool set"
)
_POOL_OF_ZERO = (
    "differs only for max_pool_connections=0, and the caller reads pool_size(client)"
    " or workers: 0 and None both leave max_parallel uncapped"
)
_OWN_CLAIM_UNREAD = (
    "a batch's own claim, as a later record of its key meets it: only its token"
    " and fingerprint are read (the deadline and now never are)"
)

# Mutants that change no behaviour a caller can see, each with the reason. Keyed
# by module, the mutated line's text (stripped; the n-th of several identical
# lines gets " #n") and the mutation (" #n" for the n-th of several alike on the
# line), so an entry outlives edits elsewhere in the file; such a mutant is
# reported as equivalent and not run. A mutant whose line changes drops out of
# this table and runs again.
EQUIVALENT: dict[tuple[str, str, str], str] = {
    ("records", 'return "".join(chunks(value, 0))', "0 -> -1"): _INDENT_UNREAD,
    ("records", 'return "".join(chunks(value, 0))', "0 -> 1"): _INDENT_UNREAD,
    (
        "engine",
        "yield Sleep(max(1, min(delay, decision.retry_after_ms + 1, wait_until - now)))",
        "1 -> 0 #1",
    ): (
        "the floor is never reached: the delay is at least 20, retry_after_ms + 1 at"
        " least 1, and wait_until - now at least 1 (now >= wait_until raised above)"
    ),
    ("_sync", "return False #3", "return False -> True"): (
        "(in _BatchHeartbeat._beat, once halted) _halt sets the flag and then the stop"
        " event, so the heartbeat's loop ends whatever this beat answers"
    ),
    ("sqlite", 'return conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]', "0 -> -1"): (
        _ONE_COLUMN
    ),
    ("sqlite", "return Acquired(takeover=rows[0][0] == 1)", "0 -> -1 #1"): (
        "RETURNING gives one row for the one key: rows[-1] is rows[0]"
    ),
    ("sqlite", "return Acquired(takeover=rows[0][0] == 1)", "0 -> -1 #2"): (_ONE_COLUMN),
    (
        "sqlite",
        'lambda: int(self._conn().execute(f"SELECT count(*) FROM {self.table}").fetchone()[0])',
        "0 -> -1",
    ): _ONE_COLUMN,
    ("sqlite", "give_up = time.monotonic() + self._busy_timeout_ms / 1000", "1000 -> 1001"): (
        "timing only: gives up 0.1% of the busy timeout sooner; no outcome differs"
    ),
    ("sqlite", "give_up = time.monotonic() + self._busy_timeout_ms / 1000", "1000 -> 999"): (
        "timing only: gives up 0.1% of the busy timeout later; no outcome differs"
    ),
    ("sqlite", "if not _is_busy(exc) or time.monotonic() + pause > give_up:", "> -> >="): (
        "timing only: the last retry's cut-off at the exact instant of the timeout"
    ),
    ("sqlite", "time.sleep(pause)", "drop call statement"): (
        "timing only: retries without pausing until the busy timeout; the same outcome"
    ),
    ("sqlite", "pause = min(pause * 2, 0.05)", "2 -> 1"): (
        "timing only: the retries' pauses grow slower; the same outcome"
    ),
    ("sqlite", "pause = min(pause * 2, 0.05)", "2 -> 3"): (
        "timing only: the retries' pauses grow faster; the same outcome"
    ),
    ("_async", "if not task.cancelled():", "drop not"): (
        "on a cancelled task exception() raises CancelledError, which the next line raises anyway"
    ),
    (
        "batch_engine",
        "return Found(Record(Status.IN_PROGRESS, inv.token, 0, inv.fingerprint), 0)",
        "0 -> -1",
    ): _OWN_CLAIM_UNREAD,
    (
        "batch_engine",
        "return Found(Record(Status.IN_PROGRESS, inv.token, 0, inv.fingerprint), 0)",
        "0 -> 1",
    ): _OWN_CLAIM_UNREAD,
    ("_async", "self._halt() #2", "drop call statement"): _END_HALT_GUARD,
    ("_sync", "self._halt() #2", "drop call statement"): _END_HALT_GUARD,
    ("_async", "await asyncio.wait(self._ended)", "drop call statement"): (
        "the halted heartbeat has ended by then: the outcome or release writes since"
        " the halt are gathered, which lets the loop finish its cancellation first"
    ),
    ("records", "_check_keys(text, value) #3", "drop call statement"): (
        "(the check after the full encoder) reached only when the one-shot encoder failed"
        " and the full one did not; both are json's C encoder, the full one with its"
        " circular check, so that never happens where the C accelerator exists"
    ),
    (
        "dynamodb/items",
        'if kind == "B" and isinstance(raw, (bytes, bytearray)):',
        "and -> or",
    ): (
        "botocore parses a B value to bytes and no other value to bytes (S and N are"
        " str; BOOL, NULL, L, M and the sets are not bytes), so on every item the"
        " client returns kind == 'B' holds exactly when raw is bytes"
    ),
    ("dynamodb/items", 'order = {"HASH": 0, "RANGE": 1}', "0 -> -1"): (
        "HASH (-1) still sorts before RANGE (1)"
    ),
    ("dynamodb/items", 'order = {"HASH": 0, "RANGE": 1}', "1 -> 2"): (
        "RANGE (2) still sorts after HASH (0)"
    ),
    (
        "dynamodb/items",
        'schema = sorted(description["KeySchema"], key=lambda k: order.get(k["KeyType"], 2))',
        "2 -> 1",
    ): _KEY_TYPE_DEFAULT,
    (
        "dynamodb/items",
        'schema = sorted(description["KeySchema"], key=lambda k: order.get(k["KeyType"], 2))',
        "2 -> 3",
    ): _KEY_TYPE_DEFAULT,
    ("dynamodb/many", "self._pid = 0", "0 -> -1"): _PID_UNREAD,
    ("dynamodb/many", "self._pid = 0", "0 -> 1"): _PID_UNREAD,
    ("dynamodb/many", "return size if type(size) is int and size > 0 else None", "> -> >="): (
        _POOL_OF_ZERO
    ),
    ("dynamodb/many", "return size if type(size) is int and size > 0 else None", "0 -> -1"): (
        _POOL_OF_ZERO
    ),
    (
        "redis/store",
        _GET_CONNECTION,
        "0 -> -1",
    ): _NAME_UNREAD,
    (
        "redis/store",
        _GET_CONNECTION,
        "0 -> 1",
    ): _NAME_UNREAD,
    (
        "redis/async_store",
        "stale = stale or (gone is not None and not gone.closed)",
        "and -> or",
    ): (
        "(gone is never None: it is the state popped for a key of _loops) so a loop shut down"
        " properly counts as stale too: its guard ran _drop_connections already, and running"
        " it again before the new loop's first connection finds nothing left to close"
    ),
    ("redis/async_store", "return self._split_wait(replies, batch[0].key) #2", "0 -> -1"): (
        "(in _pipeline) the key names a WAIT's shortfall, and _pipeline's batch carries a WAIT"
        " only as one call with pipelining=False (an asyncio cluster client refuses"
        " wait_replicas and wait_aof): there batch[0] is batch[-1]"
    ),
    ("redis/clients", "return own if outer is None or own < outer else outer", "< -> <="): (
        "(in _deadline) where own equals outer, either branch gives the same deadline"
    ),
    ("redis/clients", "import_redis()", "drop call statement"): (
        "(in _retry_classes) its one caller, bounded_retry, imports redis.backoff before it,"
        " so redis-py is importable whenever this check runs"
    ),
    **{
        ("redis/clients", line, what): (
            "the pause is the jittered backoff's, a float in (0, cap] (0 only with odds of"
            " about 2**-53): sleeping for a pause of 0 changes no outcome"
        )
        for line in ("if pause > 0:", "if pause > 0: #2")
        for what in ("> -> >=", "0 -> -1")
    },
    **{
        ("redis/common", "major, minor = 0, 0", what): (
            "(in check_waitaof_support) any version made of 0, 1 and -1 stays below (7, 2):"
            " an unreadable version is refused all the same"
        )
        for what in ("0 -> -1", "0 -> 1", "0 -> -1 #2", "0 -> 1 #2")
    },
    ("redis/common", 'if int(persistence.get("aof_enabled", 0)) != 1:', "0 -> -1"): (
        "a missing aof_enabled read as -1 is refused as 0 is (both differ from 1)"
    ),
    ("redis/common", 'end = key.find("}", start + 1)', "1 -> 0"): (
        "(in hash_tag) key[start] is the '{' itself, so a search for '}' from start finds"
        " what one from start + 1 does"
    ),
    **{
        (
            "redis/common",
            "def check_key_prefix(self, key_prefix: str, *, stacklevel: int = 2) -> None:",
            what,
        ): ("the default is never read: the one caller (decorators.py) passes stacklevel=3")
        for what in ("2 -> 1", "2 -> 3")
    },
    ("redis/scripts", "if code == -1:", "1 -> 2"): (
        "(in claim_result) the script answers -1 only for a value the decoder refuses too"
        " (test_the_claim_script_and_the_decoder_agree_*), so the -1 reply, taken for a"
        " Found, raises the same error from decode_value as the branch it skips"
    ),
    (
        "lua/_prelude",
        "if kind == 'P' and progress ~= nil and progress < deadline then deadline = progress end",
        "< -> <=",
    ): "where progress equals deadline, setting deadline to progress leaves it as it was",
    (
        "redis/async_batch",
        "self.tasks.add(task)  # held until done, so it is not collected mid-flight",
        "drop call statement",
    ): (
        "(in flush) a pipeline's task is not collected mid-flight without the set either:"
        " until its first step the loop's ready queue holds it, and after that it waits on a"
        " future that the connection's transport (held by the loop's selector) or the pool's"
        " lock (held by the store its callers hold) keeps, with the task's wake-up on it"
    ),
    (
        "redis/async_batch",
        "self.tasks.add(task)  # held until done, so it is not collected mid-flight #2",
        "drop call statement",
    ): (
        "(in _run) a give-back's task is not collected mid-flight without the set either:"
        " until its first step the loop's ready queue holds it, then it waits on its"
        " release's future, which the batcher (held by the store) holds until the pipeline's"
        " task, held as above, sets it"
    ),
    ("redis/async_store", "await conn.disconnect(nowait=True)", "drop call statement"): (
        "(in _raw_batch) redis-py's asyncio send_packed_command and read_response disconnect"
        " the connection themselves on any BaseException (a cancellation, the read deadline's"
        " included), and the retry's fail hook on each failed attempt; packing sends nothing"
    ),
    (
        "redis/store",
        "conn.disconnect()  # never hand back a half-read connection",
        "drop call statement",
    ): (
        "redis-py (5.0 and later) disconnects the connection itself on any BaseException in"
        " send_packed_command and read_response, and the retry's fail hook on each failed"
        " attempt, so this second disconnect finds it closed already"
    ),
}


@dataclasses.dataclass(frozen=True)
class Mutant:
    """Replace source[start:end] with text; line is 1-based, for the report."""

    start: int
    end: int
    text: str
    line: int
    what: str

    def apply(self, source: str) -> str:
        return source[: self.start] + self.text + source[self.end :]


# ---------------------------------------------------------------- Python mutants

_COMPARE_SWAPS = {"<": "<=", "<=": "<", ">": ">=", ">=": ">", "==": "!=", "!=": "=="}


class _Offsets:
    """Absolute character offsets from (line, column) of tokenize (chars) or ast (UTF-8 bytes)."""

    def __init__(self, source: str) -> None:
        self.lines = source.splitlines(keepends=True)
        self.starts = [0]
        for line in self.lines:
            self.starts.append(self.starts[-1] + len(line))

    def chars(self, row: int, col: int) -> int:
        return self.starts[row - 1] + col

    def ast(self, row: int, col_bytes: int) -> int:
        line = self.lines[row - 1] if row - 1 < len(self.lines) else ""
        return self.starts[row - 1] + len(line.encode()[:col_bytes].decode(errors="ignore"))

    def node(self, node: ast.AST) -> tuple[int, int]:
        return (
            self.ast(node.lineno, node.col_offset),  # type: ignore[attr-defined]
            self.ast(node.end_lineno, node.end_col_offset),  # type: ignore[attr-defined]
        )


def python_mutants(source: str) -> list[Mutant]:
    tree = ast.parse(source)
    off = _Offsets(source)
    tokens = [
        (off.chars(*t.start), off.chars(*t.end), t.string)
        for t in tokenize.generate_tokens(io.StringIO(source).readline)
        if t.type in (tokenize.OP, tokenize.NAME)
    ]
    skip_lines = {i + 1 for i, line in enumerate(off.lines) if "pragma: no mutate" in line}
    # Docstrings, annotations and `if TYPE_CHECKING:` blocks carry no behaviour.
    quiet: list[tuple[int, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            quiet.append(off.node(node))
        for ann in ("annotation", "returns"):
            sub = getattr(node, ann, None)
            if isinstance(sub, ast.AST):
                quiet.append(off.node(sub))

    def between(lo: int, hi: int, names: set[str]) -> Iterator[tuple[int, int, str]]:
        for start, end, string in tokens:
            if lo <= start and end <= hi and string in names:
                yield start, end, string

    found: list[Mutant] = []

    def add(start: int, end: int, text: str, line: int, what: str) -> None:
        if line in skip_lines or any(lo <= start < hi for lo, hi in quiet):
            return
        found.append(Mutant(start, end, text, line, what))

    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            for left, right in itertools.pairwise(operands):
                lo, hi = off.node(left)[1], off.node(right)[0]
                for start, end, op in between(lo, hi, set(_COMPARE_SWAPS)):
                    add(
                        start, end, _COMPARE_SWAPS[op], node.lineno, f"{op} -> {_COMPARE_SWAPS[op]}"
                    )
        elif isinstance(node, ast.BoolOp):
            for left, right in itertools.pairwise(node.values):
                lo, hi = off.node(left)[1], off.node(right)[0]
                for start, end, op in between(lo, hi, {"and", "or"}):
                    other = "or" if op == "and" else "and"
                    add(start, end, other, node.lineno, f"{op} -> {other}")
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            start = off.node(node)[0]
            add(start, off.node(node.operand)[0], "", node.lineno, "drop not")
        elif isinstance(node, ast.Constant) and type(node.value) is int:
            start, end = off.node(node)
            for delta in (1, -1):
                text = repr(node.value + delta)
                add(start, end, text, node.lineno, f"{node.value} -> {text}")
        elif isinstance(node, ast.Return) and isinstance(node.value, ast.Constant):
            if type(node.value.value) is bool:
                start, end = off.node(node.value)
                flipped = str(not node.value.value)
                add(start, end, flipped, node.lineno, f"return {node.value.value} -> {flipped}")
        elif isinstance(node, ast.Expr):
            call = node.value.value if isinstance(node.value, ast.Await) else node.value
            if isinstance(call, ast.Call):
                start, end = off.node(node)
                add(start, end, "pass", node.lineno, "drop call statement")
    good = []
    for mutant in sorted(found, key=lambda m: (m.start, m.what)):
        try:
            compile(mutant.apply(source), "<mutant>", "exec")
        except SyntaxError:
            continue
        good.append(mutant)
    return good


# ---------------------------------------------------------------- Lua mutants

_LUA_CODE = re.compile(r"--.*$|'(?:\\.|[^'\\])*'|\"(?:\\.|[^\"\\])*\"")
_LUA_COMPARE = re.compile(r"<=|>=|==|~=|<|>")
_LUA_SWAPS = {"<": "<=", "<=": "<", ">": ">=", ">=": ">", "==": "~=", "~=": "=="}
# A condition on a token or a status: `holder ~= token`, `status == 'P'`, ...
_LUA_CONDITION = re.compile(
    r"\b(?:status|holder|token|kind)\s*(?:==|~=)\s*(?:'[^']*'|[A-Za-z_][\w]*(?:\[\d+\])?)"
)
_LUA_PX = re.compile(r",\s*'PX',\s*[A-Za-z_][\w]*")


def lua_mutants(source: str) -> list[Mutant]:
    found: list[Mutant] = []
    pos = 0
    for number, line in enumerate(source.splitlines(keepends=True), start=1):
        # Blank out comments and strings (same length) so operators in them are not taken.
        code = _LUA_CODE.sub(lambda m: m.group(0)[0] + " " * (len(m.group(0)) - 1), line)
        for m in _LUA_COMPARE.finditer(code):
            swap = _LUA_SWAPS[m.group(0)]
            found.append(Mutant(pos + m.start(), pos + m.end(), swap, number, f"{m[0]} -> {swap}"))
        for m in _LUA_CONDITION.finditer(line):
            if code[m.start()] == " ":  # inside a string or comment
                continue
            before = code[: m.start()].rstrip()
            after = code[m.end() :].lstrip()
            in_or = before.endswith(" or") or after.startswith("or ")
            text = "false" if in_or else "true"
            found.append(
                Mutant(pos + m.start(), pos + m.end(), text, number, f"drop `{m[0]}` ({text})")
            )
        for m in _LUA_PX.finditer(line):
            found.append(Mutant(pos + m.start(), pos + m.end(), "", number, "drop PX argument"))
        pos += len(line)
    return sorted(found, key=lambda m: (m.start, m.what))


# ---------------------------------------------------------------- running


_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(Exception):
    pass


def _on_signal(signum: int, _frame: object) -> None:
    raise Interrupted(signal.Signals(signum).name)


# Tests the coverage pass leaves out: they check which modules a fresh
# interpreter imports. Mutants run them (they are in the whole set).
_NOT_UNDER_COVERAGE = ("tests/unit/test_cold_start.py",)

# The coverage pass's pytest plugin. coverage.py hands its configuration to
# the subprocesses a test starts in COVERAGE_PROCESS_CONFIG (base64 JSON, with
# patch = subprocess); the plugin puts the running test's node id in it as the
# static context, so each subprocess's lines count for the test that started it.
_TEST_NAME_PLUGIN = """
import base64
import json
import os

import pytest

VAR = "COVERAGE_PROCESS_CONFIG"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    before = os.environ.get(VAR)
    if before is not None:
        config = json.loads(base64.b64decode(before))
        config["context"] = item.nodeid
        os.environ[VAR] = base64.b64encode(json.dumps(config).encode()).decode()
    try:
        return (yield)
    finally:
        if before is not None:
            os.environ[VAR] = before
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")])
    env["HYPOTHESIS_PROFILE"] = "ci"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _pytest(args: list[str], timeout: float, env: dict[str, str]) -> tuple[int | None, str]:
    """Run pytest in a child; its exit code (None on timeout) and the output's tail."""
    command = [sys.executable, "-m", "pytest", *args]
    with tempfile.TemporaryFile() as output:
        child = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            code: int | None = child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
        output.seek(0)
        tail = "\n".join(output.read().decode(errors="replace").splitlines()[-15:])
    return code, tail


def failed_test(tail: str) -> str:
    """The first failing test pytest's summary names in ``tail`` ("?" when none)."""
    # "FAILED <node id> - <message>"; a node id's parameters may hold spaces.
    found = re.search(r"^(?:FAILED|ERROR) (\S+::.+?)(?: - .*)?$", tail, re.MULTILINE)
    if found is not None:
        return found.group(1)
    # No test named (an error at the session's end, a crash): "?", then the
    # last line of the output, for a person to judge the verdict by.
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    return "?" + (f" {lines[-1][:200]}" if lines else "")


def ordered(tests: set[str], killers: list[str]) -> list[str]:
    """``tests`` in the order most likely to fail soonest under ``-x``.

    First the tests that killed this module's earlier mutants, the latest
    first (neighbouring mutants tend to fall to the same test), then the tests
    written against survivors, then the rest. Only the time to a kill changes:
    a survivor still runs every test.
    """
    first = [test for test in killers if test in tests]
    rest = sorted(tests - set(first), key=lambda test: ("surviving_mutants" not in test, test))
    # pytest names a parameter that is not printable ASCII by its escape
    # ("[\\x80]"), which it cannot find again from the command line: such a
    # test runs under its function's name (every parameter).
    chosen = [
        test.split("[")[0] if "\\" in test or not test.isascii() else test for test in first + rest
    ]
    return list(dict.fromkeys(chosen))


def _baseline(
    path: Path,
    runs: tuple[Run, ...],
    timeout: float,
    coverage: dict[tuple[Run, ...], Coverage] | None,
) -> tuple[Coverage | None, str]:
    """Check that a module's tests pass on the real code; its coverage, and a failure text.

    A failure is tried once more (and printed, so a flaky test gets seen and
    mended): one flaky test must not void a pass of hours.
    """
    failure = ""
    for _ in range(2):
        if failure:
            print(f"   the tests failed on the real code; trying once more\n{failure}", flush=True)
        if path.suffix == ".py" and coverage is not None:
            covered = coverage.get(runs)
            if covered is None or covered.failure:
                covered = coverage[runs] = Coverage(runs, timeout * 5, Path(tempfile.mkdtemp()))
            failure = covered.failure
            if not failure:
                return covered, ""
        else:
            baseline, tail = run_tests(runs, timeout * 3)
            failure = "" if baseline == "pass" else f"{baseline}\n{tail}"
            if not failure:
                return None, ""
    return None, failure


def run_tests(runs: tuple[Run, ...], timeout: float) -> tuple[str, str]:
    """('pass' | 'fail' | 'timeout', the output's tail); stops at the first run that fails."""
    for run in runs:
        code, tail = _pytest([*PYTEST_ARGS, *run], timeout, _env())
        if code is None:
            return "timeout", tail
        if code != 0:
            return "fail", tail
    return "pass", ""


# pytest's exit codes for "usage error" and "no tests collected": a selection
# that went wrong, not a mutant caught.
_NOT_RUN = (4, 5)


class Coverage:
    """Which tests of a set of runs execute each line of src/ (pytest-cov, one context per test).

    Collected once per set of runs, on the real code, which also proves the
    runs pass there. A mutant then runs only the tests that execute one of its
    lines: a line no test executes needs no run to survive, and a line run
    only while modules are imported (no test context) runs the whole set.
    """

    def __init__(self, runs: tuple[Run, ...], timeout: float, folder: Path) -> None:
        self.lines: dict[str, dict[int, set[str]]] = {}
        self.failure = ""
        import coverage  # here: only the coverage pass needs it

        # Subprocesses the tests start (workers, spawned processes) are
        # measured too, under the name of the test that started them (the
        # plugin above).
        config = folder / "coveragerc"
        config.write_text("[run]\npatch = subprocess\n")
        (folder / "mutation_test_name.py").write_text(_TEST_NAME_PLUGIN)
        for index, run in enumerate(runs):
            data_file = folder / f".coverage.{abs(hash(runs))}.{index}"
            env = {**_env(), "COVERAGE_FILE": str(data_file)}
            env["PYTHONPATH"] = os.pathsep.join([env["PYTHONPATH"], str(folder)])
            args = ["-q", "-p", "no:cacheprovider", "-p", "mutation_test_name", "-W", "error"]
            args += ["--cov=onceonly"]
            args += ["--cov-context=test", "--cov-report=", f"--cov-config={config}", *run]
            # Their subprocesses would see coverage's own imports (sqlite3).
            args += [f"--deselect={test}" for test in _NOT_UNDER_COVERAGE]
            code, tail = _pytest(args, timeout, env)
            if code != 0:
                self.failure = f"{'timeout' if code is None else 'fail'}\n{tail}"
                return
            data = coverage.CoverageData(str(data_file))
            data.read()
            for measured in data.measured_files():
                by_line = self.lines.setdefault(measured, {})
                for line, contexts in data.contexts_by_lineno(measured).items():
                    by_line.setdefault(line, set()).update(c.rsplit("|", 1)[0] for c in contexts)

    def tests_for(self, path: Path, first: int, last: int) -> set[str] | None:
        """The node ids that run any of lines first..last; None: run every test.

        Every test runs for a line also run outside any test's context (at
        import); a line run in a subprocess counts for the test that started it.
        """
        return self._tests_for(path, range(first, last + 1), depth=0)

    def _tests_for(self, path: Path, lines: Iterable[int], depth: int) -> set[str] | None:
        by_line = self.lines.get(str(path), {})
        contexts: set[str] = set().union(*(by_line.get(n, set()) for n in lines))
        if "" not in contexts:
            return contexts
        contexts.discard("")
        # A line run at import: a signature's default or a constant. The tests
        # that see the change are those that run where it is read (the body
        # of that function, or the lines that load that name), if those lines
        # are themselves run by tests, within a few such steps.
        users = _import_time_users(path, lines) if depth < 3 else None
        if users is None:
            return None
        for user_path, user_lines in users:
            found = self._tests_for(user_path, user_lines, depth + 1)
            if found is None:
                return None
            contexts |= found
        return contexts


def _import_time_users(path: Path, lines: Iterable[int]) -> list[tuple[Path, list[int]]] | None:
    """Where a change to ``lines`` (run at import) is read; None when unknown.

    A function's signature (a default value): that function's body. An
    assignment at module or class level: every line of src/ that loads one of
    the names it assigns (as a name or as an attribute).
    """
    wanted = list(lines)
    first, last = wanted[0], wanted[-1]
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            header_end = node.body[0].lineno - 1
            if node.lineno <= first and last <= header_end:
                body = list(range(node.body[0].lineno, (node.end_lineno or header_end) + 1))
                return [(path, body)]
    scopes: list[ast.Module | ast.ClassDef] = [tree]
    scopes += [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]
    for scope in scopes:
        for stmt in scope.body:
            if not isinstance(stmt, (ast.Assign, ast.AnnAssign)):
                continue
            if not (stmt.lineno <= first and last <= (stmt.end_lineno or stmt.lineno)):
                continue
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            names = {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
            if not names:
                return None
            return [(source, _loads(source, names)) for source in sorted(SRC.rglob("*.py"))]
    return None


def _loads(path: Path, names: set[str]) -> list[int]:
    """The lines of ``path`` that load any of ``names``, as a name or an attribute."""
    found: list[int] = []
    for node in ast.walk(ast.parse(path.read_text())):
        loaded = isinstance(node, ast.Name) and node.id in names and isinstance(node.ctx, ast.Load)
        if loaded or (isinstance(node, ast.Attribute) and node.attr in names):
            found.append(node.lineno)
    return found


def sample(mutants: list[Mutant], limit: int | None) -> list[Mutant]:
    """At most limit mutants, spread evenly over the file (deterministic)."""
    if limit is None or len(mutants) <= limit:
        return mutants
    return [mutants[i * len(mutants) // limit] for i in range(limit)]


def diff_of(path: Path, source: str, mutant: Mutant) -> str:
    rel = path.relative_to(ROOT)
    return "".join(
        difflib.unified_diff(
            source.splitlines(keepends=True),
            mutant.apply(source).splitlines(keepends=True),
            f"a/{rel}",
            f"b/{rel}",
            n=1,
        )
    )


# Whole kinds of equivalent mutants: (module, a regular expression the mutated
# line matches, the mutation) -> why.
EQUIVALENT_KINDS: dict[tuple[str, str, str], str] = {
    (module, r"if asyncio\.get_running_loop\(\) is not (self\._)?current\[0\]:", what): (
        _ENTER_AGAIN
    )
    for module in ("redis/async_store",)
    for what in ("0 -> -1", "0 -> 1")
} | {
    ("redis/async_batch", r"if sys\.version_info >= \(3, 11\):", what): (
        "a gate between asyncio.timeout (3.11+) and asyncio.wait_for, which do the same"
        " here on the Python that runs it (cancel the work, raise the builtin TimeoutError)"
    )
    for what in (">= -> >", "3 -> 2", "3 -> 4", "11 -> 10", "11 -> 12")
}


def equivalences(name: str, source: str, mutants: list[Mutant]) -> dict[Mutant, str]:
    """The mutants of ``mutants`` that EQUIVALENT or EQUIVALENT_KINDS list, with why."""
    lines = [line.strip() for line in source.splitlines()]
    found: dict[Mutant, str] = {}
    same_what: dict[tuple[int, str], int] = {}
    for mutant in sorted(mutants, key=lambda m: m.start):
        text = lines[mutant.line - 1]
        # The n-th of several identical lines is keyed "text #n", and the n-th
        # of several identical mutations on one line "what #n".
        seen = lines[: mutant.line].count(text)
        line_key = text if seen == 1 else f"{text} #{seen}"
        n = same_what[mutant.line, mutant.what] = same_what.get((mutant.line, mutant.what), 0) + 1
        for what in (mutant.what, f"{mutant.what} #{n}"):
            why = EQUIVALENT.get((name, line_key, what))
            if why is not None:
                found[mutant] = why
        for (module, pattern, what), why in EQUIVALENT_KINDS.items():
            if module == name and what == mutant.what and re.match(pattern, text):
                found[mutant] = why
    return found


@dataclasses.dataclass
class Result:
    module: str
    mutants: int = 0
    killed: int = 0
    timeouts: int = 0
    uncovered: int = 0
    survivors: list[tuple[Mutant, str]] = dataclasses.field(default_factory=list)
    equivalent: list[tuple[Mutant, str, str]] = dataclasses.field(default_factory=list)
    note: str = ""

    @property
    def score(self) -> str:
        """Killed among the mutants that are not equivalent, as a percentage."""
        scored = self.mutants - len(self.equivalent)
        return f"{100 * self.killed / scored:.1f}%" if scored else "-"


# A survivor as a report names it: the original line and the mutated one
# (stripped, from its diff) and the mutation.
Named = tuple[str, str, str]


def survivors_named(reports: list[Path]) -> dict[str, set[Named]]:
    """The survivors the reports list, per module, by what their diffs show."""
    found: dict[str, set[Named]] = {}
    heading = re.compile(r"^### (\S+) line \d+: (.+)$")
    for report in reports:
        lines = report.read_text().splitlines()
        for i, line in enumerate(lines):
            match = heading.match(line)
            if match is None:
                continue
            diff = itertools.takewhile(lambda text: not text.startswith("### "), lines[i + 1 :])
            body = [d for d in diff if d[:1] in "-+" and d[:3] not in ("---", "+++")]
            old = next((d[1:].strip() for d in body if d.startswith("-")), "")
            new = next((d[1:].strip() for d in body if d.startswith("+")), "")
            found.setdefault(match[1], set()).add((old, new, match[2]))
    return found


def named(source: str, mutant: Mutant) -> Named:
    """How a report would name the mutant (see survivors_named)."""
    line = mutant.line - 1
    old = source.splitlines()[line].strip()
    new = mutant.apply(source).splitlines()[line].strip()
    return old, new, mutant.what


class Journal:
    """Every verdict of earlier passes, one JSON line each, so a pass can resume.

    A line holds the module, a digest of the module's source, the mutant's
    place and text (which name it exactly in that source), the verdict, the
    test that failed and the time. A mutant killed in the same source is not
    run again; a survivor is (the tests may have grown since). Lines are
    appended and flushed one by one, so an interrupted pass loses at most the
    mutant it was running.
    """

    def __init__(self, path: Path, *, distrust_unnamed: bool = False) -> None:
        self.path = path
        # Kills whose failing test was not named ("?") may be a flaky failure
        # at the session's end rather than the mutant: with this, they run again.
        self.distrust_unnamed = distrust_unnamed
        self.killed: dict[tuple[str, str, int, int, str], dict[str, object]] = {}
        # Each mutant's last verdict, whatever it was (for --summary and --resume).
        self.last: dict[tuple[str, str, int, int, str], dict[str, object]] = {}
        self._read = 0  # lines read so far
        self.refresh()

    def refresh(self) -> None:
        """Read the lines appended since the last read (by this pass or one beside it)."""
        if not self.path.exists():
            return
        lines = self.path.read_text().splitlines()
        for number, text in enumerate(lines[self._read :], start=self._read + 1):
            try:
                entry = json.loads(text)
                key = self.key(entry["module"], entry["source"], entry)
            except (ValueError, KeyError, TypeError) as exc:
                raise SystemExit(f"{self.path}:{number}: not a journal line ({exc})") from None
            self.last[key] = entry
            self._note_kill(key, entry)
        self._read = len(lines)

    def _note_kill(self, key: tuple[str, str, int, int, str], entry: dict[str, object]) -> None:
        if entry["verdict"] == "pass":
            self.killed.pop(key, None)  # a later run that passed outweighs an earlier kill
        elif entry["verdict"] in ("fail", "timeout"):
            unnamed = str(entry.get("test", "")).startswith("?")
            if not (self.distrust_unnamed and unnamed):
                self.killed[key] = entry

    @staticmethod
    def key(
        module: str, digest: str, mutant: Mutant | dict[str, object]
    ) -> tuple[str, str, int, int, str]:
        if isinstance(mutant, Mutant):
            return module, digest, mutant.start, mutant.end, mutant.text
        start, end, text = mutant["start"], mutant["end"], mutant["text"]
        if not (isinstance(start, int) and isinstance(end, int) and isinstance(text, str)):
            raise TypeError("start, end and text")
        return module, digest, start, end, text

    def write(self, module: str, digest: str, mutant: Mutant, verdict: str, **more: object) -> None:
        entry = {
            "module": module,
            "source": digest,
            "start": mutant.start,
            "end": mutant.end,
            "text": mutant.text,
            "line": mutant.line,
            "what": mutant.what,
            "verdict": verdict,
            **more,
        }
        with self.path.open("a") as out:
            out.write(json.dumps(entry, sort_keys=True) + "\n")
        self.refresh()  # this line, and any a pass beside this one wrote


def digest_of(source: bytes) -> str:
    return hashlib.sha256(source).hexdigest()[:16]


def mutate_module(
    name: str,
    limit: int | None,
    timeout: float,
    coverage: dict[tuple[Run, ...], Coverage] | None,
    only: set[Named] | None = None,
    results: list[Result] | None = None,
    journal: Journal | None = None,
    resume: bool = False,
    reverse: bool = False,
) -> Result:
    file, runs = MODULES[name]
    path = SRC / file
    original = path.read_bytes()
    source = original.decode()
    every = lua_mutants(source) if path.suffix == ".lua" else python_mutants(source)
    chosen = sample(every, limit)
    if only is not None:
        chosen = [m for m in chosen if named(source, m) in only]
    if reverse:
        chosen.reverse()
    result = Result(name)
    if results is not None:
        # Listed before the first run, so an interrupted pass reports what it ran.
        results.append(result)
    print(f"== {name}: {len(chosen)} of {len(every)} mutants", flush=True)
    digest = digest_of(original)
    stat = path.stat()
    equivalent = equivalences(name, source, every)
    # Tests that killed this source's mutants in earlier passes run first too.
    killers: list[str] = [
        str(entry["test"])
        for key, entry in reversed((journal.killed if journal else {}).items())
        if key[:2] == (name, digest) and entry.get("test")
    ]
    ready = False
    covered: Coverage | None = None
    try:
        for index, mutant in enumerate(chosen, start=1):
            why = equivalent.get(mutant)
            if why is not None:
                result.mutants += 1
                result.equivalent.append((mutant, diff_of(path, source, mutant), why))
                print(f"   [{index}/{len(chosen)}] line {mutant.line}: {mutant.what}: equivalent")
                continue
            if journal is not None:
                journal.refresh()  # a pass beside this one may have run it meanwhile
            known = journal.killed.get(journal.key(name, digest, mutant)) if journal else None
            seen = journal.last.get(journal.key(name, digest, mutant)) if journal else None
            if resume and known is None and seen and seen["verdict"] in ("pass", "uncovered"):
                # --resume: a survivor of this source is not run again.
                result.mutants += 1
                result.uncovered += seen["verdict"] == "uncovered"
                result.survivors.append((mutant, diff_of(path, source, mutant)))
                print(
                    f"   [{index}/{len(chosen)}] line {mutant.line}: {mutant.what}:"
                    f" SURVIVED ({seen['verdict']}, in the journal)"
                )
                continue
            if known is not None:
                result.mutants += 1
                result.killed += 1
                result.timeouts += known["verdict"] == "timeout"
                print(
                    f"   [{index}/{len(chosen)}] line {mutant.line}: {mutant.what}:"
                    f" killed ({known['verdict']}, in the journal)"
                )
                continue
            if not ready:
                # The first mutant to run: the tests must pass on the real code.
                covered, failure = _baseline(path, runs, timeout, coverage)
                if failure:
                    result.note = "(tests do not pass on the real code; the rest skipped)"
                    print(f"   {result.note}\n{failure}", flush=True)
                    return result
                ready = True
            began = time.monotonic()
            tests = None
            if covered is not None:
                last = mutant.line + source.count("\n", mutant.start, mutant.end)
                tests = covered.tests_for(path, mutant.line, last)
            if tests is not None and not tests:
                result.mutants += 1
                result.uncovered += 1
                result.survivors.append((mutant, diff_of(path, source, mutant)))
                print(
                    f"   [{index}/{len(chosen)}] line {mutant.line}: {mutant.what}:"
                    " SURVIVED (no test runs it)"
                )
                if journal is not None:
                    journal.write(name, digest, mutant, "uncovered", test="", seconds=0.0)
                continue
            try:
                path.write_text(mutant.apply(source))
                outcome = tail = ""
                if tests is not None:
                    code, tail = _pytest([*PYTEST_ARGS, *ordered(tests, killers)], timeout, _env())
                    if code in _NOT_RUN:
                        print(f"   (the selection did not run; every test runs)\n{tail}")
                    else:
                        outcome = "timeout" if code is None else "fail" if code else "pass"
                if not outcome:
                    outcome, tail = run_tests(runs, timeout)
            finally:
                # No signal may stop the restore half-way.
                blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
                try:
                    path.write_bytes(original)
                    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
                finally:
                    signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            result.mutants += 1
            if outcome == "pass":
                result.survivors.append((mutant, diff_of(path, source, mutant)))
            else:
                result.killed += 1
                result.timeouts += outcome == "timeout"
            mark = "SURVIVED" if outcome == "pass" else f"killed ({outcome})"
            if tests is not None:
                mark += f" [{len(tests)} tests]"
            killer = failed_test(tail) if outcome == "fail" else ""
            if killer:
                mark += f" by {killer}"
                if killer in killers:
                    killers.remove(killer)
                killers.insert(0, killer)
            if journal is not None:
                seconds = round(time.monotonic() - began, 1)
                journal.write(name, digest, mutant, outcome, test=killer, seconds=seconds)
            print(
                f"   [{index}/{len(chosen)}] line {mutant.line}: {mutant.what}: {mark}"
                f" {time.monotonic() - began:.1f}s",
                flush=True,
            )
    except Interrupted:
        result.note = f"(interrupted: {result.mutants} of {len(chosen)} run)"
        raise
    return result


def summarize(name: str, journal: Journal) -> Result:
    """A module's result from the journal alone: its current source, nothing run.

    A mutant killed in this source counts as killed; one whose last verdict
    was a pass (or no test ran it) as a survivor; one the journal does not
    hold is counted in the note as not run, and left out of the score.
    """
    path = SRC / MODULES[name][0]
    original = path.read_bytes()
    source = original.decode()
    every = lua_mutants(source) if path.suffix == ".lua" else python_mutants(source)
    digest = digest_of(original)
    equivalent = equivalences(name, source, every)
    result = Result(name)
    missing = 0
    for mutant in every:
        why = equivalent.get(mutant)
        key = journal.key(name, digest, mutant)
        if why is not None:
            result.mutants += 1
            result.equivalent.append((mutant, diff_of(path, source, mutant), why))
        elif key in journal.last and journal.last[key]["verdict"] in ("fail", "timeout"):
            result.mutants += 1
            result.killed += 1
            result.timeouts += journal.last[key]["verdict"] == "timeout"
        elif key in journal.last:
            result.mutants += 1
            result.uncovered += journal.last[key]["verdict"] == "uncovered"
            result.survivors.append((mutant, diff_of(path, source, mutant)))
        else:
            missing += 1
    if missing:
        result.note = f"({missing} of {len(every)} not in the journal)"
    return result


def table(results: list[Result]) -> str:
    rows = [
        "| module | mutants | killed | equivalent | survived | killed of non-equivalent |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        killed = f"{r.killed} ({r.timeouts} by timeout)" if r.timeouts else str(r.killed)
        note = f" {r.note}" if r.note else ""
        rows.append(
            f"| {r.module}{note} | {r.mutants} | {killed} | {len(r.equivalent)}"
            f" | {len(r.survivors)} | {r.score} |"
        )
    return "\n".join(rows)


def survivors_text(results: list[Result]) -> str:
    parts = []
    for r in results:
        for mutant, diff in r.survivors:
            parts.append(
                f"### {r.module} line {mutant.line}: {mutant.what}\n\n```diff\n{diff}```\n"
            )
    return "\n".join(parts)


def equivalents_text(results: list[Result]) -> str:
    return "\n".join(
        f"- {r.module} line {mutant.line}, {mutant.what}: {why}"
        for r in results
        for mutant, _, why in r.equivalent
    )


def select(names: list[str] | None) -> list[str]:
    if not names:
        return list(MODULES)
    chosen = []
    for wanted in names:
        hits = [m for m in MODULES if m == wanted or m.startswith(wanted.rstrip("/") + "/")]
        if not hits:
            raise SystemExit(f"unknown module {wanted!r}; known: {', '.join(MODULES)}")
        chosen += [m for m in hits if m not in chosen]
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--module",
        action="append",
        help="a module of the table (engine, codec, redis/store, lua/claim, ...) or a"
        " group (redis, dynamodb, lua); repeatable; default: all",
    )
    parser.add_argument("--max", type=int, help="at most N mutants per module, spread evenly")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per pytest run")
    parser.add_argument("--report", type=Path, help="write the table and survivors as markdown")
    parser.add_argument("--list", action="store_true", help="list the mutants, run nothing")
    parser.add_argument(
        "--recheck",
        type=Path,
        nargs="+",
        metavar="REPORT",
        help="run only the survivors these reports list (found again by their diffs, so"
        " edits elsewhere in the file do not matter)",
    )
    parser.add_argument(
        "--journal",
        type=Path,
        help="append every verdict to this JSON-lines file, and count as killed (without"
        " running them) the mutants it records killed in the same source",
    )
    parser.add_argument(
        "--no-coverage",
        action="store_true",
        help="run every mutant against all of its module's tests, not only those that run its"
        " lines",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="with --journal: do not run again the survivors it records for the same source"
        " either (to go on with a pass that was stopped)",
    )
    parser.add_argument(
        "--reverse",
        action="store_true",
        help="take each module's mutants from its end (a second pass beside one going"
        " forward, sharing the journal, meets it in the middle)",
    )
    parser.add_argument(
        "--distrust-unnamed",
        action="store_true",
        help="run again the mutants the --journal records killed by no named test (an error"
        " at the session's end may be a flaky one)",
    )
    parser.add_argument(
        "--summary",
        action="store_true",
        help="run nothing: print (and with --report write) the table of the modules' current"
        " sources from the --journal's verdicts",
    )
    args = parser.parse_args(argv)
    names = select(args.module)
    recheck = survivors_named(args.recheck) if args.recheck else None
    if recheck is not None:
        names = [name for name in names if name in recheck]

    if args.list:
        for name in names:
            path = SRC / MODULES[name][0]
            source = path.read_text()
            every = lua_mutants(source) if path.suffix == ".lua" else python_mutants(source)
            equivalent = equivalences(name, source, every)
            for mutant in sample(every, args.max):
                why = equivalent.get(mutant)
                print(f"{name}:{mutant.line}: {mutant.what}" + (" (equivalent)" if why else ""))
        return 0

    if args.summary:
        if args.journal is None:
            parser.error("--summary needs --journal")
        report(args.report, [summarize(name, Journal(args.journal)) for name in names])
        return 0

    if subprocess.run(["git", "diff", "--quiet", "--", "src/"], cwd=ROOT).returncode != 0:
        print("src/ has uncommitted changes: commit or stash them first", file=sys.stderr)
        return 2

    for signum in _SIGNALS:
        signal.signal(signum, _on_signal)
    coverage: dict[tuple[Run, ...], Coverage] | None = None if args.no_coverage else {}
    if coverage is not None:
        try:
            import pytest_cov  # noqa: F401 - only to say what is missing
        except ImportError:
            print("pytest-cov is missing: pip install pytest-cov, or pass --no-coverage")
            return 2
    journal = (
        Journal(args.journal, distrust_unnamed=args.distrust_unnamed) if args.journal else None
    )
    results: list[Result] = []
    status = 0
    try:
        for name in names:
            only = None if recheck is None else recheck[name]
            mutate_module(
                name, args.max, args.timeout, coverage, only, results, journal,
                resume=args.resume, reverse=args.reverse,
            )  # fmt: skip
    except Interrupted as stop:
        print(f"\ninterrupted ({stop}); src/ restored; partial results:", file=sys.stderr)
        status = 130
    finally:
        dirty = subprocess.run(["git", "diff", "--quiet", "--", "src/"], cwd=ROOT).returncode
        if dirty:
            print("WARNING: src/ differs from git after the pass", file=sys.stderr)

    report(args.report, results)
    return status


def report(path: Path | None, results: list[Result]) -> None:
    """Print the table, the equivalents and the survivors; write them to ``path`` too."""
    text = table(results)
    equivalents = equivalents_text(results)
    survivors = survivors_text(results)
    if equivalents:
        text += "\n\n## Equivalent mutants (not run)\n\n" + equivalents
    if survivors:
        text += "\n\n## Survivors\n\n" + survivors
    print("\n" + text)
    if path:
        path.write_text(f"# Mutation pass\n\n{text}\n")


if __name__ == "__main__":
    sys.exit(main())
