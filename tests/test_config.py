from pathlib import Path

import pytest

from netadapt_core.config import ConfigError, load_params, with_overrides


def test_repo_params_yaml_is_valid_and_matches_defaults():
    params = load_params("params.yaml")
    assert params.model.name == "mobilenet_v1"
    assert params.adapt.budget_ratio == 0.5
    assert params.data.dataset == "fashion_mnist"


def test_override_types_are_parsed_as_yaml():
    params = load_params(None, ["adapt.budget_ratio=0.6", "platform.threads=2", "lut.check_networks=[1.0, 0.25]"])
    assert params.adapt.budget_ratio == 0.6
    assert params.platform.threads == 2
    assert params.lut.check_networks == [1.0, 0.25]


@pytest.mark.parametrize(
    "override, names",
    [
        ("adapt.budget_ratio=1.5", ["adapt.budget_ratio", "less than 1"]),
        ("adapt.budgett=0.5", ["adapt.budgett", "unknown key"]),
        ("model.name=resnet9000", ["model.name", "mobilenet_v1", "tiny_cnn"]),
        ("platform.name=tpu", ["platform.name", "torch-cpu"]),
        ("adapt.importance=random", ["adapt.importance", "l2_norm"]),
        ("data.dataset=imagenet", ["data.dataset", "fashion_mnist"]),
        ("data.dataset=imagefolder", ["image_folder"]),
        ("platform.repeats=1", ["platform.repeats"]),
    ],
)
def test_bad_values_name_the_key_and_what_is_allowed(override, names):
    with pytest.raises(ConfigError) as err:
        load_params("params.yaml", [override])
    for name in names:
        assert name in str(err.value)


def test_no_budget_at_all_is_refused():
    with pytest.raises(ConfigError, match="budget_ratio"):
        load_params(None, ["adapt.budget_ratio=null", "adapt.budget=null"])


def test_malformed_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="section.key=value"):
        load_params(None, ["adapt.budget_ratio"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)


def test_section_hash_changes_only_with_its_section():
    params = load_params(None)
    changed = with_overrides(params, ["finetune.epochs=3"])
    assert params.section_hash("model", "platform") == changed.section_hash("model", "platform")
    assert params.section_hash("finetune") != changed.section_hash("finetune")


def test_built_in_defaults_are_params_yaml():
    """A params file that sets one section (examples/*.yaml) gets params.yaml's values for the rest."""
    root = Path(__file__).resolve().parents[1]
    from netadapt_core.platforms import PLATFORMS

    from_file = load_params(root / "params.yaml")
    assert load_params(None).model_dump() == from_file.model_dump()
    # the sections of the platforms not in use hold each platform's own defaults too
    sections = from_file.platform.__pydantic_extra__
    assert set(sections) == set(PLATFORMS.names()) - {"torch-cpu"} | {from_file.platform.name}
    for name, section in sections.items():
        assert section == PLATFORMS.get(name).Settings(), name


def test_every_package_of_the_tree_is_in_pyproject():
    """``pip install .`` (not editable) installs only the listed packages: a new one must be listed."""
    import tomllib

    root = Path(__file__).resolve().parents[1]
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(root).parts) for top in ("netadapt_core", "flows", "tasks")
             for p in (root / top).rglob("__init__.py")}
    assert found == listed


def test_every_adapt_setting_has_a_cache_role_and_a_new_one_without_fails():
    from netadapt_core.config import AdaptConfig, _check_roles

    assert set(AdaptConfig.ROLES) == set(AdaptConfig.model_fields)
    assert AdaptConfig.with_role("proposal") >= {"short_term_steps", "lr", "importance"}
    assert "runner" in AdaptConfig.with_role("execution") and "budget_ratio" in AdaptConfig.with_role("run")

    class WithANewKnob(AdaptConfig):
        warmup_steps: int = 0

    with pytest.raises(TypeError, match=r"without a role \['warmup_steps'\]"):
        _check_roles(WithANewKnob)
