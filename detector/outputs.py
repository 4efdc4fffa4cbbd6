"""Where a one-shot command (export, benchmark, convert, init) may write the file the user names.

One rule for all of them: a target that is one of the command's inputs is refused whatever `--force` says
(the output would replace the only copy of what it was made from); an existing target is replaced only with
`--force`; a folder is never replaced by a file. A symlink is a target of its own: the atomic write
replaces the link, never the file it points to.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from .errors import DetectorError


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether two paths name one file: the same path once resolved, or a hard link of it."""
    a, b = Path(a), Path(b)
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def claim_files(targets: Iterable[str | Path], sources: Iterable[str | Path], *, force: bool,
                flag: str = "--out") -> list[Path]:
    """`targets` as paths the command may write, or a DetectorError naming the first it may not: an input
    (whatever `force`), a folder, or an existing file without `force`."""
    targets, sources = [Path(t) for t in targets], [Path(s) for s in sources]
    for target in targets:
        source = next((s for s in sources if (s.exists() or s.is_symlink()) and same_file(target, s)), None)
        if source is not None:
            raise DetectorError(f"{target}: is the input {source}; writing it would replace the only copy of what "
                                f"it is made from, with or without --force: choose another {flag}")
        if target.is_dir() and not target.is_symlink():
            raise DetectorError(f"{target}: is a folder; give {flag} a file name")
        if (target.exists() or target.is_symlink()) and not force:
            raise DetectorError(f"{target}: exists; pass --force to replace it, or choose another {flag}")
    return targets


def claim_file(target: str | Path, sources: Iterable[str | Path] = (), *, force: bool, flag: str = "--out") -> Path:
    return claim_files([target], sources, force=force, flag=flag)[0]


def claim_folder(target: str | Path, *, force: bool, what: str, flag: str = "--out") -> Path:
    """A folder the command fills with files of its own: new, empty, or (with `force`) one whose files of
    those names it replaces; never a file."""
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise DetectorError(f"{target}: is a file; {what}, give {flag} a folder")
    if target.is_dir() and any(target.iterdir()) and not force:
        raise DetectorError(f"{target} exists; pass --force to overwrite it, or choose another {flag}")
    return target
