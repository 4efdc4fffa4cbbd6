import json

import pytest

from detector import config
from detector.training.refit import fold_epochs
from detector.top_models import TopK
from detector.training.cv import read_summary, run_cv
from detector.data.coco import load_coco
from detector.data.folds import group_key, make_folds, resolve_strategy
from detector.errors import ConfigError
from detector.layout import RunPaths
from detector.metrics import Metrics
from tests.helpers import CLI, wait_until
from tests.test_train import TINY

SIM = config.DataConfig().copy_similarity


def test_group_folds_keep_roboflow_copies_together(rbc):
    index = load_coco(rbc / "train" / "_annotations.coco.json", check_images=False)
    folds = make_folds(index, n_folds=5, similarity=SIM, strategy="group", group_by="roboflow", seed=0)
    by_id = {r.id: r for r in index.images}
    fold_of_source: dict[str, set[int]] = {}
    for k, ids in enumerate(folds):
        for i in ids:
            fold_of_source.setdefault(group_key(by_id[i], "roboflow"), set()).add(k)
    assert len(fold_of_source) == 70  # 210 images are copies of 70 photos
    assert all(len(f) == 1 for f in fold_of_source.values())
    assert sorted(i for f in folds for i in f) == sorted(by_id)
    assert make_folds(index, n_folds=5, similarity=SIM, strategy="group", seed=0) == folds  # seeded


def test_auto_strategy_groups_roboflow_copies_and_warns_when_forced_apart(rbc, sample):
    index = load_coco(rbc / "train" / "_annotations.coco.json", check_images=False)
    assert resolve_strategy(index, "auto", "roboflow", SIM) == ("group", None)
    assert make_folds(index, n_folds=5, similarity=SIM, strategy="auto", seed=0) == make_folds(index, n_folds=5, similarity=SIM, strategy="group",
                                                                                seed=0)
    strategy, warning = resolve_strategy(index, "stratified", "roboflow", SIM)
    assert strategy == "stratified" and "69 photos have several images (Roboflow copies, identical files or copies by content)" in warning
    assert resolve_strategy(index, "group", "roboflow", SIM) == ("group", None)
    plain = load_coco(sample["annotations"], check_images=False)  # no copies: stratified, no warning
    assert resolve_strategy(plain, "auto", "roboflow", SIM) == ("stratified", None)
    assert resolve_strategy(plain, "kfold", "roboflow", SIM) == ("kfold", None)
    assert resolve_strategy(plain, "auto", r"regex:sample_(\d)", SIM) == ("group", None)


def test_no_shipped_config_leaks_copies_across_folds(monkeypatch):
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)  # config data paths are relative to the project root
    checked = []
    for path in sorted((root / "configs").glob("*.yaml")):
        cfg = config.load(path)
        if Path(cfg.data.train.annotations).is_file():
            index = load_coco(cfg.data.train.annotations, cfg.data.train.images, check_images=False)
            assert resolve_strategy(index, cfg.cv.strategy, cfg.cv.group_by, cfg.data.copy_similarity)[1] is None, path.name
            checked.append(path.name)
    assert {"rbc.yaml", "quickstart.yaml"} <= set(checked)


def test_stratified_folds_on_rbc_keep_wbc_in_every_validation_fold(rbc):
    index = load_coco(rbc / "train" / "_annotations.coco.json", check_images=False)
    by_id = {r.id: r for r in index.images}
    for strategy in ("stratified", "group"):
        folds = make_folds(index, n_folds=5, similarity=SIM, strategy=strategy, seed=0)
        for ids in folds:
            assert 2 in {int(c) for i in ids for c in by_id[i].category_ids}, strategy


def test_stratified_folds_keep_every_class_in_every_fold(sample):
    index = load_coco(sample["annotations"], check_images=False)
    folds = make_folds(index, n_folds=4, similarity=SIM, strategy="stratified", seed=1)
    by_id = {r.id: r for r in index.images}
    for ids in folds:
        present = {int(c) for i in ids for c in by_id[i].category_ids}
        assert present == {1, 2, 3}
        assert any(len(by_id[i].category_ids) == 0 for i in ids)  # negatives spread too
    assert max(map(len, folds)) - min(map(len, folds)) <= 2


