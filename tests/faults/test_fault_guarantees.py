"""The guarantees that hold by design, asserted through the fault lab's own driver.

The figures ``benchmarks/faults.py`` publishes come from the same driver
(worker fleet, heal, check, tally) and, but for the SIGKILL storm, the same
scenario functions, run here small: a paused owner never overwrites its
successor (fencing), a SIGKILL storm leaves no stale replay and no
unresolved key and re-runs a key only for a worker killed between its body
and its completion (the storm here kills on the workers' progress, not on a
timer, so that its kills surely land), and a lost claim, completion or
release reply costs onceonly's Redis store nothing (the same token is sent
again). The counting itself is tested on hand-written events. Timing figures
(stuck seconds) are never asserted.
"""

from __future__ import annotations

import contextlib
import json
import random
import signal
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import redis_harness as harness
from faultlab import reply_faults
from faultlab.catalog import SCENARIOS, Params
from faultlab.driver import Fleet, finish, make_keys, spread
from faultlab.lab import Lab, provision
from faultlab.ledger import Tally, read_events, tally
from faultlab.scenarios import run_id, wait_for
from faultlab.targets import ONCEONLY, POWERTOOLS

# -- helpers ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine() -> harness.Engine:
    """One engine (the first found): the guarantees are the library's, not the server's."""
    return harness.engines_or_fail()[0]


@contextlib.contextmanager
def lab_for(
    scenario: str, target: str, folder: Path, engine: harness.Engine, **changes: Any
) -> Iterator[Lab]:
    """The lab the matrix would give ``scenario`` on ``target`` (its lease), with ``changes``."""
    with provision(target, folder, engine, lease_ms=SCENARIOS[scenario].lease_ms, **changes) as lab:
        yield lab


def events_of(lab: Lab) -> list[dict[str, Any]]:
    return read_events(lab.folder / "ledger")


def final_of(events: list[dict[str, Any]]) -> dict[str, str]:
    """What the check phase replayed per key: the result finally stored."""
    return {ev["k"]: ev["n"] for ev in events if ev["src"] == "check" and ev["e"] == "got"}


