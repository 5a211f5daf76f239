"""Which networks netadapt adapts: every torchvision classification builder and a sample of timm.

For each network, at a small input on a Fashion-MNIST subset, the real pipeline code runs:
build (fitted to 1-channel 32 px images, 10 classes) -> surgery check (each group pruned on a copy,
silenced channels must not change the output) -> a few pretraining steps -> LUT build on torch-cpu
-> one adaptation iteration (a short-term fine-tune per proposal) -> the adapted network measured
against its parent -> export to ONNX / torch.export / TorchScript with the equality check.
A network either passes every step ("adapted") or is refused up front by a named-layer error
("refused"); anything else ("FAILED") is a bug. One row per network, as JSON lines and a table::

    .venv/bin/python benchmarks/model_matrix.py --all                 # the full matrix (hours on 2 cores)
    .venv/bin/python benchmarks/model_matrix.py torchvision:resnet18 timm:resnet10t
    .venv/bin/python benchmarks/model_matrix.py --sample              # what CI runs (tests/test_model_matrix.py)

Settings are deliberately tiny (timing noise does not matter here: the point is whether each step
works and the result is correct); ``--out`` keeps one JSON line per network so a long run resumes.
"""

from __future__ import annotations

import argparse
import json
import platform as host
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch

from netadapt_core.adapt import NetAdapt, architecture, make_context, measure_point, open_run
from netadapt_core.checkpoint import load_checkpoint
from netadapt_core.config import Params, load_params
from netadapt_core.errors import NetAdaptError
from netadapt_core.export import ExportError, ExportMismatchError, export_network, sample_images
from netadapt_core.layers import UnsupportedLayerError
from netadapt_core.models import ModelError, check_network
from netadapt_core.platforms import cpu_model
from netadapt_core.stages import run_lut, run_pretrain
from netadapt_core.surgery import SurgeryError, check_surgery

REFUSALS = (UnsupportedLayerError, ModelError, SurgeryError)
# timm: at least ten families (ResNet, MobileNetV3, EfficientNet, RegNet, DenseNet, GhostNet, RepVGG,
# MixNet, VoVNet, DLA, CSPNet, ConvNeXt, ViT...)
TIMM_SAMPLE = [
    "timm:resnet10t", "timm:mobilenetv3_small_050", "timm:efficientnet_b0", "timm:regnetx_002",
    "timm:densenet121", "timm:ghostnet_100", "timm:repvgg_a0", "timm:mixnet_s", "timm:ese_vovnet19b_dw",
    "timm:dla34", "timm:cspresnet50", "timm:convnext_atto", "timm:vit_tiny_patch16_224", "timm:lcnet_050",
]
# what CI runs: one network per kind of structure (residual adds, SE + Hardswish, concatenation,
# grouped convolutions, a refused channel shuffle, a refused transformer)
SAMPLE = ["torchvision:resnet18", "torchvision:mobilenet_v3_small", "torchvision:squeezenet1_1",
          "torchvision:regnet_x_400mf", "torchvision:shufflenet_v2_x0_5", "torchvision:swin_t",
          "timm:mobilenetv3_small_050"]
SIZES = {"torchvision:inception_v3": 96, "torchvision:alexnet": 64}  # networks that need a larger input than 32 px


def settings(name: str, out: Path, data_root: Path, size: int) -> Params:
    # a 3% budget: small networks at 32 px (MobileNetV3-Small 0.5) can lose only 4-6% by the LUT with
    # every group at half width (the rest is per-operator overhead), so 5% was refused now and then
    return load_params(None, [
        f"data.root={data_root}", f"data.image_size={size}", "data.train_subset=256", "data.test_subset=64",
        "data.holdout_size=64", f"model.name={name}",
        "pretrain.epochs=0.5", "pretrain.batch_size=32", "pretrain.lr=0.02", f"pretrain.checkpoint={out}/pre.pt",
        "platform.warmup=1", "platform.repeats=3", "platform.min_sample_ms=0.05", "platform.network_repeats=5",
        f"lut.path={out}/lut.json", f"lut.on_demand_path={out}/lut_od.json", "lut.channel_step=8",
        "lut.min_channel_ratio=0.5", "lut.remeasure_rounds=0",
        f"adapt.run_dir={out}/run", "adapt.budget_ratio=0.97", "adapt.initial_reduction_ratio=0.05",
        "adapt.max_iterations=1", "adapt.short_term_steps=1", "adapt.batch_size=8", "adapt.verify=none",
        "adapt.latency_source=lut",  # the iteration by the LUT (deterministic); the check after measures
        "adapt.min_proposal_share=0.0", f"export.out_dir={out}/export", "export.samples=4",
        "tracking.enabled=false",
    ])


