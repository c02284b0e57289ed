"""Output folders that appear whole or not at all.

Everything is written into a hidden staging folder beside the target, which is renamed into place at the end;
on any error the staging folder is removed, so a failed run leaves nothing behind.

Example:
    >>> check_output_dir("out", inputs=["model.th"], overwrite=False)
    >>> with staged_output_dir("out", overwrite=False) as staging:
    ...     (staging / "report.json").write_text("{}")
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from convslim.errors import UsageError


def check_output_dir(out_dir: str | Path, inputs: list[str | Path] = (), overwrite: bool = False) -> Path:
    """Refuse an output folder that would overwrite or contain an input, or that already has files."""
    out = Path(out_dir).resolve()
    for item in inputs:
        src = Path(item).resolve()
        if src == out or out in src.parents:
            raise UsageError(f"--out {out_dir} would overwrite the input {item}; choose another folder")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out_dir} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UsageError(f"--out {out_dir} already has files; choose a new folder or pass --overwrite")
    return out


@contextlib.contextmanager
def staged_output_dir(out_dir: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a staging folder; on success it becomes ``out_dir`` (replacing it only when ``overwrite``)."""
    out = Path(out_dir).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    staging.chmod(0o777 & ~_umask())  # mkdtemp makes it private; the result should look like any new folder
    try:
        yield staging
        _promote(staging, out, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _promote(staging: Path, out: Path, overwrite: bool) -> None:
    old = None
    if out.exists():
        if any(out.iterdir()) and not overwrite:
            raise UsageError(f"--out {out} gained files while we worked; nothing was written")
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
    staging.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
