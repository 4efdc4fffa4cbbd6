"""export and the loading of model files: atomic outputs, one clear error for a file that is not a checkpoint."""
import json
import shutil
import subprocess
import warnings

import pytest
import torch

from detector.checkpoint import load_checkpoint, restore_model, save_checkpoint
from detector.errors import DetectorError, WeightsError
from detector.deploy.export import export_models
from tests.helpers import CLI


def _export(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notice
        return export_models(*args, **kwargs)


def test_a_best_folder_export_is_swapped_in_whole_or_not_at_all(untrained_checkpoint, tmp_path):
    best = tmp_path / "best"
    best.mkdir()
    for i in (0, 1):
        shutil.copy(untrained_checkpoint, best / f"model_{i}.pt")
    (best / "ensemble.json").write_text(json.dumps({"members": [{"file": "model_0.pt"}, {"file": "model_1.pt"}],
                                                    "ensemble": {"iou_thr": 0.6}, "score_threshold": 0.4}))
    written = _export(best, "torchscript", tmp_path / "deploy")
    assert [p.name for p in written] == ["model_0.pt", "model_1.pt", "ensemble.json"]
    before = {p.name: p.read_bytes() for p in (tmp_path / "deploy").iterdir()}
    (best / "model_1.pt").write_bytes((best / "model_1.pt").read_bytes()[:1000])  # a member that fails midway
    with pytest.raises(WeightsError, match="model_1.pt: not a complete PyTorch file"):
        _export(best, "torchscript", tmp_path / "deploy", force=True)
    assert {p.name: p.read_bytes() for p in (tmp_path / "deploy").iterdir()} == before  # the old export, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "deploy"]  # no half-built folder left
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(DetectorError, match=r"mine: holds files this export did not write \(notes.txt\)"):
        _export(best, "torchscript", tmp_path / "mine")


def test_a_single_export_replaces_its_file_atomically(untrained_checkpoint, tmp_path):
    out = tmp_path / "model.pt"
    out.write_bytes(b"the previous export")
    [written] = _export(untrained_checkpoint, "torchscript", out, force=True)
    assert torch.jit.load(str(written)) is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.labels.json", "model.pt"]  # no temporary left


@pytest.mark.slow
def test_a_torchscript_export_is_no_checkpoint_but_predict_runs_it_with_its_labels_file(untrained_checkpoint, tmp_path):
    [scripted] = _export(untrained_checkpoint, "torchscript", tmp_path / "model.ts.pt")
    with pytest.raises(WeightsError, match=r"model.ts.pt: a TorchScript export \(detector export") as e:
        load_checkpoint(scripted)
    assert "weights_only=False" not in str(e.value)
    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image
    Image.new("RGB", (90, 60), (120, 80, 40)).save(images / "a.png")
    # predict and evaluate run the export itself (with its labels file), as they run the checkpoint
    done = subprocess.run([*CLI, "predict", str(scripted), str(images), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    scripted.with_name("model.ts.labels.json").unlink()
    done = subprocess.run([*CLI, "predict", str(scripted), str(images), "--out", str(tmp_path / "again")],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "model.ts.labels.json is not beside it" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_weights_of_another_architecture_are_one_error(untrained_checkpoint, tmp_path, tiny_coco):
    state = load_checkpoint(untrained_checkpoint)
    state.config["model"]["fpn_channels"] = 64  # the config of one model, the weights of another
    save_checkpoint(tmp_path / "mixed.pt", state)
    with pytest.raises(WeightsError, match=r"mixed.pt: its weights are not those of the model its config "
                                           r"describes \(resnet18: size mismatch for backbone"):
        restore_model(tmp_path / "mixed.pt")
    with pytest.raises(WeightsError, match="its weights are not those of the model"):
        _export(tmp_path / "mixed.pt", "onnx", tmp_path / "m.onnx")
    done = subprocess.run([*CLI, "evaluate", str(tmp_path / "mixed.pt"),
                           str(tiny_coco())], capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "its weights are not those of the model" in done.stderr


def test_the_readmes_onnxruntime_snippet_sees_the_image_as_predict_does(untrained_checkpoint, tmp_path):
    import re

    import numpy as np
    from PIL import Image

    from detector.data.images import read_image
    from tests.conftest import ROOT

    readme = (ROOT / "docs" / "inference.md").read_text()
    snippet = re.search(r"Running one exported model with onnxruntime alone.*?```python\n(.*?)```", readme, re.S)[1]
    _export(untrained_checkpoint, "onnx", tmp_path / "rbc.onnx")
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 90, 3), dtype=np.uint8))
    exif = photo.getexif()
    exif[0x0112] = 6  # stored landscape, displayed portrait
    photo.save(tmp_path / "photo.jpg", exif=exif.tobytes())
    code = snippet.replace("deploy/rbc.", f"{tmp_path}/rbc.").replace('"photo.jpg"', f'"{tmp_path}/photo.jpg"')
    seen: dict = {}
    exec(compile(code, "docs/inference.md", "exec"), seen)
    np.testing.assert_array_equal(seen["image"], read_image(tmp_path / "photo.jpg"))
    assert seen["image"].shape == (90, 60, 3)


def test_the_readmes_sliced_onnx_snippet_predicts_an_image_larger_than_its_tiles(untrained_checkpoint, tmp_path):
    import re

    import numpy as np
    from PIL import Image

    from tests.conftest import ROOT

    readme = (ROOT / "docs" / "inference.md").read_text()
    snippet = re.search(r"To predict on tiles with it.*?```python\n(.*?)```", readme, re.S)[1]
    _export(untrained_checkpoint, "onnx", tmp_path / "rbc.onnx")
    labels = json.loads((tmp_path / "rbc.labels.json").read_text())
    tile = labels["tile"]
    assert tile == (restore_model(untrained_checkpoint).train_side or labels["image_size"]) == 128
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (tile * 2, tile * 3, 3), np.uint8)).save(
        tmp_path / "slide.jpg")
    code = snippet.replace("deploy/rbc.", f"{tmp_path}/rbc.").replace('"slide.jpg"', f'"{tmp_path}/slide.jpg"')
    seen: dict = {}
    exec(compile(code, "docs/inference.md", "exec"), seen)
    merged = seen["merged"]
    assert set(merged) == {"boxes", "scores", "labels"} and len(merged["boxes"]) == len(merged["scores"])
    inside = (merged["boxes"][:, 2] <= tile * 3 + 1e-3) & (merged["boxes"][:, 3] <= tile * 2 + 1e-3)
    assert bool(inside.all())


