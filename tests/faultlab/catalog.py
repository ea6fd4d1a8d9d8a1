"""Every scenario, each module's registered in :data:`faultlab.scenarios.SCENARIOS`."""

from __future__ import annotations

import faultlab.reply_faults
import faultlab.scenarios
from faultlab.scenarios import SCENARIOS, Params, Scenario

# Each module below registers its scenarios when imported.
_MODULES = [faultlab.scenarios, faultlab.reply_faults]

__all__ = ["SCENARIOS", "Params", "Scenario"]
