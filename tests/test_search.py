import json
import signal
import subprocess
import sys
import time

import optuna
import pytest
from PIL import Image
from optuna.trial import TrialState

from detector import config
from detector.analysis.error_breakdown import Breakdown
from detector.errors import ConfigError, DatasetError
from detector.layout import RunPaths, StudyPaths
from detector.metrics import Metrics
from detector.search import Objective, PruningHook, check_space, load_study, run_study, suggest
from detector.data.splits import load_splits
from detector.training.cv import read_summary
from detector.training.refit import fold_epochs
from tests.helpers import CLI, wait_until
from tests.test_train import TINY


def study_sets(sample, *extra):
    return [f"data.train.annotations={sample['train']}", f"data.val.annotations={sample['val']}", *TINY,
            "train.epochs=2", "cv.folds=2", "search.pruner=none", "refit.members=1", *extra]


def study_cfg(sample, *extra):
    return config.load(None, study_sets(sample, *extra))


def study_command(sample, tmp_path, name, *extra, storage=None):
    empty = tmp_path / "empty.yaml"
    empty.write_text("{}\n")
    cmd = [*CLI, "study", str(empty), "--name", name,
           "--studies-dir", str(tmp_path / "studies"), "--quiet",
           *[a for s in study_sets(sample, *extra) for a in ("--set", s)]]
    return cmd + (["--storage", storage] if storage else [])


def test_search_space_from_config():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    space = {"train.lr": {"low": 1e-4, "high": 1e-3, "log": True}, "train.batch_size": [4, 8],
             "model.anchors_per_level": {"low": 2, "high": 6, "step": 2}, "eval.score_threshold": [0.3, 0.4]}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    suggest(trial, space)  # each spec becomes the distribution of the config key's type
    assert trial.distributions == {"train.lr": FloatDistribution(1e-4, 1e-3, log=True),
                                   "train.batch_size": CategoricalDistribution([4, 8]),
                                   "model.anchors_per_level": IntDistribution(2, 6, step=2),
                                   "eval.score_threshold": CategoricalDistribution([0.3, 0.4])}
    drawn = [suggest(study.ask(), space) for _ in range(20)]
    assert all(isinstance(d["model.anchors_per_level"], int) and d["model.anchors_per_level"] in (2, 4, 6)
               for d in drawn)
    assert all(1e-4 <= d["train.lr"] <= 1e-3 for d in drawn) and {d["train.batch_size"] for d in drawn} == {4, 8}
    cfg = config.with_values(config.load(None), drawn[0])
    assert cfg.train.lr == drawn[0]["train.lr"]
    finetuning = {"train.backbone_lr_mult": {"low": 0.1, "high": 1.0, "log": True},
                  "train.decay_norm_and_bias": [False, True]}
    drawn = [suggest(study.ask(), finetuning) for _ in range(10)]
    assert {d["train.decay_norm_and_bias"] for d in drawn} == {False, True}
    assert all(0.1 <= config.with_values(cfg, d).train.backbone_lr_mult <= 1.0 for d in drawn)
    for bad, message in [({"train.lrr": [1]}, "not a config key"), ({"train.lr": {"low": 1}}, "low, high"),
                         ({"train.lr": {"low": 0, "high": 1, "log": True}}, "low > 0"),
                         ({"model.backbone": {"low": 1, "high": 2}}, "not a number"),
                         ({"train.lr": []}, "non-empty list")]:
        with pytest.raises(ConfigError, match=message):
            suggest(study.ask(), bad)


def test_held_out_split_must_not_share_images_with_training(sample):
    cfg = study_cfg(sample, f"data.val.annotations={sample['annotations']}")
    with pytest.raises(DatasetError, match=r"shares \d+ image file\(s\) with data.train: .*sample_\d+.png \(in both\); .*; each"):
        load_splits(cfg)


