"""Run folders: --force deletes only what detector wrote, resumes allow budget changes, state survives kills."""
import json
import shutil
import subprocess
import sys

import pytest

from detector import config
from detector.training.cv import read_summary
from detector.errors import ConfigError, DetectorError
from detector.layout import RunPaths, StudyPaths
from detector.runs import MARKER, clear_run, prepare_run
from detector.data.splits import load_splits
from detector.training.fit import fit
from tests.helpers import CLI, run_cli
from tests.test_train import TINY, tiny_cfg

QUIET = dict(log=lambda s: None)


def test_force_clears_only_what_detector_wrote(sample, tmp_path):
    cfg = tiny_cfg(sample)
    run = prepare_run(tmp_path / "run", cfg, **QUIET)
    (run / "notes.txt").write_text("mine")
    (run / "fold_0").mkdir()
    prepare_run(run / "fold_0", cfg, **QUIET)
    RunPaths(run / "fold_0").metrics.write_text("epoch\n0\n")
    (run / ".last.pt.abc12345.tmp").write_bytes(b"half a checkpoint")
    changed = config.with_values(cfg, {"train.lr": 0.5})
    with pytest.raises(ConfigError, match=r"train.lr \(0.001 -> 0.5\).*may change on a resume: search.n_trials"):
        prepare_run(run, changed, **QUIET)
    prepare_run(run, changed, force=True, **QUIET)
    assert sorted(p.name for p in run.iterdir()) == [MARKER, "config.yaml", "data.json", "notes.txt"]
    assert config.load(run / "config.yaml").train.lr == 0.5


def test_force_refuses_folders_detector_did_not_make(sample, tmp_path, monkeypatch):
    cfg = tiny_cfg(sample)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    config.save(cfg, foreign / "config.yaml")
    with pytest.raises(ConfigError, match="was not created by detector"):
        clear_run(foreign, cfg)
    study = prepare_run(tmp_path / "study", cfg, **QUIET)
    StudyPaths(study).meta.write_text("{}")
    with pytest.raises(ConfigError, match="is a study folder"):
        clear_run(study, cfg)
    data = prepare_run(tmp_path / "data", cfg, **QUIET)  # a run folder the user then put the dataset in
    shutil.copytree(sample["train"].parent, data, dirs_exist_ok=True)
    own = config.with_values(cfg, {"data.train.annotations": str(data / "train.json"),
                                   "data.val.annotations": str(data / "val.json")})
    with pytest.raises(ConfigError, match="holds the run's dataset"):
        clear_run(data, own)
    monkeypatch.chdir(tmp_path / "study")
    with pytest.raises(ConfigError, match="current directory"):
        clear_run(tmp_path / "study", cfg)
    assert (data / "train.json").exists() and StudyPaths(tmp_path / "study").meta.exists()


@pytest.mark.slow
def test_cli_force_in_a_users_folder_deletes_nothing(sample, tmp_path):
    """The audit's case: cd exp1 (config.yaml, data/, notes.txt); detector train config.yaml --out . --force."""
    exp = tmp_path / "exp1"
    shutil.copytree(sample["train"].parent, exp / "data")
    (exp / "notes.txt").write_text("notes")
    (exp / "config.yaml").write_text("data:\n  train: {annotations: data/train.json}\n"
                                     "  val: {annotations: data/val.json}\n")
    before = sorted(str(p.relative_to(exp)) for p in exp.rglob("*"))
    sets = [a for s in [*TINY, "train.epochs=1"] for a in ("--set", s)]
    out = subprocess.run([*CLI, "train", "config.yaml", "--out", ".", "--force",
                          "--quiet", *sets], cwd=exp, capture_output=True, text=True)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert "not a detector run folder" in out.stderr
    assert sorted(str(p.relative_to(exp)) for p in exp.rglob("*")) == before


