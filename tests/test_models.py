import numpy as np
import pytest
import torch

from detector import config
from detector.data.coco import load_coco
from detector.errors import ConfigError, WeightsError
from detector.models.anchors import FittedAnchorGenerator, fit_anchors, generator_shapes
from detector.models.backbones import build_backbone
from detector.models.faster_rcnn import build
from detector.data.sampling import box_shapes

SMALL = dict(fpn_channels=32, representation_size=64)


def build_model(*, num_classes: int, image_size: int, **model):
    """The model of a ModelConfig with these fields."""
    return build(config.ModelConfig(**model), num_classes=num_classes, image_size=image_size)[0]


def one_step(model, size=96):
    model.train()
    images = [torch.rand(3, size, size - 32), torch.rand(3, size - 32, size)]
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 40.0, 50.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    losses = model(images, targets)
    loss = sum(losses.values())
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2 and out[0]["boxes"].shape[1] == 4
    return losses


@pytest.mark.parametrize("backbone", ["resnet50_fpn", "efficientnet_b3", "swin_s", "resnet18"])
def test_named_backbones_build_and_train_one_step(backbone):
    model = build_model(backbone=backbone, num_classes=2, image_size=96, **SMALL)
    assert set(one_step(model)) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}


def test_swin_accepts_sizes_that_are_not_224():
    body = build_backbone("swin_s", fpn_channels=16)
    out = body(torch.rand(1, 3, 160, 96))
    assert [tuple(v.shape[-2:]) for v in out.values()][:4] == [(40, 24), (20, 12), (10, 6), (5, 3)]
    assert body.out_channels == 16


def test_trainable_layers_and_frozen_bn():
    body = build_backbone("resnet18", trainable_layers=2, frozen_bn=True, fpn_channels=16)
    trainable = {n.split(".")[1] for n, p in body.named_parameters() if p.requires_grad and n.startswith("body.")}
    assert trainable == {"layer3", "layer4"}
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in body.modules())
    all_trainable = build_backbone("resnet18", trainable_layers=5, frozen_bn=False, fpn_channels=16)
    assert all(p.requires_grad for p in all_trainable.parameters())
    with pytest.raises(ConfigError, match="trainable_layers must lie in"):
        build_backbone("resnet18", trainable_layers=9)


def test_unknown_backbone_is_a_config_error():
    with pytest.raises(ConfigError, match="'resnet_nope' is neither"):
        build_backbone("resnet_nope")


def test_local_timm_weights_file(tmp_path):
    import timm

    source = timm.create_model("resnet18", pretrained=False)
    torch.save(source.state_dict(), tmp_path / "resnet18.pth")
    body = build_backbone("resnet18", pretrained=str(tmp_path / "resnet18.pth"), frozen_bn=False,
                          trainable_layers=5, fpn_channels=16)
    torch.testing.assert_close(body.body.layer3[0].conv1.weight, source.layer3[0].conv1.weight)


def test_local_torchvision_weights_file(tmp_path):
    import torchvision

    source = torchvision.models.resnet50()
    torch.nn.init.normal_(source.layer4[2].conv3.weight)
    torch.save(source.state_dict(), tmp_path / "resnet50.pth")
    model = build_model(backbone="resnet50_fpn", num_classes=2, image_size=96,
                        pretrained=str(tmp_path / "resnet50.pth"))
    torch.testing.assert_close(model.backbone.body.layer4[2].conv3.weight, source.layer4[2].conv3.weight)


def test_local_detector_checkpoint_file(tmp_path):
    source = build_model(backbone="resnet18", num_classes=3, image_size=96, **SMALL)
    torch.save({"model": source.state_dict()}, tmp_path / "det.pt")
    model = build_model(backbone="resnet18", num_classes=2, image_size=96, pretrained=str(tmp_path / "det.pt"),
                        **SMALL)
    torch.testing.assert_close(model.rpn.head.conv[0][0].weight, source.rpn.head.conv[0][0].weight)
    # the class predictor has another shape and keeps its fresh initialisation
    assert model.roi_heads.box_predictor.cls_score.weight.shape[0] == 3


