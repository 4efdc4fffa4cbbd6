"""Typed experiment config: dataclass defaults are the common config, YAML files override them.

`load("configs/rbc.yaml", ["train.lr=0.01"])` -> Config. A file may start from another with
`base: other.yaml` (relative to the file). Unknown keys and wrong types raise ConfigError naming the file
and the dotted key. Dataset and weight paths resolve against the current directory.
"""
from __future__ import annotations

import copy
import dataclasses
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Union, get_args

import yaml

from .errors import ConfigError
from .files import write_text
from .typed_yaml import apply_override, build, read_with_bases, set_key

PACKAGED = "packaged"  # model.pretrained: the weights a pip package installed (models/weights.py)


MAX_OVERLAP = 0.75  # of a tile's side shared with its neighbour (sliced prediction)


def checked(default: Any, ok: Callable[[Any], bool], rule: str) -> Any:
    """A field whose value must pass `ok` (types are checked while loading, in typed_yaml.py); `rule` ends
    the error 'KEY must ...'. The check sits next to the field it checks; check_ranges applies them all."""
    return field(default=default, metadata={"check": (ok, rule)})


def at_least(default: Any, low: float, rule: str = "") -> Any:
    return checked(default, lambda v: v >= low, rule or f"be at least {low}")


def fraction(default: float, low_open: bool = False, high_open: bool = False) -> Any:
    """A value in [0, 1]; with low_open / high_open that end is excluded."""
    lo, hi = "(" if low_open else "[", ")" if high_open else "]"
    return checked(default, lambda v: (v > 0 if low_open else v >= 0) and (v < 1 if high_open else v <= 1),
                   f"lie in {lo}0, 1{hi}")


@dataclass
class SplitConfig:
    annotations: str = ""
    images: str | None = None  # folder that `file_name` is relative to; default: the annotation file's folder

    @property
    def images_dir(self) -> Path:
        return Path(self.images) if self.images else Path(self.annotations).parent


@dataclass
class AugmentConfig:
    hflip: float = 0.5
    vflip: float = 0.0
    rotate90: float = 0.0
    scale: tuple[float, float] = checked((0.8, 1.2), lambda v: 0 < v[0] <= v[1],
                                         "be [low, high] with 0 < low <= high")
    translate: float = 0.1
    affine_p: float = 0.5
    color: float = 0.5
    blur: float = 0.0
    mosaic: float = fraction(0.0)  # probability of a 2x2 Mosaic of the image and three others (Albumentations)
    # A whole Albumentations pipeline in its own serialized form (A.to_dict), or a YAML/JSON file holding one:
    # it replaces the keys above (its Mosaic gets the other images from detector). detector adds the crop and
    # the resize, and sets the box parameters.
    pipeline: Union[None, str, dict[str, Any]] = None
    min_visibility: float = 0.3  # a box a crop or the border cuts is kept when this much of its area remains
    # training on slices: crops of this side in px at the file's resolution, each around a box (an image no
    # larger on a side is used whole on that side), then resized as whole images are; 0 trains on whole images.
    # Predict on tiles of the same side: ensemble.slice auto (required with a crop)
    crop: int = checked(0, lambda v: v == 0 or v >= 32, "be 0 (whole images) or a side of at least 32 px")


