"""The three backbones detector is built around (ResNet-50-FPN from torchvision, EfficientNet-B3 and Swin-S from
timm), each end to end: trained through fit, exported to TorchScript and ONNX that detect what the checkpoint
detects, frozen stage by stage with model.trainable_layers, loaded from a local weight file of its own module,
and timed by `detector benchmark`. Random initialisation at 128 px and a narrow FPN: the path is tested, not the
weights (hub weights cannot be downloaded here)."""
import json
import re
import warnings

import numpy as np
import pytest
import torch

from detector import api, config
from detector.checkpoint import restore_model
from detector.data.sample import SampleSpec, write_sample_dataset
from detector.data.splits import load_splits
from detector.deploy.export import deployed, export_models
from detector.deploy.runtimes import eager, image_array, onnx, torchscript
from detector.errors import ConfigError
from detector.models.backbones import ALIASES, build_backbone
from detector.training.fit import fit
from tests.helpers import run_cli
from tests.test_models import build_model

BACKBONES = ("resnet50_fpn", "efficientnet_b3", "swin_s")
NARROW = ["data.image_size=128", "model.frozen_bn=false", "model.fpn_channels=32", "model.representation_size=64",
          "model.rpn_proposals_train=100", "model.rpn_proposals_test=100", "model.box_samples_per_image=32",
          "model.anchors=kmeans", "train.batch_size=4", "train.num_workers=0", "train.amp=fp32", "train.epochs=1"]

