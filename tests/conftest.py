import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detector.data.sample import SampleSpec, write_sample_dataset

ROOT = Path(__file__).resolve().parents[1]
RBC = ROOT / "examples" / "rbc"  # the example dataset the project ships (a real Roboflow export)


def pytest_configure(config):
    """Under pytest-xdist each worker gets an equal share of the cores, and so do the CLI processes it starts:
    two workers of two threads each on a 2-core machine would oversubscribe it and run slower than one."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        share = max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
        os.environ["OMP_NUM_THREADS"] = str(share)
        torch.set_num_threads(share)


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", help="cuda: also run tests/test_gpu.py on the GPU (bench/gpu.sh)")


@pytest.fixture(scope="session")
def device(request) -> str:
    return request.config.getoption("--device")


@pytest.fixture(scope="session")
def rbc() -> Path:
    assert RBC.is_dir(), f"the example RBC dataset is expected at {RBC}"
    return RBC


@pytest.fixture(scope="session")
def sample(tmp_path_factory) -> dict[str, Path]:
    """A small generated sample dataset shared by the tests (read-only)."""
    return write_sample_dataset(tmp_path_factory.mktemp("sample"), SampleSpec(images=40, seed=1))


@pytest.fixture
def tiny_coco(tmp_path):
    """Write a small valid COCO dataset (3 real PNG files) and return a function that rewrites its JSON."""
    images_dir = tmp_path / "images"
    images_dir.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(images_dir / f"im{i}.png")
    doc = {
        "images": [{"id": i + 1, "file_name": f"images/im{i}.png", "width": 60, "height": 40} for i in range(3)],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, 10, 10], "area": 100, "iscrowd": 0},
            {"id": 2, "image_id": 2, "category_id": 2, "bbox": [20, 10, 15, 20], "area": 300, "iscrowd": 0},
        ],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    }

    def write(mutate=None) -> Path:
        d = json.loads(json.dumps(doc))
        if mutate:
            mutate(d)
        path = tmp_path / "annotations.json"
        path.write_text(json.dumps(d))
        return path

    write.root = tmp_path
    return write


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="session")
def untrained_checkpoint(tmp_path_factory) -> Path:
    """A real detector checkpoint of the tests' small ResNet-18 model, as training writes it, untrained: for
    what loads, exports and refuses files, never for what a model predicts."""
    from dataclasses import replace

    from detector import config
    from detector.checkpoint import Checkpoint, save_checkpoint
    from detector.models import faster_rcnn
    from tests.test_train import TINY

    cfg = config.load(None, [*TINY, "model.anchors=default"])
    model, _ = faster_rcnn.build(replace(cfg.model, pretrained=False), num_classes=2, image_size=128,
                                 anchor_shapes=None)
    path = tmp_path_factory.mktemp("checkpoint") / "model.pt"
    save_checkpoint(path, Checkpoint(model=model.state_dict(), epoch=0, image_size=128,
                                     config=config.resolve_paths(cfg).to_dict(),
                                     label_map={"category_ids": [1, 2], "names": ["a", "b"]},
                                     normalization=faster_rcnn.normalization(model)))
    return path
