import json

import albumentations as A
import pytest
import yaml

from detector import config
from detector.callbacks import EpochEnd
from detector.data.transforms import build_train_transforms
from detector.errors import ConfigError
from detector.search import check_space
from detector.data.splits import load_splits
from detector.train import fit
from detector.layout import RunPaths
from tests.test_train import TINY, Stop

PIPELINE = A.to_dict(A.Compose([A.HorizontalFlip(p=0.5), A.CLAHE(p=0.3), A.CoarseDropout(p=0.2)]))


def test_a_pipeline_in_albumentations_form_is_built_with_detectors_resize_and_box_parameters(tmp_path):
    aug = config.load(None, [f"data.augment.pipeline={json.dumps(PIPELINE)}"]).data.augment
    pipeline = build_train_transforms(aug, 256)
    assert [type(t).__name__ for t in pipeline.transforms] == ["HorizontalFlip", "CLAHE", "CoarseDropout",
                                                               "LongestMaxSize"]
    assert pipeline.processors["bboxes"].params.format == "pascal_voc"  # never the user's
    file = tmp_path / "aug.yaml"
    A.save(A.Compose([A.VerticalFlip(p=0.7)]), str(file), data_format="yaml")
    cfg = config.load(None, [f"data.augment.pipeline={file}"])
    saved = config.resolve_paths(cfg).data.augment.pipeline  # the file's content goes into the run's config
    assert saved["transform"]["transforms"][0]["__class_fullname__"] == "VerticalFlip"
    for bad, message in [({"transform": {"__class_fullname__": "Compose", "transforms": [
                              {"__class_fullname__": "NoSuchFlip", "p": 1.0}]}}, "'NoSuchFlip' is not an Albumentations"),
                         ({"transform": {"__class_fullname__": "Compose", "transforms": [
                              {"__class_fullname__": "HorizontalFlip", "probability": 1.0}]}}, "probability")]:
        broken = config.load(None, [f"data.augment.pipeline={json.dumps(bad)}"]).data.augment
        with pytest.raises(ConfigError, match=message):
            build_train_transforms(broken, 256)
    with pytest.raises(ConfigError, match="cannot read"):
        config.resolve_paths(config.load(None, [f"data.augment.pipeline={tmp_path / 'missing.yaml'}"]))


def test_a_probability_inside_the_pipeline_is_a_search_key(sample):
    key = "data.augment.pipeline.transform.transforms.1.p"
    cfg = config.load(None, [f"data.train.annotations={sample['train']}", f"data.augment.pipeline={json.dumps(PIPELINE)}",
                             "search.space={" + key + ": {low: 0.1, high: 0.9}}"])
    check_space(cfg)
    drawn = config.with_values(cfg, {key: 0.8})
    assert drawn.data.augment.pipeline["transform"]["transforms"][1]["p"] == 0.8
    typo = config.with_values(cfg, {"search.space": {"data.augment.pipeline.transform.transforms.7.p": [0.1]}})
    with pytest.raises(ConfigError, match="transforms.7.p"):
        check_space(typo)


@pytest.mark.slow
def test_a_run_trains_with_a_user_pipeline_records_it_and_resumes_exactly(sample, tmp_path):
    cfg = config.load(None, [f"data.train.annotations={sample['train']}", f"data.val.annotations={sample['val']}",
                             *TINY, "train.epochs=2", f"data.augment.pipeline={json.dumps(PIPELINE)}"])
    train_index, val_index = load_splits(cfg)
    quiet = dict(progress=False, log=lambda s: None)
    full = fit(cfg, train_index, val_index, tmp_path / "full", **quiet)
    recorded = json.loads(RunPaths(tmp_path / "full").augment.read_text())
    assert [t["__class_fullname__"] for t in recorded["transform"]["transforms"]] == [
        "HorizontalFlip", "CLAHE", "CoarseDropout", "LongestMaxSize"]
    saved = yaml.safe_load((tmp_path / "full" / "config.yaml").read_text())
    assert saved["data"]["augment"]["pipeline"]["transform"]["transforms"][1]["__class_fullname__"] == "CLAHE"

    def crash(epoch, metrics):
        raise Stop()

    with pytest.raises(Stop):
        fit(cfg, train_index, val_index, tmp_path / "resumed", callbacks=[EpochEnd(crash)], **quiet)
    resumed = fit(cfg, train_index, val_index, tmp_path / "resumed", **quiet)
    assert [r["loss"] for r in resumed.history] == pytest.approx([r["loss"] for r in full.history], rel=1e-6)


@pytest.mark.parametrize("transform, says", [
    (A.Normalize(), r"Normalize turns the uint8 HxWx3 image into float32 256x320x3; remove it"),
    (A.ToFloat(), r"ToFloat turns the uint8 HxWx3 image into float32"),
    (A.ToGray(num_output_channels=1, p=0.2), r"ToGray turns the uint8 HxWx3 image into uint8 256x320"),
    (A.MaskDropout(), r"MaskDropout fails on a 256x320 RGB image with one box \(ValueError: .*mask"),
    (A.OneOf([A.Blur(), A.ToFloat()]), r"ToFloat turns"),  # inside a container, however rarely drawn
])
def test_a_pipeline_that_breaks_the_models_input_is_refused_before_the_run_folder_exists(sample, tmp_path,
                                                                                          transform, says):
    pipeline = A.to_dict(A.Compose([A.HorizontalFlip(p=0.5), transform]))
    cfg = config.load(None, [f"data.train.annotations={sample['train']}", f"data.val.annotations={sample['val']}",
                             *TINY, "train.epochs=1"])
    cfg = config.with_values(cfg, {"data.augment.pipeline": pipeline})
    train, val = load_splits(cfg)
    with pytest.raises(ConfigError, match=says):
        fit(cfg, train, val, tmp_path / "run", progress=False, log=lambda s: None)
    assert not (tmp_path / "run").exists()


def test_a_bare_name_where_a_transform_belongs_is_a_config_error():
    with pytest.raises(ConfigError, match="every transform must be a mapping with __class_fullname__"):
        build_train_transforms(config.from_dict({"data": {"augment": {"pipeline": {
            "transform": {"__class_fullname__": "Compose", "transforms": ["HorizontalFlip"]}}}}}).data.augment, 128)


def test_a_searched_pipeline_probability_that_breaks_a_transform_fails_before_the_study(sample):
    pipeline = A.to_dict(A.Compose([A.HorizontalFlip(p=0.5), A.RandomCrop(height=100, width=100, p=0.5)]))
    cfg = config.with_values(config.load(None, [f"data.train.annotations={sample['train']}", *TINY]),
                             {"data.augment.pipeline": pipeline,
                              "search.space": {"data.augment.pipeline.transform.transforms.1.height": [100, 5000]}})
    with pytest.raises(ConfigError, match=r"transforms.1.height: the value 5000 does not fit .*RandomCrop fails"):
        check_space(cfg)