# Each backbone's stages, written out from its architecture (not from the code under test): the parameter
# name prefixes of each, first to last. A stage runs from after the previous feature map to its own, so
# EfficientNet-B3's stride-16 stage is blocks 3 and 4, and the stem belongs to the first stage.
STAGES = {
    "resnet50_fpn": [("conv1.", "bn1."), ("layer1.",), ("layer2.",), ("layer3.",), ("layer4.",)],
    "efficientnet_b3": [("conv_stem.", "bn1.", "blocks.0."), ("blocks.1.",), ("blocks.2.",), ("blocks.3.", "blocks.4."),
                        ("blocks.5.", "blocks.6.")],
    "swin_s": [("patch_embed.", "layers_0."), ("layers_1.",), ("layers_2.",), ("layers_3.",)],
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_sample_dataset(tmp_path_factory.mktemp("shapes"), SampleSpec(images=16, seed=2))


@pytest.fixture(scope="module", params=BACKBONES)
def trained(request, data, tmp_path_factory):
    """(backbone, FitResult, run folder) after one epoch of fit."""
    cfg = config.load(None, [f"data.train.annotations={data['train']}", f"data.val.annotations={data['val']}",
                             f"model.backbone={request.param}", *NARROW])
    run = tmp_path_factory.mktemp(request.param) / "run"
    result = fit(cfg, *load_splits(cfg), run, progress=False, log=lambda s: None)
    return request.param, result, run


@pytest.mark.slow
def test_each_backbone_trains_through_fit_with_the_fpn_width_it_was_given(trained):
    name, result, run = trained
    assert result.epochs_run == 1
    rows = (run / "metrics.csv").read_text().splitlines()
    assert len(rows) == 2 and np.isfinite(float(rows[1].split(",")[2]))  # one epoch, a finite loss
    restored = restore_model(result.best_path, "cpu")
    assert restored.spec.config.model.backbone == name
    assert restored.model.backbone.out_channels == 32  # torchvision's ResNet-50 too, not its fixed 256
    # k-means anchors fitted per level of this backbone's pyramid: four feature maps and the pooled one
    assert len(json.loads((run / "anchors.json").read_text())["shapes"]) == 5
    assert len(restored.spec.anchors) == 5


@pytest.mark.slow
def test_torchscript_and_onnx_exports_detect_what_the_checkpoint_detects(trained, data, tmp_path):
    name, result, _ = trained
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notice, the ONNX tracer's warnings
        [ts] = export_models(result.best_path, "torchscript", tmp_path / "model.pt")
        [ox] = export_models(result.best_path, "onnx", tmp_path / "model.onnx")
    images = [image_array(p) for p in sorted((data["train"].parent / "images").glob("*.png"))[:3]]
    reference = eager(deployed(restore_model(result.best_path, "cpu")), torch.device("cpu"))
    expected = [reference.run(im) for im in images]
    for runtime in (torchscript(ts, torch.device("cpu")), onnx(ox, torch.device("cpu"))):
        for want, got in zip(expected, (runtime.run(im) for im in images)):
            _same_top_detections(want, got, f"{name} {runtime.name}")
    # and `detector evaluate` of each file scores what it scores for the checkpoint
    scores = [api.evaluate(m, data["val"], bootstrap=0, device="cpu").scorecard.metrics
              for m in (result.best_path, ts, ox)]
    for other in scores[1:]:
        assert abs(other.map - scores[0].map) <= 0.002 and abs(other.map_50 - scores[0].map_50) <= 0.002


def _same_top_detections(want, got, what: str, top: int = 20) -> None:
    """The checkpoint's `top` highest-scoring boxes (any score: an untrained model's are all low) each have a
    twin in the export's output: the same label, corners within 0.5 px, the score within 1e-3."""
    boxes, scores, labels = (np.asarray(v) for v in want)
    other_boxes, other_scores, other_labels = (np.asarray(v) for v in got)
    assert len(boxes) >= top, f"{what}: the checkpoint returned {len(boxes)} boxes, too few to compare"
    for i in np.argsort(-scores)[:top]:
        near = (np.abs(other_boxes - boxes[i]).max(axis=1) <= 0.5) & (other_labels == labels[i])
        assert near.any() and np.abs(other_scores[near] - scores[i]).min() <= 1e-3, f"{what}: box {i} has no twin"


@pytest.mark.slow
def test_detector_benchmark_times_each_backbone(trained, tmp_path):
    name, result, _ = trained
    done = run_cli("benchmark", str(result.best_path), "--runtimes", "eager", "--limit", "2", "--repeats", "1",
                   "--json", str(tmp_path / "bench.json"))
    assert done.returncode == 0, done.stderr
    [row] = json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert row["runtime"] == "eager" and row["image_size"] == 128 and row["ms_per_image"] > 0
    assert "ms/image" in done.stdout


@pytest.mark.parametrize("name", BACKBONES)
def test_trainable_layers_freezes_exactly_the_stages_it_names(name):
    stages = STAGES[name]
    for n in range(len(stages) + 1):
        body = build_backbone(name, trainable_layers=n, frozen_bn=False, fpn_channels=8)
        params = dict(body.body.named_parameters())
        per_stage = [[p.requires_grad for k, p in params.items() if k.startswith(prefixes)] for prefixes in stages]
        assert all(per_stage) and sum(map(len, per_stage)) == len(params), f"{name}: a parameter in no stage"
        trainable = [i for i, flags in enumerate(per_stage) if all(flags)]
        frozen = [i for i, flags in enumerate(per_stage) if not any(flags)]
        assert trainable == list(range(len(stages) - n, len(stages))), f"{name}, trainable_layers={n}"
        assert len(trainable) + len(frozen) == len(stages), f"{name}, trainable_layers={n}: a stage half frozen"
        assert all(p.requires_grad for p in body.fpn.parameters())
    with pytest.raises(ConfigError, match=rf"trainable_layers must lie in \[0, {len(stages)}\]"):
        build_backbone(name, trainable_layers=len(stages) + 1)


@pytest.mark.slow
@pytest.mark.parametrize("name", BACKBONES)
def test_a_local_weight_file_of_the_backbones_own_module_loads_every_tensor(name, tmp_path):
    """model.pretrained: FILE with the state dict a user saves from timm's or torchvision's own module."""
    if name == "resnet50_fpn":
        import torchvision

        source = torchvision.models.resnet50().state_dict()
    else:
        import timm

        source = timm.create_model(ALIASES[name], pretrained=False).state_dict()
    source = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in source.items()}  # not an init
    torch.save(source, tmp_path / "weights.pth")
    model = build_model(backbone=name, num_classes=2, image_size=128, frozen_bn=False, fpn_channels=32,
                        representation_size=64, pretrained=str(tmp_path / "weights.pth"))
    # timm's features_only Swin names its stages layers_0.. where the network itself has layers.0..
    body = {re.sub(r"^layers_(\d+)", r"layers.\1", k): v for k, v in model.backbone.body.state_dict().items()}
    unmatched = [k for k in body if k not in source]
    assert not unmatched, f"{name}: tensors with no source in the file: {unmatched[:5]}"
    for k, v in body.items():
        if v.is_floating_point():
            torch.testing.assert_close(v, source[k], msg=f"{name}: {k}")