@dataclass
class DataConfig:
    train: SplitConfig = field(default_factory=SplitConfig)  # trials train on it, by k-fold
    val: SplitConfig = field(default_factory=SplitConfig)  # selects the best trial and tunes its post-processing
    test: SplitConfig = field(default_factory=SplitConfig)  # optional: the best trial is scored on it once
    image_size: int = at_least(512, 32)
    keep_empty: bool = True
    drop_placeholder_categories: bool = True
    strict_boxes: bool = False
    bit_depth: int = checked(16, lambda v: 8 <= v <= 16, "lie in 8..16 (the bits a 16-bit file's pixels use)")
    # the bits 16-bit grayscale files use (12 for a 12-bit camera); 8-bit files read as they are
    copy_similarity: float = fraction(0.5, low_open=True)
    # images whose content fingerprints correlate this much (under flips/rotations) show one photo
    # (data/copies.py): grouped in one fold, warned about across splits; 1 keeps only same-content files
    test_copy_error: float = fraction(0.9, low_open=True)
    # a data.test image this similar to a data.train or data.val photo stops the run (plain copies: >= 0.93)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class ModelConfig:
    backbone: str = "resnet50_fpn"
    pretrained: Union[bool, str] = False  # true (download), packaged (pip-installed weights), a file, or false
    trainable_layers: int = 3
    frozen_bn: bool = True
    fpn_channels: int = 256
    representation_size: int = 1024
    heads: Literal["v1", "v2"] = "v1"  # v2: BatchNorm in the FPN, 2-conv RPN head, 4-conv + FC box head
    anchors: Literal["default", "kmeans", "auto"] = "default"  # auto: k-means only where it fits better than default
    anchors_per_level: int = at_least(3, 1)
    max_detections: int = at_least(100, 1)
    rpn_proposals_train: int = 2000  # proposals kept per image (pre- and post-NMS) while training
    rpn_proposals_test: int = 1000
    box_samples_per_image: int = 512  # RoIs sampled per image for the box head loss
    box_loss: Literal["ce", "focal"] = "ce"  # the box classifier's loss: cross-entropy, or focal (softmax)
    focal_alpha: float = fraction(0.6)  # focal: weight of object classes (background: 1 - alpha); the seed recipe's 0.6
    focal_gamma: float = at_least(2.0, 0, "be 0 or more")  # focal: how much well-classified RoIs are down-weighted (0 = weighted CE)
    # null, auto (inverse frequency per fold), or one per class
    class_weights: Union[None, str, list[float]] = checked(
        None, lambda v: v in (None, "auto") or isinstance(v, list) and all(w > 0 for w in v),
        "be null, auto or a list with one positive weight per class")


@dataclass
class ProgressiveConfig:
    start_size: int = checked(0, lambda v: v == 0 or v >= 32, "be 0 (off) or at least 32")
    epochs: int = 0  # epochs trained at start_size before switching to data.image_size


@dataclass
class TrainConfig:
    epochs: int = at_least(12, 1)
    batch_size: int = at_least(4, 1)
    lr: float = checked(1e-4, lambda v: v > 0, "be positive")
    optimizer: Literal["adamw", "sgd"] = "adamw"
    weight_decay: float = 1e-4
    decay_norm_and_bias: bool = False  # weight decay on normalisation weights and biases too
    # the backbone's learning rate is train.lr times this
    backbone_lr_mult: float = checked(1.0, lambda v: v > 0, "be positive (freeze layers with model.trainable_layers)")
    momentum: float = 0.9
    scheduler: Literal["onecycle", "cosine"] = "onecycle"
    warmup_epochs: float = 1.0
    # auto: bf16 on CUDA; fp32 on a CPU, logging what bf16 would save there (train.report_bf16); fp32 = off
    amp: Literal["auto", "off", "fp32", "bf16", "fp16"] = "auto"
    grad_clip: float = 10.0  # max gradient norm; 0 = off
    progressive: ProgressiveConfig = field(default_factory=ProgressiveConfig)
    tensorboard: bool = False  # TensorBoard event files in RUN/tensorboard (pip install -e ".[tensorboard]")
    ema: bool = False  # evaluate, keep and predict with an exponential moving average of the weights (timm)
    ema_decay: float = checked(0.999, lambda v: 0 < v < 1, "lie in (0, 1), e.g. 0.999")  # its decay, reached after a warm-up (timm's ModelEmaV3 use_warmup)
    sync_bn: bool = False  # under torchrun: BatchNorm statistics over the global batch (model.frozen_bn false)
    balanced_sampler: bool = False
    patience: int = 0  # epochs without a better score before stopping; 0 = off
    min_epochs: int = 1
    seed: int = 0
    num_workers: int = at_least(2, 0, "be 0 (load in the main process) or more")
    device: str = "auto"


