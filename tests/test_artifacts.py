"""Studies across machines that share only a database and an object store (--artifacts): the folder mirror,
the store's checks, a trial retried from its upload, one publisher, and `detector fetch`."""
import io
import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from detector.errors import ArtifactStoreError, ConfigError, DetectorError
from detector.layout import RunPaths, StudyPaths
from detector.search import load_study, run_study
from detector.search.artifacts import open_artifacts
from detector.search.mirror import FolderMirror, index_from, index_to, restore
from detector.search.publishing import fetch
from tests.helpers import CLI, run_cli, wait_until
from tests.test_search import study_cfg, study_command


def stored_objects(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*")
            if p.is_file() and ".detector-probe" not in p.parts}


def test_a_sync_uploads_only_what_changed_and_a_restore_brings_it_back(tmp_path):
    store = open_artifacts(str(tmp_path / "store"))
    run = tmp_path / "run"
    (run / "fold_0").mkdir(parents=True)
    (run / "fold_0" / "last.pt").write_bytes(b"epoch 0")
    (run / "config.yaml").write_text("a: 1\n")
    (run / ".detector.lock").write_text("")  # held by the writer: never copied
    recorded = []
    mirror = FolderMirror(store, run, "s/trial_0000")
    assert mirror.sync(recorded.append) == len(b"epoch 0") + len("a: 1\n")
    assert set(recorded[-1]) == {"fold_0/last.pt", "config.yaml"}
    assert mirror.sync(recorded.append) == 0 and len(recorded) == 1  # nothing changed: nothing sent or recorded
    (run / "fold_0" / "last.pt").write_bytes(b"epoch 1")
    assert mirror.sync(recorded.append) == len(b"epoch 1")  # only the changed file
    assert len(stored_objects(tmp_path / "store")) == 2  # the replaced version was removed after the record
    index = index_from(index_to(recorded[-1]))
    other = tmp_path / "other_machine" / "run"
    assert sorted(restore(store, other, index)) == ["config.yaml", "fold_0/last.pt"]
    assert (other / "fold_0" / "last.pt").read_bytes() == b"epoch 1"
    assert restore(store, other, index) == []  # already there: nothing fetched


def test_a_background_sync_uploads_the_version_of_its_moment_and_its_error_comes_back(tmp_path):
    store = open_artifacts(str(tmp_path / "store"), wait=0.01)
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(b"epoch 0" * 1000)
    recorded = []
    mirror = FolderMirror(store, run, "s/t")
    mirror.sync_in_background(recorded.append)
    (run / ".last.pt.replacement").write_bytes(b"epoch 1")
    os.replace(run / ".last.pt.replacement", run / "last.pt")  # as save_checkpoint replaces it
    mirror.wait()
    restore(store, tmp_path / "there", recorded[-1])
    assert (tmp_path / "there" / "last.pt").read_bytes() == b"epoch 0" * 1000  # the version it started from
    mirror.sync_in_background(recorded.append)  # epoch 1's
    mirror.wait()
    assert len(recorded) == 2 and recorded[-1]["last.pt"].size == len(b"epoch 1")
    (tmp_path / "store" / "s").rename(tmp_path / "moved")
    (tmp_path / "store" / "s").write_text("not a folder")  # every write fails from now on
    (run / "last.pt").write_bytes(b"epoch 2")
    mirror.sync_in_background(recorded.append)  # training goes on meanwhile
    with pytest.raises(ArtifactStoreError, match=r"uploading .*last.pt to .* failed 3 times"):
        mirror.sync(recorded.append)  # the next sync raises what the background one met
    assert len(recorded) == 2  # nothing recorded that was not uploaded


def test_a_recorded_path_that_leaves_its_folder_or_a_mangled_list_is_refused(tmp_path):
    for name in ("../escape.pt", "/etc/passwd", "a/../../b"):
        with pytest.raises(ArtifactStoreError, match="leaves its folder"):
            index_from({name: ["k", "0" * 64, 1]})
    for mangled in (["a"], {"a": "k"}, {"a": ["k", "s", "not a size"]}, {"a": None}):
        with pytest.raises(ArtifactStoreError, match="is not {path: \\[key, sha256, size\\]}"):
            index_from(mangled)


