import json
import math
import sys
from dataclasses import replace

import pytest
import torch

from detector import config
from detector.checkpoint import load_checkpoint, restore_model, save_checkpoint
from detector.data.dataset import CocoDetection, collate
from detector.data.transforms import build_train_transforms
from detector.data.results import to_coco_results
from detector.engine import predict, train_one_epoch
from detector.hardware import Precision
from detector.errors import NonFiniteLossError
from detector.analysis.evaluate import evaluate_models
from detector.optim import LrSchedule, build_optimizer
from detector.data.sampling import balanced_weights
from detector.training.callbacks import (BestCheckpoint, Callback, EarlyStopping, EpochEnd, Progress, image_size_at,
                                 standard)
from detector.data.splits import load_splits
from detector.training.fit import fit
from detector.layout import RunPaths
from detector.metrics import Metrics, f_beta
from tests.helpers import pycocotools_stats, run_cli

TINY = [
    "data.image_size=128", "model.backbone=resnet18", "model.trainable_layers=5", "model.frozen_bn=false",
    "model.fpn_channels=32", "model.representation_size=64", "model.rpn_proposals_train=200",
    "model.rpn_proposals_test=100", "model.box_samples_per_image=32", "model.anchors=kmeans",
    "train.batch_size=4", "train.num_workers=0", "train.lr=0.001",
    # one precision on every machine: auto's probe picks bf16 for this small ResNet on some CPUs and runs,
    # fp32 on others (tests/test_hardware.py tests auto itself)
    "train.amp=fp32",
]


def tiny_cfg(sample, *extra):
    return config.load(None, [f"data.train.annotations={sample['train']}", f"data.val.annotations={sample['val']}",
                              *TINY, *extra])


class Stop(Exception):
    pass


def test_fit_writes_the_run_and_checkpoint_round_trip(sample, tmp_path):
    cfg = tiny_cfg(sample, "train.epochs=2")
    train_index, val_index = load_splits(cfg)
    run = tmp_path / "run"
    result = fit(cfg, train_index, val_index, run, progress=False, log=lambda s: None)
    assert result.epochs_run == 2 and result.best_path == RunPaths(run).best
    rows = RunPaths(run).metrics.read_text().splitlines()
    assert rows[0].startswith("epoch,lr,loss,loss_classifier") and len(rows) == 3
    anchors = json.loads(RunPaths(run).anchors.read_text())
    assert anchors["fitness"]["mean_iou"] >= anchors["default_fitness"]["mean_iou"]
    summary = json.loads(RunPaths(run).summary.read_text())
    assert summary["best_epoch"] == result.best_epoch

    state = load_checkpoint(RunPaths(run).best)  # weights_only=True inside
    assert state.label_map == train_index.label_map.to_dict() and state.anchors is not None
    assert state.normalization == {"mean": pytest.approx([0.485, 0.456, 0.406]),
                                      "std": pytest.approx([0.229, 0.224, 0.225])}  # resnet18's, from timm
    save_checkpoint(tmp_path / "other_norm.pt", replace(state, normalization={"mean": [0.5] * 3, "std": [0.25] * 3}))
    assert restore_model(tmp_path / "other_norm.pt").model.transform.image_std == [0.25] * 3  # predict uses it
    # a checkpoint from before normalisation was saved: torchvision's constants
    save_checkpoint(tmp_path / "legacy.pt", replace(state, normalization=None))
    assert restore_model(tmp_path / "legacy.pt").model.transform.image_mean == pytest.approx([0.485, 0.456, 0.406])
    # the restored model reproduces the predictions it was scored on during training
    # (training scores each epoch at its best threshold, recorded as `threshold`)
    again = evaluate_models(RunPaths(run).best, sample["val"], score_threshold=result.best_metrics.threshold,
                                progress=False)
    for key in ("map", "map_50", "precision", "recall", "f1", "score"):
        assert again.metrics.value(key) == pytest.approx(result.best_metrics.value(key), abs=1e-9), key

    # the evaluation used in training equals pycocotools on the same (real, model-made) predictions
    restored = restore_model(RunPaths(run).best)
    loader = torch.utils.data.DataLoader(CocoDetection(val_index, size=128), batch_size=4,
                                         collate_fn=collate)
    results = to_coco_results(predict(restored.model, loader, device=torch.device("cpu"),
                                      precision=Precision("cpu", None)), restored.label_map)
    assert len(results) > 100
    ref = pycocotools_stats(val_index.to_coco(), results)
    assert abs(result.best_metrics.map - ref.stats[0]) < 1e-6
    assert abs(result.best_metrics.map_50 - ref.stats[1]) < 1e-6


