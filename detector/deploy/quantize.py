"""INT8 versions of an exported ONNX model (`detector export --quantize int8`), and what they cost.

ONNX Runtime's static quantization (QDQ format, weights int8 per output channel, activations uint8) with
activation ranges calibrated on real images. Only the convolutions are quantized: the backbone, the FPN and
the RPN head, where the time goes. The box head's fully connected layers stay fp32: they place the final
boxes, and on RBC quantizing them too cost 0.04 mAP@0.5 (with MinMax ranges) for no further speed-up. The
calibration takes the 99.999th percentile of each activation rather than its extremes (0.03 mAP@0.5 more
on RBC). What INT8 costs depends on the model: measured on RBC it lost 0.007 mAP@0.5 for one fine-tuned
model and 0.33 for another, weaker one (quantizing only the backbone, or only the dense convolutions, lost
0.17 or more there too), so every export scores both versions and says so when INT8 loses more than
INT8_WARNING. The speed-up depends on the CPU's int8 instructions (AVX512-VNNI, AMX); the report measures it.
"""
from __future__ import annotations

import contextlib
import io
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from ..data.coco import CocoIndex
from ..errors import DetectorError
from ..metrics import coco_map
from .runtimes import image_array, onnx, results_of, seconds_per_image

CALIBRATION_IMAGES = 32  # enough for stable activation ranges; calibration time grows with each image
QUANTIZED_OPS = ("Conv",)
INT8_WARNING = 0.02  # mAP@0.5 lost to INT8 above which the export says to deploy fp32


@dataclass(frozen=True)
class Scored:
    """One model file scored on a COCO split: mAP@0.5, mAP and CPU milliseconds per image."""

    map_50: float
    map: float
    ms_per_image: float


@dataclass(frozen=True)
class QuantizationReport:
    """fp32 and INT8 versions of one model, scored on the same images (`images`, from `annotations`)."""

    annotations: str
    images: int
    calibration_images: int
    fp32: Scored
    int8: Scored

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "QuantizationReport":
        return cls(**{**d, "fp32": Scored(**d["fp32"]), "int8": Scored(**d["int8"])})

    def summary(self) -> str:
        f, q = self.fp32, self.int8
        return (f"int8 on {self.images} images of {self.annotations} (calibrated on {self.calibration_images}): "
                f"mAP@0.5 {q.map_50:.4f} vs fp32 {f.map_50:.4f} ({q.map_50 - f.map_50:+.4f}), mAP {q.map:.4f} vs "
                f"{f.map:.4f} ({q.map - f.map:+.4f}); {q.ms_per_image:.1f} vs {f.ms_per_image:.1f} ms per image on "
                f"CPU (x{f.ms_per_image / max(q.ms_per_image, 1e-9):.2f})"
                + (f"\n  warning: INT8 loses {f.map_50 - q.map_50:.3f} mAP@0.5 on these images; deploy the fp32 "
                   "export, or calibrate on more images like those it will see (--calibration)"
                   if f.map_50 - q.map_50 > INT8_WARNING else ""))


def calibration_images(index: CocoIndex, limit: int = CALIBRATION_IMAGES, bit_depth: int = 16) -> list[np.ndarray]:
    """Up to `limit` images of `index`, spread over it, as the exported model takes them."""
    if not index.images:
        raise DetectorError(f"{index.path}: no images to calibrate the INT8 ranges on; pass --calibration with a "
                            "COCO file of images like those the model will see")
    step = max(1, len(index.images) // limit)
    return [image_array(r.path, bit_depth) for r in index.images[::step][:limit]]


def quantize_int8(fp32: Path, out: Path, images: Sequence[np.ndarray]) -> None:
    """Write the INT8 version of the ONNX file `fp32` to `out`, its activation ranges calibrated on `images`."""
    try:
        from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                              quant_pre_process, quantize_static)
    except ImportError:
        raise DetectorError("INT8 export needs onnxruntime: pip install -e \".[export]\"") from None

    class Images(CalibrationDataReader):
        def __init__(self) -> None:
            self.feed: Iterator[np.ndarray] = iter(images)

        def get_next(self) -> dict | None:
            image = next(self.feed, None)
            return None if image is None else {"image": image}

    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):  # its progress prints
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)  # folded constants, known shapes
        quantize_static(str(prepared), str(out), Images(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=list(QUANTIZED_OPS), calibrate_method=CalibrationMethod.Percentile,
                        extra_options={"CalibPercentile": 99.999})


def score_file(model: Path, index: CocoIndex, bit_depth: int = 16, repeats: int = 3) -> Scored:
    """`model` (ONNX) in onnxruntime on the CPU over `index`: its mAP, and its time per image (the best of
    `repeats` passes over images already decoded)."""
    runtime = onnx(model, torch.device("cpu"))
    results = results_of(runtime, index, bit_depth=bit_depth)
    seconds = seconds_per_image(runtime, [image_array(r.path, bit_depth) for r in index.images], repeats)
    m = coco_map(index.to_coco(), results)
    return Scored(round(float(m.map_50), 4), round(float(m.map), 4), round(seconds * 1000, 2))

