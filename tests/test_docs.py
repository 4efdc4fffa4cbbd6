"""The documentation cannot go stale silently: the site builds strictly (broken links and references fail),
every `detector ...` command shown in it and in the README parses with the real argument parser, every
`section.key` it names exists in the config schema, and its Python snippets run where they can."""
import dataclasses
import os
import re
import shlex
import subprocess
import sys
import typing

import pytest

from detector import config
from detector.cli import _parser
from tests.conftest import ROOT

PAGES = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md", ROOT / "ARCHITECTURE.md"]
SHELL = re.compile(r"```(?:bash|sh|shell|console)?\n(.*?)```", re.S)
INLINE = re.compile(r"`(detector [^`]+)`")
KEY = re.compile(r"`((?:%s)\.[a-z0-9_.]+)" % "|".join(f.name for f in dataclasses.fields(config.Config)))
FILES = (".json", ".yaml", ".yml", ".pt", ".csv", ".onnx", ".md", ".py", ".txt", ".db")  # `train.json` is a file


def _text(page) -> str:
    return page.read_text(encoding="utf-8")


def shown_commands() -> list[tuple[str, str, bool]]:
    """(page, command line, whole) for each `detector ...` in a shell block (whole: continuations joined,
    comments dropped, each command of a `&&` or `|` chain on its own) or in an inline code span (not whole: a
    command named in prose with the options it is about, e.g. `detector benchmark --device cuda`)."""
    found = []
    for page in PAGES:
        text = _text(page)
        for block in SHELL.findall(text):
            for line in block.replace("\\\n", " ").splitlines():
                if not re.search(r"(^|&&|\||;)\s*([A-Z_]+=\S+\s+)*detector\s", line):
                    continue  # another program, or a block of output
                words = shlex.split(line, comments=True)
                command: list[str] = []
                for word in [*words, "&&"]:
                    if not command and re.fullmatch(r"[A-Z_]+=\S*", word):
                        continue  # CUDA_VISIBLE_DEVICES=0 detector ...
                    if word in ("&&", "||", "|", ";", "&"):
                        if command[:1] == ["detector"]:
                            found.append((page.name, shlex.join(command), True))
                        command = []
                    else:
                        command.append(word)
        found += [(page.name, span, False) for span in INLINE.findall(text) if "..." not in span and "[" not in span]
    return found


def test_the_docs_show_commands_at_all():
    pages = {page for page, _, _ in shown_commands()}
    assert sum(whole for _, _, whole in shown_commands()) > 40 and {"README.md", "inference.md", "studies.md", "data.md"} <= pages


@pytest.mark.parametrize("page,line,whole", shown_commands())
def test_every_command_the_docs_show_parses(page, line, whole):
    argv = shlex.split(line)[1:]
    if not whole:  # the command exists, and so does each option it names
        verbs = _parser()._subparsers._group_actions[0].choices
        assert argv[0] in verbs, f"{page}: `{line}`: no command {argv[0]}"
        unknown = [w.split("=")[0] for w in argv[1:]
                   if w.startswith("--") and w.split("=")[0] not in verbs[argv[0]]._option_string_actions]
        assert not unknown, f"{page}: `{line}`: {argv[0]} has no option {unknown}"
        return
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:
        pytest.fail(f"{page}: `{line}` does not parse (exit {e.code})")
    for assignment in getattr(args, "overrides", None) or []:
        key = assignment.split("=", 1)[0]
        assert schema_has(key), f"{page}: `{line}` sets {key}, which the config schema does not have"


def schema_has(key: str) -> bool:
    """Whether `a.b.c` names a field of the config (a nested dataclass at each dot but the last)."""
    node: typing.Any = config.Config
    for part in key.split("."):
        if not (dataclasses.is_dataclass(node) and part in {f.name for f in dataclasses.fields(node)}):
            return False
        node = typing.get_type_hints(node)[part]
    return True


def named_keys() -> list[tuple[str, str]]:
    """(page, key) for each `section.key` in a code span: `train.progressive.start_size`/`epochs` names two."""
    out = []
    for page in PAGES[:-1]:  # ARCHITECTURE.md names modules (`train.py`), not keys
        for span in KEY.findall(_text(page)):
            key = span.rstrip(".")
            if key.endswith(FILES):
                continue
            out.append((page.name, key))
    return sorted(set(out))


def test_every_config_key_the_docs_name_exists():
    keys = named_keys()
    assert len(keys) > 60
    missing = [f"{page}: {key}" for page, key in keys if not schema_has(key)]
    assert not missing, missing


@pytest.mark.slow
def test_the_site_builds_strictly(tmp_path):
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, env={"NO_MKDOCS_2_WARNING": "1", **os.environ})
    assert done.returncode == 0, done.stderr[-3000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    assert "detector.api.train" in api and "detector.api.evaluate" in api  # the reference, from the docstrings


@pytest.mark.slow
def test_the_python_snippet_of_the_readme_and_getting_started_runs(rbc, tmp_path, monkeypatch):
    """The README's Python example, trained on RBC's 20 validation images (validated on test/) at 128 px for one
    epoch (its own call trains the quickstart for 2 epochs), with that run's model in place of a study's best/."""
    snippets = [re.search(r"## From Python.*?```python\n(.*?)```", _text(page), re.S)[1]
                for page in (ROOT / "README.md", ROOT / "docs" / "getting-started.md")]
    assert snippets[0] == snippets[1]
    code = snippets[0].replace('{"train.epochs": 2}', '{"train.epochs": 1, "data.image_size": 128, '
                               f'"data.train.annotations": "{rbc}/valid/_annotations.coco.json", '
                               f'"data.val.annotations": "{rbc}/test/_annotations.coco.json", '
                               '"data.test.annotations": ""}')
    code = code.replace('"studies/quickstart/best"', "run.best_path")
    assert code != snippets[0]
    monkeypatch.chdir(ROOT)  # the snippet's paths are the repository's
    seen: dict = {}
    exec(compile(code.replace('"runs/q"', f'"{tmp_path}/q"').replace('"preds/q"', f'"{tmp_path}/p"'), "README.md",
                 "exec"), seen)
    assert seen["scored"].metrics.map_50 >= 0 and seen["found"].run.predictions and seen["ensemble"] is not None


def test_the_predict_snippet_of_the_inference_page_runs(untrained_checkpoint, tmp_path, capsys):
    from PIL import Image

    snippet = re.search(r"From Python:\n\n```python\n(.*?)```", _text(ROOT / "docs" / "inference.md"), re.S)[1]
    Image.new("RGB", (90, 60), (120, 80, 40)).save(tmp_path / "a.jpg")
    Image.new("L", (50, 70), 200).save(tmp_path / "b.png")
    code = (snippet.replace('"studies/rbc/best"', f'"{untrained_checkpoint}"')
            .replace('"a.jpg"', f'"{tmp_path}/a.jpg"').replace('"b.png"', f'"{tmp_path}/b.png"'))
    exec(compile(code, "docs/inference.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 2 and printed[0].startswith(str(tmp_path / "a.jpg"))
