import json

import albumentations as A
import numpy as np
import pytest
import yaml

from detector import config
from detector.training.callbacks import EpochEnd
from detector.data.coco import load_coco
from detector.data.dataset import CocoDetection
from detector.data.sampling import box_shapes, train_side
from detector.data.transforms import build_train_transforms, check_pipeline
from detector.errors import ConfigError
from detector.search import check_space
from detector.data.splits import load_splits
from detector.training.fit import fit
from detector.layout import RunPaths
from tests.test_train import TINY, Stop

PIPELINE = A.to_dict(A.Compose([A.HorizontalFlip(p=0.5), A.CLAHE(p=0.3), A.CoarseDropout(p=0.2)]))
MOSAIC = A.to_dict(A.Compose([A.Mosaic(target_size=(128, 128), cell_shape=(128, 128), p=0.7), A.HorizontalFlip(p=0.5)]))


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
@pytest.mark.parametrize("pipeline, names", [(PIPELINE, ["HorizontalFlip", "CLAHE", "CoarseDropout"]),
                                             (MOSAIC, ["Mosaic", "HorizontalFlip"])])
def test_a_run_trains_with_a_user_pipeline_records_it_and_resumes_exactly(sample, tmp_path, pipeline, names):
    cfg = config.load(None, [f"data.train.annotations={sample['train']}", f"data.val.annotations={sample['val']}",
                             *TINY, "train.epochs=2", f"data.augment.pipeline={json.dumps(pipeline)}"])
    train_index, val_index = load_splits(cfg)
    quiet = dict(progress=False, log=lambda s: None)
    full = fit(cfg, train_index, val_index, tmp_path / "full", **quiet)
    recorded = json.loads(RunPaths(tmp_path / "full").augment.read_text())
    assert [t["__class_fullname__"] for t in recorded["transform"]["transforms"]] == [*names, "LongestMaxSize"]
    saved = yaml.safe_load((tmp_path / "full" / "config.yaml").read_text())
    assert saved["data"]["augment"]["pipeline"]["transform"]["transforms"][1]["__class_fullname__"] == names[1]

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


def test_mosaic_gets_its_other_images_from_the_samples_own_stream(sample):
    index = load_coco(sample["train"])
    for aug in (config.from_dict({"data": {"augment": {"mosaic": 1.0}}}).data.augment,
                config.load(None, [f"data.augment.pipeline={json.dumps(MOSAIC)}"]).data.augment):
        check_pipeline(aug, 128)  # the Mosaic is run on the dummy image with its other images supplied
        images = CocoDetection(index, build_train_transforms(aug, 128), seed=3)
        alone = CocoDetection(index, build_train_transforms(config.AugmentConfig(hflip=0.0), 128), seed=3)
        counts = []
        for i in range(8):
            image, target = images[i]
            again, target_again = CocoDetection(index, build_train_transforms(aug, 128), seed=3)[i]  # a fresh worker
            assert torch_equal(image, again)
            assert torch_equal(target["boxes"], target_again["boxes"])
            counts.append((len(target["boxes"]), len(alone[i][1]["boxes"])))
        assert sum(a > b for a, b in counts) >= 3, counts  # a mosaic holds other images' boxes too
        images.set_epoch(1)
        assert not all(torch_equal(images[i][0], CocoDetection(index, build_train_transforms(aug, 128), seed=3)[i][0])
                       for i in range(4))  # another epoch draws other images


def torch_equal(a, b) -> bool:
    return a.shape == b.shape and bool((a == b).all())


def test_training_crops_keep_the_files_resolution_around_a_box_and_set_the_tile_side(tmp_path):
    from PIL import Image

    canvas = np.full((900, 1200, 3), 200, np.uint8)
    canvas[600:640, 1000:1050] = 30
    Image.fromarray(canvas).save(tmp_path / "big.png")
    Image.fromarray(canvas[:300, :200]).save(tmp_path / "small.png")
    doc = {"images": [{"id": 1, "file_name": "big.png", "width": 1200, "height": 900},
                      {"id": 2, "file_name": "small.png", "width": 200, "height": 300}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1000, 600, 50, 40], "area": 2000,
                            "iscrowd": 0}],
           "categories": [{"id": 1, "name": "spot"}]}
    (tmp_path / "c.json").write_text(json.dumps(doc))
    index = load_coco(tmp_path / "c.json")
    cfg = config.load(None, ["data.augment.crop=256", "ensemble.slice=auto", "data.image_size=512",
                             "data.augment.affine_p=0"])  # no rescaling: the box keeps its size
    images = CocoDetection(index, build_train_transforms(cfg.data.augment, 512), seed=0)
    for epoch in range(5):
        images.set_epoch(epoch)
        image, target = images[0]
        assert image.shape == (3, 512, 512) and len(target["boxes"]) == 1  # 256 px around the box, doubled
        w, h = (target["boxes"][0, 2:] - target["boxes"][0, :2]).tolist()
        assert (w, h) == pytest.approx((100, 80), abs=1)  # the box at the crop's scale, whole
    assert images[1][0].shape == (3, 512, 400)  # 200 x 300 is cropped to 200 x 256, then resized x2
    assert train_side(index, 256) == 256 and train_side(index) == 750  # the median of 1200 and 300
    assert box_shapes(index, 512, 256).tolist() == [[100.0, 80.0]]
    with pytest.raises(ConfigError, match="data.augment.crop=256 .* set ensemble.slice: auto"):
        config.load(None, ["data.augment.crop=256"])
    with pytest.raises(ConfigError, match="crop and data.augment.mosaic: choose one"):
        config.load(None, ["data.augment.crop=256", "ensemble.slice=auto", "data.augment.mosaic=0.5"])


@pytest.mark.slow
def test_a_run_trained_on_crops_validates_on_tiles_as_predict_does(sample, tmp_path):
    from detector.inference.ensemble import Ensemble

    cfg = config.load(None, [f"data.train.annotations={sample['train']}", f"data.val.annotations={sample['val']}",
                             *TINY, "train.epochs=2", "data.augment.crop=96", "ensemble.slice=auto"])
    train_index, val_index = load_splits(cfg)
    fit(cfg, train_index, val_index, tmp_path / "run", progress=False, log=lambda s: None)
    ensemble = Ensemble.load(tmp_path / "run" / "best.pt", device="cpu")
    assert ensemble.members[0].train_side == 96 and ensemble.settings.slice == "auto"  # 96 px tiles
    validated = json.loads(RunPaths(tmp_path / "run").best_predictions.read_text())
    predicted = ensemble.predict([r.path for r in val_index.images], score_threshold=0.0)
    for rec, p in zip(val_index.images, predicted):
        mine = sorted((d["score"] for d in validated if d["image_id"] == rec.id), reverse=True)
        assert mine == pytest.approx(sorted((float(s) for s in p.scores), reverse=True), abs=1e-4)
    assert sum(len(p.scores) for p in predicted) > 0
