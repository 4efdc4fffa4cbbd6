"""The records that cross modules: each written and read back through its own to_dict/from_dict, and the
callback order fit() runs them in."""
import dataclasses
import json
import math

import optuna
import pytest

from detector import config
from detector.training.callbacks import (CONTROL, LOG, MODEL, RESUME, SAVE, BestCheckpoint, Callback, CsvLog, EarlyStopping,
                                Ema, EpochEnd, EpochLine, ResumeFile, ordered, standard)
from detector.checkpoint import Checkpoint, load_checkpoint, restore_model
from detector.errors import DetectorError
from detector.inference.manifest import Manifest, PublishedMember, read_manifest, write_manifest
from detector.models.spec import ModelSpec
from detector.top_models import TopEntry
from detector.distributed import World
from detector.metrics import Metrics, OperatingPoint, Thresholds
from detector.search.trial_record import CV_MEAN, FAIL_REASON, RUN_DIR, TrialRecord


def test_callbacks_run_in_stage_order_and_writers_only_on_rank_0():
    cfg = config.load(None, ["train.ema=true", "train.patience=2", "train.tensorboard=false"])
    hook = EpochEnd(lambda epoch, metrics: None)
    mine = [hook, BestCheckpoint()]
    names = [type(c).__name__ for c in ordered(standard(cfg) + mine, World())]
    assert names.index("Ema") < names.index("EarlyStopping") < names.index("BestCheckpoint") \
        < names.index("ResumeFile") < names.index("CsvLog") < names.index("EpochEnd")
    stages = [c.stage for c in ordered(standard(cfg) + mine, World())]
    assert stages == sorted(stages) and {MODEL, SAVE, RESUME, LOG, CONTROL} <= set(stages)
    other_rank = ordered(standard(cfg) + mine, World(rank=1, size=2))
    assert not any(c.writes for c in other_rank)
    kinds = {type(c) for c in other_rank}  # what every rank must run: the model, decisions, collectives, hooks
    assert {Ema, EarlyStopping, ResumeFile, EpochEnd} <= kinds and not kinds & {BestCheckpoint, CsvLog, EpochLine}
    assert not any(isinstance(c, (Ema, EarlyStopping)) for c in standard(config.load(None)))  # off by default


def test_a_callback_without_overrides_does_nothing_and_saves_nothing():
    c = Callback()
    assert c.state_dict() == {} and c.key == "" and not c.writes


def test_checkpoint_record_reads_files_of_before_callbacks_kept_their_state():
    legacy = {"format": 1, "model": {}, "label_map": {"category_ids": [1], "names": ["a"]}, "epoch": 3,
              "ema": {"w": 1}, "optimizer": {"state": {}}, "something_old": True}
    c = Checkpoint.from_dict(legacy)
    assert c.epoch == 3 and c.callbacks == {"ema": {"w": 1}} and c.optimizer == {"state": {}}
    assert "checksum" not in c.to_dict() and Checkpoint.from_dict(c.to_dict()) == c


def test_top_entry_round_trips_and_keeps_the_index_form():
    kept = TopEntry("top/fold0_epoch002.pt", 0, 2, 0.5, Metrics.from_dict({"map": 0.4, "score": 0.5}))
    d = kept.to_dict()
    assert {k: v for k, v in d.items() if k != "metrics"} == {"fold": 0, "epoch": 2, "score": 0.5,
                                                              "path": "top/fold0_epoch002.pt"}  # no member keys
    assert d["metrics"]["map"] == 0.4 and TopEntry.from_dict(d).metrics.map == 0.4
    member = TopEntry("seed_0/model.pt", None, 4, 0.6, None, "seed_0", "config, seed 0", 200)
    assert TopEntry.from_dict(member.to_dict()) == member and member.to_dict()["train_images"] == 200
    assert math.isnan(TopEntry.from_dict({"path": "x.pt"}).score)


def test_operating_point_has_one_form_for_cv_runs_and_studies():
    point = OperatingPoint(Thresholds(0.4, {2: 0.6}), config.EnsembleConfig(iou_thr=0.5, weights=[2.0, 1.0]),
                           0.8, 0.75, Metrics.from_dict({"map": 0.5}), 20, "data.val", 7, 1.234)
    d = point.to_dict()
    assert d["score_threshold"] == 0.4 and d["class_thresholds"] == {"2": 0.6} and d["images"] == 20
    back = OperatingPoint.from_dict(d)
    assert back.thresholds == point.thresholds and back.ensemble == point.ensemble and back.score == 0.8
    with pytest.raises(KeyError):
        OperatingPoint.from_dict({"score_threshold": 0.5})  # an older file: ensemble.py names it and the fix


