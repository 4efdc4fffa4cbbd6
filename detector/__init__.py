"""detector: fine-tune Faster R-CNN detectors on COCO data and search their hyperparameters.

The public API (detector/api.py), one function per job, each what the CLI command of the same name runs:

    import detector
    run = detector.train("configs/quickstart.yaml", out="runs/q", overrides={"train.epochs": 2})
    print(detector.evaluate(run.best_path, "examples/rbc/test/_annotations.coco.json").metrics.map_50)
    detector.predict(run.best_path, ["examples/rbc/test"], out="preds/q")

The names load on first use, so `import detector` (and the CLI's start) stays light.
"""
from __future__ import annotations

from typing import Any

__all__ = ["Config", "DetectorError", "Metrics", "benchmark", "check_data", "convert", "cv", "evaluate", "export", "fetch",
           "init", "load", "predict", "study", "train"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'detector' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