def test_group_by_regex_and_field_and_errors(sample):
    index = load_coco(sample["annotations"], check_images=False)
    rec = index.images[0]
    assert group_key(rec, r"regex:sample_(\d{3})") == rec.file_name.split("_")[1][:3]
    assert group_key(rec, "field:width") == str(rec.width)
    with pytest.raises(ConfigError, match="no field 'site'"):
        group_key(rec, "field:site")
    with pytest.raises(ConfigError, match="cv.group_by must be"):
        group_key(rec, "photo")
    with pytest.raises(ConfigError, match="only 1 groups"):
        make_folds(index, n_folds=2, similarity=SIM, strategy="group", group_by="regex:sample_")


def test_top_k_keeps_exactly_the_k_best_of_each_fold(tmp_path):
    top = TopK(tmp_path, k=3)
    write = lambda p: (p.parent.mkdir(exist_ok=True), p.write_text("x"))
    scores = [0.2, 0.5, float("nan"), 0.1, 0.7, 0.5, 0.3, 0.9]
    for epoch, s in enumerate(scores):
        top.offer(0, epoch, Metrics.from_dict({"score": s}), write)
        assert len(list((tmp_path / "top").glob("*.pt"))) <= 3
    for epoch, s in enumerate([0.05, 0.01]):  # another fold's images: never ranked against fold 0's scores
        top.offer(1, epoch, Metrics.from_dict({"score": s}), write)
    listed = json.loads(RunPaths(tmp_path).top_models.read_text())
    assert [(e["fold"], e["epoch"], e["score"]) for e in listed] == [
        (0, 7, 0.9), (0, 4, 0.7), (0, 1, 0.5), (1, 0, 0.05), (1, 1, 0.01)]  # tie: earlier epoch
    assert sorted(p.name for p in (tmp_path / "top").glob("*.pt")) == [
        "fold0_epoch001.pt", "fold0_epoch004.pt", "fold0_epoch007.pt", "fold1_epoch000.pt", "fold1_epoch001.pt"]
    (tmp_path / "top" / "fold0_epoch002.pt").write_text("orphan of a killed run")
    again = TopK(tmp_path, k=3)
    assert len(list((tmp_path / "top").glob("*.pt"))) == 5 and [e.to_dict() for e in again.entries] == listed


def test_an_unreadable_model_index_is_rebuilt_from_the_checkpoints_never_emptied(tmp_path):
    from detector.checkpoint import Checkpoint, save_checkpoint
    from detector.training.cv import read_summary
    from detector.inference.ensemble import resolve_models

    label_map = {"category_ids": [1], "names": ["cell"]}
    for fold, epoch, score in ((0, 1, 0.4), (0, 3, 0.6), (1, 2, 0.5)):
        save_checkpoint(tmp_path / "top" / f"fold{fold}_epoch{epoch:03d}.pt",
                        Checkpoint(model={}, label_map=label_map, epoch=epoch, metrics={"score": score}))
    RunPaths(tmp_path).top_models.write_text('[{"fold": 0, "epo')  # cut short
    assert [(e.fold, e.epoch) for e in read_summary(tmp_path).top_models] == [(0, 3), (0, 1), (1, 2)]
    assert len(resolve_models(tmp_path)[0]) == 3
    top = TopK(tmp_path, k=1, log=lambda s: None)  # what the same cv command does on resume
    assert len(list((tmp_path / "top").glob("*.pt"))) == 3 and len(top.entries) == 3
    assert [e["score"] for e in json.loads(RunPaths(tmp_path).top_models.read_text())] == [0.6, 0.4, 0.5]
    RunPaths(tmp_path).top_models.unlink()  # the old advice: delete it and run again
    assert len(TopK(tmp_path, k=1, log=lambda s: None).entries) == 3
    assert len(list((tmp_path / "top").glob("*.pt"))) == 3