class StepCounter(Callback):
    """A user's own integration: one class with saved state, no new argument of fit."""

    key = "steps"

    def __init__(self):
        self.steps, self.epochs_seen = 0, []

    def after_step(self, state):
        self.steps += 1

    def on_epoch_end(self, state):
        self.epochs_seen.append(state.epoch)

    def state_dict(self):
        return {"steps": self.steps}

    def load_state_dict(self, saved):
        self.steps = saved["steps"]


@pytest.mark.slow
def test_resume_after_interruption_equals_uninterrupted(sample, tmp_path):
    cfg = tiny_cfg(sample, "train.epochs=3", "data.augment.color=0.5")
    train_index, val_index = load_splits(cfg)
    quiet = dict(progress=False, log=lambda s: None)
    whole = StepCounter()
    full = fit(cfg, train_index, val_index, tmp_path / "full", callbacks=[BestCheckpoint(), whole], **quiet)

    def crash(epoch, metrics):
        if epoch == 1:
            raise Stop()

    with pytest.raises(Stop):
        fit(cfg, train_index, val_index, tmp_path / "resumed", callbacks=[StepCounter(), EpochEnd(crash)], **quiet)
    again = StepCounter()
    resumed = fit(cfg, train_index, val_index, tmp_path / "resumed", callbacks=[again], **quiet)
    assert again.epochs_seen == [2] and again.steps == whole.steps > 0  # its state came back from last.pt
    assert [r["epoch"] for r in resumed.history] == [0, 1, 2]
    for a, b in zip(full.history, resumed.history):
        for key in ("loss", "map", "map_50", "f1"):
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9), (a["epoch"], key)
    csv_rows = RunPaths(tmp_path / "resumed").metrics.read_text().splitlines()
    assert [r.split(",")[0] for r in csv_rows[1:]] == ["0", "1", "2"]


def test_non_finite_loss_names_epoch_and_batch(sample):
    cfg = tiny_cfg(sample, "model.anchors=default")
    train_index, _ = load_splits(cfg)
    from detector.models.faster_rcnn import build

    model, _ = build(cfg.model, num_classes=3, image_size=128, anchor_shapes=None)
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.bias.fill_(float("nan"))
    ds = CocoDetection(train_index, build_train_transforms(cfg.data.augment, 128), seed=0)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, LrSchedule("cosine", 10, 1))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at epoch 3, batch 0 \(.*loss_classifier=nan"):
        train_one_epoch(model, loader, opt, sched, scaler, device=torch.device("cpu"),
                        precision=Precision("cpu", None), epoch=3)


@pytest.mark.parametrize("precision", [Precision("cpu", None), Precision("cpu", torch.bfloat16),
                                       Precision("cpu", torch.float16)])
def test_grad_clip_bounds_each_step_of_the_unscaled_gradient_under_autocast(sample, precision):
    from detector.models.faster_rcnn import build

    cfg = tiny_cfg(sample, "model.anchors=default")
    train_index, _ = load_splits(cfg)
    ds = CocoDetection(train_index.subset(r.id for r in train_index.images[:4]), size=128)
    results = {}
    for clip in (0.0, 1e-3):
        torch.manual_seed(0)
        model, _ = build(cfg.model, num_classes=3, image_size=128, anchor_shapes=None)
        before = torch.cat([p.detach().flatten().clone() for p in model.parameters() if p.requires_grad])
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)  # plain steps: |dw| = |g|
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8, enabled=precision.scaled)  # fp16's, as on CUDA
        torch.manual_seed(1)
        losses = train_one_epoch(model, torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=collate), opt,
                                 sched, scaler, device=torch.device("cpu"), precision=precision, epoch=0,
                                 grad_clip=clip)
        after = torch.cat([p.detach().flatten() for p in model.parameters() if p.requires_grad])
        results[clip] = (float((after - before).norm()), losses["loss"])
    # one step of the clip's norm: clipping the scaled gradient (before unscaling) would step 2**-8 of it
    assert 1e-3 * 0.99 <= results[1e-3][0] <= 1e-3 * 1.01
    assert results[0.0][0] > 100 * results[1e-3][0] and math.isfinite(results[0.0][1])
    assert results[0.0][1] == pytest.approx(results[1e-3][1], rel=1e-6)  # the same batch, measured before the step


