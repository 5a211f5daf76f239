"""One proposal: prune the plan's filters from the parent, fine-tune short-term, score on the
holdout split; its content key and durable record (the one source of truth for finished work);
ranking proposals."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from .. import faults
from ..checkpoint import (
    atomic_write_json,
    file_sha256,
    load_checkpoint,
    save_checkpoint,
)
from ..config import AdaptConfig, Params
from ..data import DataBundle
from ..surgery import prune_group
from ..training import evaluate, train
from .plan import ProposalPlan

LOG = logging.getLogger("netadapt")
# the adapt settings a proposal's training reads (its cache key): declared beside each setting
# (AdaptConfig.ROLES)
PROPOSAL_SETTINGS = AdaptConfig.with_role("proposal")


JOURNAL_FILE = "executions.jsonl"


class ProposalResult(BaseModel):
    """A finished proposal: its plan, checkpoint, holdout accuracy and training time. Stored flat
    (the plan's fields beside the result's, ``to_dict`` / ``from_record``) in proposal records,
    task results and the iteration record's ``proposals``."""

    model_config = ConfigDict(frozen=True)

    plan: ProposalPlan
    checkpoint: str
    holdout_accuracy: float
    train_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {**self.plan.model_dump(), "checkpoint": self.checkpoint,
                "holdout_accuracy": self.holdout_accuracy, "train_seconds": self.train_seconds}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> ProposalResult:
        """From ``to_dict``'s form (a proposal record may also nest its plan under ``plan``)."""
        plan = record.get("plan", record)
        return cls(plan=ProposalPlan.from_record(plan), checkpoint=record["checkpoint"],
                   holdout_accuracy=record["holdout_accuracy"], train_seconds=record["train_seconds"])


def proposal_key(params: Params, parent_sha256: str, plan: ProposalPlan) -> str:
    """Content key of a proposal: parent weights, the plan, and the settings its training reads."""
    payload = {
        "parent": parent_sha256,
        # what the training reads of the plan; not its latency estimate, which may be re-measured
        "plan": {k: getattr(plan, k) for k in ("iteration", "group", "channels_before", "channels_after", "seed")},
        "data": params.section_hash("data"),
        "adapt": params.adapt.model_dump(mode="json", include=PROPOSAL_SETTINGS),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def finished_proposal(out_path: str | Path, key: str) -> ProposalResult | None:
    """The result of a proposal already run with this key (its record and checkpoint intact)."""
    record_path = Path(out_path).with_suffix(".json")
    if not record_path.is_file():
        return None
    try:
        record = json.loads(record_path.read_text())
        if record["key"] != key:
            return None  # planned with other settings or another parent: not this proposal
        if file_sha256(record["checkpoint"]) != record["checkpoint_sha256"]:
            raise ValueError(f"checkpoint {record['checkpoint']} differs from the one recorded")
        return ProposalResult.from_record(record)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        LOG.warning("proposal record %s is damaged (%s: %s); the proposal is trained again",
                    record_path, type(exc).__name__, exc)
        return None


def run_proposal(params: Params, data: DataBundle, parent_checkpoint: str, plan: ProposalPlan,
                 out_path: str, key: str, journal: str | Path | None = None, steps: int | None = None,
                 resume_from: str | None = None, screening_round: int = 0) -> ProposalResult:
    """Prune the plan's filters from the parent, fine-tune short-term, score on the holdout set.

    ``steps`` (default ``adapt.short_term_steps``) SGD steps are trained; with ``resume_from`` (the
    proposal's checkpoint from an earlier screening round) training goes on from there instead of
    pruning the parent again (fresh momentum; round ``screening_round`` draws other batches).

    Idempotent: a proposal whose record (``out_path`` with ``.json``) carries the same ``key`` is
    returned as it was, not run again. Each real execution appends a line to ``journal`` (JSON
    lines), written after the record, so finished work can be audited.
    """
    done = finished_proposal(out_path, key)
    if done is not None:
        return done
    started = time.time()
    cfg = params.adapt
    if resume_from is None:
        model, arch, _ = load_checkpoint(parent_checkpoint)
        prune_group(model, plan.group, plan.n_remove, data.input_shape, cfg.importance)
    else:
        model, arch, _ = load_checkpoint(resume_from)
    steps = cfg.short_term_steps if steps is None else steps
    stats = train(model, data.train, cfg, steps, seed=plan.seed + 7919 * screening_round)
    accuracy = evaluate(model, data.holdout, threads=cfg.threads, device=cfg.train_device,
                        channels_last=cfg.channels_last)
    faults.point("proposal-trained")
    sha = save_checkpoint(out_path, model, arch, {"plan": plan.model_dump(), "holdout_accuracy": accuracy})
    faults.point("proposal-saved")
    result = ProposalResult(plan=plan, checkpoint=out_path, holdout_accuracy=accuracy, train_seconds=stats.seconds)
    atomic_write_json(Path(out_path).with_suffix(".json"),
                      {**result.to_dict(), "plan": plan.model_dump(), "key": key, "checkpoint_sha256": sha,
                       "steps": steps, "screening_round": screening_round})
    if journal is not None:
        entry = {"iteration": plan.iteration, "group": plan.group, "key": key, "pid": os.getpid(),
                 "steps": steps, "round": screening_round, "started": started, "finished": time.time()}
        with open(journal, "a") as handle:
            handle.write(json.dumps(entry) + "\n")
    return result


def halving_schedule(total_steps: int, rounds: int, proposals: int) -> list[int]:
    """Cumulative training steps after each screening round: ``total_steps / 2**(rounds-1-k)``,
    one round (no screening) when there are two proposals or fewer, or too few steps to share."""
    if proposals <= 2 or total_steps < 2:
        return [total_steps]
    marks = [max(1, round(total_steps / 2 ** (rounds - 1 - k))) for k in range(rounds)]
    return sorted(set(marks))


def rank_proposals(results: list[ProposalResult], rule: str, parent_accuracy: float,
                   parent_ms: float) -> list[ProposalResult]:
    """Proposals best first. The paper's rule, ``accuracy``: highest holdout accuracy (ties: lower
    latency, then group name). ``accuracy_per_latency``: smallest accuracy loss per ms removed."""
    if rule == "accuracy":
        return sorted(results, key=lambda r: (-r.holdout_accuracy, r.plan.latency_ms, r.plan.group))

    def loss_per_ms(r: ProposalResult) -> float:
        return (parent_accuracy - r.holdout_accuracy) / max(parent_ms - r.plan.latency_ms, 1e-6)

    return sorted(results, key=lambda r: (loss_per_ms(r), r.plan.latency_ms, r.plan.group))


def pick_best(results: list[ProposalResult], rule: str, parent_accuracy: float, parent_ms: float) -> ProposalResult:
    """The first of ``rank_proposals``."""
    if not results:
        raise ValueError("no proposals to pick from")
    return rank_proposals(results, rule, parent_accuracy, parent_ms)[0]


def proposal_path(run_dir: Path, plan: ProposalPlan) -> Path:
    return run_dir / "proposals" / f"{plan.iteration + 1:03d}" / f"{plan.group}.pt"

