"""The records a run keeps in ``state.json``: a measured network (``NetworkPoint``: the start, or an
iteration's pick, ``IterationRecord``) and an iteration's plan (``IterationPlan``, kept as the run's
pending plan so that a resumed run trains exactly what it had planned).

Records of earlier versions load as long as they hold the fields every reader needs; keys they hold
beyond these are kept (``extra="allow"``) and written back unchanged.
"""

from __future__ import annotations

from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from .plan import ProposalPlan


class NetworkPoint(BaseModel):
    """One network of the run as measured: iteration 0 is the start network (the baseline).

    ``measured_ms`` is the direct measurement (for a pick: interleaved with the start network and
    scaled by the start's own time, with the raw pair in ``measured_raw_ms`` / ``reference_raw_ms``;
    re-measured picks keep every estimate in ``measured_estimates_ms``); ``lut_ms`` the LUT's
    estimate; ``macs`` and ``params`` are counted."""

    model_config = ConfigDict(extra="allow")

    iteration: int = Field(ge=0)
    checkpoint: str
    checkpoint_sha256: str = ""
    holdout_accuracy: float
    measured_ms: float
    lut_ms: float
    macs: int
    params: int
    measured_raw_ms: float | None = None
    reference_raw_ms: float | None = None
    measured_estimates_ms: list[float] | None = None


class IterationRecord(NetworkPoint):
    """Iteration ``iteration``'s pick: which group lost how many filters, toward which target, every
    proposal's result (``proposals``: ``ProposalResult.to_dict()`` with ``picked``), the picks
    rejected as measured slower than their parent (``rejected``), the proposals dropped by
    screening (``screened_out``), and where the time went (``timing``, ``seconds``)."""

    group: str
    channels_before: int
    channels_after: int
    filters_removed: int
    resource: str = "latency"
    target: float = Field(validation_alias=AliasChoices("target", "target_ms"))  # target_ms: the first versions
    estimated_ms: float | None = None
    verified_ms: float | None = None
    slope: float | None = None
    proposals: list[dict[str, Any]] = Field(default_factory=list)
    rejected: list[dict[str, Any]] = Field(default_factory=list)
    screened_out: list[dict[str, Any]] = Field(default_factory=list)
    note: str = ""
    timing: dict[str, float] = Field(default_factory=dict)
    seconds: float = 0.0


class IterationPlan(BaseModel):
    """One iteration's target on ``resource`` and its proposals; or, with no plans, why none
    (``note``). As the run's pending plan it names its parent (``parent_sha256``): a plan made for
    another parent is not resumed."""

    model_config = ConfigDict(extra="forbid")

    iteration: int
    resource: str
    target: float
    plans: list[ProposalPlan]
    note: str = ""
    parent_sha256: str = ""
