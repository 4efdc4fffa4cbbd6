"""The public Python API (`import detector`): the notebook path with the public names alone, and the same run
folder from Python as from the CLI."""
import json

import pytest
import yaml

import detector
from detector.data.sample import SampleSpec, write_sample_dataset
from detector.layout import RunPaths
from tests.helpers import run_cli
from tests.test_train import tiny_cfg


@pytest.fixture
def shapes(tmp_path):
    return write_sample_dataset(tmp_path / "shapes", SampleSpec(images=80, seed=3))


@pytest.mark.slow
def test_a_notebook_starts_trains_evaluates_and_predicts_with_the_public_names_alone(shapes, tmp_path, capsys):
    detector.init(shapes["train"], tmp_path / "shapes.yaml", val=shapes["val"])  # its own recipe, shortened:
    run = detector.train(tmp_path / "shapes.yaml", out=tmp_path / "run",
                         overrides={"train.epochs": 2, "data.image_size": 256})  # the images' own size
    scored = detector.evaluate(run.best_path, shapes["val"])
    found = detector.predict(run.best_path, out=tmp_path / "preds", gt=shapes["val"])

    assert run.best_metrics.map_50 > 0.5, run.best_metrics  # fine-tuned from the packaged ImageNet weights
    assert scored.metrics.map_50 == pytest.approx(run.best_metrics.map_50, abs=1e-4)  # the same images
    assert found.report.ensemble.metrics.map_50 == pytest.approx(scored.metrics.map_50, abs=1e-4)
    assert isinstance(scored.metrics, detector.Metrics) and scored.metrics.interval("map_50") is not None
    assert len(found.run.predictions) == scored.images == len(json.loads(shapes["val"].read_text())["images"])
    assert {p.name for p in found.written} >= {"predictions.json", "predictions.csv"}
    assert all(p.exists() for p in found.written + found.report.written)
    assert capsys.readouterr().out == ""  # the API prints nothing unless asked


def test_every_public_name_resolves():
    assert set(detector.__all__) <= set(dir(detector))
    assert all(getattr(detector, name) is not None for name in detector.__all__)  # Config was listed, not exported


def test_a_user_error_from_the_api_is_a_detector_error_naming_the_key(tmp_path):
    with pytest.raises(detector.DetectorError, match="unknown key 'train.lrr'"):
        detector.train(None, out=tmp_path / "run", overrides={"train.lrr": 1})
    with pytest.raises(detector.DetectorError, match="a config is a YAML path"):
        detector.cv(42, out=tmp_path / "run")
    with pytest.raises(AttributeError):
        detector.fit  # noqa: B018 (only the public names)


@pytest.mark.slow
def test_the_cli_and_the_api_write_the_same_cv_run_folder(sample, tmp_path):
    """A refit cv run: folds, refit member, operating point and held-out report, from either door."""
    cfg = tiny_cfg(sample, "train.epochs=1", "cv.folds=2", "refit.members=1", "refit.epochs=1")
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    done = run_cli("cv", str(path), "--out", str(tmp_path / "cli"), "--quiet")
    assert done.returncode == 0, done.stderr
    result = detector.cv(path, out=tmp_path / "api")
    files = {name: sorted(str(p.relative_to(tmp_path / name)) for p in (tmp_path / name).rglob("*") if p.is_file())
             for name in ("cli", "api")}
    assert files["cli"] == files["api"] and "operating_point.json" in files["api"] and "heldout.json" in files["api"]
    for name in ("operating_point.json", "heldout.json", "top_models.json"):
        assert untimed(tmp_path / "cli" / name) == untimed(tmp_path / "api" / name), name
    cli, api = (json.loads(RunPaths(tmp_path / n).summary.read_text()) for n in ("cli", "api"))
    assert cli["mean"] == pytest.approx(api["mean"], nan_ok=True)
    assert api["mean"] == pytest.approx(result.mean.to_dict(), nan_ok=True)
    assert result.published is not None and result.published.operating_point.members == [0]


def untimed(path):
    """A JSON file's content without its timings ("seconds"), which no two runs share."""
    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k != "seconds"}
        return [strip(v) for v in value] if isinstance(value, list) else value
    return strip(json.loads(path.read_text()))
