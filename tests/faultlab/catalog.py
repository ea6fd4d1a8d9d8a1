"""Every scenario (each module registers its own in ``SCENARIOS``), in the table's order."""

from __future__ import annotations

import faultlab.clock_faults
import faultlab.failover_faults
import faultlab.reply_faults
import faultlab.scenarios
import faultlab.server_faults
import faultlab.soak
from faultlab.scenarios import SCENARIOS, Params, Scenario

# Each module below registers its scenarios when imported.
_MODULES = [
    faultlab.scenarios,
    faultlab.reply_faults,
    faultlab.server_faults,
    faultlab.failover_faults,
    faultlab.clock_faults,
    faultlab.soak,
]

# The order of the published table: the network, the worker, the server, the
# topology, the clock; the soak last.
ORDER = [
    "claim-reply-lost",
    "complete-reply-lost",
    "release-reply-lost",
    "paused-worker",
    "paused-worker-heartbeat",
    "slow-function",
    "slow-function-heartbeat",
    "kill-storm",
    "server-sigkill",
    "server-sigterm",
    "server-frozen",
    "sentinel-failover",
    "cluster-failover",
    "clock-skew",
    "clock-skew-allowance-3s",
    "soak",
]
_rank = {name: n for n, name in enumerate(ORDER)}
_ranked = sorted(SCENARIOS.items(), key=lambda item: _rank.get(item[0], len(ORDER)))
SCENARIOS.clear()
SCENARIOS.update(_ranked)

__all__ = ["ORDER", "SCENARIOS", "Params", "Scenario"]
