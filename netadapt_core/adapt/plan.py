"""Planning: one proposal per group, the fewest filters that meet the iteration's target, its
latency predicted from the parent's measurement and the LUT's difference (``latency_model``); and
the check that the budget is reachable at all."""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel, ConfigDict
from torch import nn

from ..config import ConfigError
from ..errors import NetAdaptError
from ..latency_model import LatencyModel
from ..lut import ChannelGrid, WidthTemplate
from ..resources import Budget, count_macs_params, format_value
from ..surgery import prunable_groups, prune_group
from .context import Context


class BudgetUnreachableError(NetAdaptError, RuntimeError):
    """No network the LUT grid allows can meet the budget."""


class ProposalPlan(BaseModel):
    """What one proposal will do: remove ``n_remove`` filters of group ``group``, the fewest that
    meet the iteration's target on ``resource``; its estimated latency (LUT), MACs and parameters.

    A record of its own (``model_dump`` / ``from_record``): it travels to workers as JSON, sits in
    the run state's pending plan, and is kept in every proposal's record."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    iteration: int
    group: str
    channels_before: int
    channels_after: int
    estimated_ms: float
    seed: int
    resource: str = "latency"
    estimated_macs: int = 0
    estimated_params: int = 0
    verified_ms: float | None = None  # measured before training (adapt.verify), interleaved with the parent

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> ProposalPlan:
        """A plan from a record that may hold more keys (a proposal's result) or, from older runs, fewer."""
        return cls.model_validate({k: record[k] for k in cls.model_fields if k in record})

    @property
    def latency_ms(self) -> float:
        """The best knowledge of the candidate's latency: measured if it was, else predicted."""
        return self.estimated_ms if self.verified_ms is None else self.verified_ms

    @property
    def n_remove(self) -> int:
        return self.channels_before - self.channels_after

    def estimates(self) -> dict[str, float]:
        return {"latency": self.latency_ms, "macs": self.estimated_macs, "params": self.estimated_params}


class GroupEstimates:
    """Resource use of ``parent`` with one group cut to a given width, each variant built once:
    latency predicted by ``latency_model`` from the parent's latency (``anchor_ms``) and the LUT's
    difference, MACs and parameters counted."""

    def __init__(self, ctx: Context, parent: nn.Module, group: str, channels: int, anchor_ms: float,
                 resource: str, latency_model: LatencyModel | None = None,
                 parent_signatures: list[str] | None = None) -> None:
        self.ctx, self.parent, self.group, self.channels = ctx, parent, group, channels
        self.anchor_ms, self.resource = anchor_ms, resource
        self.latency_model = latency_model
        self.parent_signatures = parent_signatures or [u.signature for u in ctx.estimator.uses(parent)]
        self.parent_sum = ctx.estimator.layer_sum_ms(parent)
        self.cache: dict[tuple[int, str], float] = {}
        self.variants: dict[int, nn.Module] = {}
        self.template: WidthTemplate | None = None  # None: not made yet (probed False) or cannot be made
        self.probed = False
        self.misread = False  # set when the template disagreed with a built network (and was dropped)

    def variant(self, channels: int) -> nn.Module:
        if channels not in self.variants:
            self.variants[channels] = copy.deepcopy(self.parent)
            prune_group(self.variants[channels], self.group, self.channels - channels, self.ctx.input_shape)
        return self.variants[channels]

    def _template(self, channels: int) -> WidthTemplate | None:
        """The group's ``WidthTemplate``, made from the first variant built (``channels``: the
        narrowest width, the first a search asks for, so feasibility is always read off a built
        network)."""
        if not self.probed:
            self.probed = True
            probe = [u.signature for u in self.ctx.estimator.uses(self.variant(channels))]
            self.template = WidthTemplate.make(self.parent_signatures, probe, self.channels, channels)
        return self.template

    def layer_sum_ms(self, channels: int) -> float:
        """The variant's LUT layer sum; by the template while the table has its entries (a search
        over the grid builds a few networks per group, not one per width it tries)."""
        template = self._template(channels)
        if template is not None and channels not in self.variants:
            found = self.ctx.estimator.signature_sum_ms(template.signatures(channels))
            if found is not None:
                return found
        return self.ctx.estimator.layer_sum_ms(self.variant(channels))

    def __call__(self, channels: int, what: str | None = None) -> float:
        what = what or self.resource
        if (channels, what) not in self.cache:
            if what == "latency":
                child_sum = self.layer_sum_ms(channels)
                if self.latency_model is None:
                    self.cache[channels, what] = self.anchor_ms + child_sum - self.parent_sum
                else:
                    self.cache[channels, what] = self.latency_model.predict(self.anchor_ms, self.parent_sum,
                                                                            child_sum)
            else:
                variant = self.variant(channels)
                self.cache.update({(channels, k): v for k, v in count_macs_params(variant, self.ctx.input_shape).items()})
        return self.cache[channels, what]

    def plan(self, iteration: int, channels: int, seed: int) -> ProposalPlan:
        macs, params = int(self(channels, "macs")), int(self(channels, "params"))  # builds the variant
        if self.template is not None:
            built = self.ctx.estimator.layer_sum_ms(self.variants[channels])
            by_template = self.ctx.estimator.signature_sum_ms(self.template.signatures(channels))
            # the built network's entries are all in the table now: a template signature missing
            # from it is a misread as much as a different sum
            if by_template is None or abs(built - by_template) > 1e-9 * max(1.0, built):
                # the template misread this network: from now on build every width of this group
                self.ctx.log(f"{self.group}: width template off ({by_template:.4f} vs {built:.4f} ms); "
                             "building every variant of this group")
                self.template, self.misread = None, True
                self.cache = {k: v for k, v in self.cache.items() if k[1] != "latency"}
        return ProposalPlan(iteration=iteration, group=self.group, channels_before=self.channels,
                            channels_after=channels, estimated_ms=self(channels, "latency"), seed=seed,
                            resource=self.resource, estimated_macs=macs, estimated_params=params)


def group_options(ctx: Context, group) -> list[int]:
    """The grid widths below a group's current width, largest first (empty: at its minimum)."""
    g = ctx.estimator.lut.grid.get(group.id)
    if g is None:
        raise ConfigError(f"group {group.id} is not in the LUT grid; rebuild the LUT for this network")
    return [c for c in g.widths() if c < group.channels]


def _fewest_meeting(estimate: GroupEstimates, options: list[int], target: float | None) -> int | None:
    """The widest grid width (fewest filters removed) whose estimate meets ``target``: a bisection,
    as a group's resource use falls as it loses filters. None: not even the narrowest does;
    ``target=None``: one grid step."""
    if target is None:
        return options[0]
    if estimate(options[-1]) > target:
        return None
    lo, hi = 0, len(options) - 1  # options[hi] meets the target; find the first that does
    while lo < hi:
        mid = (lo + hi) // 2
        if estimate(options[mid]) <= target:
            hi = mid
        else:
            lo = mid + 1
    return options[hi]


def plan_proposals(ctx: Context, parent: nn.Module, iteration: int, current: dict[str, float], target: float | None,
                   resource: str = "latency", guards: list[Budget] = (),
                   latency_model: LatencyModel | None = None,
                   estimates: dict[str, GroupEstimates] | None = None) -> list[ProposalPlan]:
    """One plan per group that can meet ``target`` on ``resource``: the fewest filters (grid
    multiples) that do. ``current`` holds the parent's value of every resource (its latency is the
    anchor of the latency predictions). ``target=None`` plans one grid step per group instead.
    ``estimates`` (group id -> ``GroupEstimates``) keeps the variants built, for another target
    on the same parent.

    A group's resource use falls as it loses filters, so the search is a bisection over its grid.
    Groups already at their minimum, or unable to reach the target even there, make no proposal;
    nor does one that would break a budget in ``guards`` (budgets the parent meets).
    """
    plans = []
    estimates = {} if estimates is None else estimates
    parent_signatures: list[str] | None = None
    for index, group in enumerate(prunable_groups(parent, ctx.input_shape, ctx.params.adapt.exclude)):
        options = group_options(ctx, group)
        if not options:
            continue
        if group.id not in estimates:
            if parent_signatures is None:
                parent_signatures = [u.signature for u in ctx.estimator.uses(parent)]
            estimates[group.id] = GroupEstimates(ctx, parent, group.id, group.channels, current["latency"], resource,
                                                 latency_model, parent_signatures)
        estimate = estimates[group.id]
        seed = ctx.params.adapt.seed + 1000 * iteration + index
        channels = _fewest_meeting(estimate, options, target)
        if channels is None:
            continue
        plan = estimate.plan(iteration, channels, seed)
        if estimate.misread:  # the template was dropped while planning: search again on built networks
            estimate.misread = False
            channels = _fewest_meeting(estimate, options, target)
            if channels is None:
                continue
            plan = estimate.plan(iteration, channels, seed)
        broken = [b for b in guards if not b.met(plan.estimates()[b.resource])]
        if broken:
            ctx.log(f"iteration {iteration + 1}: {group.id} -> {channels} rejected: it would break "
                    + ", ".join(b.describe() for b in broken))
            continue
        plans.append(plan)
    ctx.estimator.save()
    return plans


def smallest_network(model: nn.Module, input_shape: tuple[int, ...], grid: ChannelGrid,
                     exclude: list[str]) -> nn.Module:
    """A copy of ``model`` with every group it may prune at the narrowest width of the LUT grid."""
    smallest = copy.deepcopy(model)
    for group in prunable_groups(smallest, input_shape, exclude):
        floor = grid[group.id].widths()[-1]
        if floor < group.channels:
            prune_group(smallest, group.id, group.channels - floor, input_shape)
    return smallest


def unreachable_error(missed: list[Budget], start: dict[str, float], floors: dict[str, float],
                      min_channel_ratio: float, when: str = "") -> BudgetUnreachableError:
    """The error for budgets that even the smallest network misses, naming each and the fix."""
    what = "; ".join(
        f"{b.describe()} (start {format_value(b.resource, start[b.resource])}, smallest network "
        f"{format_value(b.resource, floors[b.resource])}{' by the LUT' if b.resource == 'latency' else ''})"
        for b in missed
    )
    return BudgetUnreachableError(
        f"unreachable budget: with every layer at its minimum width (lut.min_channel_ratio={min_channel_ratio}) "
        f"the network still misses {what}. Fix: raise adapt.budget_ratio / adapt.budget or the constraint, or "
        f"lower lut.min_channel_ratio and rebuild the LUT{when}"
    )


def check_reachable(ctx: Context, model: nn.Module, all_budgets: list[Budget], start: dict[str, float]) -> None:
    """Fail before any training if even the smallest network the grid allows misses a budget."""
    smallest = smallest_network(model, ctx.input_shape, ctx.estimator.lut.grid, ctx.params.adapt.exclude)
    floors = {
        "latency": start["latency"] - (ctx.estimator.layer_sum_ms(model) - ctx.estimator.layer_sum_ms(smallest)),
        **count_macs_params(smallest, ctx.input_shape),
    }
    missed = [b for b in all_budgets if not b.met(floors[b.resource])]
    if missed:
        raise unreachable_error(missed, start, floors, ctx.params.lut.min_channel_ratio)

