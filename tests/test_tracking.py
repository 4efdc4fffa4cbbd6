"""MLflow tracking against a real tracking server (`mlflow server`, SQLite backend store) started here on
localhost, read back through MLflow's own client: a study is an experiment, trials are runs with nested fold
runs whose metric history equals metrics.csv, the published ensemble's scores are on the run `published`, and a
study killed and resumed continues its runs instead of adding new ones."""
import csv
import json
import math
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import mlflow
import pytest

from detector.data.sample import SampleSpec, write_sample_dataset
from detector.data.splits import load_splits
from detector.layout import RunPaths
from detector.tracking import tracked_run
from detector.training.callbacks import BestCheckpoint, Callback
from detector.training.fit import fit
from tests.helpers import wait_until
from tests.test_search import load_study, study_command
from tests.test_train import tiny_cfg


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(root):
    """A tracking server on localhost with a SQLite backend store and local artifacts: (process, URI)."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"], stdout=subprocess.DEVNULL, stderr=open(root / "server.log", "w"), cwd=root)
    uri = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return urllib.request.urlopen(uri + "/health", timeout=2).status == 200
        except OSError:
            return False

    wait_until(up, process, timeout=120)
    assert up(), (root / "server.log").read_text()[-3000:]
    return process, uri


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    process, uri = start_server(tmp_path_factory.mktemp("mlflow"))
    yield uri
    process.terminate()
    process.wait(timeout=30)


class ServerGone(Callback):
    """Stops the tracking server at the end of the first epoch, before that epoch is sent."""

    def __init__(self, process):
        self.process = process

    def on_epoch_end(self, state):
        if state.epoch == 0:
            self.process.terminate()
            self.process.wait(timeout=30)


@pytest.mark.slow
def test_a_server_that_goes_away_mid_run_is_one_warning_and_training_goes_on(sample, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail at once, not after minutes of retries
    process, uri = start_server(tmp_path)
    said = []
    cfg = tiny_cfg(sample, "train.epochs=2")
    with tracked_run(uri, tmp_path / "run", nested=False, log=said.append) as tracked:
        result = fit(cfg, *load_splits(cfg), tmp_path / "run", callbacks=[BestCheckpoint(), ServerGone(process),
                                                                          *tracked], progress=False, log=said.append)
    assert result.epochs_run == 2 and result.best_path.exists()
    warned = [s for s in said if "tracking stops here" in s]
    assert len(warned) == 1 and uri in warned[0]


def test_an_unreachable_server_is_one_error_before_anything_trains(sample, tmp_path):
    cmd = study_command(sample, tmp_path, "lost") + ["--mlflow", f"http://127.0.0.1:{free_port()}"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 2 and "MLflow server http://127.0.0.1" in done.stderr and "unreachable" in done.stderr
    assert "Traceback" not in done.stderr
    assert not list((tmp_path / "studies").glob("lost/trial_*"))  # no trial started


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_a_killed_and_resumed_study_is_one_experiment_of_trials_with_nested_folds(sample, tmp_path, server):
    client = mlflow.MlflowClient(server)
    test = write_sample_dataset(tmp_path / "test_data", SampleSpec(images=10, seed=7))["val"]
    cmd = study_command(sample, tmp_path, "tracked", "search.n_trials=2", f"data.test.annotations={test}")
    cmd += ["--mlflow", server]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    study_dir = tmp_path / "studies" / "tracked"
    log = RunPaths(study_dir / "trial_0000" / "fold_0").metrics
    wait_until(lambda: log.exists() and len(log.read_text().splitlines()) >= 2, first)
    first.send_signal(signal.SIGKILL)  # in trial 0's first fold, after its first epoch
    first.wait()
    resumed = subprocess.run(cmd, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    experiment = client.get_experiment_by_name("tracked")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    keys = [r.data.tags["detector.key"] for r in runs]
    assert len(keys) == len(set(keys)), f"a run was duplicated: {sorted(keys)}"
    by_key = {r.data.tags["detector.key"]: r for r in runs}
    trials = sorted(k for k in by_key if "/" not in k and k.startswith("trial_"))
    assert trials == ["trial_0000", "trial_0002"]  # the killed trial's retry continued trial_0000's run
    for trial in (t for t in load_study(study_dir).trials if t.state.name == "COMPLETE"):
        run = by_key[trial.user_attrs["run_dir"]]
        assert run.info.status == "FINISHED" and run.data.metrics["value"] == pytest.approx(trial.value)
        assert run.data.params == {k: str(v) for k, v in trial.params.items()}
        for fold in (0, 1):
            child = by_key[f"{trial.user_attrs['run_dir']}/fold_{fold}"]
            assert child.data.tags["mlflow.parentRunId"] == run.info.run_id and child.info.status == "FINISHED"
            rows = _rows(RunPaths(study_dir / trial.user_attrs["run_dir"] / f"fold_{fold}").metrics)
            for column in ("loss", "map_50", "lr"):
                history = sorted(client.get_metric_history(child.info.run_id, column), key=lambda m: m.step)
                assert [(m.step, m.value) for m in history] == [
                    (int(r["epoch"]), pytest.approx(float(r[column]), rel=1e-5)) for r in rows], (fold, column)  # 6 digits
            artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
            assert {"config.yaml", "metrics.csv"} <= artifacts
    published = by_key["published"]
    heldout = json.loads((study_dir / "best" / "heldout.json").read_text())
    assert published.data.metrics["heldout_map"] == pytest.approx(heldout["ensemble"]["map"])
    assert math.isfinite(published.data.metrics["test_map_50"])
    members = [k for k in by_key if k.startswith("refit/")]
    assert members and all(by_key[k].data.tags["mlflow.parentRunId"] == published.info.run_id for k in members)
    # a rerun of the finished study logs nothing new
    before = len(client.search_runs([experiment.experiment_id], max_results=100))
    time.sleep(0.1)
    again = subprocess.run(cmd, capture_output=True, text=True)
    assert again.returncode == 0 and len(client.search_runs([experiment.experiment_id], max_results=100)) == before
    history = client.get_metric_history(published.info.run_id, "heldout_map")
    assert len(history) == 1


def test_a_tracking_uri_with_a_password_or_no_server_behind_it_is_one_error_writing_nothing(sample, tmp_path):
    from tests.helpers import run_cli
    from tests.test_train import TINY

    (tmp_path / "empty.yaml").write_text("{}\n")
    work = tmp_path / "work"
    work.mkdir()
    args = ["train", str(tmp_path / "empty.yaml"), "--out", str(work / "run"),
            *[a for v in [f"data.train.annotations={sample['train']}", f"data.val.annotations={sample['val']}", *TINY]
              for a in ("--set", v)]]
    hidden = run_cli(*args, "--mlflow", f"http://me:s3cret@127.0.0.1:{free_port()}", cwd=work)
    assert hidden.returncode == 2 and "me:***@" in hidden.stderr and "s3cret" not in hidden.stdout + hidden.stderr
    nonsense = run_cli(*args, "--mlflow", "no-such-scheme", cwd=work)
    assert nonsense.returncode == 2 and "MLflow at no-such-scheme" in nonsense.stderr
    for done in (hidden, nonsense):
        assert "Traceback" not in done.stderr
    assert list(work.iterdir()) == []  # no run folder, no ./mlruns
