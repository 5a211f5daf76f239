"""NetAdapt's ablations (issue #11), against the run of ``--params`` (its adapted, fine-tuned network is
the reference): the paper's questions about its own parts, answered on this machine.

Each adaptation variant is a full ``netadapt adapt`` + ``netadapt finetune`` from the same pretrained
network and LUT, in its own folder under ``--out`` (the settings differ only as listed):

- **no short-term fine-tuning**: proposals are scored right after pruning (``adapt.short_term_steps=0``);
- **constant schedule**: the same reduction every iteration (``adapt.reduction_decay=1.0``);
- **pick accuracy per latency**: the other pick rule (``adapt.pick=accuracy_per_latency``);
- **MACs-driven**: the same loop on MACs (``adapt.resource=macs``) down to the reference's MACs: the
  paper's direct-metric question (is the network as fast when the loop never sees latency?).

Two more rows come from the reference run itself, without adapting again:

- **no long-term fine-tuning**: the reference's final pick, scored on the test set as adapted;
- **final architecture from scratch**: the reference's final widths, weights re-initialised, trained
  for the pipeline's whole budget (pretraining + long-term fine-tuning epochs, the pretraining
  recipe): the MobileNetV3 authors' alternative to fine-tuning.

Every network is timed interleaved with the reference (``measure_relative``), so the latency column
is a measured ratio, free of drift between runs. Prints a table (and writes it with the CPU as
JSON, and a figure of test accuracy against measured latency)::

    .venv/bin/netadapt all && .venv/bin/python benchmarks/ablations.py
    .venv/bin/python benchmarks/ablations.py --variants "constant schedule"   # one variant
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS: dict[str, list[str]] = {
    "no short-term fine-tuning": ["adapt.short_term_steps=0"],
    "constant schedule": ["adapt.reduction_decay=1.0"],
    "pick accuracy per latency": ["adapt.pick=accuracy_per_latency"],
    "MACs-driven": ["adapt.resource=macs"],  # + adapt.budget_ratio: the reference's MACs share
}


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def variant_overrides(name: str, folder: Path, reference_macs_share: float) -> list[str]:
    """The settings of one variant: its own run and fine-tuning folders, tracking off, its switch."""
    extra = list(VARIANTS[name])
    if name == "MACs-driven":
        extra.append(f"adapt.budget_ratio={min(reference_macs_share * 1.001, 0.999):.4f}")
    return [f"adapt.run_dir={folder / 'run'}", f"finetune.out_dir={folder / 'finetuned'}",
            "tracking.enabled=false", *extra]


def run_variant(params_path: str, base: list[str], name: str, folder: Path, macs_share: float) -> float:
    """``netadapt adapt`` then ``netadapt finetune`` for one variant; returns the wall time (s)."""
    sets = [*base, *variant_overrides(name, folder, macs_share)]
    started = time.perf_counter()
    for stage in ("adapt", "finetune"):
        argv = [sys.executable, "-m", "flows.cli", stage, "--params", params_path]
        for s in sets:
            argv += ["--set", s]
        print(f"== {name}: netadapt {stage}", flush=True)
        done = subprocess.run(argv, cwd=ROOT, check=False, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        if done.returncode not in (0, 3):  # 3: a budget unmet; the closest pick is still fine-tuned
            sys.exit(f"{name}: netadapt {stage} failed (exit {done.returncode})")
    return time.perf_counter() - started


def main() -> None:
    from netadapt_core.adapt import STATE_FILE, RunState
    from netadapt_core.checkpoint import load_checkpoint
    from netadapt_core.config import load_params
    from netadapt_core.data import load_data
    from netadapt_core.platforms import cpu_model, make_platform, measure_relative
    from netadapt_core.resources import count_macs_params
    from netadapt_core.stages import finetuned_checkpoint
    from netadapt_core.training import evaluate, steps_for_epochs, train

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--no-scratch", action="store_true", help="leave out the from-scratch row")
    parser.add_argument("--out", default=str(ROOT / "reports" / "ablations"))
    args = parser.parse_args()
    out = Path(args.out)
    params = load_params(args.params, args.overrides)
    data = load_data(params.data)
    shape = data.input_shape
    reference_state = RunState.load(Path(params.adapt.run_dir) / STATE_FILE)
    ref_path, ref_tuned, ref_pick = finetuned_checkpoint(params)
    reference, _, _ = load_checkpoint(ref_path)
    macs_share = ref_pick.macs / reference_state.baseline.macs

    networks: list[tuple[str, object, float, dict]] = []  # (method, network, test accuracy, facts)
    ref_seconds = sum(r.seconds for r in reference_state.iterations)
    networks.append(("NetAdapt (reference run)", reference.eval(), ref_tuned["test_accuracy"],
                     {"iterations": len(reference_state.iterations), "adapt_s": round(ref_seconds)}))
    for name in args.variants:
        folder = out / slug(name)
        wall = run_variant(args.params, args.overrides, name, folder, macs_share)
        var = load_params(args.params, [*args.overrides, *variant_overrides(name, folder, macs_share)])
        state = RunState.load(Path(var.adapt.run_dir) / STATE_FILE)
        path, tuned, _ = finetuned_checkpoint(var)
        networks.append((name, load_checkpoint(path)[0].eval(), tuned["test_accuracy"],
                         {"iterations": len(state.iterations), "status": state.status,
                          "adapt_s": round(sum(r.seconds for r in state.iterations)), "wall_s": round(wall)}))

    before_ft, _, _ = load_checkpoint(ref_pick.checkpoint)
    acc = evaluate(before_ft, data.test, threads=params.finetune.threads, channels_last=params.finetune.channels_last)
    networks.append(("no long-term fine-tuning", before_ft.eval(), acc, {"note": "the reference's final pick as adapted"}))

    if not args.no_scratch:
        scratch, _, _ = load_checkpoint(ref_pick.checkpoint)
        pre = params.pretrain
        import torch

        torch.manual_seed(pre.seed)
        for module in scratch.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
        epochs = pre.epochs + params.finetune.epochs
        started = time.perf_counter()
        print(f"== final architecture from scratch: {epochs:g} epochs", flush=True)
        train(scratch, data.train, pre, steps_for_epochs(data.train, pre.batch_size, epochs), seed=pre.seed, cosine=True)
        acc = evaluate(scratch, data.test, threads=pre.threads, channels_last=pre.channels_last)
        networks.append(("final architecture from scratch", scratch.eval(), acc,
                         {"note": f"{epochs:g} epochs (pretraining + fine-tuning budget)",
                          "train_s": round(time.perf_counter() - started)}))

    platform = make_platform(params.platform)
    pairs = measure_relative(platform, [net for _, net, _, _ in networks], reference, shape)
    ref_ms = ref_tuned["measured_ms"]
    rows = []
    for (method, net, accuracy, facts), (own, ref) in zip(networks, pairs):
        counts = count_macs_params(net, shape)
        ratio = own.median_ms / ref.median_ms
        rows.append({"method": method, "latency_vs_reference": round(ratio, 4), "latency_ms": round(ratio * ref_ms, 4),
                     "macs": counts["macs"], "params": counts["params"], "test_accuracy": accuracy, **facts})
    start_ms = reference_state.baseline.measured_ms
    result = {"cpu": cpu_model(), "platform": params.platform.name, "threads": params.platform.threads,
              "start_ms": start_ms, "start_test_accuracy": load_checkpoint(params.pretrain.checkpoint)[2]["test_accuracy"],
              "rows": rows}
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablations.json").write_text(json.dumps(result, indent=2))
    figure = plot(rows, out / "ablations.png", result)
    print(f"\n{result['cpu']}, {params.platform.name}, {params.platform.threads} thread(s); start {start_ms:.3f} ms, "
          f"test {100 * result['start_test_accuracy']:.2f}%; figure {figure}")
    print("| method | latency vs reference (measured, interleaved) | MACs | parameters | test accuracy | notes |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        notes = ", ".join(f"{k} {v}" for k, v in r.items() if k not in
                          ("method", "latency_vs_reference", "latency_ms", "macs", "params", "test_accuracy"))
        print(f"| {r['method']} | x{r['latency_vs_reference']:.3f} | {r['macs'] / 1e6:.1f} M | {r['params'] / 1e6:.2f} M "
              f"| {100 * r['test_accuracy']:.2f}% | {notes} |")


def plot(rows: list[dict], path: Path, result: dict) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        ax.scatter(r["latency_ms"], 100 * r["test_accuracy"], s=40)
        ax.annotate(r["method"], (r["latency_ms"], 100 * r["test_accuracy"]), fontsize=7,
                    xytext=(4, 3), textcoords="offset points")
    ax.set_xlabel(f"measured latency, ms ({result['platform']}, {result['cpu']})")
    ax.set_ylabel("test accuracy, %")
    ax.set_title("NetAdapt ablations (each timed interleaved with the reference)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