@pytest.mark.slow
def test_train_balanced_sampler_draws_the_rare_class_more_often(tmp_path):

    from detector.data.sample import SampleSpec, write_sample_dataset

    data = write_sample_dataset(tmp_path / "data", SampleSpec(images=24, seed=3))
    doc = json.loads(data["train"].read_text())
    rare = {a["image_id"] for a in doc["annotations"] if a["category_id"] == doc["categories"][0]["id"]}
    keep = sorted(rare)[:1]  # one image keeps the first class; the others lose it
    doc["annotations"] = [a for a in doc["annotations"]
                          if a["category_id"] != doc["categories"][0]["id"] or a["image_id"] in keep]
    (tmp_path / "data" / "rare.json").write_text(json.dumps(doc))
    rare_file = str((tmp_path / "data" / next(i["file_name"] for i in doc["images"] if i["id"] == keep[0])).resolve())
    opened = {"on": False, "n": 0}

    def hook(event, args):
        if opened["on"] and event == "open" and args and str(args[0]) == rare_file:
            opened["n"] += 1

    sys.addaudithook(hook)  # cannot be removed: it only counts while the flag is set
    counts = {}
    for balanced in (False, True):
        cfg = config.load(None, [f"data.train.annotations={tmp_path / 'data' / 'rare.json'}",
                                 f"data.val.annotations={data['val']}", *TINY, "train.epochs=2",
                                 f"train.balanced_sampler={str(balanced).lower()}"])
        train_index, val_index = load_splits(cfg)
        opened.update(on=True, n=0)
        fit(cfg, train_index, val_index, tmp_path / f"run_{balanced}", progress=False, log=lambda s: None)
        opened["on"] = False
        counts[balanced] = opened["n"]
    assert counts[False] <= 4 and counts[True] >= 3 * max(counts[False], 1), counts


def test_balanced_sampler_weights_favour_the_rare_class(tiny_coco):
    from detector.data.coco import load_coco

    def more(d):  # class a in images 1 and 3, class b only in image 2
        d["annotations"].append({"id": 3, "image_id": 3, "category_id": 1, "bbox": [1, 1, 5, 5], "iscrowd": 0})
    weights = balanced_weights(load_coco(tiny_coco(more)))
    assert weights.tolist() == [0.5, 1.0, 0.5]


def test_progressive_resize_and_early_stopping_rules():
    cfg = config.load(None, ["data.image_size=512", "train.progressive.start_size=256",
                             "train.progressive.epochs=2"])
    assert [image_size_at(cfg, e) for e in range(4)] == [256, 256, 512, 512]
    state = Progress()
    for epoch, score in enumerate([0.1, 0.3, 0.2, 0.25, 0.29]):
        state.update(epoch, Metrics.from_dict({"score": score}))
    assert state.best_epoch == 1
    assert not EarlyStopping(patience=3, min_epochs=1).should_stop(state, 3)
    assert EarlyStopping(patience=3, min_epochs=1).should_stop(state, 4)
    assert not EarlyStopping(patience=3, min_epochs=10).should_stop(state, 4)
    assert "EarlyStopping" not in [type(c).__name__ for c in standard(cfg)]  # train.patience 0: off
    state.update(5, Metrics.from_dict({"score": float("nan")}))
    assert state.best_epoch == 1


def test_param_groups_scale_the_backbone_and_spare_norms_and_biases():
    from detector.models.faster_rcnn import build

    cfg = config.load(None, [*TINY, "train.lr=0.01", "train.weight_decay=0.05", "train.backbone_lr_mult=0.1",
                             "model.trainable_layers=2", "model.anchors=default"])
    model, _ = build(cfg.model, num_classes=2, image_size=128)
    groups = {g["name"]: g for g in build_optimizer(cfg.train, model).param_groups}
    assert list(groups) == ["heads", "heads_no_decay", "backbone", "backbone_no_decay"]
    assert [groups[n]["lr"] for n in groups] == pytest.approx([0.01, 0.01, 0.001, 0.001])
    assert [groups[n]["weight_decay"] for n in groups] == [0.05, 0.0, 0.05, 0.0]
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.ndim == 1 for n in ("heads_no_decay", "backbone_no_decay") for p in groups[n]["params"])
    assert all(names[id(p)].startswith("backbone.body.") for p in groups["backbone"]["params"])
    assert any(p is model.roi_heads.box_predictor.cls_score.bias for p in groups["heads_no_decay"]["params"])
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert sum(len(g["params"]) for g in groups.values()) == len(trainable)  # frozen stages stay out
    both = config.with_values(cfg, {"train.decay_norm_and_bias": True, "train.backbone_lr_mult": 1.0})
    assert [g["name"] for g in build_optimizer(both.train, model).param_groups] == ["heads", "backbone"]


