"""Networks, their registry (``models.registry``) and the Pyro switch model."""
from __future__ import annotations

from .checkpoint import load_pretrained
from .discovery import discover_switch_points
from .lenet import LeNet5, LeNet5Caffe
from .registry import MODEL_NAMES, MODELS, build_model, check_model_name, default_widths, model_input_size
from .switch_points import SwitchPoint, switch_points
from .switched import SwitchedNetwork, SwitchModel
from .vgg import VGG16
from .wrn import WideResNet

__all__ = [
    "MODELS",
    "MODEL_NAMES",
    "build_model",
    "load_pretrained",
    "check_model_name",
    "default_widths",
    "model_input_size",
    "discover_switch_points",
    "LeNet5",
    "LeNet5Caffe",
    "VGG16",
    "WideResNet",
    "SwitchPoint",
    "switch_points",
    "SwitchedNetwork",
    "SwitchModel",
]
