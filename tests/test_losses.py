import numpy as np
import pytest
import torch
import torch.nn.functional as F

from detector import config
from detector.errors import ConfigError
from detector.models.faster_rcnn import build
from detector.models.losses import BoxClassifierLoss, class_weights
from tests.test_models import SMALL, one_step


def test_focal_with_gamma_0_and_alpha_half_is_cross_entropy_and_gamma_spares_easy_rois():
    torch.manual_seed(0)
    logits, labels = torch.randn(64, 3) * 3, torch.randint(0, 3, (64,))
    ce = F.cross_entropy(logits, labels)
    torch.testing.assert_close(BoxClassifierLoss("focal", alpha=0.5, gamma=0.0)(logits, labels), ce)
    weights = [2.0, 0.5]
    torch.testing.assert_close(BoxClassifierLoss("ce", class_weights=weights)(logits, labels),
                               F.cross_entropy(logits, labels, weight=torch.tensor([1.0, *weights])))
    torch.testing.assert_close(BoxClassifierLoss("focal", alpha=0.5, gamma=0.0, class_weights=weights)(logits, labels),
                               F.cross_entropy(logits, labels, weight=torch.tensor([1.0, *weights])))
    easy = torch.tensor([[8.0, 0.0, 0.0]])  # background, confidently right
    hard = torch.tensor([[0.0, 0.0, 0.0]])
    background = torch.tensor([0])
    focal = BoxClassifierLoss("focal", alpha=0.5, gamma=2.0)
    ratio_focal = focal(easy, background) / focal(hard, background)
    ratio_ce = F.cross_entropy(easy, background) / F.cross_entropy(hard, background)
    assert ratio_focal < ratio_ce / 1000  # (1 - p)^2 nearly silences the easy RoI


def test_auto_class_weights_are_inverse_frequency_with_mean_one():
    cfg = config.ModelConfig(class_weights="auto")
    w = class_weights(cfg, [210, 10], 2)
    assert np.mean(w) == pytest.approx(1.0) and w[1] / w[0] == pytest.approx(21.0)
    assert class_weights(config.ModelConfig(class_weights=[1.0, 3.0]), None, 2) == [1.0, 3.0]
    with pytest.raises(ConfigError, match="2 values for 3 classes"):
        class_weights(config.ModelConfig(class_weights=[1.0, 3.0]), None, 3)
    assert class_weights(config.ModelConfig(), [5, 5], 2) is None


def test_a_focal_model_trains_and_keeps_its_state_dict_keys():
    plain = build(config.ModelConfig(backbone="resnet18", **SMALL), num_classes=2, image_size=96)[0]
    focal, _ = build(config.ModelConfig(backbone="resnet18", box_loss="focal", class_weights="auto", **SMALL),
                     num_classes=2, image_size=96, class_counts=[30, 3])
    assert list(focal.state_dict()) == list(plain.state_dict())  # checkpoints load either way
    torch.testing.assert_close(focal.roi_heads.classifier_loss.weight, torch.tensor([1.0, 2 / 11, 20 / 11]))
    assert set(one_step(focal)) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}


def test_the_configured_loss_is_the_one_the_roi_heads_train_with():
    def losses(model):
        model.train()
        torch.manual_seed(1)  # the same RPN and RoI samples for each model
        images = [torch.rand(3, 96, 64), torch.rand(3, 64, 96)]
        targets = [{"boxes": torch.tensor([[4.0, 6.0, 40.0, 50.0]]), "labels": torch.tensor([1])},
                   {"boxes": torch.tensor([[10.0, 10.0, 60.0, 40.0]]), "labels": torch.tensor([2])}]
        return model(images, targets)

    torch.manual_seed(0)
    plain = build(config.ModelConfig(backbone="resnet18", **SMALL), num_classes=2, image_size=96)[0]
    torch.manual_seed(0)
    focal = build(config.ModelConfig(backbone="resnet18", box_loss="focal", focal_alpha=0.5, focal_gamma=2.0,
                                     **SMALL), num_classes=2, image_size=96)[0]
    ce, fl = losses(plain), losses(focal)
    torch.testing.assert_close(fl["loss_box_reg"], ce["loss_box_reg"])  # the same weights and samples
    assert fl["loss_classifier"] < 0.7 * ce["loss_classifier"]  # (1 - p)^2 at p ~ 1/3: focal, not a fall-back
    focal.roi_heads.classifier_loss = BoxClassifierLoss("ce")
    torch.testing.assert_close(losses(focal)["loss_classifier"], ce["loss_classifier"])


def test_a_class_weight_list_reaches_the_training_loss_of_the_built_model():
    """The wiring, not the unit: model.class_weights under cross-entropy changes what build()'s model trains on
    (a list that silently fell back to torchvision's plain loss would give the unweighted value)."""
    images = [torch.rand(3, 96, 96)]
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 40.0, 50.0], [50.0, 40.0, 90.0, 80.0]]), "labels": torch.tensor([1, 2])}]
    losses = {}
    for weights in (None, [1.0, 1.0], [1.0, 5.0]):
        torch.manual_seed(0)
        model, _ = build(config.ModelConfig(backbone="resnet18", class_weights=weights, **SMALL), num_classes=2,
                         image_size=96)
        model.train()
        torch.manual_seed(1)  # the same sampled RoIs for each
        losses[str(weights)] = model(images, targets)["loss_classifier"].item()
    assert losses["[1.0, 1.0]"] == pytest.approx(losses["None"], rel=1e-5)
    assert losses["[1.0, 5.0]"] != pytest.approx(losses["None"], rel=1e-3)