def by_delivery(events: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """The concluding event (``got`` / ``err``) of each load-phase delivery."""
    return {ev["d"]: ev for ev in events if ev["e"] in ("got", "err") and ev.get("ph") == "load"}


# -- the counting -------------------------------------------------------------------------


def _ev(e: str, k: str = "", src: str = "w0.0", **fields: Any) -> dict[str, Any]:
    return {"e": e, "t": 0, "src": src, **({"k": k} if k else {}), **fields}


def test_tally_counts_duplicates_lost_outcomes_stale_replays_and_unresolved_keys() -> None:
    events = [
        # a: ran once, replayed once: nothing to count.
        _ev("run", "a", n="n1"),
        _ev("done", "a", n="n1"),
        _ev("got", "a", n="n1", own=True),
        _ev("got", "a", src="w1.0", n="n1", own=False),
        # b: a killed worker's body finished, its successor's result is stored.
        _ev("done", "b", src="w1.0", n="n2"),
        _ev("done", "b", src="w1.1", n="n3"),
        _ev("got", "b", src="w1.1", n="n3", own=True),
        # c: a late owner's result was replayed to a caller, another is stored.
        _ev("done", "c", n="n4"),
        _ev("got", "c", n="n4", own=True),
        _ev("done", "c", src="w2.0", n="n5"),
        _ev("got", "c", src="w3.0", n="n5", own=False),
        # d: never resolved: a store error, then "in progress".
        _ev("err", "d", kind="store", ms=120.0),
        _ev("err", "d", kind="store", ms=40.0),
        _ev("err", "d", kind="in_progress", ms=3.0),
        _ev("got", "d", n="n9", own=False),  # stored is None: not counted stale
        # e: the function's own failure (not failed closed), then a run.
        _ev("err", "e", kind="failed", ms=1.0),
        _ev("done", "e", n="n6"),
        _ev("got", "e", n="n6", own=True),
        _ev("exit"),
    ]
    final = {"a": "n1", "b": "n3", "c": "n4", "d": None, "e": "n6"}
    out = tally(events, ["a", "b", "c", "d", "e"], final, stuck_s=1.23456)
    assert out == Tally(
        keys=5,
        calls=11,
        executions=6,
        duplicates=2,  # b and c
        lost_outcomes=1,  # n2 (n5 was stored for a while: a replay got it)
        stale_replays=1,  # n5 replayed while n4 is stored
        failed_closed=2,
        in_progress=1,
        stuck_s=1.235,
        time_to_error_ms=120.0,
        unresolved=1,
        notes={"median_time_to_error_ms": 80.0},
    )


def test_tally_of_a_clean_run_counts_nothing_but_calls_and_executions() -> None:
    events = [_ev("done", "a", n="n1"), _ev("got", "a", n="n1", own=True)]
    out = tally(events, ["a"], {"a": "n1"}, stuck_s=0.0)
    assert (out.calls, out.executions, out.duplicates, out.lost_outcomes) == (1, 1, 0, 0)
    assert (out.stale_replays, out.failed_closed, out.unresolved) == (0, 0, 0)
    assert out.time_to_error_ms is None
    assert out.notes == {}


# -- fencing: a paused owner never overwrites its successor -------------------------------


@pytest.mark.parametrize(
    ("target", "changes"),
    [
        ("onceonly/sqlite", {}),
        ("onceonly/redis-aof-everysec", {}),
        # No skew allowance, so that the redelivery takes the key over as soon
        # as the lease ends (with the default 1 s allowance it would be told
        # "in progress" and the heal phase would take it over instead).
        ("onceonly/dynamodb", {"clock_skew_ms": 0}),
    ],
)
def test_a_paused_owner_let_go_after_a_takeover_never_overwrites_its_successor(
    target: str, changes: dict[str, Any], tmp_path: Path, engine: harness.Engine
) -> None:
    with lab_for("paused-worker", target, tmp_path, engine, **changes) as lab:
        out = SCENARIOS["paused-worker"].run(lab, Params(late_keys=2))
        events = events_of(lab)
    assert out.stale_replays == 0
    assert out.unresolved == 0
    final = final_of(events)
    concluded = by_delivery(events)
    late = {ev["k"]: ev["n"] for ev in events if ev["e"] == "done" and ev["src"] == "w0.0"}
    assert len(final) == out.keys == 2
    for n, key in enumerate(sorted(final)):
        takeover = concluded[10_000 + n]
        assert takeover["k"] == key
        # The redelivery ran the body (the lease had ended) ...
        assert takeover["e"] == "got"
        assert takeover["own"] is True
        # ... the paused owner then finished its body too ...
        assert key in late
        assert late[key] != takeover["n"]
        # ... and what is stored is the successor's result, replayed to the next call.
        assert final[key] == takeover["n"]
        assert concluded[20_000 + n]["n"] == takeover["n"]


# -- the SIGKILL storm ---------------------------------------------------------------------


def storm(lab: Lab, *, keys: int, kills: int, paused: int, seed: int) -> tuple[Tally, int]:
    """The kill-storm scenario's run, its kills synchronised on the workers instead of a timer.

    ``kill-storm`` kills at random times, which on a loaded machine can all
    land while workers start or after they finish. Here every delivery of
    ``paused`` seeded keys stops its worker in the body (SIGSTOP: whichever
    delivery runs the body first, the others replay), and each such
    stopped worker is killed (a kill that surely lands mid-call); then up to
    ``kills`` more kills each wait until the chosen worker's current process
    has concluded a seeded number of deliveries (they land in a claim, a body
    or a completion, or miss when the worker has finished). A worker stopped
    after that is let go on (SIGCONT). The deliveries, fleet, heal and check
    are the driver's.

    Returns:
        The figures and the kills made.
    """
    rng = random.Random(seed)
    folder = lab.folder / "ledger"
    names = make_keys(run_id(), keys)
    stop = set(rng.sample(names, paused))

    def payload(key: str, n: int) -> dict[str, Any]:
        return {"work_ms": 1, **({"pause": True} if key in stop else {})}

    shards = spread(names, deliveries=4, workers=4, seed=seed, payload=payload)
    fleet = Fleet(lab.target, folder, shards).start()

    def concluded(source: str) -> int:
        return sum(
            1 for ev in read_events(folder) if ev["src"] == source and ev["e"] in ("got", "err")
        )

    def stopped() -> list[int]:
        return [i for i in fleet.alive() if fleet.stopped(i)]

    try:
        for _ in range(paused):
            wait_for(lambda: bool(stopped()), "a worker to stop in its body")
            fleet.kill(stopped()[0])
        for _ in range(kills):
            index = rng.randrange(len(shards))
            source = f"w{index}.{fleet.incarnations[index]}"
            left = len(fleet.remaining(index))
            if left < 8:
                continue
            goal = rng.randrange(1, left // 2)
            proc = fleet.procs[index]
            wait_for(
                lambda s=source, g=goal, p=proc, i=index: (
                    concluded(s) >= g or p.poll() is not None or fleet.stopped(i)
                ),
                f"{goal} deliveries of {source}",
            )
            fleet.kill(index)
        while fleet.alive():
            for index in stopped():
                fleet.signal(index, signal.SIGCONT)
            wait_for(lambda: not fleet.alive() or bool(stopped()), "the workers to finish")
        fleet.wait(120)
    finally:
        fleet.terminate()
    return finish(lab.target, folder, names, heal_cap_s=30), fleet.kills


def _killed_processes(events: list[dict[str, Any]]) -> set[str]:
    """Worker processes that wrote to the ledger and never wrote ``exit`` (SIGKILLed)."""
    workers = {ev["src"] for ev in events if ev["src"].startswith("w")}
    exited = {ev["src"] for ev in events if ev["e"] == "exit"}
    return workers - exited


@pytest.mark.parametrize("target", ["onceonly/sqlite", "onceonly/redis-aof-everysec"])
def test_a_sigkill_storm_re_runs_a_key_only_for_a_worker_killed_after_its_body(
    target: str, tmp_path: Path, engine: harness.Engine
) -> None:
    with lab_for("kill-storm", target, tmp_path, engine) as lab:
        out, kills = storm(lab, keys=100, kills=4, paused=2, seed=7)
        events = events_of(lab)
        lease_ms = lab.target.lease_ms
    assert out.keys == 100
    assert out.stale_replays == 0
    assert out.unresolved == 0
    killed = _killed_processes(events)
    # The two workers stopped in their bodies were killed there, at least.
    assert 2 <= len(killed) <= kills
    final = final_of(events)
    last: dict[str, dict[str, Any]] = {}
    done: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for ev in events:
        last[ev["src"]] = ev
        if ev["e"] == "done":
            done[ev["k"]].append(ev)
    # Every result made and not stored was made by a killed worker, as the
    # last thing it did: killed after its body, before its completion was
    # answered. A process has one last event, so no more keys than kills ran
    # twice. (A call that outlived its lease, its process descheduled that
    # long on a loaded machine, may lose its result too: allowed, and counted
    # apart; it takes more than the 1 ms body this storm runs.)
    lost = [ev for key, runs in done.items() for ev in runs if ev["n"] != final[key]]
    overran = 0
    for ev in lost:
        if ev["src"] in killed and last[ev["src"]] is ev:
            continue
        assert _call_span_ms(events, ev) > lease_ms, ev
        overran += 1
    assert all(final[key] in {ev["n"] for ev in runs} for key, runs in done.items())
    assert out.lost_outcomes == len(lost)
    assert out.duplicates == len({ev["k"] for ev in lost}) <= kills + overran


def _call_span_ms(events: list[dict[str, Any]], done: dict[str, Any]) -> float:
    """At least how long the call around ``done`` held its claim (infinite when unknown).

    The claim came after the process's previous event and the completion's
    answer before its next one.
    """
    mine = [ev for ev in events if ev["src"] == done["src"]]
    at = next(i for i, ev in enumerate(mine) if ev is done)
    run = max(i for i in range(at) if mine[i]["e"] == "run" and mine[i]["k"] == done["k"])
    if run == 0 or at + 1 == len(mine):
        return float("inf")
    return float(mine[at + 1]["t"] - mine[run - 1]["t"])


# -- lost replies on onceonly's Redis store ----------------------------------------------


@pytest.mark.parametrize(
    ("target", "step"),
    [
        ("onceonly/redis-aof-everysec", reply_faults.CLAIM),
        ("onceonly/redis-aof-everysec", reply_faults.COMPLETE),
        ("onceonly/redis-aof-everysec", reply_faults.RELEASE),
    ],
)
def test_a_lost_reply_costs_onceonly_nothing(
    target: str, step: str, tmp_path: Path, engine: harness.Engine
) -> None:
    keys = 40
    with lab_for(f"{step}-reply-lost", target, tmp_path, engine) as lab:
        out = reply_faults.lose_replies(lab, Params(workers=2), step, keys=keys)
        events = events_of(lab)
    assert out.notes["replies_lost"] == reply_faults.drops_for(keys) == keys // 10
    assert (out.duplicates, out.lost_outcomes, out.stale_replays, out.unresolved) == (0, 0, 0, 0)
    # The call whose reply was lost sent its write again under the same token
    # and was answered: no store error, and no later call told "in progress".
    assert out.failed_closed == 0
    assert [ev for ev in events if ev["e"] == "err" and ev["kind"] == "in_progress"] == []
    concluded = by_delivery(events)
    assert len(concluded) == 2 * keys
    for first in range(0, 2 * keys, 2):
        one, two = concluded[first], concluded[first + 1]
        assert one["k"] == two["k"]
        if step == reply_faults.RELEASE:
            # The function's own failure reached the caller, and the claim was
            # released: the next delivery ran the function.
            assert (one["e"], one["kind"]) == ("err", "failed")
            assert (two["e"], two["own"]) == ("got", True)
        else:
            assert (one["e"], one["own"]) == ("got", True)
            assert (two["e"], two["own"], two["n"]) == ("got", False, one["n"])


def _powertools_set(status: str, *, nx: bool) -> list[bytes]:
    value = json.dumps({"status": status, "expiration": 1}).encode()
    return [b"SET", b"pt-key", value, b"EX", b"3600", *([b"NX"] if nx else [])]


def test_each_step_s_matcher_names_the_command_that_writes_it() -> None:
    from onceonly.stores.redis import scripts

    def onceonly_script(script: scripts.Script, *, by_sha: bool = True) -> list[bytes]:
        head = [b"EVALSHA", script.sha.encode()] if by_sha else [b"EVAL", script.code]
        return [*head, b"1", b"oo-key", b"token"]

    native = [b"SET", b"oo-key", b"o1|P|...", b"NX", b"PX", b"2000", b"GET"]
    commands = {
        (ONCEONLY, reply_faults.CLAIM): [native, onceonly_script(scripts.CLAIM)],
        (ONCEONLY, reply_faults.COMPLETE): [
            onceonly_script(scripts.COMPLETE),
            onceonly_script(scripts.COMPLETE, by_sha=False),
        ],
        (ONCEONLY, reply_faults.RELEASE): [onceonly_script(scripts.RELEASE)],
        (POWERTOOLS, reply_faults.CLAIM): [_powertools_set("INPROGRESS", nx=True)],
        (POWERTOOLS, reply_faults.COMPLETE): [_powertools_set("COMPLETED", nx=False)],
        (POWERTOOLS, reply_faults.RELEASE): [[b"DEL", b"pt-key"]],
    }
    others = {
        ONCEONLY: [[b"GET", b"oo-key"], onceonly_script(scripts.RENEW), [b"DEL", b"oo-key"]],
        POWERTOOLS: [
            [b"GET", b"pt-key"],
            [b"SET", b"pt-key:lock", b"True", b"EX", b"10", b"NX"],
            _powertools_set("INPROGRESS", nx=False),  # an orphan's overwrite
        ],
    }
    for (library, step), mine in commands.items():
        match = reply_faults.matcher(library, step)
        for words in mine:
            assert match(words) in (b"oo-key", b"pt-key"), (library, step, words)
        theirs = [
            w for (lib, s), ws in commands.items() if lib == library and s != step for w in ws
        ]
        for words in [*theirs, *others[library]]:
            assert match(words) is None, (library, step, words)


def test_a_drop_plan_loses_the_chosen_keys_first_command_only() -> None:
    plan = replace(
        reply_faults.plan(
            reply_faults.matcher(POWERTOOLS, reply_faults.RELEASE), keys=4, drops=0, seed=1
        ),
        ordinals=frozenset({1, 3}),
    )
    sent = [b"a", b"b", b"b", b"c", b"a", b"d", b"d"]
    assert [plan([b"DEL", key]) for key in sent] == [False, True, False, False, False, True, False]
    assert plan.dropped_keys == {b"b", b"d"}
    assert not plan([b"GET", b"e"])
