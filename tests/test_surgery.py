import copy
from collections import OrderedDict

import pytest
import torch
from torch import nn

from netadapt_core.checkpoint import Architecture, CheckpointError, load_checkpoint, save_checkpoint
from netadapt_core.importance import IMPORTANCE, least_important
from netadapt_core.layers import UnsupportedLayerError, channel_spec
from netadapt_core.models import build_model
from netadapt_core.surgery import prunable_groups, prune_group, skipped_groups

SHAPE = (1, 28, 28)


def _model(name, width=0.5):
    torch.manual_seed(0)
    return build_model(name, num_classes=10, in_channels=1, width_mult=width, first_stride=1).eval()


def test_mobilenet_v1_groups_and_pruning_keep_shapes():
    model = _model("mobilenet_v1")
    groups = prunable_groups(model, SHAPE)
    assert len(groups) == 14  # stem + 13 pointwise convs; each depthwise conv is coupled to its input
    target = groups[5]
    removed = prune_group(model, target.id, 24, SHAPE)
    assert len(removed) == 24
    after = {g.id: g.channels for g in prunable_groups(model, SHAPE)}
    assert after[target.id] == target.channels - 24
    modules = dict(model.named_modules())
    pw = modules[target.id]
    next_block = modules[f"features.{int(target.id.split('.')[1]) + 1}.0"]
    assert pw.out_channels == next_block.in_channels == next_block.out_channels == next_block.groups
    out = model(torch.randn(3, *SHAPE))
    assert out.shape == (3, 10) and torch.isfinite(out).all()


def test_mobilenet_v2_residual_group_prunes_every_coupled_conv():
    model = _model("mobilenet_v2")
    residual = [g for g in prunable_groups(model, SHAPE) if len(g.members) > 2]
    assert residual, "MobileNetV2 must expose groups coupled through residual adds"
    group = residual[0]
    prune_group(model, group.id, 8, SHAPE)
    modules = dict(model.named_modules())
    for name in group.members:
        assert modules[name].out_channels == group.channels - 8, name
    assert model(torch.randn(2, *SHAPE)).shape == (2, 10)


def test_filters_with_smallest_l2_norm_are_removed_and_output_is_unchanged():
    """Zero filters (and their BN affine) contribute nothing: removing exactly them keeps the output."""
    model = _model("tiny_cnn", 1.0)
    conv, bn = model.head[0], model.head[1]
    dead = [3, 7, 11, 20]
    with torch.no_grad():
        conv.weight.mul_(5.0)
        conv.weight[dead] = 0.0
        conv.weight[dead[0], 0, 0, 0] = 1e-4  # tiny but non-zero: still among the least important
        bn.weight[dead] = 0.0
        bn.bias[dead] = 0.0
    x = torch.randn(4, *SHAPE)
    before = model(x)
    removed = prune_group(model, "head.0", len(dead), SHAPE)
    assert removed == dead
    assert torch.allclose(model(x), before, atol=1e-5)
    assert model.classifier.in_features == 32 - len(dead)


def test_importance_l1_and_l2_rank_filters():
    model = _model("tiny_cnn", 1.0)
    with torch.no_grad():
        model.head[0].weight[:] = torch.arange(32, dtype=torch.float32).view(32, 1, 1, 1) + 1
    import torch_pruning as tp

    graph = tp.DependencyGraph().build_dependency(model, torch.zeros(1, *SHAPE), verbose=False)
    group = graph.get_pruning_group(model.head[0], tp.prune_conv_out_channels, list(range(32)))
    for name in ("l1_norm", "l2_norm"):
        scores = IMPORTANCE.get(name)(group, graph)
        assert least_important(scores, 3) == [0, 1, 2]


def test_prune_refuses_to_empty_a_group_and_unknown_group():
    model = _model("tiny_cnn", 1.0)
    with pytest.raises(ValueError, match="cannot remove"):
        prune_group(model, "stem.0", 8, SHAPE)
    with pytest.raises(KeyError, match="stem.0"):
        prune_group(model, "nope", 1, SHAPE)


