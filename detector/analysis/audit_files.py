"""Where `detector audit-labels` writes, and what a second audit (or `cv --force`) keeps.

The audit writes label_issues.json, label_fixes.coco.json (the training file with every fix applied, which
the user is invited to review and edit) and drawings in label_issues/, into the run folder or `--out`, and
records in label_audit.json the sha256 of the fixes file and the names of the drawings as written. A later
audit replaces only what that record says is still as written: an edited fixes file is kept (and the audit
refused until the user moves it or passes --force), and only the drawings it lists are removed.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import DetectorError
from ..files import read_json, write_json, write_text
from ..layout import RunPaths


@dataclass(frozen=True)
class AuditFiles:
    """What one audit wrote."""

    issues: Path
    fixes: Path
    drawings: list[Path]


def edited(folder: Path) -> bool:
    """Whether `folder`'s label_fixes.coco.json differs from what the last audit wrote there (a fixes file
    with no record of its writing counts as the user's)."""
    paths = RunPaths(folder)
    if not paths.label_fixes.exists():
        return False
    return _sha256(paths.label_fixes.read_bytes()) not in _record(folder).get("fixes_sha256", [])


def write_audit(folder: Path, issues: list[dict[str, Any]], fixes: dict[str, Any],
                draw: Callable[[Path], list[Path]], *, force: bool = False) -> AuditFiles:
    """Write one audit into `folder`; `draw(drawings_folder)` makes the drawings and returns their paths."""
    paths = RunPaths(folder)
    if edited(folder) and not force:
        raise DetectorError(f"{paths.label_fixes}: edited since audit-labels wrote it (or not written by it); it is "
                            "kept: move it away, audit into another folder with --out, or pass --force to replace it")
    record = _record(folder)
    text = json.dumps(fixes, indent=2)
    new = _sha256(text.encode())
    old = [] if not paths.label_fixes.exists() else [_sha256(paths.label_fixes.read_bytes())]
    # a kill between these writes leaves a record that accepts the old fixes file and the new one
    write_json(paths.label_audit, {"fixes_sha256": [*old, new], "drawings": record.get("drawings", [])})
    write_json(paths.label_issues, issues)
    write_text(paths.label_fixes, text)
    for name in record.get("drawings", []):
        (paths.label_drawings / Path(name).name).unlink(missing_ok=True)
    write_json(paths.label_audit, {"fixes_sha256": [new], "drawings": []})
    drawn = draw(paths.label_drawings)
    write_json(paths.label_audit, {"fixes_sha256": [new], "drawings": [p.name for p in drawn]})
    return AuditFiles(paths.label_issues, paths.label_fixes, drawn)


def _record(folder: Path) -> dict[str, Any]:
    path = RunPaths(folder).label_audit
    record = read_json(path) if path.exists() else {}
    return record if isinstance(record, dict) else {}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
