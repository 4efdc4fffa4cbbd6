"""Backbones: name -> nn.Module returning an OrderedDict of FPN maps, with an `out_channels` attribute.

`resnet50_fpn` is torchvision's; `efficientnet_b3`, `swin_s` and any other timm model name that supports
`features_only` get a torchvision FeaturePyramidNetwork on the stages of stride 4 and more.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict

import torch
from torch import nn
from torchvision.models import ResNet50_Weights, resnet50
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

from ..config import PACKAGED
from ..errors import ConfigError
from .convert import to_timm
from .weights import fetch, is_detector_state, load_matching, packaged_weights_file, read_state_dict

ALIASES = {
    "efficientnet_b3": "efficientnet_b3",
    "swin_s": "swin_small_patch4_window7_224",
}
TORCHVISION = ("resnet50_fpn",)
RESNET_STAGES = ("conv1", "layer1", "layer2", "layer3", "layer4")  # torchvision's trainable_layers counts these
MIN_STRIDE = 4
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # torchvision's ResNet-50


class TimmFPN(nn.Module):
    """A timm `features_only` body (NCHW or NHWC) followed by a torchvision FPN.

    `image_mean` / `image_std` are the input normalisation of the body's pretrained config.
    """

    def __init__(self, body: nn.Module, fpn_channels: int, fpn_norm: bool = False):
        super().__init__()
        info = body.feature_info
        self.body = body
        cfg = getattr(body, "pretrained_cfg", None) or {}
        self.image_mean = tuple(float(v) for v in cfg.get("mean", IMAGENET_MEAN))
        self.image_std = tuple(float(v) for v in cfg.get("std", IMAGENET_STD))
        self.keep = [i for i, r in enumerate(info.reduction()) if r >= MIN_STRIDE]
        self.channels_last = str(getattr(body, "output_fmt", "NCHW")).endswith("NHWC")
        channels = [info.channels()[i] for i in self.keep]
        self.fpn = FeaturePyramidNetwork(channels, fpn_channels, extra_blocks=LastLevelMaxPool(),
                                         norm_layer=nn.BatchNorm2d if fpn_norm else None)
        self.out_channels = fpn_channels

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:  # typing names: TorchScript reads them
        feats = self.body(x)
        maps: Dict[str, torch.Tensor] = OrderedDict()
        for n, i in enumerate(self.keep):
            f = feats[i]
            maps[str(n)] = f.permute(0, 3, 1, 2).contiguous() if self.channels_last else f
        return self.fpn(maps)


def build_backbone(
    name: str,
    *,
    pretrained: bool | str = False,
    trainable_layers: int = 3,
    frozen_bn: bool = True,
    fpn_channels: int = 256,
    fpn_norm: bool = False,
    state: dict | None = None,
) -> nn.Module:
    """Build the backbone named `name`. `pretrained`: True (published weights), "packaged" (the weights a pip
    package installed, see weights.PACKAGED_WEIGHTS), a local file, or False. `fpn_norm` adds BatchNorm to the FPN
    convolutions (torchvision's v2 detectors do). The module has `out_channels` and the input normalisation
    its weights expect, `image_mean` and `image_std` (RGB in [0, 1]).

    `state`: the contents of the `pretrained` file when the caller has read it already. A local file holding a
    whole detector is not loaded here: faster_rcnn.build loads it into the full model.
    """
    if pretrained == PACKAGED:
        pretrained = str(packaged_weights_file(name))
    file_state = state
    if file_state is None and isinstance(pretrained, str) and pretrained:
        file_state = read_state_dict(pretrained)
    if file_state is not None and is_detector_state(file_state):
        file_state, pretrained = None, False
    if name in TORCHVISION:
        return _torchvision_resnet50(pretrained, file_state, trainable_layers, frozen_bn, fpn_channels, fpn_norm)
    return _timm_fpn(name, pretrained, file_state, trainable_layers, frozen_bn, fpn_channels, fpn_norm)


def num_levels(backbone: nn.Module) -> int:
    """Number of feature maps the backbone returns (FPN levels including the pooled one)."""
    with torch.no_grad():
        was_training = backbone.training
        backbone.eval()
        out = backbone(torch.zeros(1, 3, 64, 64))
        backbone.train(was_training)
    return len(out)


def _torchvision_resnet50(pretrained, file_state, trainable_layers, frozen_bn, fpn_channels, fpn_norm) -> nn.Module:
    """torchvision's ResNet-50 under an FPN of `fpn_channels` (256 is torchvision's detector, whose COCO weights
    faster_rcnn.build loads; another width takes the ImageNet backbone alone)."""
    weights = ResNet50_Weights.IMAGENET1K_V1 if pretrained is True else None
    state = None
    if weights is not None:
        state = fetch(lambda: weights.get_state_dict(progress=False), "resnet50 (torchvision ImageNet)",
                      "~/.cache/torch/hub/checkpoints/")
    body = resnet50(norm_layer=FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d)
    if state is not None:
        body.load_state_dict(state)
    n = _check_layers(trainable_layers, len(RESNET_STAGES))
    trainable = tuple(RESNET_STAGES[len(RESNET_STAGES) - n:]) + (("bn1",) if n == len(RESNET_STAGES) else ())
    for name, parameter in body.named_parameters():
        parameter.requires_grad_(name.startswith(trainable))
    model = BackboneWithFPN(body, {f"layer{k}": str(k - 1) for k in range(1, 5)}, [256, 512, 1024, 2048],
                            fpn_channels, extra_blocks=LastLevelMaxPool(),
                            norm_layer=nn.BatchNorm2d if fpn_norm else None)
    if file_state is not None:
        load_matching(model.body, file_state, str(pretrained))
    model.image_mean, model.image_std = IMAGENET_MEAN, IMAGENET_STD
    return model


def _timm_fpn(name, pretrained, file_state, trainable_layers, frozen_bn, fpn_channels, fpn_norm) -> nn.Module:
    import timm

    model_name = ALIASES.get(name, name)
    create = {"features_only": True, **({"dynamic_img_size": True} if model_name.startswith("swin") else {})}
    if not timm.is_model(model_name):
        raise ConfigError(
            f"model.backbone: '{name}' is neither {', '.join(TORCHVISION + tuple(ALIASES))} nor a timm model "
            "name; try resnet18 or mobilenetv3_large_100 for small runs (timm.list_models() lists them all)"
        )
    if isinstance(pretrained, str) and pretrained:
        body = _timm_from_file(timm, model_name, pretrained, file_state, create)
    elif pretrained is True:
        body = fetch(lambda: timm.create_model(model_name, pretrained=True, **create),
                     f"{model_name} (timm)", "the Hugging Face cache (~/.cache/huggingface/hub)")
    else:
        body = _timm_create(timm, model_name, create)
    if frozen_bn:
        body = timm.layers.freeze_batch_norm_2d(body)
    _freeze_stages(body, body.feature_info.module_name(), trainable_layers)
    return TimmFPN(body, fpn_channels, fpn_norm)


def _timm_create(timm, model_name: str, create: dict) -> nn.Module:
    try:
        return timm.create_model(model_name, pretrained=False, **create)
    except RuntimeError as e:
        raise ConfigError(f"model.backbone: timm model '{model_name}' cannot return feature maps ({e})") from None


def _timm_from_file(timm, model_name: str, path: str, file_state: dict, create: dict) -> nn.Module:
    """A timm feature extractor holding the tensors of a local file, which must fit the whole network (in
    timm's layout or one that convert.to_timm renames), so a wrong file never leaves a random backbone."""
    full = timm.create_model(model_name, pretrained=False, **{k: v for k, v in create.items() if k != "features_only"})
    classifier = full.pretrained_cfg.get("classifier") or ()
    state = to_timm(file_state, full.state_dict(), path,
                    classifier=(classifier,) if isinstance(classifier, str) else tuple(classifier),
                    model=f"timm model {model_name}")
    body = timm.create_model(model_name, pretrained=False, **create)
    own = body.state_dict()
    if own.keys() <= state.keys():  # a features class holding a subset of the network's own modules
        body.load_state_dict({k: state[k] for k in own})
        return body
    # a wrapper with renamed modules (FeatureListNet): timm loads the whole network, then wraps it
    return timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay={"state_dict": state}, **create)


