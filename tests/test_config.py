import pytest

from detector import config
from detector.errors import ConfigError


def write(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_defaults_and_override(tmp_path):
    cfg = config.load(write(tmp_path, "train:\n  lr: 0.01\n"), ["train.epochs=3", "model.pretrained=/w.pt"])
    assert cfg.train.lr == 0.01 and cfg.train.epochs == 3
    assert cfg.model.pretrained == "/w.pt"
    assert cfg.train.batch_size == config.TrainConfig().batch_size
    # YAML 1.1 reads 1e-4 (no dot) as a string; a number field takes it as the number it is
    assert config.load(write(tmp_path, "train:\n  lr: 1e-4\n"), ["train.weight_decay=5E-2"]).train.lr == 1e-4


def test_typo_names_the_key(tmp_path):
    path = write(tmp_path, "train:\n  learning_rate: 0.01\n")
    with pytest.raises(ConfigError, match=r"unknown key 'train.learning_rate'.*valid keys in train: .*lr"):
        config.load(path)
    with pytest.raises(ConfigError, match="unknown key 'modle'"):
        config.load(None, ["modle.backbone=resnet18"])


def test_wrong_type_and_choice(tmp_path):
    with pytest.raises(ConfigError, match=r"train.epochs must be an integer; got 'ten'"):
        config.load(write(tmp_path, "train: {epochs: ten}\n"))
    with pytest.raises(ConfigError, match=r"train.optimizer must be one of adamw, sgd"):
        config.load(None, ["train.optimizer=adam"])
    with pytest.raises(ConfigError, match=r"data.augment.scale must be a list of 2 numbers"):
        config.load(None, ["data.augment.scale=0.5"])
    with pytest.raises(ConfigError, match="train.lr must be positive"):
        config.load(None, ["train.lr=0"])


def test_bool_or_path(tmp_path):
    assert config.load(None, ["model.pretrained=true"]).model.pretrained is True
    assert config.load(None, ["model.pretrained=false"]).model.pretrained is False


def test_base_files_merge(tmp_path):
    write(tmp_path, "train: {lr: 0.5, epochs: 4}\nmodel: {backbone: resnet18}\n", "base.yaml")
    cfg = config.load(write(tmp_path, "base: base.yaml\ntrain: {epochs: 9}\n"))
    assert (cfg.train.lr, cfg.train.epochs, cfg.model.backbone) == (0.5, 9, "resnet18")


def test_save_load_round_trip_and_diff(tmp_path):
    cfg = config.load(None, ["train.lr=0.003", "data.augment.scale=[0.5, 1.5]"])
    config.save(cfg, tmp_path / "r.yaml")
    again = config.load(tmp_path / "r.yaml")
    assert again == cfg
    assert config.diff(cfg, config.load(None, ["train.lr=0.004"]))["train.lr"] == (0.003, 0.004)


def test_shipped_configs_load():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs"
    names = {p.name for p in root.glob("*.yaml")}
    assert {"quickstart.yaml", "sample.yaml", "rbc.yaml", "resnet50_fpn.yaml", "efficientnet_b3.yaml", "swin_s.yaml"} <= names
    for p in root.glob("*.yaml"):
        config.load(p)


@pytest.mark.parametrize("override, message", [
    ("eval.batch_size=0", "eval.batch_size must be at least 1"),
    ("train.num_workers=-1", "train.num_workers must be 0"),
    ("data.augment.scale=[0, 0]", "data.augment.scale must be"),
    ("model.max_detections=0", "model.max_detections must be at least 1"),
    ("ensemble.skip_box_thr=2", "ensemble.skip_box_thr must lie in"),
    ("cv.folds=1", "cv.folds must be at least 2"),
    ("train.progressive.start_size=16", "train.progressive.start_size must be 0 \\(off\\) or at least 32"),
    ("model.class_weights=[1, 0]", "model.class_weights must be null, auto or a list"),
    ("search.grace_seconds=5", "search.grace_seconds must be longer than search.heartbeat_seconds"),
    ("ensemble.weights=[1, 1]", "ensemble.weights needs one weight per published model \\(3"),
])
def test_values_that_would_crash_or_do_nothing_are_config_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        config.load(None, [override])


def test_every_range_check_sits_on_its_field_and_the_defaults_pass_them():
    import dataclasses

    from detector.config import _checked_fields, check_ranges

    cfg = config.Config()
    check_ranges(cfg, "<defaults>")
    keys = {key for key, _, _ in _checked_fields(cfg, "")}
    assert {"data.image_size", "cv.folds", "train.lr", "ensemble.weights", "data.augment.scale"} <= keys
    assert all(ok(value) for _, value, (ok, _) in _checked_fields(cfg, ""))
    lr = next(f for f in dataclasses.fields(config.TrainConfig) if f.name == "lr")
    assert lr.metadata["check"][1] == "be positive"


def test_cli_numbers_out_of_range_are_usage_errors(capsys):
    from detector.cli import main

    for args in (["--iou-thr", "7"], ["--batch-size", "0"], ["--batch-size", "-1"], ["--score-threshold", "1.5"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["predict", "model.pt", "images/", "--out", "out", *args])
        assert exit_info.value.code == 2
    assert "must be a number in (0, 1]" in capsys.readouterr().err


def test_a_negative_timeout_and_a_bit_depth_outside_8_to_16_are_refused():
    with pytest.raises(ConfigError, match=r"search.timeout must be 0 \(none\) or a number of seconds"):
        config.load(None, ["search.timeout=-5"])
    with pytest.raises(ConfigError, match="data.bit_depth must lie in 8..16"):
        config.load(None, ["data.bit_depth=32"])


def test_the_storage_url_can_come_from_the_environment(monkeypatch):
    from detector.cli import _parser

    monkeypatch.setenv("DETECTOR_STORAGE", "postgresql://optuna:secret@db/optuna")
    args = _parser().parse_args(["study", "my.yaml", "--name", "rbc"])
    assert args.storage == "postgresql://optuna:secret@db/optuna"  # kept off the command line (and ps)
    assert _parser().parse_args(["study", "my.yaml", "--name", "rbc", "--storage", "sqlite:///x.db"]).storage == \
        "sqlite:///x.db"


def test_off_reads_as_the_word_where_a_choice_expects_it(tmp_path):
    assert config.load(None, ["train.amp=off"]).train.amp == "off"  # YAML 1.1 reads a bare off as false
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  amp: off\n")
    assert config.load(path).train.amp == "off"
    with pytest.raises(ConfigError, match="train.amp must be one of auto, off, fp32, bf16, fp16; got True"):
        config.load(None, ["train.amp=true"])


def test_a_config_nested_too_deep_or_not_utf8_is_one_error(tmp_path):
    from tests.helpers import run_cli

    (tmp_path / "deep.yaml").write_text("a: " + "[" * 5000 + "]" * 5000)  # RecursionError before
    (tmp_path / "binary.yaml").write_bytes(b"\xff\xfe\x00train:")
    for name, said in (("deep.yaml", "nested deeper than any config"), ("binary.yaml", "not a UTF-8 text file")):
        done = run_cli("train", str(tmp_path / name), "--out", str(tmp_path / "run"))
        assert done.returncode == 2 and said in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "run").exists()