def test_pruning_hook_reports_the_running_fold_mean_and_prunes(tmp_path):
    study = optuna.create_study(direction="maximize",
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0))
    good = study.ask()
    hook = PruningHook(good, tmp_path, epochs=2)
    for fold, epoch, score in [(0, 0, 0.4), (0, 1, 0.6), (1, 0, 0.2), (1, 1, 0.8)]:
        hook.report(fold, epoch, Metrics.from_dict({"score": score}))
    study.tell(good, 0.7)
    assert study.trials[0].intermediate_values == pytest.approx({0: 0.4, 1: 0.6, 2: 0.3, 3: 0.7})
    bad = study.ask()
    hook = PruningHook(bad, tmp_path, epochs=2)
    with pytest.raises(optuna.TrialPruned, match="fold 0, epoch 0"):
        hook.report(0, 0, Metrics.from_dict({"score": 0.1}))


def test_trial_0_runs_the_configs_own_values():
    from detector.search.space import starting_params

    space = "search.space={train.lr: {low: 1.0e-4, high: 1.0e-2, log: true}, train.batch_size: [2, 4], " \
            "model.box_loss: [ce, focal], train.epochs: [5, 6], data.augment.hflip: [0.0, 0.25]}"
    cfg = config.load(None, ["train.lr=0.003", "train.batch_size=4", "train.epochs=7", space])
    # train.epochs 7 and hflip 0.5 are not choices the space has: the sampler draws them
    assert starting_params(cfg) == {"train.lr": 0.003, "train.batch_size": 4, "model.box_loss": "ce"}


def test_a_pruned_trial_stops_at_its_first_epoch_and_frees_its_checkpoints(sample, tmp_path):
    cfg = study_cfg(sample)
    study = optuna.create_study(direction="maximize",
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0))
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.COMPLETE, value=1.0, params={"train.lr": 1e-3},
        distributions={"train.lr": optuna.distributions.CategoricalDistribution([1e-3])},
        intermediate_values={0: 1.0, 1: 1.0, 2: 1.0, 3: 1.0}))
    objective = Objective(study_cfg(sample, "search.space={train.lr: [0.001]}"), tmp_path, log=lambda s: None)
    trial = study.ask()
    with pytest.raises(optuna.TrialPruned, match="fold 0, epoch 0"):
        objective(trial)
    run = tmp_path / "trial_0001"
    assert len(RunPaths(run / "fold_0").metrics.read_text().splitlines()) == 2  # stopped after one epoch
    assert not list(run.rglob("*.pt"))  # top models and the fold's last.pt are gone
    assert cfg.train.epochs == 2


@pytest.mark.slow
def test_objective_with_a_fixed_trial_scores_its_fold_mean_and_keeps_no_model(sample, tmp_path):
    cfg = study_cfg(sample)
    trial = optuna.trial.FixedTrial({"train.lr": 1e-3, "train.batch_size": 8}, number=7)
    value = Objective(cfg, tmp_path, log=lambda s: None)(trial)
    run = tmp_path / "trial_0007"
    assert config.load(run / "config.yaml").train.batch_size == 8  # the drawn value, not TINY's 4
    summary = json.loads(RunPaths(run).summary.read_text())
    scores = [f["metrics"]["score"] for f in summary["folds"]]
    assert len(scores) == 2 and value == pytest.approx(sum(scores) / 2)  # the same folds for every trial
    for f in summary["folds"]:  # each fold's score: mAP@0.5 and F1 at that fold's own best threshold
        m = f["metrics"]
        assert m["score"] == pytest.approx(0.5 * m["map_50"] + 0.5 * m["f1"]) and 0 < m["threshold"] <= 1
    assert trial.user_attrs["cv_mean"]["score"] == pytest.approx(value)
    assert trial.user_attrs["best_epochs"] == [f["best_epoch"] for f in summary["folds"]]
    assert not list(run.rglob("*.pt")) and not (run / "refit").exists()  # the study refits; a trial keeps nothing