def _freeze_stages(body: nn.Module, stage_modules: list[str], trainable_layers: int) -> None:
    """Freeze every stage but the last `trainable_layers` (all stages count, the stem included in the first).

    A stage is everything from the module after the previous feature map up to the module that returns its
    own (EfficientNet's stride-16 stage is blocks.3 and blocks.4), so the frozen part ends with the module
    of the last frozen stage's feature map."""
    n = _check_layers(trainable_layers, len(stage_modules))
    if n >= len(stage_modules):
        return
    if n == 0:
        body.requires_grad_(False)
        return
    last_frozen = stage_modules[len(stage_modules) - n - 1]
    inside = (last_frozen + ".", last_frozen.replace(".", "_") + ".")  # FeatureListNet flattens the dots
    reached = False
    for pname, param in body.named_parameters():
        within = pname.startswith(inside)
        if reached and not within:
            break
        reached = reached or within
        param.requires_grad_(False)
    if not reached:
        raise RuntimeError(f"no parameter of stage {last_frozen} found in {type(body).__name__}")


def _check_layers(trainable_layers: int, most: int) -> int:
    if not 0 <= trainable_layers <= most:
        raise ConfigError(f"model.trainable_layers must lie in [0, {most}] for this backbone; got {trainable_layers}")
    return trainable_layers