@dataclass
class EvalConfig:
    score_threshold: float = fraction(0.5)
    iou_threshold: float = fraction(0.5, low_open=True)
    batch_size: int = at_least(8, 1)
    # resamples of the images for 95% bootstrap intervals of mAP, F1 and the score (intervals.py); 0: none.
    # 2000 keep an interval's ends within about 0.002 from one seed to another (measured on 20 RBC images)
    bootstrap: int = checked(2000, lambda v: v == 0 or 100 <= v <= 100_000, "be 0 (off) or 100 to 100000")


@dataclass
class ScoreConfig:
    """score = w_map * mAP@0.5 + w_f1 * F_beta at the operating point (metrics.py)."""

    w_map: float = 0.5
    w_f1: float = 0.5
    beta: float = checked(1.0, lambda v: v > 0, "be positive (1 = F1, 2 = recall-first)")  # F_beta in place of F1: 2 weighs recall 4x precision


@dataclass
class TuneConfig:
    """Post-processing chosen from a trial's stored predictions on data.val, without running a model again."""

    threshold: bool = True  # the score threshold that maximises the score (global, and per class below)
    wbf: bool = True  # WBF iou_thr, skip_box_thr, conf_type and member weights
    min_class_boxes: int = at_least(30, 1)  # a class gets a threshold of its own only with this many boxes in data.val
    min_gain: float = 0.005  # other WBF settings replace ensemble.* only when they score this much more
    # publish the fused ensemble only where data.val says it beats its best member beyond the noise (a paired
    # bootstrap of mAP and mAP@0.5), else fewer members or the best one alone (selection.py); false: all fused
    guard: bool = True


@dataclass
class CVConfig:
    folds: int = at_least(5, 2)
    # auto: group when cv.group_by is not roboflow or file names show Roboflow copies, else stratified
    strategy: Literal["auto", "kfold", "stratified", "group"] = "auto"
    group_by: str = "roboflow"  # for strategy group: roboflow, regex:PATTERN or field:NAME
    seed: int = 0
    top_k: int = at_least(1, 1)  # refit.strategy folds: the best epochs kept per fold (ranked on that fold's own images)


@dataclass
class RefitConfig:
    """The models a cv run or a study publishes. The folds estimate a config's score and choose its epochs;
    the published members are trained again on all of data.train (seeds, trials), or are the folds' own
    best models (folds: each trained on (k-1)/k of the data)."""

    strategy: Literal["seeds", "trials", "folds"] = "seeds"  # seeds: the best config with `members` seeds;
    # trials: the configs of the `members` best trials (a cv run has one config: seeds)
    members: int = at_least(3, 1)
    epochs: int = at_least(0, 0, "be 0 (the epochs the folds chose) or more")  # 0: the epochs the folds chose (their mean best epoch, rounded); else this many
    # with refit.epochs 0, when every fold's best epoch was its last (still improving when the epoch limit
    # stopped it), the refit trains this many times the folds' epochs (bench/refit_epochs.py: 2x gave
    # members +0.04 mAP on RBC and +0.12 on the cards photos); 1: as the folds
    capped_factor: float = checked(2.0, lambda v: 1.0 <= v <= 10.0, "lie in [1, 10]")


def _default_space() -> dict[str, Any]:
    return {"train.lr": {"low": 1e-4, "high": 1e-3, "log": True}, "train.batch_size": [4, 8]}


Objective = Literal["score", "latency"]


