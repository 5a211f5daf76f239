"""Networks: the built-in ones (``builtin``), where a network comes from (``sources``: built-in,
torchvision, timm, entry points) and pretrained weights files (``weights``)."""

from .builtin import MODELS, MobileNetV1, TinyCNN
from .sources import (
    ENTRY_POINT_GROUP,
    ModelError,
    build_model,
    check_model_name,
    check_network,
    output_layer,
    split_name,
)

__all__ = [
    "ENTRY_POINT_GROUP", "MODELS", "MobileNetV1", "ModelError", "TinyCNN", "build_model", "check_model_name",
    "check_network", "output_layer", "split_name",
]