@pytest.mark.slow
def test_study_end_to_end_with_a_killed_trial_resumed(sample, tmp_path):
    cmd = study_command(sample, tmp_path, "demo", "search.n_trials=2", "refit.members=2")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    study_dir = tmp_path / "studies" / "demo"
    csv_path = RunPaths(study_dir / "trial_0000" / "fold_0").metrics
    wait_until(lambda: csv_path.exists() and len(csv_path.read_text().splitlines()) >= 2, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert load_study(study_dir).trials[0].state == TrialState.RUNNING  # left behind by the kill
    resumed = subprocess.run(cmd, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout + resumed.stderr  # the retry continued fold 0 from its last.pt
    trials = load_study(study_dir).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert trials[0].params == {"train.lr": 1e-3, "train.batch_size": 4}  # the config's own values
    assert trials[0].user_attrs["start"]
    retry = trials[1]
    assert retry.system_attrs["failed_trial"] == 0 and retry.params == trials[0].params
    assert retry.user_attrs["run_dir"] == "trial_0000" and trials[2].user_attrs["run_dir"] == "trial_0002"
    rows = RunPaths(study_dir / "trial_0000" / "fold_0").metrics.read_text().splitlines()
    assert [r.split(",")[1] for r in rows[1:]] == ["0", "1"]  # no epoch lost or repeated
    best = max(trials[1:], key=lambda t: (t.value, -t.number))
    meta = json.loads((study_dir / "best" / "ensemble.json").read_text())
    assert meta["trial"] == best.number and meta["value"] == pytest.approx(best.value)
    assert meta["fold_estimate"]["score"] == pytest.approx(best.value)
    # published: the best config refit on all of data.train with 2 seeds, for the epochs its folds chose
    run_dir = best.user_attrs["run_dir"]
    assert meta["candidates"] == [str(study_dir / "refit" / f"{run_dir}_seed_{s}" / "model.pt") for s in (0, 1)]
    chosen = meta["selection"]["chosen"]  # the fusion where data.val says it beats the best member, else that one
    assert chosen == meta["operating_point"]["members"] and chosen in ([0, 1], [meta["selection"]["best_member"]])
    assert [m["source"] for m in meta["members"]] == [f"{run_dir}, seed {s}" for s in chosen]
    assert all((study_dir / "best" / m["file"]).exists() for m in meta["members"])
    train_images = len(json.loads(sample["train"].read_text())["images"])
    for seed in (0, 1):
        member = study_dir / "refit" / f"{run_dir}_seed_{seed}"
        assert config.load(member / "config.yaml").train.seed == seed
        assert json.loads(RunPaths(member).summary.read_text())["train_images"] == train_images
    epochs = fold_epochs(read_summary(study_dir / run_dir).folds, 0, 2.0)
    assert meta["refit"]["epochs_trained"] == [epochs] * len(chosen)
    heldout = json.loads(RunPaths(study_dir / "best").heldout.read_text())  # tuned on the members' val boxes
    same = [json.dumps(d["operating_point"], sort_keys=True) for d in (heldout, meta)]  # NaN != NaN in dicts
    assert same[0] == same[1]  # stored once: not repeated at the top level
    assert not {"ensemble", "score_threshold", "class_thresholds"} & set(meta)
    assert meta["label_map"]["names"] == ["circle", "rectangle", "triangle"]
    assert not list(study_dir.glob("trial_*/**/*.pt"))  # trials keep no model
    # the finished study is not run again; the report reads it
    again = subprocess.run(cmd, capture_output=True, text=True)
    assert again.returncode == 0 and len(load_study(study_dir).trials) == 3
    report = subprocess.run([*CLI, "report", str(study_dir)], capture_output=True,
                            text=True)
    assert report.returncode == 0, report.stderr
    assert f"best trial {best.number}" in report.stdout and "retry of 0" in report.stdout
    for name in ("history", "parallel_coordinate", "param_importances"):
        assert (study_dir / "plots" / f"{name}.png").stat().st_size > 1000
    worst = Breakdown.from_dict(heldout["ensemble"]["errors"]).worst(8)  # the gallery: data.val's worst images
    drawn = sorted((study_dir / "plots" / "worst").glob("*.png"))
    assert worst and len(drawn) == len(worst) and "worst images on data.val" in report.stdout
    assert {Image.open(p).size for p in drawn} <= {(256, 256), (288, 224), (224, 288)}  # at the files' own sizes
    trial_report = subprocess.run([*CLI, "report", str(study_dir / "trial_0002")],
                                  capture_output=True, text=True)
    assert trial_report.returncode == 0 and "mean+-std" in trial_report.stdout


@pytest.mark.slow
def test_a_trial_with_a_nan_loss_fails_alone(sample, tmp_path):
    cfg = study_cfg(sample, "search.n_trials=2", "search.space={train.lr: [0.001, 1.0e+12]}")
    study_dir = tmp_path / "nan"
    study_dir.mkdir()
    storage = f"sqlite:///{study_dir / 'study.db'}"
    study = optuna.create_study(study_name="nan", storage=storage, direction="maximize")
    study.enqueue_trial({"train.lr": 1e12})
    study.enqueue_trial({"train.lr": 1e-3})
    lines = []
    result = run_study(cfg, study_dir, log=lines.append)
    trials = load_study(study_dir).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert "NonFiniteLossError" in trials[0].user_attrs["fail_reason"]
    assert result.states == {"COMPLETE": 1, "FAIL": 1} and result.best_trial == 1
    assert any("trial 0 failed" in line for line in lines)


def test_a_study_refuses_another_config(sample, tmp_path):
    run_study(study_cfg(sample, "search.n_trials=1", "train.epochs=1"), tmp_path / "s", log=lambda s: None)
    with pytest.raises(ConfigError, match=r"cv.folds \(2 -> 3\)"):
        run_study(study_cfg(sample, "search.n_trials=1", "train.epochs=1", "cv.folds=3"), tmp_path / "s",
                  log=lambda s: None)


@pytest.mark.slow
def test_two_workers_share_a_postgresql_study_and_run_exactly_n_trials(sample, tmp_path):
    import os

    from tests.postgres import postgres_server

    n = 4
    with postgres_server() as url:
        cmd = study_command(sample, tmp_path, "shared", f"search.n_trials={n}", "train.epochs=1", storage=url)
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        workers = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                   for _ in range(2)]
        outputs = [w.communicate(timeout=900) for w in workers]
        for w, (out, err) in zip(workers, outputs):
            assert w.returncode == 0, err
        trials = load_study(tmp_path / "studies" / "shared", storage=url).trials
    assert [t.number for t in trials] == list(range(n))
    assert all(t.state == TrialState.COMPLETE for t in trials)
    pids = {t.user_attrs["worker"]["pid"] for t in trials}
    assert pids == {w.pid for w in workers}  # both workers took trials
    started = [line.split(":")[0] for out, _ in outputs for line in out.splitlines() if " -> " in line]
    assert sorted(started) == [f"trial {i}" for i in range(n)]  # each trial started once, by one worker
    for t in trials:
        rows = RunPaths(tmp_path / "studies" / "shared" / t.user_attrs["run_dir"] / "fold_0").metrics.read_text()
        assert len(rows.splitlines()) == 2  # header + one epoch: trained exactly once


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning", "ignore:Heartbeat of storage")
@pytest.mark.slow
def test_a_trial_whose_heartbeat_stopped_on_another_host_is_failed_and_retried(sample, tmp_path):
    study_dir = tmp_path / "hb"
    study_dir.mkdir()
    storage = optuna.storages.RDBStorage(f"sqlite:///{study_dir / 'study.db'}", heartbeat_interval=1,
                                         grace_period=2)
    study = optuna.create_study(study_name="hb", storage=storage, direction="maximize")
    lost = study.ask()
    lost.suggest_categorical("eval.score_threshold", [0.3, 0.5])
    lost.set_user_attr("worker", {"host": "another-machine", "pid": 1, "started": "1"})
    storage.record_heartbeat(storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name("hb"), lost.number))
    time.sleep(3)  # longer than the grace period: the other machine is gone
    cfg = study_cfg(sample, "train.epochs=1", "search.n_trials=1", "search.heartbeat_seconds=1",
                    "search.grace_seconds=2", "search.space={eval.score_threshold: [0.3, 0.5]}")
    run_study(cfg, study_dir, log=lambda s: None)
    trials = load_study(study_dir).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert trials[1].system_attrs["failed_trial"] == 0 and trials[1].params == trials[0].params