def test_missing_and_wrong_weight_files(tmp_path):
    with pytest.raises(WeightsError, match="weight file not found"):
        build_backbone("resnet18", pretrained=str(tmp_path / "nope.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read weights"):
        build_backbone("resnet18", pretrained=str(tmp_path / "junk.pth"))
    torch.save({"foo.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(WeightsError, match="does not fit timm model resnet18"):
        build_backbone("resnet18", pretrained=str(tmp_path / "other.pth"))


def test_offline_pretrained_error_names_both_options(tmp_path, monkeypatch):
    import urllib.error

    import torchvision.models._api

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError(f"no network for {url}")

    # the download itself fails, as it does offline, whether or not this machine has a network
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsError) as info:
        build_model(backbone="resnet50_fpn", num_classes=2, image_size=96, pretrained=True)
    message = str(info.value)
    assert "model.pretrained to a local weight file" in message and "cache" in message
    assert "URLError" in message and "fasterrcnn_resnet50_fpn" in message


def test_kmeans_anchors_on_rbc_beat_defaults_and_feed_the_head(rbc):
    index = load_coco(rbc / "train" / "_annotations.coco.json", check_images=False)
    shapes = box_shapes(index, 416)
    fit = fit_anchors(shapes, num_levels=5, per_level=3, seed=0)
    assert fit.num_boxes == 4947
    assert fit.fitted.mean_iou >= fit.default.mean_iou and fit.fitted.bpr >= fit.default.bpr
    assert fit.fitted.mean_iou > 0.7
    cfg = config.load(None, ["model.backbone=resnet18", "model.anchors=kmeans", "model.fpn_channels=16",
                             "model.representation_size=32", "model.anchors_per_level=2"])
    model, model_fit = build(cfg.model, num_classes=2, image_size=416, box_shapes=shapes)
    generator = model.rpn.anchor_generator
    assert isinstance(generator, FittedAnchorGenerator)
    assert generator.num_anchors_per_location() == [2] * 5
    assert model.rpn.head.cls_logits.out_channels == 2
    widths_heights = generator_shapes(generator)
    np.testing.assert_allclose(np.sort(widths_heights.prod(1)),
                               np.sort([round(w / 2) * 2 * round(h / 2) * 2 for lvl in model_fit.shapes
                                        for w, h in lvl]), rtol=0.05)
    one_step(model, size=128)


def test_anchors_auto_keeps_the_defaults_where_k_means_fits_no_better():
    import numpy as np
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    cfg = config.load(None, ["model.backbone=resnet18", "model.anchors=auto", "model.fpn_channels=16",
                             "model.representation_size=32"])
    sizes = np.array([32, 64, 128, 256, 512], np.float32)  # square boxes of exactly the default sizes
    squares = np.repeat(np.stack([sizes, sizes], 1), 20, axis=0)
    model, fit = build(cfg.model, num_classes=2, image_size=512, box_shapes=squares)
    assert fit is not None and not fit.used and not fit.beats_default
    assert type(model.rpn.anchor_generator) is AnchorGenerator  # torchvision's own
    cells = np.random.default_rng(0).uniform(20, 28, size=(200, 2)).astype(np.float32)  # small, tight cells
    model, fit = build(cfg.model, num_classes=2, image_size=512, box_shapes=cells)
    assert fit.used and fit.beats_default and isinstance(model.rpn.anchor_generator, FittedAnchorGenerator)


def test_a_checkpoint_that_kept_the_default_anchors_under_auto_is_restored(tmp_path):
    """anchors auto that kept torchvision's anchors records none: restoring must not try to fit again (seen
    on the cards photos: a study's publish stopped with 'needs training boxes to fit')."""
    from detector.checkpoint import Checkpoint, restore_model, save_checkpoint
    from detector.models import faster_rcnn

    cfg = config.load(None, ["model.backbone=resnet18", "model.anchors=auto", "model.fpn_channels=16",
                             "model.representation_size=32", "model.pretrained=false"])
    sizes = np.array([32, 64, 128, 256, 512], np.float32)
    model, fit = build(cfg.model, num_classes=2, image_size=512, box_shapes=np.repeat(np.stack([sizes, sizes], 1), 20, 0))
    assert not fit.used
    path = tmp_path / "model.pt"
    save_checkpoint(path, Checkpoint(model=model.state_dict(), epoch=0, image_size=512, config=cfg.to_dict(),
                                     label_map={"category_ids": [1, 2], "names": ["a", "b"]},
                                     normalization=faster_rcnn.normalization(model), anchors=None))
    restored = restore_model(path)
    assert restored.config.model.anchors == "auto" and restored.spec.anchors is None
    images = [torch.rand(3, 96, 128)]
    with torch.no_grad():
        assert restored.model(images)[0]["boxes"].shape[1] == 4
