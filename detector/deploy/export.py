"""`detector export`: a checkpoint as a self-contained TorchScript or ONNX model.

The exported model takes one image of any size, as an (H, W, 3) uint8 RGB tensor (what PIL, cv2 with a
BGR->RGB swap, or a camera gives), and returns boxes (N, 4) xyxy in that image's pixels, scores (N,) and
labels (N,) int64 in 1..K (`labels.json` beside the file maps them to class names and dataset ids, and keeps
the checkpoint's config, so `detector evaluate` scores the file itself). Inside: the resize of the longest
side to the checkpoint's image size (data.resize.fit_to_model, the one `evaluate` and `predict` use), the
backbone's normalisation, the fitted anchors, the detector, and the mapping of boxes back to the input's
pixels. For a study's best/ every member is exported, with the WBF settings and thresholds written beside
them (`ensemble.json`).
"""
from __future__ import annotations

import hashlib
import io
import json
import tempfile
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict

import torch
from torch import nn
from torchvision.models.detection.roi_heads import RoIHeads

from ..checkpoint import RestoredModel, restore_model
from ..data.coco import CocoIndex, load_coco
from ..data.resize import fit_to_model
from ..errors import ConfigError, DetectorError, WeightsError
from ..files import atomic_file, atomic_folder, read_json, write_json
from ..inference.manifest import read_manifest, write_manifest
from ..layout import ENSEMBLE
from ..outputs import claim_files, same_file
from .quantize import QuantizationReport, calibration_images, quantize_int8, score_file
from ..inference.slicing import tile_size

FORMATS = {"torchscript": ".pt", "onnx": ".onnx"}