def test_lr_schedule_shapes():
    one = LrSchedule("onecycle", total_steps=100, warmup_steps=10)
    assert one(0) == pytest.approx(1 / 25) and one(10) == pytest.approx(1.0) and one(100) == pytest.approx(1e-4)
    cos = LrSchedule("cosine", total_steps=100, warmup_steps=0)
    assert cos(0) == pytest.approx(1.0) and cos(50) == pytest.approx(0.5) and cos(100) == pytest.approx(0.0)




@pytest.mark.slow
def test_cli_config_typo_is_one_clean_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epocs: 3\n")
    out = run_cli("train", str(bad))
    assert out.returncode == 2
    assert "error:" in out.stderr and "unknown key 'train.epocs'" in out.stderr and str(bad) in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.slow
def test_cli_train_then_evaluate_json(sample, tmp_path):
    sets = [a for s in [f"data.train.annotations={sample['train']}", f"data.val.annotations={sample['val']}",
                        *TINY, "train.epochs=1"] for a in ("--set", s)]
    out = run_cli("train", "--quiet", "--out", str(tmp_path / "run"), *sets, "--", str(_empty_config(tmp_path)))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "run" / "config.yaml").exists()
    ev = run_cli("evaluate", str(RunPaths(tmp_path / "run").best), str(sample["val"]), "--json")
    assert ev.returncode == 0, ev.stderr
    m = json.loads(ev.stdout)
    assert {"map", "map_50", "map_75", "precision", "recall", "f1", "per_class"} <= m.keys()
    assert set(m["per_class"]) == {"circle", "rectangle", "triangle"}
    logged = run_cli("evaluate", str(RunPaths(tmp_path / "run").best), str(sample["val"]))  # output to a pipe
    assert logged.returncode == 0 and "mAP@0.5" in logged.stdout
    assert "\r" not in logged.stderr and "batch/s" not in logged.stderr  # no progress-bar frames in a log
    changed = run_cli("train", "--quiet", "--out", str(tmp_path / "run"), *sets, "--set", "train.lr=0.5",
                      "--", str(_empty_config(tmp_path)))
    assert changed.returncode == 2 and "train.lr" in changed.stderr and "cannot be resumed" in changed.stderr