def test_a_search_space_typo_fails_before_the_study_records_anything(sample, tmp_path):
    bad = study_cfg(sample, "search.n_trials=1", "train.epochs=1", "search.space={train.lrr: [0.001]}")
    with pytest.raises(ConfigError, match="search.space.train.lrr: 'train.lrr' is not a config key"):
        run_study(bad, tmp_path / "s", log=lambda s: None)
    with pytest.raises(ConfigError, match=r"search.space.train.batch_size: the value 'x' does not fit"):
        run_study(study_cfg(sample, "search.space={train.batch_size: [4, x]}"), tmp_path / "s", log=lambda s: None)
    assert not (tmp_path / "s" / "study.db").exists()
    fixed = study_cfg(sample, "search.n_trials=1", "train.epochs=1", "search.space={train.lr: [0.001]}")
    assert run_study(fixed, tmp_path / "s", log=lambda s: None).states == {"COMPLETE": 1}  # same name: accepted


@pytest.mark.slow
def test_storage_errors_are_clear_and_change_nothing(sample, tmp_path):
    from detector.cli import main

    study_dir = tmp_path / "studies" / "s"
    run_study(study_cfg(sample, "search.n_trials=1", "train.epochs=1"), study_dir, log=lambda s: None)
    recorded = StudyPaths(study_dir).meta.read_text()
    typo = f"sqlite:///{tmp_path / 'studies' / 'typo.db'}"
    with pytest.raises(ConfigError, match="no such database file"):
        load_study(study_dir, storage=typo)
    assert StudyPaths(study_dir).meta.read_text() == recorded and not (tmp_path / "studies" / "typo.db").exists()
    assert main(["report", str(study_dir)]) == 0  # the study still reports
    with pytest.raises(ConfigError) as info:
        load_study(study_dir, storage="postgresql://user:s3cret@localhost:1/db?sslmode=disable")
    assert "cannot connect" in str(info.value) and "s3cret" not in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_study(study_dir, storage="postgresql://user:s3cret@[::1/db")
    assert "not a database URL" in str(info.value) and "s3cret" not in str(info.value)
    with pytest.raises(ConfigError, match="a database driver is missing"):
        load_study(study_dir, storage="mysql://user:s3cret@localhost/db")