def test_a_folder_detector_did_not_make_is_never_adopted(sample, tmp_path, monkeypatch):
    cfg = tiny_cfg(sample)
    mine = tmp_path / "exp"
    (mine / "plots").mkdir(parents=True)
    (mine / "config.yaml").write_text("# my notes\nbase: ../base.yaml\n")
    RunPaths(mine).summary.write_text('{"mine": true}')
    (mine / "plots" / "loss.png").write_bytes(b"png")
    before = {p: p.read_bytes() for p in mine.rglob("*") if p.is_file()}
    for attempt in ({}, {"force": True}):
        with pytest.raises(ConfigError, match=r"exp: not a detector run folder \(no .detector-run\) and not empty "
                                              r"\(config.yaml, plots, summary.json\).*new or empty --out"):
            prepare_run(mine, cfg, **attempt, **QUIET)
    assert {p: p.read_bytes() for p in mine.rglob("*") if p.is_file()} == before
    with pytest.raises(ConfigError, match="not a detector run folder"):  # the dataset's own folder
        prepare_run(sample["train"].parent, cfg, **QUIET)
    monkeypatch.chdir(mine)
    with pytest.raises(ConfigError, match="not a detector run folder"):
        prepare_run(".", cfg, **QUIET)
    (tmp_path / "empty").mkdir()
    assert (prepare_run(tmp_path / "empty", cfg, **QUIET) / MARKER).exists()  # an empty folder is fine


def test_force_unlinks_a_link_among_a_runs_entries_and_keeps_what_it_points_to(sample, tmp_path):
    cfg = tiny_cfg(sample)
    run = prepare_run(tmp_path / "run", cfg, **QUIET)
    mine = tmp_path / "mine"  # C13: --force followed a linked top/ into rmtree, a linked file into unlink
    mine.mkdir()
    (mine / "model.pt").write_bytes(b"my only model")
    (mine / "notes.csv").write_text("mine")
    (run / "top").symlink_to(mine, target_is_directory=True)
    RunPaths(run).metrics.symlink_to(mine / "notes.csv")
    (run / "fold_0").mkdir()
    prepare_run(run / "fold_0", cfg, **QUIET)
    (run / "fold_0" / "top").symlink_to(mine, target_is_directory=True)
    prepare_run(run, config.with_values(cfg, {"train.lr": 0.5}), force=True, **QUIET)
    assert sorted(p.name for p in run.iterdir()) == [MARKER, "config.yaml", "data.json"]
    assert (mine / "model.pt").read_bytes() == b"my only model" and (mine / "notes.csv").read_text() == "mine"


def test_force_deletes_only_the_entries_the_marker_lists(sample, tmp_path):
    cfg = tiny_cfg(sample)
    run = prepare_run(tmp_path / "run", cfg, **QUIET)
    RunPaths(run).summary.write_text("{}")
    (run / MARKER).write_text(json.dumps({"created_by": "detector", "entries": [MARKER, "config.yaml", "data.json"]}))
    prepare_run(run, config.with_values(cfg, {"train.lr": 0.5}), force=True, **QUIET)
    assert RunPaths(run).summary.exists()  # not listed: kept


def test_a_run_start_sweeps_only_its_own_temporary_files(sample, tmp_path):
    cfg = tiny_cfg(sample)
    run = prepare_run(tmp_path / "run", cfg, **QUIET)
    prepare_run(run / "fold_0", cfg, **QUIET)
    ours = [run / ".last.pt.k2j4h6g8.tmp", run / "top" / ".fold0_epoch001.pt.abcdefgh.tmp",
            run / "fold_0" / ".metrics.csv.zzzz9999.tmp"]
    theirs = [run / "tools" / "cache" / ".cache" / ".state.tmp", run / ".notes.txt.abcdefgh.tmp",
              run / ".last.pt.tmp", run / "top" / ".README.abcdefgh.tmp"]
    for path in ours + theirs:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    prepare_run(run, cfg, **QUIET)
    assert [p.exists() for p in ours] == [False] * 3 and all(p.exists() for p in theirs)