def _empty_config(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("{}\n")
    return path


@pytest.mark.slow
def test_ema_weights_are_evaluated_and_kept_and_a_resume_is_exact(sample, tmp_path):
    cfg = tiny_cfg(sample, "train.epochs=2", "train.ema=true", "train.ema_decay=0.99")
    train_index, val_index = load_splits(cfg)
    quiet = dict(progress=False, log=lambda s: None)
    full = fit(cfg, train_index, val_index, tmp_path / "full", **quiet)

    def crash(epoch, metrics):
        raise Stop()

    with pytest.raises(Stop):
        fit(cfg, train_index, val_index, tmp_path / "resumed", callbacks=[BestCheckpoint(), EpochEnd(crash)], **quiet)
    resumed = fit(cfg, train_index, val_index, tmp_path / "resumed", **quiet)
    for a, b in zip(full.history, resumed.history):
        assert a["map"] == pytest.approx(b["map"], rel=1e-6, abs=1e-9) and a["loss"] == pytest.approx(b["loss"])
    last = load_checkpoint(RunPaths(tmp_path / "full").last)
    best = load_checkpoint(RunPaths(tmp_path / "full").best).model
    name = "roi_heads.box_predictor.cls_score.weight"
    assert not torch.equal(last.model[name], last.callbacks["ema"][name])  # the average is not the raw weights

    def stop_at_best(epoch, metrics):
        if epoch == full.best_epoch:
            raise Stop()

    with pytest.raises(Stop):  # the same run up to its best epoch: its last.pt holds that epoch's average
        fit(cfg, train_index, val_index, tmp_path / "at_best", callbacks=[EpochEnd(stop_at_best)], **quiet)
    at_best = load_checkpoint(RunPaths(tmp_path / "at_best").last)
    assert at_best.epoch == full.best_epoch
    assert torch.equal(best[name], at_best.callbacks["ema"][name])  # kept and predicted: the averaged weights
    assert not torch.equal(best[name], at_best.model[name])
    resumed_last = load_checkpoint(RunPaths(tmp_path / "resumed").last)
    assert torch.equal(resumed_last.callbacks["ema"][name], last.callbacks["ema"][name])


@pytest.mark.slow
def test_tensorboard_event_files_of_each_fold_hold_losses_metrics_curves_and_drawn_images(sample, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from detector.training.cv import run_cv

    cfg = tiny_cfg(sample, "train.epochs=2", "cv.folds=2", "train.tensorboard=true", "refit.strategy=folds")
    run_cv(cfg, tmp_path / "cv", progress=False, log=lambda s: None)
    for k in (0, 1):
        events = EventAccumulator(str(tmp_path / "cv" / f"fold_{k}" / "tensorboard"),
                                  size_guidance={"images": 0, "scalars": 0})
        events.Reload()
        tags = events.Tags()
        assert {"loss/loss", "train/lr", "val/map_50", "val/score"} <= set(tags["scalars"])
        assert [e.step for e in events.Scalars("val/map_50")] == [0, 1]
        metrics = rows_of(tmp_path / "cv" / f"fold_{k}" / "metrics.csv")
        assert [e.value for e in events.Scalars("val/map_50")] == pytest.approx([float(r["map_50"]) for r in metrics],
                                                                             rel=1e-4, abs=1e-6)
        assert "val/pr_curves" in tags["images"] and "val/image_0" in tags["images"]


def rows_of(path):
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


class Seen(Callback):
    """What the model trains with, as fit wires it: the classifier's class weights and each epoch's image side
    (the config's and the one the training images actually come out at)."""

    def __init__(self):
        self.weights, self.sides = None, []

    def on_fit_start(self, state):
        self.weights = state.model.roi_heads.classifier_loss.weight

    def on_epoch_start(self, state):
        image = state.train_set[0][0]
        self.sides.append((state.image_size, max(image.shape[-2:])))


@pytest.mark.slow
def test_fit_wires_auto_class_weights_progressive_resizing_and_score_beta(sample, tmp_path):
    cfg = tiny_cfg(sample, "train.epochs=2", "model.class_weights=auto", "train.progressive.start_size=96",
                   "train.progressive.epochs=1", "score.beta=2")
    seen = Seen()
    fit(cfg, *load_splits(cfg), tmp_path / "run", callbacks=[BestCheckpoint(), seen], progress=False,
        log=lambda s: None)
    # class_weights: auto is the inverse box count of each class in the training file, mean 1, background 1
    train = json.loads(sample["train"].read_text())
    counts = [sum(a["category_id"] == c["id"] for a in train["annotations"])
              for c in sorted(train["categories"], key=lambda c: c["id"])]
    assert len(set(counts)) > 1  # unequal, so uniform weights would fail below
    inverse = [1 / n for n in counts]
    expected = [1.0, *(v / (sum(inverse) / len(inverse)) for v in inverse)]
    torch.testing.assert_close(seen.weights, torch.tensor(expected, dtype=torch.float32))
    # train.progressive: the first epoch's images are 96 px, the second's data.image_size
    assert seen.sides == [(96, 96), (128, 128)]
    header, *lines = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    rows = [dict(zip(header.split(","), line.split(","))) for line in lines]
    assert [int(r["image_size"]) for r in rows] == [96, 128]
    # score.beta: each epoch's score is w_map * mAP@0.5 + w_f1 * F_2 of its own precision and recall (which
    # differ, or every beta would give the same F)
    assert any(0 < float(r["precision"]) != float(r["recall"]) for r in rows), rows
    for r in rows:
        f2 = f_beta(float(r["precision"]), float(r["recall"]), 2.0)
        assert float(r["score"]) == pytest.approx(cfg.score.w_map * float(r["map_50"]) + cfg.score.w_f1 * f2, abs=1e-5)
