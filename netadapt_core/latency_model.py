"""Where a candidate network's latency will land, anchored on measurement and re-calibrated online.

The LUT knows what each layer costs alone; a network is not exactly the sum of its layers, and the
gap moves as the network is pruned (a LUT tuned on uniform-width networks drifted 15-28% from the
measured latency of an adaptation's picks on a 2-core AMD EPYC). So planning never trusts the
LUT's absolute value. It predicts a candidate from its parent's *measurement* and the LUT's
*difference* between the two, scaled by a slope the run keeps fitting from the networks it
measures::

    predicted(child) = measured(parent) + slope * (lut(child) - lut(parent))
    slope = argmin  sum_j (dM_j - slope * dL_j)^2 + prior * (slope - 1)^2

over the ``RECENT`` latest measured networks ``j`` (picks, and candidates measured before
training), ``dM_j`` / ``dL_j`` being the measured / LUT change from that network's parent. Local
differences, not changes since the start: the gap between LUT and machine is not linear over a
whole run, and the slope that matters is the one where the run is now. The prior (slope 1: the
LUT's calibrated scale is right) weighs as much as one network 5% smaller than the start, so the
first iteration follows the LUT and later ones follow the evidence.

The same record of predictions against measurements gives the model's uncertainty: the RMS of the
relative errors of its recent predictions, which decides which candidates are measured directly
before training (``adapt.verify``).

With ``adapt.latency_source: lut`` the model is the LUT itself (anchor on the LUT, slope 1): the
same settings give the same picks on any machine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from pydantic import BaseModel, Field

PRIOR_SHARE = 0.05  # the prior weighs as much as one network this share smaller than the start
DEFAULT_REL_ERROR = 0.02  # uncertainty before any prediction has been checked
RECENT = 8  # latest measured networks that make up the slope and the uncertainty


class LatencyPoint(BaseModel):
    """A network the run measured, and its parent: LUT estimates and measured latencies (ms)."""

    lut_ms: float
    measured_ms: float
    parent_lut_ms: float
    parent_measured_ms: float
    predicted_ms: float | None = Field(None, description="what the model predicted before measuring")
    kind: str = Field("pick", description="pick | candidate")


@dataclass
class LatencyModel:
    """Measured-anchored latency prediction; see the module docstring.

    ``start_lut_ms``: the start network's LUT estimate (sets the prior's weight); ``points``: every
    network measured since, in order.
    """

    start_lut_ms: float
    points: list[LatencyPoint] = field(default_factory=list)
    anchored: bool = True  # False: the LUT as is (adapt.latency_source: lut)

    @property
    def slope(self) -> float:
        if not self.anchored:
            return 1.0
        prior = (PRIOR_SHARE * self.start_lut_ms) ** 2
        num, den = prior, prior
        for p in self.points[-RECENT:]:
            dl = p.lut_ms - p.parent_lut_ms
            dm = p.measured_ms - p.parent_measured_ms
            num += dl * dm
            den += dl * dl
        slope = num / den
        return min(max(slope, 0.25), 4.0)  # a fit this far off is broken data, not a machine

    def predict(self, parent_ms: float, parent_lut_ms: float, child_lut_ms: float) -> float:
        """Latency of a child of a network measured at ``parent_ms`` (LUT ``parent_lut_ms``)."""
        return parent_ms + self.slope * (child_lut_ms - parent_lut_ms)

    def relative_error(self) -> float:
        """RMS relative error of the recent predictions that were checked by measurement."""
        checked = [p for p in self.points if p.predicted_ms is not None][-RECENT:]
        if not checked:
            return DEFAULT_REL_ERROR
        return math.sqrt(sum(((p.predicted_ms - p.measured_ms) / p.measured_ms) ** 2 for p in checked)
                         / len(checked))
