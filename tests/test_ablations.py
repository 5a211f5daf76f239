"""The ablation benchmark's variants (benchmarks/ablations.py) are valid settings that switch what
their names say, each in its own folders (the full run is the benchmark: minutes per variant)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from netadapt_core.config import load_params

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("ablations", ROOT / "benchmarks" / "ablations.py")
ablations = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ablations)


def test_every_variant_is_valid_and_switches_one_thing(tmp_path):
    default = load_params(ROOT / "params.yaml")
    seen = set()
    for name in ablations.VARIANTS:
        folder = tmp_path / ablations.slug(name)
        params = load_params(ROOT / "params.yaml", ablations.variant_overrides(name, folder, 0.58))
        assert params.adapt.run_dir == str(folder / "run") and params.finetune.out_dir == str(folder / "finetuned")
        assert not params.tracking.enabled
        changed = {k for k, v in params.adapt.model_dump().items() if v != getattr(default.adapt, k)} - {"run_dir"}
        seen.add(params.adapt.run_dir)
        assert changed == {
            "no short-term fine-tuning": {"short_term_steps"},
            "constant schedule": {"reduction_decay"},
            "pick accuracy per latency": {"pick"},
            "MACs-driven": {"resource", "budget_ratio"},
        }[name], name
        assert params.pretrain == default.pretrain and params.lut == default.lut  # the same start and LUT
    macs = load_params(ROOT / "params.yaml", ablations.variant_overrides("MACs-driven", tmp_path, 0.58)).adapt
    assert macs.resource == "macs" and 0.58 <= macs.budget_ratio < 0.59  # down to the reference's MACs share
    assert len(seen) == len(ablations.VARIANTS)