def test_budget_and_device_changes_resume_and_a_changed_dataset_is_refused(sample, tmp_path):
    cfg = tiny_cfg(sample)
    run = prepare_run(tmp_path / "run", cfg, **QUIET)
    (run / ".last.pt.x1y2z3w4.tmp").write_bytes(b"71 MB of a checkpoint that a kill -9 cut short")
    prepare_run(run, config.with_values(cfg, {"search.n_trials": 9, "search.timeout": 60.0,
                                              "train.num_workers": 2, "eval.batch_size": 2}), **QUIET)
    assert not (run / ".last.pt.x1y2z3w4.tmp").exists()  # swept when the run starts again
    copy = tmp_path / "data"
    shutil.copytree(sample["train"].parent, copy)
    moved = config.with_values(cfg, {"data.train.annotations": str(copy / "train.json"),
                                     "data.val.annotations": str(copy / "val.json")})
    prepare_run(run, moved, **QUIET)  # the same files somewhere else: fine
    doc = json.loads((copy / "train.json").read_text())
    doc["annotations"] = doc["annotations"][:-1]
    (copy / "train.json").write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="data.train annotations changed since this run started"):
        prepare_run(run, moved, **QUIET)


def test_a_damaged_state_file_is_one_clear_error(tmp_path):
    (tmp_path / "fold_0").mkdir()
    RunPaths(tmp_path / "fold_0").summary.write_text("")
    with pytest.raises(DetectorError, match=r"fold_0/summary.json: damaged state file"):
        read_summary(tmp_path)


@pytest.mark.slow
def test_an_early_stopped_run_stays_stopped_and_a_fresh_start_keeps_one_row_per_epoch(sample, tmp_path):
    # frozen norms and a vanishing learning rate: every epoch scores the same, so patience 1 stops at epoch 1
    cfg = tiny_cfg(sample, "train.epochs=4", "train.patience=1", "train.lr=1e-30", "model.frozen_bn=true")
    train_index, val_index = load_splits(cfg)
    first = fit(cfg, train_index, val_index, tmp_path / "run", progress=False, **QUIET)
    assert first.stopped_early and first.epochs_run == 2
    log = RunPaths(tmp_path / "run").metrics.read_bytes()
    again = fit(cfg, train_index, val_index, tmp_path / "run", progress=False, **QUIET)
    assert again.stopped_early and again.epochs_run == 2 and again.best_epoch == first.best_epoch
    assert RunPaths(tmp_path / "run").metrics.read_bytes() == log  # a rerun that trains nothing changes nothing
    RunPaths(tmp_path / "run").metrics.write_bytes(log[:-9])  # a row cut short by a kill: rewritten whole
    fit(cfg, train_index, val_index, tmp_path / "run", progress=False, **QUIET)
    rows = RunPaths(tmp_path / "run").metrics.read_text().splitlines()
    assert len(rows) == 3 and rows[1] == log.decode().splitlines()[1]
    RunPaths(tmp_path / "run").last.unlink()  # a user deleting a damaged checkpoint starts the run over
    fit(cfg, train_index, val_index, tmp_path / "run", progress=False, **QUIET)
    rows = RunPaths(tmp_path / "run").metrics.read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["0", "1"]  # not appended to the old rows


def test_a_second_process_on_one_run_folder_is_refused(tmp_path):
    from detector.runs import hold_run

    with hold_run(tmp_path / "run"):
        with pytest.raises(ConfigError, match="another detector process is running in this folder"):
            with hold_run(tmp_path / "run"):
                pass
    with hold_run(tmp_path / "run"):  # free again once the first one is done
        pass