def try_network(name: str, data_root: Path, log=lambda _: None) -> dict:
    """One row of the matrix: each step's outcome for ``name``."""
    size = SIZES.get(name, 32)
    row: dict = {"network": name, "input": size, "status": "FAILED", "step": "build"}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        try:
            params = settings(name, out, data_root, size)
            arch, shape = architecture(params)
            model = arch.build().eval()
            row["params_m"] = round(sum(p.numel() for p in model.parameters()) / 1e6, 2)
            check_network(model, shape, arch.kwargs["num_classes"], name)
            row["step"] = "surgery check"
            report = check_surgery(model, shape)
            row["groups"] = sum(not v.startswith("skipped") for v in report.values())
            row["groups_exact"] = sum(v == "function" for v in report.values())
            row["groups_skipped"] = sum(v.startswith("skipped") for v in report.values())
            row["step"] = "pretrain"
            run_pretrain(params, log)
            row["step"] = "lut"
            run_lut(params, log)
            row["step"] = "adapt"
            ctx = make_context(params, log)
            run_dir, state = open_run(ctx)
            NetAdapt(ctx, run_dir, state).run()
            last = state.iterations[-1]
            row["step"] = "measured check"
            final_model, final_arch, _ = load_checkpoint(last.checkpoint)
            final = measure_point(ctx, final_model, reference=state.baseline)  # interleaved with the start
            start = state.baseline
            row.update(pick=last.group, start_ms=round(final["reference_raw_ms"], 3),
                       adapted_ms=round(final["measured_raw_ms"], 3),
                       macs_ratio=round(final["macs"] / start.macs, 3))
            row["step"] = "export"
            samples, diffs, refused = sample_images(params, 4), [], {}
            for fmt in params.export.formats:  # each format on its own: one the exporter lacks is named
                cfg = params.export.model_copy(update={"formats": [fmt], "out_dir": f"{out}/export_{fmt}"})
                try:
                    manifest = export_network(final_model, final_arch, samples, cfg, log=log)
                except ExportMismatchError:
                    raise  # a file that does not reproduce PyTorch is a failure, not a refusal
                except ExportError as exc:
                    refused[fmt] = str(exc).splitlines()[0][:200]
                    continue
                diffs += [f["max_abs_diff"] for f in manifest["files"].values() if "max_abs_diff" in f]
            if not diffs:
                raise ExportError(f"no export format worked: {refused}")
            row["export_max_diff"], row["export_refused"] = max(diffs), refused
            row["status"], row["step"] = "adapted", "done"
        except REFUSALS as exc:
            row["status"], row["reason"] = "refused", str(exc).splitlines()[0][:300]
            if row["step"] not in ("build", "surgery check"):
                row["status"] = "FAILED"  # a refusal after the up-front checks is a bug: it came too late
        except NetAdaptError as exc:
            row["reason"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
        except Exception as exc:  # noqa: BLE001 - the matrix records every failure and goes on
            row["reason"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
            row["traceback"] = traceback.format_exc()[-2000:]
    row["seconds"] = round(time.perf_counter() - started, 1)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("networks", nargs="*")
    parser.add_argument("--all", action="store_true", help="every torchvision builder and the timm sample")
    parser.add_argument("--sample", action="store_true", help="the CI sample")
    parser.add_argument("--data-root", default=str(ROOT / "data"))
    parser.add_argument("--out", default=str(ROOT / "reports" / "model_matrix.jsonl"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from netadapt_core.models.sources import torchvision_builders

    names = list(args.networks)
    if args.all:
        names += [f"torchvision:{b}" for b in torchvision_builders()] + TIMM_SAMPLE
    if args.sample:
        names += SAMPLE
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {}
    if out.is_file():
        done = {r["network"]: r for r in map(json.loads, out.read_text().splitlines())}
    print(f"# model matrix on {cpu_model()} ({host.machine()}), torch {torch.__version__}", flush=True)
    counts: dict[str, int] = {}
    for name in dict.fromkeys(names):
        row = done.get(name) or try_network(name, Path(args.data_root))
        if name not in done:
            with out.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
        counts[row["status"]] = counts.get(row["status"], 0) + 1
        print(format_row(row), flush=True)
    print(f"# {counts}")


def format_row(row: dict) -> str:
    latency = f"{row['start_ms']:.3f} -> {row['adapted_ms']:.3f} ms" if "adapted_ms" in row else ""
    return (f"{row['network']:40s} {row['status']:8s} {row.get('seconds', 0):7.1f}s groups "
            f"{row.get('groups', '-')} ({row.get('groups_exact', '-')} exact, {row.get('groups_skipped', '-')} "
            f"skipped) {latency} {row.get('reason', '')[:160]}"
            + (f" export refused: {', '.join(row['export_refused'])}" if row.get("export_refused") else ""))


if __name__ == "__main__":
    main()