def test_the_manifest_stores_the_operating_point_once_and_reads_the_older_form(tmp_path):
    point = OperatingPoint(Thresholds(0.4, {2: 0.6}), config.EnsembleConfig(iou_thr=0.5, conf_type="avg"),
                           0.8, 0.75, Metrics.from_dict({"map": 0.5}), 20, "data.val", 7, 1.2, [0])
    member = PublishedMember("model_0.pt", "/refit/a/model.pt", "trial_0000, seed 0", None, 4,
                             Metrics.from_dict({"map": 0.45}), 0.35)
    manifest = Manifest([member], point, {"names": ["a", "b"], "category_ids": [1, 2]}, trial=3, value=0.7,
                        params={"train.lr": 0.001}, candidates=["/refit/a/model.pt", "/refit/b/model.pt"])
    write_manifest(tmp_path, manifest)
    raw = json.loads((tmp_path / "ensemble.json").read_text())
    assert not {"ensemble", "score_threshold", "class_thresholds"} & set(raw)  # only under operating_point
    back = read_manifest(tmp_path)
    assert back.operating_point.thresholds == point.thresholds and back.operating_point.ensemble == point.ensemble
    assert back.files == ["model_0.pt"] and back.trial == 3 and back.members[0].heldout.map == 0.45
    assert dataclasses.replace(back.members[0], heldout=None) == dataclasses.replace(member, heldout=None)
    assert json.dumps(back.to_dict()) == json.dumps(raw)  # (NaN, as JSON writes it, is not equal to itself)
    # ensemble.json as studies wrote it before (settings at the top), and as exports listed their members
    (tmp_path / "ensemble.json").write_text(json.dumps({"members": ["model_0.onnx"], "ensemble": {"iou_thr": 0.6},
                                                        "score_threshold": 0.3, "class_thresholds": {"1": 0.2}}))
    old = read_manifest(tmp_path)
    assert old.files == ["model_0.onnx"] and old.operating_point.ensemble.iou_thr == 0.6
    assert old.operating_point.thresholds == Thresholds(0.3, {1: 0.2})
    for broken in ('{"members": [{"file": "m.pt"}]}', '{"members": 3, "score_threshold": 0.3}', '[1, 2]', '{"memb',
                   '{"members": ["../other/model.pt"], "score_threshold": 0.3}', '{"members": [""], "score_threshold": 0.3}'):
        (tmp_path / "ensemble.json").write_text(broken)
        with pytest.raises(DetectorError, match="ensemble.json"):
            read_manifest(tmp_path)


def test_one_model_spec_in_the_checkpoint_the_restored_model_and_a_fit(untrained_checkpoint):
    state = load_checkpoint(untrained_checkpoint)
    spec = state.spec(str(untrained_checkpoint))
    restored = restore_model(untrained_checkpoint)
    assert restored.spec == spec and restored.label_map == spec.label_map and restored.image_size == 128
    again = Checkpoint.of(spec, state.model, epoch=state.epoch, metrics=state.metrics)
    assert {k: v for k, v in again.to_dict().items() if k != "model"} == \
        {k: v for k, v in state.to_dict().items() if k != "model"}
    assert ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict())), "labels.json") == spec  # as a file holds it


def test_trial_record_owns_the_attribute_names():
    study = optuna.create_study()
    trial = study.ask()
    trial.set_user_attr(RUN_DIR, "trial_0000")
    trial.set_user_attr(CV_MEAN, {"score": 0.5})
    study.tell(trial, 0.5)
    failed = study.ask()
    failed.set_user_attr(FAIL_REASON, "DatasetError: broken")
    study.tell(failed, state=optuna.trial.TrialState.FAIL)
    died = study.ask()
    study.tell(died, state=optuna.trial.TrialState.FAIL)
    done, error, dead = (TrialRecord.of(t) for t in study.get_trials())
    assert done.run_dir == "trial_0000" and done.cv_mean == {"score": 0.5} and done.finished
    assert error.failed_with_error and error.finished and error.run_dir == "trial_0001"  # the default folder
    assert not dead.failed_with_error and not dead.finished  # its worker died: it is retried
    assert set(done.to_dict()) >= {"number", "state", "value", "params", "run_dir", "fail_reason", "retry_of"}
