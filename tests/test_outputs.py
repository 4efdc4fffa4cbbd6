"""The files a one-shot command writes: never one of its inputs, whatever --force says; an existing file only
with --force; an export folder replaced only when it holds nothing but a previous export (issue 36, D1-D4).
Each case compares the user's bytes before and after."""
import json
import os
import re
import shutil
import warnings

import numpy as np
import pytest
from PIL import Image

from detector.cli import main
from detector.errors import DetectorError
from detector.outputs import claim_file


def _fails(args, capsys, pattern, code=2):
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            got = main(args)
        except SystemExit as e:  # argparse's own refusal of a flag's value
            got = e.code
    assert got == code
    err = capsys.readouterr().err
    assert re.search(pattern, err) and "Traceback" not in err, err


def _bytes(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_an_input_is_never_a_target_even_through_a_link_and_an_existing_file_needs_force(tmp_path):
    source = tmp_path / "in.json"
    source.write_text("{}")
    (tmp_path / "link.json").symlink_to(source)
    os.link(source, tmp_path / "hard.json")
    for target in (source, tmp_path / "link.json", tmp_path / "hard.json", tmp_path / "sub" / ".." / "in.json"):
        with pytest.raises(DetectorError, match="is the input .*with or without --force"):
            claim_file(target, [source], force=True)
    other = tmp_path / "other.json"
    other.write_text("mine")
    with pytest.raises(DetectorError, match="exists; pass --force"):
        claim_file(other, [source], force=False)
    assert claim_file(other, [source], force=True) == other
    with pytest.raises(DetectorError, match="is a folder"):
        claim_file(tmp_path, [source], force=True)
    assert source.read_text() == "{}" and other.read_text() == "mine"


def test_export_never_replaces_its_model_and_replaces_an_export_only_with_force(untrained_checkpoint, tmp_path, capsys):
    model = tmp_path / "ex_model.pt"
    shutil.copy(untrained_checkpoint, model)
    before = model.read_bytes()
    for force in ([], ["--force"]):  # D1: the trained checkpoint replaced by its export, rc 0
        _fails(["export", str(model), "--format", "torchscript", "--out", str(model), *force], capsys, "is the input")
    assert model.read_bytes() == before
    existing = tmp_path / "deploy.pt"
    existing.write_bytes(b"an earlier file")
    _fails(["export", str(model), "--format", "torchscript", "--out", str(existing)], capsys, "exists; pass --force")
    assert existing.read_bytes() == b"an earlier file"
    bench_json = tmp_path / "timings.json"
    bench_json.write_text("my numbers")
    _fails(["benchmark", str(model), "--json", str(bench_json), "--runtimes", "eager"], capsys, "exists; pass --force")
    _fails(["benchmark", str(model), "--json", str(model), "--force"], capsys, "is the input")
    assert bench_json.read_text() == "my numbers" and model.read_bytes() == before


def test_a_deploy_folder_keeps_what_the_export_did_not_write(untrained_checkpoint, tmp_path, capsys):
    best = tmp_path / "best"
    best.mkdir()
    shutil.copy(untrained_checkpoint, best / "model_0.pt")
    (best / "ensemble.json").write_text(json.dumps({"members": [{"file": "model_0.pt"}], "score_threshold": 0.4}))
    deploy = tmp_path / "deploy"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["export", str(best), "--format", "torchscript", "--out", str(deploy)]) == 0
        assert main(["export", str(best), "--format", "torchscript", "--out", str(deploy), "--force"]) == 0
    assert sorted(p.name for p in deploy.iterdir()) == ["ensemble.json", "model_0.labels.json", "model_0.pt"]
    (deploy / "model_card.md").write_text("my notes")  # D2: any model_* entry was taken for the export's
    (deploy / "model_docs").mkdir()
    mine = _bytes(deploy)
    _fails(["export", str(best), "--format", "torchscript", "--out", str(deploy), "--force"], capsys,
           r"did not write \(model_card.md, model_docs\)")
    assert _bytes(deploy) == mine and (deploy / "model_docs").is_dir()
    _fails(["export", str(best), "--format", "torchscript", "--out", str(best), "--force"], capsys, "the input")
    _fails(["benchmark", str(best / "model_0.pt"), "--sizes", "100000"], capsys, r"--sizes .*\[32, 4096\]")
    for flag in ("--limit", "--repeats"):
        _fails(["benchmark", str(best / "model_0.pt"), flag, "0"], capsys, "not a positive integer")