def test_a_changed_object_is_not_used(tmp_path):
    store = open_artifacts(str(tmp_path / "store"))
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(b"state")
    recorded = []
    FolderMirror(store, run, "s/t").sync(recorded.append)
    key = recorded[-1]["last.pt"].key
    store.store.write(key, io.BytesIO(b"tampered"))
    with pytest.raises(ArtifactStoreError, match="sha256 differs"):
        restore(store, tmp_path / "there", recorded[-1])
    assert not (tmp_path / "there" / "last.pt").exists()


def test_artifact_urls_that_cannot_work_are_one_error(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="cannot make the folder"):
        open_artifacts(str(tmp_path / "file" / "store"))
    with pytest.raises(ConfigError, match="use s3://BUCKET/PREFIX or a folder"):
        open_artifacts("gs://bucket/x")
    with pytest.raises(ConfigError, match="keys do not go in the URL") as e:
        open_artifacts("s3://AKIA:hunter2@bucket/x")
    assert "hunter2" not in str(e.value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cret-value")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with pytest.raises(ConfigError, match=r"cannot be reached: check AWS_ENDPOINT_URL") as e:
        open_artifacts("s3://bucket/prefix")
    assert "s3cret-value" not in str(e.value)


def test_an_unreachable_store_stops_a_study_before_any_trial(sample, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    with pytest.raises(ConfigError, match="--artifacts s3://bucket/x"):
        run_study(study_cfg(sample, "search.n_trials=1"), tmp_path / "s", artifacts="s3://bucket/x", log=lambda s: None)
    assert not (tmp_path / "s").exists()  # no storage, no trial


@pytest.fixture(scope="module")
def published(sample, tmp_path_factory):
    """A one-trial study with a folder artifact store, published and uploaded."""
    root = tmp_path_factory.mktemp("published")
    cfg = study_cfg(sample, "search.n_trials=1", "train.epochs=1")
    run_study(cfg, root / "studies" / "one", artifacts=str(root / "store"), log=lambda s: None)
    return root


@pytest.mark.slow
def test_a_trial_leaves_its_summaries_in_the_store_and_no_resume_file(published):
    trial = load_study(published / "studies" / "one").trials[0]
    names = set(trial.user_attrs["uploaded"])
    assert {"folds.json", "fold_0/summary.json", "fold_1/summary.json", "fold_1/metrics.csv"} <= names
    assert not any(n.endswith("last.pt") for n in names)  # deleted when its fold finished, so gone from the store
    objects = stored_objects(published / "store")
    assert not any("last.pt" in k for k in objects)
    assert trial.user_attrs["fold_epochs"] == [{"best_epoch": 0, "epochs_run": 1, "stopped_early": False}] * 2


@pytest.mark.slow
def test_a_worker_without_the_studys_artifact_store_is_refused(published, sample):
    cfg = study_cfg(sample, "search.n_trials=1", "train.epochs=1")
    with pytest.raises(ConfigError, match=r"keeps its trials' state and best/ in .*store; give every worker --artifacts"):
        run_study(cfg, published / "studies" / "one", log=lambda s: None)
    assert load_study(published / "studies" / "one").user_attrs["artifacts"] == str(published / "store")


@pytest.mark.slow
def test_fetch_guards_its_out_folder_and_replaces_only_a_previous_fetch(published, tmp_path):
    study = published / "studies" / "one"
    out = tmp_path / "best"
    fetch(study, out, log=lambda s: None)
    best = StudyPaths(study).best
    assert {p.name: p.read_bytes() for p in out.iterdir()} == {p.name: p.read_bytes() for p in best.iterdir()}
    with pytest.raises(DetectorError, match="holds a previous fetch; pass --force"):
        fetch(study, out, log=lambda s: None)
    fetch(study, out, force=True, log=lambda s: None)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(DetectorError, match="holds files a fetch did not write"):
        fetch(study, mine, force=True, log=lambda s: None)
    assert (mine / "notes.txt").read_text() == "keep me"
    (tmp_path / "link").symlink_to(mine)
    with pytest.raises(DetectorError, match="is a link"):
        fetch(study, tmp_path / "link", force=True, log=lambda s: None)
    with pytest.raises(ConfigError, match="give the study's storage"):
        fetch("one", tmp_path / "x", log=lambda s: None)
    missing = run_cli("fetch", "nope", "--storage", f"sqlite:///{study / 'study.db'}", "--out", str(tmp_path / "y"))
    assert missing.returncode == 2 and "no study named 'nope'" in missing.stderr and "Traceback" not in missing.stderr


_FILE_SIZE_LIMIT = """
import resource, runpy, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (3000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
sys.argv = ["detector"] + sys.argv[1:]
runpy.run_module("detector.cli", run_name="__main__")
"""


@pytest.mark.slow
def test_fetch_on_a_full_disk_or_into_the_study_itself_loses_nothing(published, tmp_path):
    import sys

    study = published / "studies" / "one"
    out = tmp_path / "best"
    assert run_cli("fetch", str(study), "--out", str(out)).returncode == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    full = subprocess.run([sys.executable, "-c", _FILE_SIZE_LIMIT, "fetch", str(study), "--out", str(out), "--force"],
                          capture_output=True, text=True)
    assert full.returncode == 2 and "Traceback" not in full.stderr, full.stderr
    assert "File too large" in full.stderr and "failed 3 times" not in full.stderr  # the disk, not the store
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the previous fetch, whole
    assert not any(p.name.startswith(".best.") for p in tmp_path.iterdir())  # no staging folder left
    database = (study / "study.db").read_bytes()
    into_study = run_cli("fetch", str(study), "--out", str(study), "--force")
    assert into_study.returncode == 2 and "holds files a fetch did not write" in into_study.stderr
    assert (study / "study.db").read_bytes() == database


@pytest.mark.slow
def test_a_failed_upload_fails_its_trial_with_the_reason_and_keeps_the_study(sample, tmp_path):
    store, study_dir = tmp_path / "store", tmp_path / "studies" / "s"
    csv_path = RunPaths(study_dir / "trial_0000" / "fold_0").metrics

    def break_the_store():  # after epoch 0's upload the store's folder becomes a file: every write fails
        deadline = time.time() + 300
        while time.time() < deadline and not (csv_path.exists() and len(csv_path.read_text().splitlines()) >= 2):
            time.sleep(0.02)
        (store / "s").rename(tmp_path / "moved")
        (store / "s").write_text("not a folder")

    breaker = threading.Thread(target=break_the_store)
    breaker.start()
    lines = []
    result = run_study(study_cfg(sample, "search.n_trials=1", "train.epochs=2"), study_dir, artifacts=str(store),
                       log=lines.append)
    breaker.join()
    trial = load_study(study_dir).trials[0]
    assert trial.state == TrialState.FAIL and result.best_trial is None
    assert "uploading" in trial.user_attrs["fail_reason"] and "failed 3 times" in trial.user_attrs["fail_reason"]
    assert any("trial 0 failed: ArtifactStoreError" in line or "trial 0 failed: uploading" in line for line in lines)
    assert len(csv_path.read_text().splitlines()) >= 2  # the trial's own files stay
    assert (tmp_path / "moved" / "trial_0000").is_dir()  # and what it uploaded before


def _uploaded(storage, name: str) -> dict:
    try:
        trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    except KeyError:
        return {}
    return trials[0].user_attrs.get("uploaded", {}) if trials else {}


@pytest.mark.slow
def test_two_machines_share_a_study_through_postgresql_and_s3(sample, tmp_path):
    from detector.search.workers import StudyLock
    from detector.training.cv import run_cv
    from tests.postgres import postgres_server
    from tests.s3 import SECRET, s3_server

    sets = ("search.n_trials=1", "train.epochs=3", "refit.epochs=1")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with postgres_server() as url, s3_server() as s3:
        env = {**os.environ, "OMP_NUM_THREADS": "1", **s3.env}
        artifacts = ["--artifacts", "s3://detector-test/studies"]
        a_cmd = study_command(sample, tmp_path / "a", "shared", *sets, storage=url) + artifacts
        b_cmd = study_command(sample, tmp_path / "b", "shared", *sets, storage=url) + artifacts
        a_dir, b_dir = tmp_path / "a" / "studies" / "shared", tmp_path / "b" / "studies" / "shared"

        missing = subprocess.run(a_cmd[:-1] + ["s3://no-such-bucket/x"], capture_output=True, text=True, env=env)
        assert missing.returncode == 2 and "the bucket does not exist" in missing.stderr
        assert "Traceback" not in missing.stderr and not a_dir.exists()

        a = subprocess.Popen(a_cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        versions = set()  # of fold 0's last.pt in the store: the second is epoch 1's
        storage = optuna.storages.RDBStorage(url)  # one connection pool for the polling

        def epoch_1_uploaded() -> bool:
            time.sleep(0.2)
            versions.add(_uploaded(storage, "shared").get("fold_0/last.pt", [None, None])[1])
            return len(versions - {None}) >= 2

        wait_until(epoch_1_uploaded, a, timeout=600)
        a.send_signal(signal.SIGKILL)  # machine a dies in the middle of fold 0
        a_out = a.communicate()[0]
        assert len(versions - {None}) >= 2, a_out

        b = subprocess.run(b_cmd, capture_output=True, text=True, env=env, timeout=900)
        assert b.returncode == 0, b.stdout + b.stderr
        assert "fetched from the artifact store (fold_0/last.pt)" in b.stdout
        resumed = re.search(r"resuming \S+fold_0 after epoch (\d+)", b.stdout)
        assert resumed and int(resumed[1]) >= 1, b.stdout
        trial_epochs = [line for line in b.stdout.splitlines() if line.startswith("trial 1: epoch ")]
        assert len(trial_epochs) == 6 - (int(resumed[1]) + 1) < 6  # fewer than the six from scratch

        again = subprocess.run(a_cmd, capture_output=True, text=True, env=env, timeout=600)  # machine a, restarted
        assert again.returncode == 0, again.stdout + again.stderr
        assert "was published by the worker on" in again.stdout and "detector fetch shared" in again.stdout
        assert "refit:" not in again.stdout and not (a_dir / "best").exists()  # exactly one publish
        assert sum("published 1 of 1" in out for out in (a_out, b.stdout, again.stdout)) == 1

        fetched = subprocess.run([*CLI, "fetch", "shared", "--storage", url, "--out", str(tmp_path / "c" / "best")],
                                 capture_output=True, text=True, env=env)
        assert fetched.returncode == 0, fetched.stderr

        one, two = StudyLock(url, tmp_path / "a", "shared"), StudyLock(url, tmp_path / "b", "shared")
        with one.publishing() as mine, two.publishing() as theirs:
            assert mine and not theirs  # across connections, as across machines
        with two.publishing() as theirs:
            assert theirs  # released with the first one's block
        trials = optuna.load_study(study_name="shared", storage=url).trials
        published = optuna.load_study(study_name="shared", storage=url).user_attrs["published"]
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert published["plan"]["trial"] == 1  # the retry of trial 0
    for text in (a_out, b.stdout, b.stderr, again.stdout, fetched.stdout, json.dumps(published),
                 (a_dir / "study.json").read_text(), (b_dir / "study.json").read_text()):
        assert SECRET not in text

    reference = tmp_path / "reference"  # the same trial, uninterrupted
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_cv(study_cfg(sample, *sets), reference, refit=False, progress=False, log=lambda s: None)
    finally:
        torch.set_num_threads(threads)
    for k in (0, 1):
        ours = json.loads(RunPaths(b_dir / "trial_0000" / f"fold_{k}").summary.read_text())
        theirs = json.loads(RunPaths(reference / f"fold_{k}").summary.read_text())
        assert ours["best_epoch"] == theirs["best_epoch"]
        for key in ("map", "map_50", "f1", "score"):
            assert ours["best_metrics"][key] == pytest.approx(theirs["best_metrics"][key], rel=1e-6, abs=1e-9)

    from detector import predict

    predict(str(b_dir / "best"), out=tmp_path / "p_b", gt=sample["val"])
    predict(str(tmp_path / "c" / "best"), out=tmp_path / "p_c", gt=sample["val"])
    here = json.loads((tmp_path / "p_b" / "predictions.json").read_text())
    assert here and here == json.loads((tmp_path / "p_c" / "predictions.json").read_text())


def test_fetch_says_what_was_published_and_where(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="s", storage=url)
    with pytest.raises(ConfigError, match="has published nothing yet"):
        fetch("s", tmp_path / "out", storage=url, log=lambda s: None)
    study.set_user_attr("published", {"plan": {"trial": 0, "members": ["m"]}, "by": {"host": "gpu-7", "pid": 1},
                                      "folder": "/data/studies/s"})
    with pytest.raises(ConfigError, match="published without --artifacts, into /data/studies/s on gpu-7"):
        fetch("s", tmp_path / "out", storage=url, log=lambda s: None)
    assert not (tmp_path / "out").exists()