@dataclass
class SearchConfig:
    # dotted config key -> [choices] (categorical) or {low, high, log?, step?} (int or float, by the key's type)
    space: dict[str, Any] = field(default_factory=_default_space)
    n_trials: int = at_least(20, 1)  # trials that end (complete, pruned or failed) before the study stops
    timeout: float = at_least(0.0, 0, "be 0 (none) or a number of seconds (--timeout sets it)")  # seconds after which a worker starts no new trial; 0 = none
    sampler: Literal["tpe", "random"] = "tpe"
    seed: int = 0
    pruner: Literal["median", "hyperband", "threshold", "none"] = "median"
    startup_trials: int = 2  # median pruner: finished trials before pruning starts
    warmup_epochs: int = 1  # median and threshold pruners: epochs of the first fold never pruned
    prune_below: float = 0.0  # threshold pruner: stop a trial whose fold-mean score is below this
    heartbeat_seconds: int = at_least(20, 1)
    grace_seconds: int = 60  # a RUNNING trial without a heartbeat for this long is failed and retried (> heartbeat)
    max_retries: int = 2
    keep_models: Literal["best", "all"] = "best"  # best: only the best trial keeps its top-k checkpoints
    # [score] or [score, latency]: the second makes a two-objective study (Optuna's Pareto front), each trial's
    # latency measured on its own models as best/ would run them (search/latency.py); pruning is then off
    objectives: list[Objective] = field(default_factory=lambda: ["score"], metadata={"check": (
        lambda v: v in (["score"], ["score", "latency"]), "be [score] or [score, latency]")})
    # with latency: best/ is the best score among trials at most this many ms per image; 0 = the knee of the
    # front (the trial nearest the ideal point, both objectives scaled to the trials' range)
    max_latency_ms: float = at_least(0.0, 0, "be 0 (the knee of the front) or a budget in ms per image")
    latency_images: int = at_least(8, 1)  # data.val images a trial's latency is timed on


ConfType = Literal["avg", "max", "box_and_model_avg", "absent_model_aware_avg"]  # ensemble-boxes' WBF conf_type
CONF_TYPES = get_args(ConfType)