def test_checkpoint_roundtrip_of_a_pruned_network(tmp_path):
    model = _model("mobilenet_v2")
    for group in prunable_groups(model, SHAPE)[:6]:
        prune_group(model, group.id, group.channels // 2, SHAPE)
    arch = Architecture("mobilenet_v2", dict(num_classes=10, in_channels=1, width_mult=0.5, first_stride=1))
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, arch, {"note": "x"})
    payload = torch.load(path, weights_only=True)  # plain tensors and strings: no pickled modules
    assert set(payload) == {"format", "arch", "channels", "state_dict", "state_versions_json", "meta_json"}
    loaded, loaded_arch, meta = load_checkpoint(path)
    assert meta == {"note": "x"} and loaded_arch.name == "mobilenet_v2"
    assert channel_spec(loaded) == channel_spec(model)
    x = torch.randn(2, *SHAPE)
    assert torch.allclose(loaded(x), model(x), atol=1e-5)


def test_corrupt_and_foreign_checkpoints_fail_clearly(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"definitely not a zip file")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(bad)
    model = _model("tiny_cnn", 1.0)
    good = tmp_path / "good.pt"
    save_checkpoint(good, model, Architecture("tiny_cnn", dict(num_classes=10, in_channels=1)))
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="not a netadapt-checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_unsupported_layers_are_named():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.PReLU(4), nn.Flatten(), nn.LazyLinear(10))
    model(torch.zeros(1, *SHAPE))
    with pytest.raises(UnsupportedLayerError, match="'1', of type PReLU.*register_layer_kind"):
        channel_spec(model)

    class WithToken(nn.Module):  # a container with a parameter of its own, like a ViT's class token
        def __init__(self):
            super().__init__()
            self.token = nn.Parameter(torch.zeros(4))
            self.conv = nn.Conv2d(1, 4, 3)

        def forward(self, x):
            return self.conv(x) + self.token[:, None, None]

    with pytest.raises(UnsupportedLayerError, match="'body', of type WithToken"):
        channel_spec(nn.Sequential(OrderedDict(body=WithToken())))


def test_groups_through_a_grouped_conv_are_skipped_with_the_reason():
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3, groups=4),
                          nn.ReLU(), nn.Conv2d(16, 12, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 10))
    groups = {g.id for g in prunable_groups(model, SHAPE)}
    assert groups == {"5"}  # the 1x1 conv; the stem and the grouped conv feed a grouped conv
    skipped = skipped_groups(model, SHAPE)
    assert set(skipped) == {"0", "3"} and all("grouped conv 3" in why for why in skipped.values())
    assert set(skipped_groups(model, SHAPE, exclude=["5"])) == {"0", "3", "5"}


def test_deepcopy_prune_leaves_parent_untouched():
    model = _model("mobilenet_v1")
    spec = channel_spec(model)
    variant = copy.deepcopy(model)
    prune_group(variant, "features.3.3", 16, SHAPE)
    assert channel_spec(model) == spec and channel_spec(variant) != spec


@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v2"])
def test_one_traced_graph_prunes_a_model_step_by_step_like_fresh_graphs(name):
    """The LUT builder traces each variant once and prunes it a grid step at a time: the result is
    the same network, filter for filter, as tracing again before every step."""
    from netadapt_core.surgery import dependency_graph

    torch.manual_seed(0)
    model = build_model(name, num_classes=10, in_channels=1, width_mult=0.5).eval()
    group = max(prunable_groups(model, SHAPE), key=lambda g: g.channels)
    reused, fresh = copy.deepcopy(model), copy.deepcopy(model)
    graph = dependency_graph(reused, SHAPE)
    for _ in range(3):
        removed_reused = prune_group(reused, group.id, 8, SHAPE, graph=graph)
        removed_fresh = prune_group(fresh, group.id, 8, SHAPE)
        assert removed_reused == removed_fresh
    assert channel_spec(reused) == channel_spec(fresh)
    for (key, a), b in zip(reused.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), key
    with pytest.raises(ValueError, match="another model"):
        prune_group(model, group.id, 8, SHAPE, graph=graph)