def _coco(path, n, extra=None):
    images = [{"id": i, "file_name": f"{i}.png", "width": 64, "height": 48} for i in range(1, n + 1)]
    for image in images:
        Image.fromarray(np.full((48, 64, 3), 40 * image["id"] % 255, np.uint8)).save(path.parent / image["file_name"])
    annotations = [{"id": i, "image_id": i, "category_id": 1, "bbox": [4, 4, 20, 16], "area": 320, "iscrowd": 0}
                   for i in range(1, n + 1)]
    doc = {"info": {"by": "me"}, "licenses": [{"id": 1}], "images": images, "annotations": annotations,
           "categories": [{"id": 1, "name": "thing"}], **(extra or {})}
    path.write_text(json.dumps(doc))
    return path


def test_init_and_convert_never_replace_the_annotations_they_read(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    source = _coco(data / "my.json", 6, {"mine": True})
    train = data / "my.train.json"  # D3: a carve target that is the user's own file
    shutil.copy(source, train)
    before = _bytes(data)
    _fails(["init", str(train), "--out", str(data / "my.yaml"), "--force"], capsys, "my.train.json: is the input")
    _fails(["init", str(source), "--out", str(source), "--force"], capsys, "my.json: is the input")
    assert _bytes(data) == before
    _fails(["convert", str(source), "--from", "coco", "--to", "yolo", "--out", str(source), "--force"], capsys,
           "is a file")
    voc = tmp_path / "voc"
    voc.mkdir()
    (voc / "a.xml").write_text("<annotation/>")
    _fails(["convert", str(voc / "a.xml"), "--from", "voc", "--out", str(voc / "a.xml"), "--force"], capsys,
           "a.xml: is the input")  # D4
    assert (voc / "a.xml").read_text() == "<annotation/>" and _bytes(data) == before


_FILE_SIZE_LIMIT = """
import resource, runpy, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (3000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
sys.argv = ["detector"] + sys.argv[1:]
runpy.run_module("detector.cli", run_name="__main__")
"""


def test_predict_on_a_full_disk_is_one_error_and_force_unlinks_a_link_without_following_it(untrained_checkpoint,
                                                                                           tmp_path):
    import subprocess
    import sys

    from tests.helpers import run_cli

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    out = tmp_path / "preds"
    args = ["predict", str(untrained_checkpoint), str(tmp_path / "a.png"), "--out", str(out), "--draw"]
    full = subprocess.run([sys.executable, "-c", _FILE_SIZE_LIMIT, *args], capture_output=True, text=True)
    assert full.returncode == 2 and "Traceback" not in full.stderr, full.stderr  # C12: a raw OSError from PIL
    assert "cannot write it (File too large)" in full.stderr and "resumes from the last" not in full.stderr
    assert run_cli(*args).returncode == 0
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.png").write_bytes(b"the user's")
    shutil.rmtree(out / "drawn")
    (out / "drawn").symlink_to(mine, target_is_directory=True)  # C13: --force stopped half-way in rmtree
    again = run_cli("predict", str(untrained_checkpoint), str(tmp_path / "a.png"), "--out", str(out), "--force",
                    "--score-threshold", "0.9")
    assert again.returncode == 0, again.stderr
    assert (mine / "keep.png").read_bytes() == b"the user's" and not (out / "drawn").is_symlink()


def test_sample_data_and_predict_never_write_over_a_file_or_into_a_users_dataset(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "annotations.json").write_text("my labels")
    before = _bytes(mine)
    _fails(["sample-data", str(mine), "--images", "3"], capsys, "already holds annotations.json")
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    _fails(["sample-data", str(notes), "--images", "3"], capsys, "is a file")
    _fails(["predict", str(notes), str(notes), "--out", str(notes)], capsys, "not a")
    assert _bytes(mine) == before and notes.read_text() == "mine"


def test_predict_into_a_file_is_refused(untrained_checkpoint, tmp_path, capsys):
    Image.new("RGB", (64, 48)).save(tmp_path / "a.png")
    (tmp_path / "out").write_text("mine")
    _fails(["predict", str(untrained_checkpoint), str(tmp_path / "a.png"), "--out", str(tmp_path / "out")], capsys,
           "is a file; --out is the folder")
    assert (tmp_path / "out").read_text() == "mine"


def test_an_atomic_folder_replaces_the_old_one_whole_or_leaves_it_as_it_was(tmp_path):
    from detector.files import atomic_folder

    target = tmp_path / "best"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_folder(target) as stage:
            (stage / "new.txt").write_text("half")
            raise RuntimeError("killed while writing")
    assert [p.name for p in target.iterdir()] == ["old.txt"]  # as it was
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]  # no stage left behind
    (tmp_path / ".best.stage").mkdir()  # left by a kill in an earlier run: cleared, not mixed in
    (tmp_path / ".best.stage" / "stale.txt").write_text("stale")
    with atomic_folder(target) as stage:
        (stage / "new.txt").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]