def test_half_and_int8_are_refused_with_the_reason_where_they_cannot_run(untrained_checkpoint, tmp_path):
    from tests.helpers import run_cli

    def says(*args):
        return run_cli("export", str(untrained_checkpoint), "--out", str(tmp_path / "m"), *args)

    onnx_half = says("--format", "onnx", "--half")
    assert onnx_half.returncode == 2 and "--half makes a TorchScript model for CUDA GPUs" in onnx_half.stderr
    int8_ts = says("--format", "torchscript", "--quantize", "int8")
    assert int8_ts.returncode == 2 and "use --format onnx" in int8_ts.stderr
    if not torch.cuda.is_available():
        half = says("--format", "torchscript", "--half")
        assert half.returncode == 2 and "--half needs a CUDA GPU on this machine" in half.stderr
    assert "Traceback" not in onnx_half.stderr + int8_ts.stderr and not list(tmp_path.glob("m*"))


def test_int8_calibration_on_other_classes_is_refused_before_any_work(untrained_checkpoint, tmp_path):
    from PIL import Image

    from tests.helpers import run_cli

    Image.new("RGB", (64, 48), (90, 90, 90)).save(tmp_path / "a.png")
    other = {"images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 48}],
             "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [1, 1, 9, 9], "area": 81, "iscrowd": 0}],
             "categories": [{"id": 7, "name": "zebra"}]}
    (tmp_path / "other.json").write_text(json.dumps(other))
    done = run_cli("export", str(untrained_checkpoint), "--format", "onnx", "--quantize", "int8", "--calibration",
                   str(tmp_path / "other.json"), "--out", str(tmp_path / "m.onnx"))  # C10: IndexError after calibrating
    assert done.returncode == 2 and "its categories (7: zebra) are not" in done.stderr, done.stderr
    assert not (tmp_path / "m.onnx").exists()


