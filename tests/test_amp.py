"""Mixed precision on CPU through the code CUDA runs: fp16 autocast with a GradScaler and bf16 autocast
(torch supports both on CPU). The scaler's state resumes exactly, gradients are unscaled before they are
clipped, and a step with non-finite gradients is skipped rather than stopping the run."""
import pytest
import torch

from detector.training.callbacks import Callback, EpochEnd
from detector.data.sample import SampleSpec, write_sample_dataset
from detector.data.dataset import CocoDetection, collate
from detector.data.splits import load_splits
from detector.engine import MAX_SKIPPED_STEPS, train_one_epoch
from detector.hardware import Precision
from detector.errors import TrainingError
from detector.models.faster_rcnn import build
from detector.training.fit import fit
from tests.test_train import Stop, tiny_cfg

FP16 = Precision("cpu", torch.float16)
SIZE = 64  # fp16 is slow on CPU


def _batches(sample, n: int):
    cfg = tiny_cfg(sample, "model.anchors=default")
    train_index, _ = load_splits(cfg)
    ds = CocoDetection(train_index.subset(r.id for r in train_index.images[:n]), size=SIZE)
    return cfg, list(torch.utils.data.DataLoader(ds, batch_size=1, collate_fn=collate))


def _trainable(model):
    return torch.cat([p.detach().flatten().clone() for p in model.parameters() if p.requires_grad])


@pytest.mark.slow
def test_fp16_steps_with_non_finite_gradients_are_skipped_and_training_goes_on(sample):
    cfg, batches = _batches(sample, 8)
    torch.manual_seed(0)
    model, _ = build(cfg.model, num_classes=3, image_size=SIZE, anchor_shapes=None)
    before = _trainable(model)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 22)  # fp16 gradients overflow at this scale
    losses = train_one_epoch(model, batches, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0), scaler,
                             device=torch.device("cpu"), precision=FP16, epoch=0)
    assert 1 <= losses["skipped_steps"] < len(batches)  # skipped until the scale fell low enough, then trained
    assert scaler.get_scale() == 2.0 ** (22 - losses["skipped_steps"])
    assert not torch.equal(_trainable(model), before) and 0 < losses["loss"] < 100


@pytest.mark.slow
def test_gradients_that_overflow_at_every_scale_stop_the_run_with_the_reason(sample):
    cfg, batches = _batches(sample, 4)
    model, _ = build(cfg.model, num_classes=3, image_size=SIZE, anchor_shapes=None)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 100)
    with pytest.raises(TrainingError, match=rf"skipped {MAX_SKIPPED_STEPS} steps in a row up to epoch 0, batch "
                                            rf"{MAX_SKIPPED_STEPS - 1}: .*train.amp=bf16"):
        train_one_epoch(model, batches * 3, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0), scaler,
                        device=torch.device("cpu"), precision=FP16, epoch=0)


class ScalerAtEnd(Callback):
    def on_fit_end(self, state):
        self.scaler = state.scaler.state_dict()


@pytest.mark.slow
def test_an_fp16_run_resumes_its_scaler_and_equals_the_uninterrupted_run(tmp_path):
    small = write_sample_dataset(tmp_path / "data", SampleSpec(images=12, seed=2))  # fp16 is slow on CPU
    cfg = tiny_cfg(small, "train.amp=fp16", "train.epochs=2", "data.image_size=64")
    train_index, val_index = load_splits(cfg)
    quiet = dict(progress=False, log=lambda s: None)
    kept = [ScalerAtEnd(), ScalerAtEnd()]
    full = fit(cfg, train_index, val_index, tmp_path / "full", callbacks=[kept[0]], **quiet)

    def crash(epoch, metrics):
        if epoch == 0:
            raise Stop()

    with pytest.raises(Stop):
        fit(cfg, train_index, val_index, tmp_path / "resumed", callbacks=[EpochEnd(crash)], **quiet)
    resumed = fit(cfg, train_index, val_index, tmp_path / "resumed", callbacks=[kept[1]], **quiet)
    assert kept[0].scaler == kept[1].scaler and kept[0].scaler["scale"] > 0  # a live scaler, saved and resumed
    for a, b in zip(full.history, resumed.history, strict=True):
        for key in ("loss", "map", "map_50"):
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9), (a["epoch"], key)