@pytest.mark.slow
def test_two_fold_run_end_to_end(sample, tmp_path):
    cfg = config.load(None, [f"data.train.annotations={sample['train']}",
                             f"data.val.annotations={sample['val']}", *TINY, "train.epochs=2",
                             "cv.folds=2", "cv.top_k=2", "refit.strategy=folds"])
    run = tmp_path / "cv"
    result = run_cv(cfg, run, progress=False, log=lambda s: None)
    for name in ("config.yaml", "env.json", "folds.json", "summary.json", "top_models.json"):
        assert (run / name).exists(), name
    env = json.loads(RunPaths(run).env.read_text())  # the precision auto chose on this machine, and why
    assert env["precision"] in ("fp32", "bf16") and env["precision"] in env["precision_reason"]
    folds = json.loads(RunPaths(run).folds.read_text())["folds"]
    assert len(folds) == 2 and not set(folds[0]) & set(folds[1])
    for k in (0, 1):
        rows = (run / f"fold_{k}" / "metrics.csv").read_text().splitlines()
        assert rows[0].startswith("fold,epoch,lr") and [r.split(",")[0] for r in rows[1:]] == [str(k)] * 2
        assert (run / f"fold_{k}" / "anchors.json").exists()
        assert not (run / f"fold_{k}" / "last.pt").exists() and not (run / f"fold_{k}" / "best.pt").exists()
    top = json.loads(RunPaths(run).top_models.read_text())  # refit.strategy folds: the folds' own models
    assert len(top) == 4 and len(list((run / "top").glob("*.pt"))) == 4
    assert [e["fold"] for e in top] == [0, 0, 1, 1] and top[0]["score"] >= top[1]["score"]
    best_per_fold = {f.fold: f.metrics.score for f in result.folds}
    assert [top[0]["score"], top[2]["score"]] == pytest.approx([best_per_fold[0], best_per_fold[1]])
    assert result.mean.score == pytest.approx(sum(best_per_fold.values()) / 2)
    mean = result.mean.summary()
    assert read_summary(run).mean.summary() == pytest.approx(mean, nan_ok=True)  # NaN: no large shapes to find
    # re-running skips both finished folds; another config is refused with the differing key
    assert run_cv(cfg, run, progress=False, log=lambda s: None).mean.summary() == pytest.approx(mean, nan_ok=True)
    other = config.load(None, [f"data.train.annotations={sample['train']}",
                               f"data.val.annotations={sample['val']}", *TINY, "train.epochs=3",
                               "cv.folds=2"])
    with pytest.raises(ConfigError, match=r"train.epochs \(2 -> 3\)"):
        run_cv(other, run, progress=False, log=lambda s: None)
    quick = config.load(None, [f"data.train.annotations={sample['train']}",
                               f"data.val.annotations={sample['val']}", *TINY, "train.epochs=1", "cv.folds=2"])
    restarted = run_cv(quick, run, force=True, progress=False, log=lambda s: None)
    assert [f.epochs_run for f in restarted.folds] == [1, 1]
    assert config.load(run / "config.yaml").train.epochs == 1


