"""Reference computations shared by tests."""
import contextlib
import copy
import io
import subprocess
import sys
import time


def pycocotools_stats(gt, results):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        ev = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(results)), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def wait_until(ready, process, timeout: float = 300) -> None:
    """Poll `ready()` every 50 ms until it holds, `process` (a Popen) ends, or `timeout` seconds pass."""
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None and not ready():
        time.sleep(0.05)


CLI = [sys.executable, "-m", "detector.cli"]  # the command a user types, as a fresh process


def run_cli(*args: str, cwd=None, timeout: float | None = None) -> subprocess.CompletedProcess:
    """`detector ARGS...` in a fresh process: its exit code, stdout and stderr as text."""
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=cwd, timeout=timeout)
