"""The CUDA paths, run by bench/gpu.sh with `pytest --device cuda` on a GPU machine. Without --device cuda
(CI and a laptop: no GPU) each test is skipped with that reason; their CPU twins run everywhere:
tests/test_amp.py, the grad-clip test of tests/test_train.py and the gloo tests of tests/test_distributed.py."""
import os
import socket

import pytest
import torch

from detector.data.sample import SampleSpec, write_sample_dataset
from detector.engine import train_one_epoch
from detector.hardware import Precision


@pytest.fixture
def cuda(device):
    if not device.startswith("cuda"):
        pytest.skip("a CUDA test: run with --device cuda on a GPU (bench/gpu.sh does)")
    assert torch.cuda.is_available(), "--device cuda, but torch sees no CUDA GPU"
    return torch.device(device if ":" in device else "cuda:0")


def test_nccl_collectives_take_tensors_on_the_ranks_gpu(cuda):
    import torch.distributed as dist

    from detector import distributed

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    try:  # a group of one rank: NCCL's rules (tensors on the rank's own GPU) apply all the same
        torch.cuda.set_device(cuda)
        dist.init_process_group("nccl", rank=0, world_size=1, device_id=cuda)
        w = distributed.World(0, 2, cuda.index)  # `active`: the helpers take their collective paths
        assert distributed.collective_device(w) == torch.device("cuda", cuda.index)
        assert distributed.mean(w, {"a": 1.0, "b": 3.0}) == {"a": 0.5, "b": 1.5}  # summed over 1 rank, / size 2
        assert distributed.first_failure(w, None) is None  # its all-reduce, on the GPU
        assert distributed.broadcast(w, {"trial": 3}) == {"trial": 3}  # an object collective: the current GPU
    finally:
        distributed.finish()
        for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
            os.environ.pop(key, None)


RANKS_SCRIPT = """
import torch
from detector import distributed
w = distributed.start(torch.device("cuda"))
assert w.size == 2 and torch.cuda.current_device() == w.local_rank, (w, torch.cuda.current_device())
assert distributed.collective_device(w) == torch.device("cuda", w.local_rank)
assert distributed.mean(w, {"x": float(w.rank)}) == {"x": 0.5}  # (0 + 1) / 2: both ranks took part
assert distributed.gather(w, w.rank) == [0, 1]
assert distributed.broadcast(w, {"from": w.rank}) == {"from": 0}
assert distributed.first_failure(w, "boom" if w.rank == 1 else None) == (1, "boom")
distributed.finish()
print("rank", w.rank, "ok")
"""


def test_nccl_collectives_on_two_processes_each_on_its_own_gpu(cuda, tmp_path):
    """Two ranks on two GPUs: a collective on the wrong rank's device fails or hangs here, where a group of one
    rank cannot show it; then one epoch of `detector train` on both."""
    import subprocess
    import sys

    if torch.cuda.device_count() < 2:
        pytest.skip(f"needs two GPUs; this machine has {torch.cuda.device_count()}")
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    script = tmp_path / "ranks.py"
    script.write_text(RANKS_SCRIPT)
    done = subprocess.run([*run, str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.count(" ok") == 2, done.stderr[-3000:]
    from tests.test_distributed import command

    data = write_sample_dataset(tmp_path / "data", SampleSpec(images=24, seed=3))
    cmd = command(tmp_path, 2, "train", tmp_path / "two", data, "train.epochs=1", "train.device=cuda")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len((tmp_path / "two" / "metrics.csv").read_text().splitlines()) == 2  # rank 0 alone wrote its row


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_steps_on_cuda_clip_the_unscaled_gradient_and_skip_overflows(cuda, sample, dtype):
    from tests.test_amp import SIZE, _batches, _trainable
    from detector.models.faster_rcnn import build

    cfg, batches = _batches(sample, 8)
    torch.manual_seed(0)
    model, _ = build(cfg.model, num_classes=3, image_size=SIZE, anchor_shapes=None)
    model.to(cuda)
    before = _trainable(model)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0 ** 22, enabled=dtype == torch.float16)
    losses = train_one_epoch(model, batches[:1] + batches, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0),
                             scaler, device=cuda, precision=Precision("cuda", dtype), epoch=0, grad_clip=1e-3)
    steps = len(batches) + 1 - losses["skipped_steps"]
    assert steps >= 1 and 0 < losses["loss"] < 100
    moved = float((_trainable(model) - before).norm())
    assert moved <= steps * 1e-3 * 1.01  # each step the clip's norm at most: clipped after unscaling
    if dtype == torch.float16:
        assert losses["skipped_steps"] >= 1  # 2**22 overflows fp16 gradients: skipped, not fatal


def test_a_half_torchscript_export_runs_on_the_gpu_and_finds_eagers_boxes(cuda, tmp_path):
    from detector.deploy.benchmark import agreement
    from detector.checkpoint import restore_model
    from detector.data.coco import load_coco
    from detector.deploy.export import deployed, export_models
    from detector.deploy.runtimes import eager, image_array, torchscript
    from tests.conftest import RBC

    checkpoint = os.environ.get("DETECTOR_GPU_CHECKPOINT")  # bench/gpu.sh: its fine-tuned model
    if not checkpoint:
        pytest.skip("needs DETECTOR_GPU_CHECKPOINT, a trained checkpoint (bench/gpu.sh sets it)")
    [path] = export_models(checkpoint, "torchscript", tmp_path / "half.pt", half=True)
    images = [image_array(r.path) for r in load_coco(RBC / "valid" / "_annotations.coco.json").images[:4]]
    reference = eager(deployed(restore_model(checkpoint)), cuda)
    half = torchscript(path, cuda)
    found, worst = agreement([reference.run(im) for im in images], [half.run(im) for im in images])
    assert found >= 0.9 and worst < 2.0, (found, worst)  # fp16 boxes: within a pixel or two of fp32's