@dataclass
class EnsembleConfig:
    """Weighted Boxes Fusion of a trial's top-k models (ensemble-boxes arguments)."""

    iou_thr: float = fraction(0.55, low_open=True)
    skip_box_thr: float = fraction(0.02)  # measured on the sample study: faster fusion and no loss of mAP vs 0.001
    conf_type: ConfType = "avg"
    weights: Union[list[float], None] = checked(  # one per model, best first; None = equal
        None, lambda v: v is None or all(w >= 0 for w in v) and sum(v) > 0, "be non-negative with a positive sum")
    # sliced inference (slicing.py): 0 off, auto (tiles the size of each member's training images, so objects
    # keep the scale it learnt them at) or a tile side in px
    slice: Union[int, str] = checked(0, lambda v: v in (0, "auto") or isinstance(v, int) and v >= 32,
                                     "be 0 (off), auto or a tile side of at least 32 px")
    # of a tile's side, shared with its neighbour: an object wider than the overlap is cut in every tile
    # at most MAX_OVERLAP: 0.99 cut one 416 px image into 124,609 tiles
    slice_overlap: float = checked(0.3, lambda v: 0 <= v <= MAX_OVERLAP, f"lie in [0, {MAX_OVERLAP}]")  # bench/slicing.py: 0.3 vs 0.2: mAP@0.5 0.95 vs 0.85
    # the whole image, resized, as one more tile: for objects larger than a tile; off by default, as it shows
    # objects at a scale the tiles' model did not learn (bench/slicing.py: it costs mAP)
    slice_whole: bool = False


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    cv: CVConfig = field(default_factory=CVConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    refit: RefitConfig = field(default_factory=RefitConfig)

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    def published_members(self) -> int:
        """How many models a cv run or a study publishes (and WBF fuses)."""
        return self.cv.folds * self.cv.top_k if self.refit.strategy == "folds" else self.refit.members


def check_ranges(cfg: Config, source: str) -> None:
    """Each field's own check (its metadata), then the rules that relate two fields: one ConfigError naming
    the key."""
    for key, value, (ok, rule) in _checked_fields(cfg, ""):
        if not ok(value):
            raise ConfigError(f"{source}: {key} must {rule}")
    members = cfg.published_members()
    relations = [
        (cfg.search.grace_seconds > cfg.search.heartbeat_seconds,
         "search.grace_seconds must be longer than search.heartbeat_seconds"),
        (cfg.ensemble.weights is None or len(cfg.ensemble.weights) == members,
         f"ensemble.weights needs one weight per published model ({members}: refit.members, or "
         "cv.folds x cv.top_k with refit.strategy folds), or null for equal weights"),
        (cfg.data.augment.crop == 0 or cfg.ensemble.slice != 0,
         f"data.augment.crop={cfg.data.augment.crop} trains on crops at full resolution, so the model must predict "
         "on tiles too: set ensemble.slice: auto (tiles of the crop's side)"),
        (cfg.data.augment.crop == 0 or cfg.data.augment.mosaic == 0,
         "data.augment.crop and data.augment.mosaic: choose one (a Mosaic shrinks whole images into its cells, "
         "which undoes training at full resolution)"),
    ]
    for ok, message in relations:
        if not ok:
            raise ConfigError(f"{source}: {message}")


def _checked_fields(section: Any, prefix: str):
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            yield from _checked_fields(value, f"{prefix}{f.name}.")
        elif "check" in f.metadata:
            yield f"{prefix}{f.name}", value, f.metadata["check"]


ConfigSource = Union[str, Path, Mapping[str, Any], Config, None]
Overrides = Union[Mapping[str, Any], Sequence[str]]


def load(path: str | Path | None = None, overrides: Overrides = ()) -> Config:
    """Read a YAML config (or start from defaults when `path` is None) and apply the overrides."""
    return resolve(path, overrides)


def resolve(source: ConfigSource = None, overrides: Overrides = ()) -> Config:
    """The one Config a job runs: from a YAML file (its `base:` files merged), a mapping of sections, a Config,
    or None (the defaults); then the overrides, dotted keys to values ({"train.lr": 1e-3}) or the CLI's
    `key=value` strings; type- and range-checked, errors naming the source and the key."""
    if isinstance(source, Config):
        raw, name = source.to_dict(), "<Config>"
    elif isinstance(source, Mapping):
        raw, name = copy.deepcopy(dict(source)), "<dict>"
    elif source is None or isinstance(source, (str, Path)):
        raw, name = (read_with_bases(Path(source), ()) if source is not None else {}), str(source or "<defaults>")
    else:
        raise ConfigError(f"a config is a YAML path, a mapping of sections or a Config; got {type(source).__name__}")
    if isinstance(overrides, str):
        overrides = [overrides]
    if isinstance(overrides, Mapping):
        for key, value in overrides.items():
            set_key(raw, key, value)
    else:
        for item in overrides:
            apply_override(raw, item)
    return from_dict(raw, name)


def from_dict(raw: dict[str, Any], source: str = "<dict>") -> Config:
    """A Config built from a mapping, type- and range-checked as a config file is (overrides included)."""
    cfg = build(Config, raw, "", source)
    check_ranges(cfg, source)
    return cfg


def ensemble_from_dict(raw: dict[str, Any], source: str) -> EnsembleConfig:
    """An `ensemble` section on its own (an operating point, a best/ folder's ensemble.json), its fields
    checked; its weights are checked against the models they weigh where those are loaded."""
    cfg = build(Config, {"ensemble": raw}, "", source)
    for key, value, (ok, rule) in _checked_fields(cfg.ensemble, "ensemble."):
        if not ok(value):
            raise ConfigError(f"{source}: {key} must {rule}")
    return cfg.ensemble


def with_values(cfg: Config, values: dict[str, Any], source: str = "<values>") -> Config:
    """A copy of `cfg` with dotted keys set (`{"train.lr": 0.001}`), type-checked like a config file."""
    raw = resolve_paths(cfg).to_dict() if _inside_pipeline(values) else cfg.to_dict()
    for key, value in values.items():
        node: Any = raw
        *parents, last = key.split(".")
        for part in parents:
            node = _child(node, part)
            if not isinstance(node, (dict, list)):
                raise ConfigError(f"{source}: unknown key '{key}'")
        if isinstance(node, list) and last.isdigit() and int(last) < len(node):
            node[int(last)] = value
        elif isinstance(node, dict) and last in node:
            node[last] = value
        else:
            raise ConfigError(f"{source}: unknown key '{key}'")
    out = from_dict(raw, source)
    check_ranges(out, source)
    return out


def _child(node: Any, part: str) -> Any:
    """A mapping's entry or, inside an Albumentations pipeline, a list's item (`transforms.2`)."""
    if isinstance(node, list):
        return node[int(part)] if part.isdigit() and int(part) < len(node) else None
    return node.get(part) if isinstance(node, dict) else None


def _inside_pipeline(values: dict[str, Any]) -> bool:
    return any(k.startswith("data.augment.pipeline.") for k in values)


def field_type(key: str) -> Any:
    """The declared type of a dotted config key (`train.lr` -> float); ConfigError if there is none. Keys
    inside data.augment.pipeline (e.g. data.augment.pipeline.transform.transforms.1.p) have type Any."""
    if key.startswith("data.augment.pipeline."):
        return Any
    cls: Any = Config
    for part in key.split("."):
        hints = typing.get_type_hints(cls) if dataclasses.is_dataclass(cls) else {}
        if part not in hints:
            raise ConfigError(f"unknown config key '{key}'")
        cls = hints[part]
    return cls


def save(cfg: Config, path: str | Path) -> None:
    write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def diff(a: Config, b: Config) -> dict[str, tuple[Any, Any]]:
    """Dotted keys whose values differ between two configs."""
    fa, fb = _flatten(a.to_dict()), _flatten(b.to_dict())
    return {k: (fa.get(k), fb.get(k)) for k in sorted(fa.keys() | fb.keys()) if fa.get(k) != fb.get(k)}


def resolve_paths(cfg: Config) -> Config:
    """A copy whose dataset paths are absolute, so the saved config works from any directory."""
    def absolute(split: SplitConfig) -> SplitConfig:
        images = str(Path(split.images).resolve()) if split.images else None
        ann = str(Path(split.annotations).resolve()) if split.annotations else ""
        return SplitConfig(annotations=ann, images=images)

    data = dataclasses.replace(cfg.data, train=absolute(cfg.data.train), val=absolute(cfg.data.val),
                               test=absolute(cfg.data.test),
                               augment=dataclasses.replace(cfg.data.augment,
                                                           pipeline=inline_pipeline(cfg.data.augment.pipeline)))
    pretrained = cfg.model.pretrained
    if isinstance(pretrained, str) and pretrained != PACKAGED:
        pretrained = str(Path(pretrained).expanduser().resolve())
    return dataclasses.replace(cfg, data=data, model=dataclasses.replace(cfg.model, pretrained=pretrained))


def inline_pipeline(pipeline: Any) -> Any:
    """data.augment.pipeline as the dict it names, so the saved config holds what the run trained with."""
    if not isinstance(pipeline, str):
        return pipeline
    path = Path(pipeline).expanduser()
    try:
        value = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"data.augment.pipeline: cannot read {path} ({e}); give a YAML/JSON file written by "
                          "albumentations.save or A.to_dict") from None
    if not isinstance(value, dict):
        raise ConfigError(f"data.augment.pipeline: {path} does not hold an Albumentations pipeline (a mapping)")
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out