def _cv_command(sample, tmp_path, out):

    empty = tmp_path / "empty.yaml"
    empty.write_text("{}\n")
    sets = [f"data.train.annotations={sample['train']}", f"data.val.annotations={sample['val']}", *TINY,
            "train.epochs=3", "cv.folds=2", "cv.top_k=2", "refit.strategy=folds"]
    return [*CLI, "cv", str(empty), "--out", str(out), "--quiet",
            *[a for s in sets for a in ("--set", s)]]


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(sample, tmp_path):
    import signal
    import subprocess

    full = subprocess.run(_cv_command(sample, tmp_path, tmp_path / "full"), capture_output=True, text=True)
    assert full.returncode == 0, full.stderr
    run = tmp_path / "killed"
    proc = subprocess.Popen(_cv_command(sample, tmp_path, run), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    csv_path = RunPaths(run / "fold_0").metrics
    wait_until(lambda: csv_path.exists() and len(csv_path.read_text().splitlines()) >= 2
               and RunPaths(run / "fold_0").last.exists(), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not RunPaths(run / "fold_0").summary.exists()  # killed mid-fold
    half = read_summary(run)  # a half-finished run is readable
    assert half.folds == []
    resumed = subprocess.run(_cv_command(sample, tmp_path, run), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    a, b = read_summary(tmp_path / "full"), read_summary(run)
    for fa, fb in zip(a.folds, b.folds):
        assert fa.best_epoch == fb.best_epoch
        for key in ("map", "map_50", "f1", "score"):
            assert fa.metrics.value(key) == pytest.approx(fb.metrics.value(key), abs=1e-9), key
    assert [(e.fold, e.epoch) for e in a.top_models] == [(e.fold, e.epoch) for e in b.top_models]
    assert len(list((run / "top").glob("*.pt"))) == 4
    rows = RunPaths(run / "fold_0").metrics.read_text().splitlines()
    assert [r.split(",")[1] for r in rows[1:]] == ["0", "1", "2"]


@pytest.mark.slow
def test_report_on_finished_and_unfinished_runs(sample, tmp_path):
    import contextlib
    import io
    import shutil

    from detector.cli import main

    cfg = config.load(None, [f"data.train.annotations={sample['train']}",
                             f"data.val.annotations={sample['val']}", *TINY, "train.epochs=2", "cv.folds=2",
                             "refit.strategy=folds"])
    run = tmp_path / "cv"
    run_cv(cfg, run, progress=False, log=lambda s: None)
    texts = {}
    for fmt in ("table", "markdown", "csv", "json"):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main(["report", str(run), "--format", fmt]) == 0
        texts[fmt] = out.getvalue()
    for fmt in ("table", "markdown"):
        assert "mean+-std" in texts[fmt] and "map_50" in texts[fmt] and "per-class AP" in texts[fmt], fmt
    assert texts["markdown"].count("| ") > 4
    assert texts["csv"].splitlines()[0] == "fold,best_epoch,map_50,f1,precision,recall,score"
    assert len(texts["csv"].splitlines()) == 4  # header, two folds, mean
    report = json.loads(texts["json"])
    assert [f["fold"] for f in report["folds"]] == [0, 1] and set(report["mean"]) >= {"map_50", "score"}
    for name in ("losses.png", "map_50.png", "f1.png", "score.png", "pr_curves.png"):
        assert (run / "plots" / name).stat().st_size > 1000
    unfinished = tmp_path / "unfinished"
    shutil.copytree(run, unfinished)
    RunPaths(unfinished / "fold_1").summary.unlink()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["report", str(unfinished), "--format", "csv"]) == 0
    lines = out.getvalue().splitlines()
    assert lines[0] == "fold,best_epoch,map_50,f1,precision,recall,score" and lines[1].startswith("0,")
    assert lines[2].startswith("mean+-std")


@pytest.mark.slow
def test_a_cv_run_publishes_members_refit_on_all_of_its_training_data(sample, tmp_path):
    import subprocess

    empty = tmp_path / "empty.yaml"
    empty.write_text("{}\n")
    run = tmp_path / "cv"
    sets = [f"data.train.annotations={sample['train']}", f"data.val.annotations={sample['val']}", *TINY,
            "train.epochs=3", "cv.folds=2", "refit.members=2"]
    done = subprocess.run([*CLI, "cv", str(empty), "--out", str(run), "--quiet",
                           *[a for s in sets for a in ("--set", s)]], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    summary = read_summary(run)
    epochs = fold_epochs(summary.folds, 0, 2.0)  # twice the folds' choice when their last epoch was their best
    top = json.loads(RunPaths(run).top_models.read_text())
    assert [e["path"] for e in top] == ["refit/seed_0/model.pt", "refit/seed_1/model.pt"]
    images = len(json.loads(sample["train"].read_text())["images"])
    for seed, e in enumerate(top):
        member = run / "refit" / f"seed_{seed}"
        assert e["train_images"] == images > max(len(f) for f in json.loads(RunPaths(run).folds.read_text())["folds"])
        assert config.load(member / "config.yaml").train.seed == seed and e["epoch"] == epochs - 1
        assert len(RunPaths(member).metrics.read_text().splitlines()) == 1 + epochs
        assert not RunPaths(member).last.exists()
    assert not list(run.glob("fold_*/*.pt")) and not (run / "top").exists()  # the folds keep no model
    point = json.loads(RunPaths(run).operating_point.read_text())  # tuned on data.val for the members' ensemble
    heldout = json.loads(RunPaths(run).heldout.read_text())
    assert point["score_threshold"] == heldout["operating_point"]["score_threshold"]
    assert "published: " in done.stdout and "fold estimate" in done.stdout
    val_images = len(json.loads(sample["val"].read_text())["images"])
    assert heldout["ensemble"]["images"] == val_images and len(heldout["members"]) == 2  # (learning: test_finetune)
    from detector.inference.ensemble import Ensemble

    ensemble = Ensemble.load(run)  # the members data.val chose: both fused, or the better one alone
    assert point["members"] == heldout["selection"]["chosen"] and point["members"] in ([0, 1], [0], [1])
    assert len(ensemble.members) == len(point["members"]) and ensemble.thresholds.default == point["score_threshold"]
    assert ensemble.settings.iou_thr == point["ensemble"]["iou_thr"]



def test_kfold_is_a_shuffled_partition_fixed_by_the_seed(sample):
    index = load_coco(sample["annotations"], check_images=False)
    folds = make_folds(index, n_folds=3, similarity=SIM, strategy="kfold", seed=0)
    assert sorted(i for f in folds for i in f) == sorted(r.id for r in index.images)
    assert max(map(len, folds)) - min(map(len, folds)) <= 1
    assert make_folds(index, n_folds=3, similarity=SIM, strategy="kfold", seed=0) == folds
    assert make_folds(index, n_folds=3, similarity=SIM, strategy="kfold", seed=1) != folds
