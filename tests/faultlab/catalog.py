"""Every scenario, each module's registered in :data:`faultlab.scenarios.SCENARIOS`."""

from __future__ import annotations

import faultlab.clock_faults
import faultlab.failover_faults
import faultlab.scenarios
import faultlab.server_faults
import faultlab.soak
from faultlab.scenarios import SCENARIOS, Params, Scenario

# Each module below registers its scenarios when imported.
_MODULES = [
    faultlab.scenarios,
    faultlab.soak,
    faultlab.server_faults,
    faultlab.clock_faults,
    faultlab.failover_faults,
]

__all__ = ["SCENARIOS", "Params", "Scenario"]