def test_a_torchscript_file_is_loaded_only_beside_the_labels_file_that_records_it(untrained_checkpoint, tmp_path):
    from detector.deploy.exported import load_exported

    [scripted] = _export(untrained_checkpoint, "torchscript", tmp_path / "model.pt")
    assert load_exported(scripted, torch.device("cpu")).path == scripted
    foreign = tmp_path / "foreign.pt"  # S2: any TorchScript file with a copied labels file ran its program
    torch.jit.save(torch.jit.script(torch.nn.Identity()), str(foreign))
    shutil.copy(tmp_path / "model.labels.json", tmp_path / "foreign.labels.json")
    with pytest.raises(WeightsError, match="foreign.pt: not the TorchScript file detector exported"):
        load_exported(foreign, torch.device("cpu"))


def test_an_exported_file_carries_its_checkpoints_model_spec_and_older_labels_files_load(untrained_checkpoint,
                                                                                          tmp_path):
    from detector.deploy.exported import load_exported

    [scripted] = _export(untrained_checkpoint, "torchscript", tmp_path / "model.pt")
    cpu, labels = torch.device("cpu"), tmp_path / "model.labels.json"
    assert load_exported(scripted, cpu).spec == restore_model(untrained_checkpoint).spec
    sidecar = json.loads(labels.read_text())
    spec = sidecar.pop("model")  # as exports before ModelSpec wrote it: its parts at the top level
    labels.write_text(json.dumps(sidecar | {k: spec[k] for k in ("config", "label_map", "image_size", "train_side")}))
    old = load_exported(scripted, cpu)
    assert old.label_map == restore_model(untrained_checkpoint).label_map and old.image_size == 128
    for damaged in ({"label_map": {"names": 3}}, {"config": {"train": {"lr": "fast"}}, "label_map": spec["label_map"]}):
        labels.write_text(json.dumps(sidecar | {"model": damaged}))
        with pytest.raises(DetectorError, match="model.labels.json"):
            load_exported(scripted, cpu)


@pytest.mark.slow
def test_the_onnx_and_torchscript_files_of_one_checkpoint_share_their_labels_file(untrained_checkpoint, tmp_path):
    from detector.deploy.exported import load_exported

    [scripted] = _export(untrained_checkpoint, "torchscript", tmp_path / "model.pt")
    [traced] = _export(untrained_checkpoint, "onnx", tmp_path / "model.onnx")  # refused before: the labels existed
    for path in (scripted, traced):  # both still load: the second export kept the first one's sha256
        assert load_exported(path, torch.device("cpu")).path == path
    assert sorted(json.loads((tmp_path / "model.labels.json").read_text())["files"]) == ["model.onnx", "model.pt"]
    mine = tmp_path / "mine.labels.json"
    mine.write_text("my own notes")  # not a labels file export wrote: kept unless --force
    with pytest.raises(DetectorError, match="mine.labels.json: exists and is not the labels file"):
        _export(untrained_checkpoint, "torchscript", tmp_path / "mine.pt")
    assert mine.read_text() == "my own notes" and not (tmp_path / "mine.pt").exists()
    _export(untrained_checkpoint, "torchscript", tmp_path / "mine.pt", force=True)
    assert load_exported(tmp_path / "mine.pt", torch.device("cpu")) is not None
