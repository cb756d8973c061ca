"""The one checkpoint layer (writing): every file or model directory the package writes goes through here.

- A write goes to a temporary sibling of its target (`.<name>.rlvr-nb-tmp-<pid>-<hex>`), is flushed to
  disk (fsync) and renamed into place only when complete: a reader never sees half a model.
- A write refuses a target that is, contains or lies inside one of its inputs (`refuse_overlap`).
- Replacing a directory is allowed only when everything in it was written by this package (the list of
  files it wrote is kept in `WRITTEN`); nothing deletes a file it did not write.
- Temporary directories of our own naming left by a killed process (its pid is gone) are removed on the
  next write beside them, including the older `.tmp_step_<N>_<pid>` of checkpoints and
  `.<name>.tmp-<hex>` / `.<name>.old-<hex>` of extrapolation.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import sys
import uuid
from pathlib import Path
from typing import Iterable, Iterator


from rlvr_nb.checkpoint_files import DTYPE_BYTES

WRITTEN = ".rlvr-nb-written.json"
"""In every directory `atomic_dir` writes: the files it wrote (relative paths), so a later replace knows
that it deletes only its own files."""
OUR_TEMP = re.compile(r"^\..+\.rlvr-nb-(?:tmp|old)-([0-9]+)-[0-9a-f]{8}$")
LEGACY_TEMP = [re.compile(r"^\.tmp_step_[0-9]+_([0-9]+)$"), re.compile(r"^\..+\.(?:tmp|old)-[0-9a-f]{8}$")]


def _temp_name(target: Path, kind: str = "tmp") -> Path:
    return target.parent / f".{target.name}.rlvr-nb-{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(parent: str | Path) -> list[Path]:
    """Remove temporary files and directories of our own naming in `parent` whose writer is gone."""
    parent, removed = Path(parent), []
    if not parent.is_dir():
        return removed
    for p in parent.iterdir():
        m = OUR_TEMP.match(p.name)
        legacy = None if m else next((r.match(p.name) for r in LEGACY_TEMP if r.match(p.name)), None)
        if m is None and legacy is None:
            continue
        pid = m.group(1) if m else (legacy.group(1) if legacy.groups() else None)
        if pid is not None and _pid_alive(int(pid)):
            continue
        if ".rlvr-nb-old-" in p.name and p.is_dir() and foreign_files(p):
            continue  # a replaced copy that gained files we did not write: never delete those
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def refuse_overlap(target: str | Path, inputs: Iterable[str | Path], what: str = "output") -> None:
    """ValueError when target is one of the inputs, contains one, or lies inside one (symlinks resolved)."""
    t = Path(target).resolve()
    for i in inputs:
        src = Path(i).resolve()
        if t == src:
            raise ValueError(f"{what} {target} is one of the inputs ({i}); refusing to write over it")
        if src.is_relative_to(t):
            raise ValueError(f"{what} {target} contains the input {i}; refusing to write over it "
                             "(choose a new directory)")
        if t.is_relative_to(src):
            raise ValueError(f"{what} {target} lies inside the input {i}; refusing to write into it")


def _fsync_tree(d: Path) -> None:
    for p in sorted(d.rglob("*")):
        if p.is_file() and not p.is_symlink():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(d)


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def foreign_files(d: Path) -> list[str]:
    """Files under d that were not written by `atomic_dir` (all of them when d holds no WRITTEN list)."""
    listed: set[str] = set()
    if (d / WRITTEN).is_file():
        try:
            listed = set(json.loads((d / WRITTEN).read_text())["files"])
        except (OSError, ValueError, KeyError, TypeError):
            listed = set()
    return sorted(str(p.relative_to(d)) for p in d.rglob("*")
                  if (p.is_file() or p.is_symlink()) and p.name != WRITTEN and str(p.relative_to(d)) not in listed)


@contextlib.contextmanager
def atomic_dir(target: str | Path, inputs: Iterable[str | Path] = (), *, replace: bool = False) -> Iterator[Path]:
    """Write a directory atomically: yields an empty temporary sibling; when the block completes, the list of
    files is recorded, everything is fsynced and the directory is renamed to `target`.

    An existing target is an error unless replace=True and every file in it was written by us, in which case
    it is swapped out and only our files are deleted. An exception inside the block removes the temporary
    directory (we wrote all of it) and leaves the target as it was."""
    target = Path(target)
    inputs = list(inputs)
    refuse_overlap(target, inputs)
    if target.exists() or target.is_symlink():
        if not target.is_dir() or target.is_symlink():
            raise FileExistsError(f"{target} exists and is not a directory; refusing to replace it")
        if not replace:
            raise FileExistsError(f"{target} already exists; refusing to overwrite it")
        foreign = foreign_files(target)
        if foreign:
            raise FileExistsError(f"{target} holds files this package did not write ({', '.join(foreign[:3])}"
                                  f"{', ...' if len(foreign) > 3 else ''}); refusing to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target.parent)
    tmp = _temp_name(target)
    tmp.mkdir()
    try:
        yield tmp
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file() or p.is_symlink())
        (tmp / WRITTEN).write_text(json.dumps({"files": files}, indent=1))
        _fsync_tree(tmp)
        if target.exists():
            old = _temp_name(target, "old")
            os.rename(target, old)
            os.rename(tmp, target)
            _remove_own(old)
        else:
            os.rename(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _remove_own(d: Path) -> None:
    """Delete the files of a directory we wrote (its WRITTEN list), then the directory if that empties it."""
    if foreign_files(d):  # something appeared since the check: keep the whole old copy
        return
    shutil.rmtree(d, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(target: str | Path, inputs: Iterable[str | Path] = (), mode: str = "w") -> Iterator:
    """Write one file atomically: yields an open temporary sibling; on success it is fsynced and renamed
    over `target`; on an exception it is removed and the target is left as it was."""
    target = Path(target)
    refuse_overlap(target, inputs)
    if target.is_dir():
        raise IsADirectoryError(f"{target} is a directory; refusing to replace it with a file")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(target)
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(target: str | Path, text: str, inputs: Iterable[str | Path] = ()) -> Path:
    """`atomic_file` for a whole text file."""
    with atomic_file(target, inputs) as f:
        f.write(text)
    return Path(target)


def write_json(target: str | Path, obj, inputs: Iterable[str | Path] = (), **dumps) -> Path:
    """`atomic_file` for a JSON file."""
    return write_text(target, json.dumps(obj, **({"indent": 2} | dumps)), inputs)


class SafetensorsWriter:
    """Writes one .safetensors file atomically (`atomic_file`) as its tensors' bytes arrive, in the order of
    `specs` (name, dtype, shape): the header first, then `write` calls with raw data (torch tensors in their
    dtype, numpy arrays, bytes), so a file of any size never has to be held in memory. A target that is or
    lies inside one of `inputs` is refused before anything is written; `close(False)` (or an exception in a
    `with` block) removes the partial file, and `close()` checks that every promised byte was written."""

    def __init__(self, path: str | Path, specs: Iterable[tuple[str, str, tuple[int, ...]]], metadata: dict,
                 inputs: Iterable[str | Path] = ()) -> None:
        header, offset = {}, 0
        for name, dtype, shape in specs:
            n = math.prod(shape) * DTYPE_BYTES[dtype]
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
            offset += n
        header["__metadata__"] = {str(k): str(v) for k, v in {"format": "pt", **metadata}.items()}
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)
        self.path, self.expected, self.written = Path(path), offset, 0
        self._context = atomic_file(self.path, inputs, mode="wb")
        self.file = self._context.__enter__()
        self.file.write(len(blob).to_bytes(8, "little") + blob)

    def write(self, data) -> None:
        torch = sys.modules.get("torch")  # a torch tensor exists only once torch is imported: no import here
        if torch is not None and isinstance(data, torch.Tensor):
            data = data.contiguous().reshape(-1).view(torch.uint8).numpy()
        view = memoryview(data).cast("B") if not isinstance(data, (bytes, bytearray)) else memoryview(data)
        self.file.write(view)
        self.written += view.nbytes

    def close(self, complete: bool = True) -> None:
        """Rename the file into place (complete) or remove it."""
        if complete and self.written != self.expected:
            complete, why = False, f"{self.path}: wrote {self.written} data bytes, header promised {self.expected}"
        else:
            why = None
        if complete:
            self._context.__exit__(None, None, None)
            return
        error = RuntimeError(why or f"{self.path} not completed")
        try:
            self._context.__exit__(RuntimeError, error, None)
        except RuntimeError:
            pass
        if why:
            raise error

    def __enter__(self) -> "SafetensorsWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(exc_type is None)


def write_safetensors(path: str | Path, specs: list[tuple[str, str, tuple[int, ...]]], metadata: dict,
                      chunks: Iterator, inputs: Iterable[str | Path] = ()) -> Path:
    """Stream a .safetensors file (`SafetensorsWriter`): the header from specs (name, dtype, shape), then
    the tensors' bytes in that order, taken from `chunks` (row blocks, each already in its tensor's dtype)."""
    with SafetensorsWriter(path, specs, metadata, inputs) as writer:
        for chunk in chunks:
            writer.write(chunk)
    return Path(path)