def test_workers_on_this_machine_are_told_apart_by_pid_and_start_time():
    from detector.search.workers import _is_dead, this_worker

    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        import psutil

        alive = {**this_worker(), "pid": other.pid, "started": round(psutil.Process(other.pid).create_time(), 2)}
        assert not _is_dead(alive)  # a second worker on this host is alive (the macOS bug failed its trial)
        assert _is_dead({**alive, "started": alive["started"] - 100})  # the pid now belongs to another process
    finally:
        other.kill()
        other.wait()
    assert _is_dead(alive)


# Windows has no fcntl and macOS no /proc: the process runs with neither. psutil is allowed /proc, since it is
# the portable library that reads each platform's own process table (sysctl on macOS, the Win32 API on Windows).
_NO_FCNTL_NO_PROC = """
import sys
sys.modules["fcntl"] = None
def _refuse_proc(event, args):
    if event in ("open", "os.listdir", "os.scandir") and args and str(args[0]).startswith("/proc"):
        frame = sys._getframe(1)
        while frame is not None:
            if "/psutil/" in frame.f_code.co_filename:
                return
            frame = frame.f_back
        raise PermissionError(f"no /proc on this platform: {args[0]}")
sys.addaudithook(_refuse_proc)
from detector.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:only soft file lock")
def test_a_killed_study_resumes_where_fcntl_and_proc_do_not_exist(sample, tmp_path):
    cmd = [sys.executable, "-c", _NO_FCNTL_NO_PROC,
           *study_command(sample, tmp_path, "portable", "search.n_trials=1", "train.epochs=2")[3:]]
    study_dir = tmp_path / "studies" / "portable"
    csv_path = RunPaths(study_dir / "trial_0000" / "fold_0").metrics
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: csv_path.exists() and len(csv_path.read_text().splitlines()) >= 2, proc)
    proc.send_signal(signal.SIGKILL)  # leaves the soft locks behind: their owner's pid is gone
    proc.wait()
    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "no /proc" not in resumed.stderr and "resuming" in resumed.stdout + resumed.stderr
    trials = load_study(study_dir).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]  # the dead worker was found
    rows = csv_path.read_text().splitlines()
    assert [r.split(",")[1] for r in rows[1:]] == ["0", "1"]


def test_checkpoints_of_trials_that_failed_with_an_error_are_freed(tmp_path):
    from detector.search.best import free_other_trials

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}", direction="maximize")
    for number, (state, attrs) in enumerate([(TrialState.FAIL, {"fail_reason": "ValueError: boom"}),
                                             (TrialState.FAIL, {}),  # a dead worker's trial: kept for its retry
                                             (TrialState.COMPLETE, {})]):
        run = tmp_path / f"trial_{number:04d}"
        (run / "top").mkdir(parents=True)
        (run / "top" / "fold0_epoch000.pt").write_bytes(b"x")
        trial = study.ask()
        trial.set_user_attr("run_dir", run.name)
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        study.tell(trial, 0.5 if state == TrialState.COMPLETE else None, state=state)
    free_other_trials(study, tmp_path, "best")
    assert not (tmp_path / "trial_0000" / "top" / "fold0_epoch000.pt").exists()
    assert (tmp_path / "trial_0001" / "top" / "fold0_epoch000.pt").exists()
    assert (tmp_path / "trial_0002" / "top" / "fold0_epoch000.pt").exists()


def test_refit_plans_follow_the_strategy_and_the_ranked_trials(tmp_path):
    from detector.files import write_json
    from detector.search.best import plan

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}", direction="maximize")
    for number, (lr, value, best_epochs) in enumerate([(1e-3, 0.5, [1, 2]), (2e-3, 0.7, [3, 3]), (3e-3, 0.6, [0, 1])]):
        trial = study.ask()
        trial.suggest_float("train.lr", lr, lr)
        trial.set_user_attr("run_dir", f"trial_{number:04d}")
        folds = [{"best_epoch": e, "epochs_run": 4, "stopped_early": False} for e in best_epochs]
        if number == 2:  # recorded before fold_epochs existed: its folder's summary says it
            for k, f in enumerate(folds):
                write_json(tmp_path / f"trial_{number:04d}" / f"fold_{k}" / "summary.json", f)
        else:  # from the storage alone: this machine has no folder of the trial
            trial.set_user_attr("fold_epochs", folds)
        study.tell(trial, value)
    assert not (tmp_path / "trial_0001").exists()
    cfg = lambda *sets: config.load(None, ["train.epochs=4", *sets])
    seeds = plan(study, tmp_path, cfg("refit.members=2"))
    assert seeds.best.number == 1 and [m.name for m in seeds.members] == ["trial_0001_seed_0", "trial_0001_seed_1"]
    # its folds chose 4 of 4: the limit stopped them still improving, so the refit trains 2x (refit.capped_factor)
    assert all(m.config.train.lr == 2e-3 and m.config.train.epochs == 8 for m in seeds.members)
    assert seeds.config.train.lr == 2e-3 and seeds.key == {"trial": 1, "members": [m.name for m in seeds.members]}
    as_folds = plan(study, tmp_path, cfg("refit.members=2", "refit.capped_factor=1"))
    assert all(m.config.train.epochs == 4 for m in as_folds.members)
    trials = plan(study, tmp_path, cfg("refit.strategy=trials", "refit.members=2"))
    assert [(m.name, m.config.train.lr, m.config.train.epochs) for m in trials.members] == [
        ("trial_0001", 2e-3, 8), ("trial_0002", 3e-3, 2)]  # by value; each trial's own folds choose its epochs
    fetched = []
    fetch = lambda t, run: (fetched.append(t.number), write_json(run.top_models, [{"path": "top/fold0_epoch003.pt",
                                                                                     "fold": 0}]))
    folds = plan(study, tmp_path, cfg("refit.strategy=folds"), fetch=fetch)
    assert fetched == [1]  # the best trial's folder is brought here first (from the artifact store)
    assert folds.members == [] and folds.entries[0].path == "top/fold0_epoch003.pt"
    assert folds.root == tmp_path / "trial_0001"


def test_a_missing_optional_package_fails_before_the_study_records_anything(sample, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # what `import tensorboard` meets when it is not installed
    with pytest.raises(ConfigError, match=r"train.tensorboard needs the tensorboard package: pip install"):
        run_study(study_cfg(sample, "train.tensorboard=true"), tmp_path / "studies" / "s", log=lambda s: None)
    assert not (tmp_path / "studies").exists()  # so the fixed config starts the same study name afresh
    with pytest.raises(ConfigError, match=r"search.space.train.tensorboard: the value True does not fit"):
        check_space(study_cfg(sample, "search.space={train.tensorboard: [false, true]}"))


@pytest.mark.parametrize("spec, says", [
    ("{low: 2, high: 8, step: 0.5}", r"train.batch_size is an integer, so low, high and step must be whole"),
    ("{low: 2, high: 8, step: 0}", r"step must be a positive number; got 0"),
    ("{low: 2, high: 8, step: -2}", r"step must be a positive number"),
    ("{low: 1.5, high: 8}", r"must be whole numbers"),
])
def test_a_step_that_cannot_draw_the_key_is_refused(sample, spec, says):
    with pytest.raises(ConfigError, match=says):
        check_space(study_cfg(sample, f"search.space={{train.batch_size: {spec}}}"))


@pytest.mark.slow
def test_a_study_in_which_no_trial_completed_exits_non_zero(sample, tmp_path):
    done = subprocess.run(study_command(sample, tmp_path, "diverges", "search.n_trials=1", "train.lr=1e6",
                                        "train.epochs=1", "search.space={train.lr: [1.0e+6, 1.0e+7]}"), capture_output=True, text=True, timeout=600)
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
    assert "no trial completed (1 fail)" in done.stderr and "detector report" in done.stderr
    assert [t.state for t in load_study(tmp_path / "studies" / "diverges").trials] == [TrialState.FAIL]


def test_an_empty_search_space_is_warned_about(sample, tmp_path):
    said = []
    cfg = study_cfg(sample, "search.space={}", "search.n_trials=3", f"data.val.annotations={tmp_path / 'none.json'}")
    with pytest.raises(DatasetError):  # stopped right after the warning by a missing file
        run_study(cfg, tmp_path / "studies" / "s", log=said.append)
    assert said[0].startswith("device cpu, precision ")  # what train.amp resolved to, first
    assert said[1].startswith("warning: search.space is empty, so all 3 trials train the same config")


def test_a_study_refuses_annotation_files_whose_content_changed_data_test_included(sample, tmp_path):
    import shutil

    from detector.search.study import _check_config

    test = tmp_path / "test.json"
    shutil.copy(sample["val"], test)
    cfg = study_cfg(sample, f"data.test.annotations={test}")
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}", direction="maximize")
    _check_config(study, cfg, tmp_path)
    _check_config(study, cfg, tmp_path)  # a restart with the same files
    doc = json.loads(test.read_text())
    doc["annotations"] = doc["annotations"][:-1]
    test.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match=r"the data.test annotations changed since the study started"):
        _check_config(study, cfg, tmp_path)


def _scored(score, latency):
    return optuna.trial.create_trial(values=[score, latency], params={}, distributions={})


def test_a_latency_budget_takes_the_best_score_within_it_and_no_budget_the_knee_of_the_front():
    from detector.search.best import ranked_trials

    study = optuna.create_study(directions=["maximize", "minimize"])
    for score, ms in [(0.90, 400.0), (0.89, 120.0), (0.80, 50.0), (0.60, 45.0), (0.85, 300.0)]:
        study.add_trial(_scored(score, ms))
    trials = study.get_trials()
    assert [t.number for t in ranked_trials(trials, max_latency_ms=130)] == [1, 2, 3]  # by score, within budget
    assert [t.number for t in ranked_trials(trials, max_latency_ms=40)] == []  # none is that fast
    knee = ranked_trials(trials)  # 0.89 at 120 ms: near the best score at a third of its time
    assert knee[0].number == 1 and {t.number for t in study.best_trials} == {0, 1, 2, 3}
    single = optuna.create_study(direction="maximize")
    for score in (0.5, 0.7, 0.7):
        single.add_trial(optuna.trial.create_trial(value=score, params={}, distributions={}))
    assert [t.number for t in ranked_trials(single.get_trials(), max_latency_ms=1)] == [1, 2, 0]


@pytest.mark.slow
def test_a_study_of_score_and_latency_times_each_trial_and_reports_its_pareto_front(sample, tmp_path):
    from detector.search import report_study, run_study
    from detector.search.best import ranked_trials

    cfg = study_cfg(sample, "data.image_size=64", "search.objectives=[score, latency]", "search.n_trials=3",
                    "search.sampler=random", "search.seed=1",
                    "search.space={data.image_size: [64, 160]}", "train.epochs=1", "search.latency_images=4",
                    "search.pruner=median")
    result = run_study(cfg, tmp_path / "pareto", log=lambda s: None)
    study = load_study(tmp_path / "pareto")
    assert len(study.directions) == 2 and result.best_latency_ms is not None
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 3 and all(t.values[1] > 0 and t.user_attrs["latency_ms"] == t.values[1] for t in complete)
    assert all(not t.intermediate_values for t in complete)  # pruning is off: Optuna cannot prune two objectives
    by_size = {}
    for t in complete:
        by_size.setdefault(t.params["data.image_size"], []).append(t.values[1])
    sizes = sorted(by_size)
    assert sizes == [64, 160], by_size  # the start (the config's 64 px) and the random draws
    assert min(by_size[160]) > max(by_size[64]), by_size  # 6x the pixels costs more time per image
    meta = json.loads((tmp_path / "pareto" / "best" / "ensemble.json").read_text())
    assert meta["trial"] == ranked_trials(study.trials)[0].number == result.best_trial  # the knee
    assert meta["latency_ms"] == pytest.approx(result.best_latency_ms)
    text, plots = report_study(tmp_path / "pareto")
    assert "Pareto front (" in text and "<- best/" in text and "ms/image" in text
    assert any(p.name == "pareto_front.png" and p.stat().st_size > 0 for p in plots)


def test_a_refit_trains_longer_only_when_the_epoch_limit_stopped_every_fold():
    from detector.training.refit import capped, refit_epochs
    from detector.training.summary import FoldSummary

    def fold(best_epoch, epochs_run, stopped_early=False):
        return FoldSummary.from_dict({"fold": 0, "best_epoch": best_epoch, "epochs_run": epochs_run,
                                      "stopped_early": stopped_early})

    capped_folds = [fold(2, 3)] * 2
    assert capped(capped_folds) and refit_epochs(capped_folds, 0, 2.0)[0] == 6
    assert "still improving" in refit_epochs(capped_folds, 0, 2.0)[1]
    assert refit_epochs(capped_folds, 0, 1.0) == (3, "the folds' mean best epoch")
    assert refit_epochs(capped_folds, 5, 2.0) == (5, "refit.epochs")
    peaked = [fold(2, 3), fold(1, 3)]  # one fold peaked before the limit
    assert not capped(peaked) and refit_epochs(peaked, 0, 2.0)[0] == 3
    stopped = [fold(4, 5, stopped_early=True)]
    assert not capped(stopped) and refit_epochs(stopped, 0, 2.0)[0] == 5
