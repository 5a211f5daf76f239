"""`dvc repro` of the real pipeline on tiny settings, in a throw-away copy of the repository."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import tiny_overrides

ROOT = Path(__file__).resolve().parents[1]
PATH_KEYS = ("pretrain.checkpoint", "lut.path", "lut.on_demand_path", "adapt.run_dir", "finetune.out_dir", "export.out_dir", "report.", "tracking.uri")


def _repo_copy(tmp_path, data_root):
    """The repository's files in a throw-away folder, with tiny settings in its params.yaml; and a
    ``run`` that runs a command there with this environment's dvc and netadapt."""
    repo = tmp_path / "repo"
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (ROOT / name).is_file() and not name.startswith("tests/"):
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, repo / name)
    from netadapt_core.config import load_params

    overrides = [o for o in tiny_overrides(tmp_path, data_root) if not o.startswith(PATH_KEYS)]
    params = load_params(repo / "params.yaml", overrides)
    (repo / "params.yaml").write_text(yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "NETADAPT_"))}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"  # dvc and netadapt of this environment

    def run(*args, check=True):
        done = subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True, timeout=900)
        if check:
            assert done.returncode == 0, f"{args}\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
        return done

    run("git", "init", "-q")
    assert (repo / ".dvc/config").is_file()  # the repository ships initialised for DVC
    return repo, run


@pytest.mark.slow
def test_dvc_repro_reruns_only_what_changed_and_round_trips(tmp_path, data_root):
    repo, run = _repo_copy(tmp_path, data_root)
    first = run("dvc", "repro")
    assert "Running stage 'adapt'" in first.stdout
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    assert metrics["status"] == "done" and metrics["final"]["finetuned"]
    shown = run("dvc", "metrics", "show", "--json").stdout
    flat = json.dumps(json.loads(shown))
    assert "final.test_accuracy" in run("dvc", "metrics", "show").stdout or "test_accuracy" in flat
    assert "measured_ms" in flat
    lut_lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["lut"]
    lut_mtime = (repo / "artifacts/lut.json").stat().st_mtime_ns

    tree = yaml.safe_load((repo / "params.yaml").read_text())
    tree["finetune"]["epochs"] = 0.25
    (repo / "params.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))
    status = run("dvc", "status").stdout
    assert "finetune:" in status and "lut:" not in status and "adapt:" not in status
    second = run("dvc", "repro")
    assert "Running stage 'finetune'" in second.stdout
    assert "Running stage 'lut'" not in second.stdout and "Running stage 'adapt'" not in second.stdout
    assert yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["lut"] == lut_lock
    assert (repo / "artifacts/lut.json").stat().st_mtime_ns == lut_mtime

    store = tmp_path / "dvc-store"
    run("dvc", "remote", "add", "-d", "local", str(store))
    run("dvc", "push")
    original = (repo / "artifacts/pretrained.pt").read_bytes()
    (repo / "artifacts/pretrained.pt").unlink()
    shutil.rmtree(repo / ".dvc/cache")
    run("dvc", "pull")
    assert (repo / "artifacts/pretrained.pt").read_bytes() == original


def test_each_dvc_stage_depends_on_its_own_code_and_every_dependency_exists():
    """A code edit re-runs exactly the stages whose module it touches; a path that no longer exists
    (a module moved) would make DVC fail or never re-run."""
    root = Path(__file__).resolve().parents[1]
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        deps = [next(iter(d)) if isinstance(d, dict) else d for d in stage["deps"]]
        code = [d for d in deps if d.startswith(("netadapt_core", "flows", "tasks"))]
        for path in code:
            assert (root / path).exists(), f"dvc.yaml stage {name}: {path} does not exist"
        own = {"adapt": "netadapt_core/adapt", }.get(
            name, f"netadapt_core/stages/{name}.py")
        assert own in code, f"dvc.yaml stage {name} does not list its own code {own}"


@pytest.mark.slow
def test_netadapt_all_records_its_stages_so_dvc_repro_does_not_redo_them(tmp_path, data_root):
    repo, run = _repo_copy(tmp_path, data_root)
    done = run("netadapt", "all")
    assert "recorded in dvc.lock" in done.stdout + done.stderr
    locked = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert set(locked) == set(yaml.safe_load((repo / "dvc.yaml").read_text())["stages"])
    assert "up to date" in run("dvc", "status").stdout
    assert "Running stage" not in run("dvc", "repro").stdout  # nothing redone
    # a stage run alone is recorded too (what depends on its outputs is then out of date, as it is),
    # and with --set nothing is recorded (dvc reads params.yaml)
    tree = yaml.safe_load((repo / "params.yaml").read_text())
    tree["finetune"]["epochs"] = 0.25
    (repo / "params.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))
    assert "finetune:" in run("dvc", "status").stdout
    run("netadapt", "finetune")
    status = run("dvc", "status").stdout
    assert "finetune:" not in status and "report:" in status
    other = run("netadapt", "finetune", "--set", "finetune.epochs=0.5")
    assert "dvc.lock not updated" in other.stdout + other.stderr
