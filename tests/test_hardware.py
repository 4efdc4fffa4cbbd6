"""train.amp: the precision chosen where the program runs, for the model it trains, with its reason."""
import pytest
import torch

from detector import config, hardware
from detector.checkpoint import load_checkpoint
from detector.hardware import resolve_precision
from detector.models.faster_rcnn import build
from tests.helpers import run_cli

CPU = torch.device("cpu")


@pytest.fixture
def backbone():
    cfg = config.load("configs/sample.yaml", ["model.anchors=default"])
    return build(cfg.model, num_classes=2, image_size=128)[0].backbone


def test_auto_on_cpu_follows_what_this_cpu_computes_natively(backbone):
    chosen = hardware.cpu_precision(backbone, 128)
    if not hardware.native_bf16():  # an AVX2-only CPU emulates bf16: several times slower than fp32
        assert not chosen.bf16 and "no native bf16" in chosen.reason
    else:  # the probe of this model decides; its ratio is in the reason
        assert chosen.bf16 == (chosen.ratio <= hardware.BF16_FASTER) and f"{chosen.ratio:.2f}x" in chosen.reason
    assert chosen.reason.startswith("bf16" if chosen.bf16 else "fp32")


def test_no_native_bf16_or_a_probe_that_finds_it_slow_means_fp32(backbone, monkeypatch):
    monkeypatch.setattr(hardware, "native_bf16", lambda: False)
    assert not hardware.cpu_precision(backbone, 128).bf16
    monkeypatch.setattr(hardware, "native_bf16", lambda: True)
    monkeypatch.setattr(hardware, "_ratio", lambda model, size: 0.93)  # measured for EfficientNet-lite0
    slow = hardware.cpu_precision(backbone, 128)
    assert not slow.bf16 and "bf16 took 0.93x fp32's time" in slow.reason
    monkeypatch.setattr(hardware, "_ratio", lambda model, size: 0.6)  # measured for a dense ResNet-50
    assert hardware.cpu_precision(backbone, 128, key=("dense",)).bf16
    monkeypatch.setattr(hardware, "_ratio", lambda model, size: pytest.fail("probed once per model and process"))
    assert hardware.cpu_precision(backbone, 128, key=("dense",)).bf16


def test_the_probe_leaves_the_model_as_it_was(backbone, monkeypatch):
    monkeypatch.setattr(hardware, "native_bf16", lambda: True)  # probed on any CPU (emulated bf16: slowly)
    before = {k: v.clone() for k, v in backbone.train().state_dict().items()}
    chosen = hardware.cpu_precision(backbone, 96)
    assert 0 < chosen.ratio < 20 and all(p.grad is None for p in backbone.parameters())
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())  # BN statistics too


def test_fp32_off_and_explicit_precisions_are_taken_as_said():
    for amp, dtype in (("fp32", None), ("off", None), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        chosen = resolve_precision(amp, CPU)
        assert chosen.dtype == dtype and amp in chosen.reason


@pytest.mark.slow
def test_a_run_says_and_records_the_precision_it_trained_in(sample, tmp_path):
    done = run_cli("train", "configs/sample.yaml", "--out", str(tmp_path / "run"), "--set", "train.epochs=1",
                   "--set", "train.amp=auto", "--set", f"data.train.annotations={sample['train']}",
                   "--set", f"data.val.annotations={sample['val']}")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "device cpu, precision auto: fp32 on a CPU" in "\n".join(lines[:3]), lines[:3]
    said = next(line for line in lines if line.startswith("precision "))  # what the model's probe found
    assert said.startswith("precision fp32: ")  # bf16 training lost accuracy (bench/precision.py): opt-in only
    assert any(why in said for why in ("would take", "not faster enough", "no native bf16")), said
    assert load_checkpoint(tmp_path / "run" / "best.pt").precision == "fp32"