def test_a_flipped_byte_in_a_checkpoint_is_caught(tmp_path):
    import zipfile

    import torch

    from detector.checkpoint import Checkpoint, load_checkpoint, save_checkpoint

    save_checkpoint(tmp_path / "a.pt", Checkpoint(model={"w": torch.arange(1000, dtype=torch.float32)}, label_map={}))
    assert torch.equal(load_checkpoint(tmp_path / "a.pt").model["w"], torch.arange(1000, dtype=torch.float32))
    with zipfile.ZipFile(tmp_path / "a.pt") as zin, zipfile.ZipFile(tmp_path / "b.pt", "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if "/data/" in item.filename:
                data = data[:100] + bytes([data[100] ^ 1]) + data[101:]
            zout.writestr(item, data)
    with pytest.raises(DetectorError, match="b.pt: damaged checkpoint"):
        load_checkpoint(tmp_path / "b.pt")


@pytest.mark.slow
def test_sigterm_stops_like_ctrl_c_and_the_same_command_resumes(sample, tmp_path):
    import signal
    import time

    empty = tmp_path / "empty.yaml"
    empty.write_text("{}\n")
    sets = [a for s in [f"data.train.annotations={sample['train']}", f"data.val.annotations={sample['val']}",
                        *TINY, "train.epochs=4"] for a in ("--set", s)]
    cmd = [*CLI, "train", str(empty), "--out", str(tmp_path / "run"), *sets]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = RunPaths(tmp_path / "run").metrics
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "terminated (SIGTERM)" in err and "Traceback" not in err, err
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0 and "resuming" in done.stdout, done.stderr
    assert [r.split(",")[0] for r in metrics.read_text().splitlines()[1:]] == ["0", "1", "2", "3"]


def test_state_files_follow_the_umask_like_any_file(tmp_path):
    import os

    from detector.files import write_json

    old = os.umask(0o002)  # a group-shared studies/ folder
    try:
        write_json(StudyPaths(tmp_path).meta, {})
    finally:
        os.umask(old)
    assert StudyPaths(tmp_path).meta.stat().st_mode & 0o777 == 0o664  # mkstemp alone makes 0600


_FILE_SIZE_LIMIT = """
import resource, runpy, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # so a write past the limit fails with EFBIG, like a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (2_000_000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
sys.argv = ["detector"] + sys.argv[1:]
runpy.run_module("detector.cli", run_name="__main__")
"""


@pytest.mark.slow
def test_a_write_the_disk_refuses_is_one_error_and_the_same_command_then_finishes(sample, tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("{}\n")
    args = ["train", str(empty), "--out", str(tmp_path / "run"), "--quiet",
            *[a for s in [f"data.train.annotations={sample['train']}", f"data.val.annotations={sample['val']}",
                          *TINY, "train.epochs=1"] for a in ("--set", s)]]
    refused = subprocess.run([sys.executable, "-c", _FILE_SIZE_LIMIT, *args], capture_output=True, text=True)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
    assert "cannot write it (File too large); everything written before is kept" in refused.stderr
    assert "enforce fail" not in refused.stderr
    assert not list((tmp_path / "run").glob(".*.tmp"))  # no half-written file left behind
    done = run_cli(*args)
    assert done.returncode == 0, done.stderr
    assert [r.split(",")[0] for r in RunPaths(tmp_path / "run").metrics.read_text().splitlines()[1:]] == ["0"]



def test_a_refused_start_leaves_no_folder_behind(sample, tmp_path):
    cfg = config.with_values(tiny_cfg(sample), {"data.augment.pipeline": {"transform": {
        "__class_fullname__": "Compose", "transforms": [{"__class_fullname__": "ToFloat"}]}}})
    train, val = load_splits(cfg)
    with pytest.raises(ConfigError, match="ToFloat"):
        fit(cfg, train, val, tmp_path / "runs" / "a", progress=False, **QUIET)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match="not a detector run folder"):
        fit(tiny_cfg(sample), train, val, foreign / "deeper" / ".." , progress=False, **QUIET)
    with pytest.raises(ConfigError, match="not a detector run folder"):
        fit(tiny_cfg(sample), train, val, foreign, progress=False, **QUIET)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == ["mine", "mine/notes.txt"]