class DeployedDetector(nn.Module):
    """An (H, W, 3) uint8 RGB image in, (boxes, scores, labels) in its pixels out."""

    def __init__(self, model: nn.Module, image_size: int, half: bool = False):
        super().__init__()
        self.model = model.eval()
        self.image_size = image_size
        self.half = half  # the model's weights are fp16 (export --half, for CUDA): so is its input

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.half:  # the image may come on the CPU; the model and its outputs are on the GPU
            image = image.cuda()
        x, ratio = self.prepare(image)
        if self.half:
            out = self.detect(x.half())
            return out["boxes"].float() * ratio.to(out["boxes"].device), out["scores"].float(), out["labels"]
        out = self.detect(x)
        return out["boxes"] * ratio, out["scores"], out["labels"]

    def prepare(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The image resized to the model's input, and the (w, h, w, h) ratio back to its pixels."""
        return fit_to_model(image, self.image_size)

    @torch.jit.unused
    def many(self, images: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Several images in one batch (eager only: the exported graphs take one image per call)."""
        prepared = [self.prepare(im) for im in images]
        m = self.model
        batch, _ = m.transform([x for x, _ in prepared])
        features = m.backbone(batch.tensors)
        proposals, _ = m.rpn(batch, features)
        detections, _ = m.roi_heads(features, proposals, batch.image_sizes)
        return [(d["boxes"] * ratio, d["scores"], d["labels"]) for d, (_, ratio) in zip(detections, prepared)]

    def detect(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """GeneralizedRCNN.forward's inference steps, called one by one: its forward returns another type
        when scripted."""
        m = self.model
        images, _ = m.transform([x])
        features = m.backbone(images.tensors)
        proposals, _ = m.rpn(images, features)
        detections, _ = m.roi_heads(features, proposals, images.image_sizes)
        return detections[0]


def deployed(restored: RestoredModel, image_size: int | None = None) -> DeployedDetector:
    """The checkpoint's model as exported; `image_size` (default: the one it trained at) is the longest side
    it resizes images to."""
    model = restored.model.cpu().float().eval()
    if type(model.roi_heads) is not RoIHeads:  # a training-loss subclass: inference is RoIHeads' own
        model.roi_heads.__class__ = RoIHeads
    return DeployedDetector(model, image_size or restored.image_size)


def export_checkpoint(checkpoint: str | Path, fmt: str, out: str | Path, *, sample: torch.Tensor | None = None,
                      quantize: str | None = None, calibration: CocoIndex | None = None, half: bool = False,
                      force: bool = False) -> Path:
    """Write `checkpoint` as `fmt` (torchscript or onnx) to `out`, with NAME.labels.json beside it (shared
    by NAME.pt and NAME.onnx of one checkpoint; `force` replaces one that is not theirs).

    `quantize="int8"` (ONNX only) writes ONNX Runtime's static INT8 version instead, calibrated on
    `calibration` (default: the checkpoint's data.val); labels.json then records its mAP and speed on those
    images beside the fp32 model's (quantize.QuantizationReport). `half` (TorchScript on a CUDA machine
    only) writes fp16 weights that run on a GPU."""
    _check_options(fmt, quantize, half)
    out = Path(out)
    restored = restore_model(checkpoint, "cpu")
    if quantize:  # checked before the minutes of export and calibration
        calibration = _same_classes(calibration or _val_split(restored, checkpoint), restored, checkpoint)
    sidecar = _shared_sidecar(out, _common(restored), force)
    module = deployed(restored)
    if half:
        module.model.half().cuda()
        module.half = True
    buffer = io.BytesIO(serialize(module, fmt, sample))  # written atomically below
    extra: dict[str, Any] = {"precision": "fp16", "device": "cuda"} if half else {"precision": "fp32"}
    if quantize:
        data, report = _int8(buffer.getvalue(), calibration, restored)
        buffer, extra = io.BytesIO(data), {"precision": "int8", "int8": report.to_dict()}
    with atomic_file(out) as f:
        f.write(buffer.getbuffer())
    extra["sha256"] = hashlib.sha256(buffer.getbuffer()).hexdigest()
    write_json(labels_file(out), sidecar | {"files": {**sidecar.get("files", {}), out.name: extra}})
    return out


def _common(restored: RestoredModel) -> dict[str, Any]:
    """What NAME.labels.json says of every file exported from one checkpoint under NAME (NAME.pt, NAME.onnx)."""
    return {"labels": _labels(restored), "image_size": restored.image_size,
            "tile": tile_size("auto", restored.train_side, restored.image_size),
            "input": "uint8 RGB image, shape (height, width, 3)",
            "outputs": ["boxes (N, 4) xyxy pixels", "scores (N,)", "labels (N,) 1..K"], **_scoring(restored)}


def _shared_sidecar(out: Path, common: dict[str, Any], force: bool) -> dict[str, Any]:
    """The labels file `out` will have: `common`, with the entries of the other files beside `out` that
    share it (NAME.onnx and NAME.pt of one checkpoint) kept. One written for another checkpoint or by
    someone else is replaced only with `force`."""
    where = labels_file(out)
    if not where.exists():
        return common
    try:
        old = json.loads(where.read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        old = None
    shared = isinstance(old, dict) and isinstance(old.get("files"), dict) and \
        {k: v for k, v in old.items() if k != "files"} == json.loads(json.dumps(common))
    if not shared:
        if not force:
            raise DetectorError(f"{where}: exists and is not the labels file of this checkpoint's exports; pass "
                                "--force to replace it (the model files it describes then cannot be scored), "
                                "or choose another --out name")
        return common
    kept = {n: e for n, e in old["files"].items() if n != out.name and (out.parent / str(n)).is_file()}
    return common | {"files": kept}


def _scoring(restored: RestoredModel) -> dict[str, Any]:
    """What `detector evaluate` and `predict` need to run the exported file as they run the checkpoint: its
    ModelSpec (exported.load_exported reads it back)."""
    return {"model": restored.spec.to_dict()}


def _check_options(fmt: str, quantize: str | None, half: bool) -> None:
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if quantize not in (None, "int8"):
        raise ConfigError(f"--quantize {quantize!r}: the one quantization offered is int8")
    if quantize and (fmt != "onnx" or half):
        raise ConfigError("--quantize int8 makes an ONNX Runtime model: use --format onnx without --half "
                          "(TorchScript's own quantization needs a backend-specific rewrite of the model)")
    if half and fmt != "torchscript":
        raise ConfigError("--half makes a TorchScript model for CUDA GPUs: use --format torchscript; onnxruntime's "
                          "float16 converter breaks torchvision's detection graph (its If and Loop subgraphs), and "
                          "its CPU provider lacks fp16 convolutions")
    if half and not torch.cuda.is_available():
        raise DetectorError("--half needs a CUDA GPU on this machine: the fp16 model is built and runs there, and "
                            "on CPU PyTorch runs fp16 far slower than fp32 (0.5 s vs 44 s an image, measured); "
                            "export fp32 here, or --format onnx --quantize int8 for CPUs")


def serialize(module: DeployedDetector, fmt: str, sample: torch.Tensor | None = None) -> bytes:
    """`module` as the bytes of a TorchScript or ONNX file (in memory: a kill leaves the old file whole)."""
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notice and the ONNX tracer's shape warnings
        if fmt == "torchscript":
            torch.jit.save(torch.jit.script(module), buffer)
        else:
            _export_onnx(module, buffer, sample)
    return buffer.getvalue()


def _int8(fp32: bytes, index: CocoIndex, restored: RestoredModel) -> tuple[bytes, QuantizationReport]:
    """The INT8 model's bytes, and both models scored on `index` (whose images also calibrate it)."""
    depth = restored.config.data.bit_depth
    images = calibration_images(index, bit_depth=depth)
    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        source.write_bytes(fp32)
        quantize_int8(source, target, images)
        report = QuantizationReport(str(index.path), len(index.images), len(images),
                                    score_file(source, index, depth), score_file(target, index, depth))
        return target.read_bytes(), report


def _same_classes(index: CocoIndex, restored: RestoredModel, checkpoint: str | Path) -> CocoIndex:
    """`index` if each of its classes is the model's (same category id, same name): INT8 is scored on it, and
    a file of other classes scored nothing meaningful (or failed after calibrating)."""
    ours = dict(zip(restored.label_map.category_ids, restored.label_map.names))
    theirs = dict(zip(index.label_map.category_ids, index.label_map.names))
    other = {c: n for c, n in theirs.items() if ours.get(c) != n}
    if other:
        shown = ", ".join(f"{c}: {n}" for c, n in list(other.items())[:5])
        raise DetectorError(f"{index.path}: its categories ({shown}) are not {checkpoint}'s ("
                            + ", ".join(f"{c}: {n}" for c, n in ours.items()) + "); calibrate on images labelled "
                            "with the model's categories, such as its data.val")
    return index


def _val_split(restored: RestoredModel, checkpoint: str | Path) -> CocoIndex:
    """The checkpoint's own data.val, where INT8 ranges are calibrated and its accuracy is checked."""
    val = restored.config.data.val
    if not val.annotations or not Path(val.annotations).is_file():
        raise DetectorError(f"{checkpoint}: its data.val ({val.annotations or 'none'}) is not on this machine, and "
                            "INT8 export calibrates on it; pass --calibration with a COCO file of images like "
                            "those the model will see")
    return load_coco(val.annotations, images_dir=val.images_dir, check_images=False)


def export_models(models: str | Path, fmt: str, out: str | Path, *, quantize: str | None = None,
                  calibration: CocoIndex | None = None, half: bool = False, force: bool = False) -> list[Path]:
    """A checkpoint -> `out`; a study's best/ folder -> `out`/model_I.EXT for each member, with the
    ensemble's WBF settings and thresholds (ensemble.json) beside them. `quantize`, `calibration`: as
    export_checkpoint's, for every member. An existing `out` is replaced only with `force`, and only when it
    holds nothing but a previous export; the model itself never."""
    models, out = Path(models), Path(out)
    options = dict(quantize=quantize, calibration=calibration, half=half)
    if models.is_dir() and (models / ENSEMBLE).exists():
        _claim_folder(out, models, force)
        return _export_ensemble(models, fmt, out, options)
    if models.is_file():
        sources = [models, labels_file(models), *([calibration.path] if calibration else [])]
        claim_files([out], sources, force=force)
        claim_files([labels_file(out)], sources, force=True)  # an input or a folder; an existing one: as shared
        return [export_checkpoint(models, fmt, out, force=force, **options)]
    raise WeightsError(f"{models}: not a checkpoint or a study's best/ folder")


def _claim_folder(out: Path, best: Path, force: bool) -> None:
    """Refuse an ensemble export's `out` that is (or holds, or lies in) the best/ folder, that holds anything
    but a previous export, or that exists without `force`."""
    if same_file(out, best) or best.resolve() in out.resolve().parents or out.resolve() in best.resolve().parents:
        raise DetectorError(f"{out}: is, holds or lies in the input {best}; choose another --out folder")
    if not (out.exists() or out.is_symlink()):
        return
    foreign = _foreign_entries(out)
    if foreign:
        raise DetectorError(f"{out}: holds files this export did not write ({', '.join(foreign[:5])}); they are "
                            "kept: choose another --out folder")
    if not force:
        raise DetectorError(f"{out}: holds a previous export; pass --force to replace it, or choose another --out")


def _export_ensemble(best: Path, fmt: str, out: Path, options: dict[str, Any]) -> list[Path]:
    """Every member and ensemble.json, built in a folder beside `out` and swapped in only when all are
    written (files.atomic_folder): a killed export leaves the old export whole."""
    manifest = read_manifest(best)
    names = [Path(f).stem + FORMATS[fmt] for f in manifest.files]
    with atomic_folder(out) as stage:
        for m, name in zip(manifest.members, names):
            export_checkpoint(best / m.file, fmt, stage / name, **options)
        write_manifest(stage, replace(manifest, members=[replace(m, file=n) for m, n in zip(manifest.members, names)]))
    return [*(out / name for name in names), out / ENSEMBLE]


def _foreign_entries(folder: Path) -> list[str]:
    """The entries of `folder` that its export's ensemble.json does not list (all of them when it is not an
    export): what replacing the folder would lose."""
    if folder.is_symlink() or not folder.is_dir():
        return [folder.name]
    try:
        listed = read_manifest(folder).files
        names = {ENSEMBLE, *listed, *(labels_file(Path(n)).name for n in listed)}
    except DetectorError:
        names = set()
    return sorted(p.name for p in folder.iterdir() if p.name not in names)


def labels_file(model_file: Path) -> Path:
    return model_file.with_name(model_file.stem + ".labels.json")


def _labels(restored: RestoredModel) -> dict[str, Any]:
    lm = restored.label_map
    return {str(i + 1): {"name": n, "category_id": c} for i, (n, c) in enumerate(zip(lm.names, lm.category_ids))}


def _export_onnx(module: DeployedDetector, out: io.BytesIO, sample: torch.Tensor | None) -> None:
    try:
        import onnx  # noqa: F401  (the exporter needs it)
    except ImportError:
        raise DetectorError("ONNX export needs the onnx package: pip install -e \".[export]\"") from None
    image = sample if sample is not None else torch.randint(0, 256, (module.image_size, module.image_size, 3),
                                                            dtype=torch.uint8)
    torch.onnx.export(module, (image,), out, input_names=["image"], output_names=["boxes", "scores", "labels"],
                      dynamic_axes={"image": {0: "height", 1: "width"}, "boxes": {0: "n"}, "scores": {0: "n"},
                                    "labels": {0: "n"}}, opset_version=17, dynamo=False)


def read_labels(model_file: str | Path) -> dict[str, Any]:
    """NAME.labels.json as it applies to `model_file`: what all of NAME's files share, with this file's own
    entry (sha256, precision, int8 report) beside it."""
    model_file = Path(model_file)
    sidecar = read_json(labels_file(model_file), fix="export the checkpoint again")
    if not isinstance(sidecar, dict):
        raise WeightsError(f"{labels_file(model_file)}: not a labels file; export the checkpoint again")
    own = sidecar.pop("files", {}).get(model_file.name, {})
    return sidecar | (own if isinstance(own, dict) else {})
