"""Output folders that appear whole or not at all.

Everything is written into a hidden staging folder beside the target, which is renamed into place at the end;
on any error the staging folder is removed, so a failed run leaves nothing behind. A target that is a mount point
(a container's volume, say) cannot be renamed onto: the staging folder goes inside it and, at the end, its files
are moved in one by one (renames within one file system), ``report.json`` last, undone if a move fails. Ctrl-C
and SIGTERM are held back while the renames run.

Example:
    >>> check_output_dir("out", inputs=["model.th"], overwrite=False)
    >>> with staged_output_dir("out", overwrite=False) as staging:
    ...     (staging / "report.json").write_text("{}")
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from convslim.core.signals import signals_held
from convslim.errors import UsageError

API_WORDS = ("out_dir", "overwrite=True")
CLI_WORDS = ("--out", "--overwrite")


def check_output_dir(
    out_dir: str | Path,
    inputs: Sequence[str | Path] = (),
    overwrite: bool = False,
    words: tuple[str, str] = API_WORDS,
) -> list[str]:
    """Refuse, before any work, an output folder that would overwrite or contain an input, that already has
    files (unless ``overwrite``), or where nothing can be written. Returns the names ``overwrite`` will remove.

    ``words`` names the setting and the override in the caller's terms (``out_dir``/``overwrite=True`` for the
    API, ``--out``/``--overwrite`` for the CLI).
    """
    flag, override = words
    out = Path(out_dir).resolve()
    for item in inputs:
        src = Path(item).resolve()
        if src == out or out in src.parents:
            raise UsageError(f"{flag} {out_dir} would overwrite the input {item}; choose another folder")
    if out.exists() and not out.is_dir():
        raise UsageError(f"{flag} {out_dir} is a file; give a folder")
    existing = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if existing and not overwrite:
        raise UsageError(f"{flag} {out_dir} already has files; choose a new folder or pass {override}")
    _check_writable(out if _written_inside(out) else out.parent, flag, out_dir)
    return existing


def _written_inside(out: Path) -> bool:
    """Whether ``out`` is an existing folder that cannot be renamed onto (a mount point): written into instead."""
    return out.is_dir() and os.path.ismount(out)


def check_output_file(path: str | Path, overwrite: bool = False, words: tuple[str, str] = API_WORDS) -> None:
    """Refuse, before any work, an output file that exists (unless ``overwrite``), is a folder, or cannot be
    written where it goes."""
    flag, override = words
    out = Path(path).resolve()
    if out.is_dir():
        raise UsageError(f"{flag} {path} is a folder; give a file name such as plan.json")
    if out.exists() and not overwrite:
        raise UsageError(f"{flag} {path} exists; pass {override} to replace it")
    _check_writable(out.parent, flag, path)


def _check_writable(folder: Path, flag: str, out_dir) -> None:
    """Create and remove a folder where the staging folder will go (the nearest existing ancestor)."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        Path(tempfile.mkdtemp(prefix=".convslim-probe-", dir=folder)).rmdir()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UsageError(
            f"{flag} {out_dir}: cannot write in {folder} ({reason}); choose a writable folder"
        ) from None


@contextlib.contextmanager
def staged_output_dir(out_dir: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a staging folder; on success it becomes ``out_dir`` (replacing it only when ``overwrite``)."""
    out = Path(out_dir).resolve()
    inside = _written_inside(out)
    home = out if inside else out.parent
    home.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=home))
    staging.chmod(0o777 & ~_umask())  # mkdtemp makes it private; the result should look like any new folder
    try:
        yield staging
        with signals_held():  # a signal between two renames would leave half a folder
            (_move_in if inside else _promote)(staging, out, overwrite)
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
            raise UsageError(f"{out} gained files while convslim worked; nothing was written")
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        try:
            out.rename(old)
        except OSError as exc:  # a mount point ``ismount`` missed (a bind mount within one file system)
            if exc.errno != errno.EBUSY:
                raise
            inside = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out))
            for item in staging.iterdir():
                shutil.move(item, inside / item.name)
            staging.rmdir()
            _move_in(inside, out, overwrite)
            return
    staging.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _move_in(staging: Path, out: Path, overwrite: bool) -> None:
    """Move ``staging``'s entries (a folder inside ``out``) into ``out``, ``report.json`` last (a folder holding it
    is complete); what ``out`` held goes only with ``overwrite`` and only once the new entries are in. A failed
    move is undone: the new entries go back, the old ones return."""
    old_entries = [p for p in out.iterdir() if p != staging]
    if old_entries and not overwrite:
        raise UsageError(f"{out} gained files while convslim worked; nothing was written")
    trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out))
    for entry in old_entries:
        entry.rename(trash / entry.name)
    moved: list[str] = []
    try:
        for item in sorted(staging.iterdir(), key=lambda p: (p.name == "report.json", p.name)):
            item.rename(out / item.name)
            moved.append(item.name)
    except BaseException:
        for name in moved:
            (out / name).rename(staging / name)
        for entry in trash.iterdir():
            entry.rename(out / entry.name)
        trash.rmdir()
        raise
    staging.rmdir()
    shutil.rmtree(trash, ignore_errors=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and an atomic rename."""
    _atomic_write(path, text, "w")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """``atomic_write_text`` for bytes (an image, for instance)."""
    _atomic_write(path, data, "wb")


def _atomic_write(path: str | Path, data: str | bytes, mode: str) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            fh.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; the result should look like any new file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
