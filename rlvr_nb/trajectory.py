"""A training trajectory: the checkpoints of one run, their steps, and lazy access to their tensors.

`load_trajectory(run_dir)` finds the complete checkpoints of a run through the one checkpoint layer,
`rlvr_nb.checkpoint_files` (our checkpoints/step_N/, TRL / HF Trainer checkpoint-N/, verl
global_step_N/actor/huggingface/; its docstring says when each counts as complete), or takes an explicit list of (step, directory) pairs of `save_pretrained` directories; a base model
directory can be added as step 0 (TRL and verl runs do not save one). Weights are read from
`model.safetensors` or the shards named by `model.safetensors.index.json`; nothing else in a checkpoint
(training_args.bin, optimizer.pt, ...) is ever opened, and nothing is unpickled.

Everything that can be checked without reading the weights is checked up front, with one clear error
each: missing directory, no checkpoints, fewer than three, duplicate steps, keys or shapes that differ
between checkpoints, corrupt or truncated safetensors files, differing tokenizers. Non-finite weights
are found while the weights are read (`Trajectory.check_finite`, or the R^2 engine itself).

A chunk of a tensor across all checkpoints is read as a copy (`Trajectory.read`) or, as the R^2 engine
does, as views of read-only memory maps of the files whose pages are released after use (`MappedReader`).
"""

from __future__ import annotations

import math
import mmap
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np
from tqdm.auto import tqdm

if TYPE_CHECKING:
    import torch

from rlvr_nb.checkpoint_files import (CheckpointError, TensorHeader, check_same_tokenizer, read_exactly, read_tensors,
                                      read_weight_index, scan_checkpoints)

MIN_CHECKPOINTS = 3
"""A line through fewer than three points always fits perfectly: R^2 means nothing below this."""

SAFETENSORS_DTYPES = {"BF16": np.uint16, "F16": np.float16, "F32": np.float32, "F64": np.float64}
"""Floating dtypes whose values we read (bf16 as raw uint16 bit patterns: numpy has no bfloat16)."""


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives in every checkpoint of a trajectory."""

    name: str
    shape: tuple[int, ...]
    dtypes: tuple[str, ...]
    """safetensors dtype per checkpoint ("BF16", "F32", ...)."""
    locations: tuple[tuple[Path, int], ...]
    """(file, absolute byte offset of the tensor's data) per checkpoint."""

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def is_float(self) -> bool:
        return all(d in SAFETENSORS_DTYPES for d in self.dtypes)


@dataclass
class Trajectory:
    """The checkpoints of one run in step order, with lazy tensor access (nothing is loaded up front)."""

    steps: list[int]
    """Training step of each checkpoint, strictly increasing."""
    dirs: list[Path]
    """The HuggingFace directory of each checkpoint (config.json, weights, usually tokenizer files)."""
    tensors: dict[str, TensorInfo] = field(repr=False)
    """Every tensor, by name, in the order of the first checkpoint's files."""

    def __len__(self) -> int:
        return len(self.steps)

    @property
    def n_params(self) -> int:
        """Number of floating-point scalars per checkpoint."""
        return sum(t.numel for t in self.tensors.values() if t.is_float)

    def tensor(self, name: str, index: int) -> torch.Tensor:
        """One whole tensor of checkpoint `index`, read lazily (`checkpoint_files.read_tensors`)."""
        self._info(name)
        return read_tensors(self.dirs[index], [name], floating_only=False)[name]

    def read(self, name: str, start: int = 0, stop: int | None = None, out: np.ndarray | None = None) -> np.ndarray:
        """Elements [start, stop) of the flattened tensor across all checkpoints: [T, stop - start].

        Raw storage values: bf16 as uint16 bit patterns when every checkpoint stores bf16, otherwise
        float32 (or float64 when any checkpoint stores float64). Plain positioned reads of the safetensors
        data into the array, so that memory stays bounded by the chunk (a memory map, as `safe_open` uses,
        would keep every page it touched resident; `MappedReader` maps without a copy and releases them).
        """
        info = self._info(name)
        if not info.is_float:
            raise ValueError(f"tensor {name} has dtypes {set(info.dtypes)}, not a floating type")
        stop = info.numel if stop is None else stop
        if not 0 <= start <= stop <= info.numel:
            raise ValueError(f"range [{start}, {stop}) outside tensor {name} of {info.numel} elements")
        dtype = storage_dtype(info.dtypes)
        n = stop - start
        if out is None:
            out = np.empty((len(self), n), dtype)
        elif out.shape != (len(self), n) or out.dtype != dtype or not out.flags.c_contiguous:
            raise ValueError(f"out must be a C-contiguous {dtype} array of shape {(len(self), n)}")
        for i, ((path, offset), d) in enumerate(zip(info.locations, info.dtypes)):
            src = SAFETENSORS_DTYPES[d]
            row = out[i] if src == dtype else np.empty(n, src)
            read_exactly(path, offset + start * np.dtype(src).itemsize, memoryview(row).cast("B"), name)
            if src != dtype:
                out[i] = bf16_to_float32(row) if d == "BF16" else row
        return out

    def check_finite(self, progress: bool = True, chunk_elems: int = 1 << 22) -> None:
        """Read every floating tensor once; ValueError naming the first tensor and checkpoint holding a NaN or Inf."""
        for name, info in tqdm(self.tensors.items(), desc="checking weights", unit="tensor", disable=not progress):
            if not info.is_float:
                continue
            for start in range(0, info.numel, chunk_elems):
                chunk = self.read(name, start, min(start + chunk_elems, info.numel))  # [T, n]
                bad = ~np.isfinite(bf16_to_float32(chunk) if chunk.dtype == np.uint16 else chunk)
                if bad.any():
                    raise_nonfinite(self, name, bad)

    def without_first(self, k: int) -> "Trajectory":
        """The trajectory from its (k+1)-th checkpoint on (skip an initial transient)."""
        if k < 0 or len(self) - k < MIN_CHECKPOINTS:
            raise ValueError(f"skip_first={k} leaves {len(self) - k} checkpoints; need at least {MIN_CHECKPOINTS}")
        tensors = {n: TensorInfo(t.name, t.shape, t.dtypes[k:], t.locations[k:]) for n, t in self.tensors.items()}
        return Trajectory(self.steps[k:], self.dirs[k:], tensors)

    def _info(self, name: str) -> TensorInfo:
        if name not in self.tensors:
            raise KeyError(f"no tensor {name!r} in this trajectory")
        return self.tensors[name]


class Rows(tuple):
    """The T rows [n] of one chunk as separate arrays (views of memory-mapped files, see `MappedReader`).

    A tuple of arrays, plus the indexing of a [T, n] array that the R^2 engine needs: rows[:, cols]
    gathers columns into a new [T, k] array."""

    def __getitem__(self, key):
        if isinstance(key, tuple):
            which, cols = key
            return np.stack([row[cols] for row in super().__getitem__(which)])
        return super().__getitem__(key)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self), len(super().__getitem__(0))

    @property
    def dtype(self) -> np.dtype:
        return super().__getitem__(0).dtype


class MappedReader:
    """Chunks of a trajectory's tensors without copying: read-only memory maps of the safetensors files.

    `rows(name, start, stop)` gives elements [start, stop) of every checkpoint as views of the page cache
    (`Rows`), without the copy `Trajectory.read` makes, when `serves(name)`: every checkpoint stores the
    tensor as bf16, or every one as float32, at an aligned offset (otherwise use `Trajectory.read`).
    `release(name, start, stop)` drops those pages from this process's resident set once the chunk is
    used (MADV_DONTNEED; the files are read-only, so a later access reads them again), so that memory stays
    bounded by the chunks in flight, as with plain reads. Use as a context manager: the files are unmapped
    on exit. A file truncated after `load_trajectory` checked it is an error when it is mapped.
    """

    RAW = {"BF16": np.uint16, "F32": np.float32}
    """Storage dtypes served as views: bf16 as uint16 bit patterns, float32 as is."""
    AROUND = max(mmap.PAGESIZE, 1 << 21)
    """Granularity of `release`: a page fault may map the cached pages around it too (Linux maps 64 KiB
    around a fault, or a whole page-cache folio, up to 2 MiB)."""

    def __init__(self, traj: Trajectory):
        self.traj = traj
        self.maps: dict[Path, mmap.mmap] = {}
        self.lock = threading.Lock()

    def __enter__(self) -> "MappedReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Unmap the files (a map still viewed by a live array is left to the garbage collector)."""
        for m in self.maps.values():
            try:
                m.close()
            except BufferError:
                pass
        self.maps.clear()

    def serves(self, name: str) -> bool:
        """Whether `rows` can give this tensor's raw values as views (one dtype, bf16 or float32, aligned)."""
        info = self.traj._info(name)
        if len(set(info.dtypes)) != 1 or info.dtypes[0] not in self.RAW:
            return False
        size = np.dtype(self.RAW[info.dtypes[0]]).itemsize
        return all(offset % size == 0 for _, offset in info.locations)

    def rows(self, name: str, start: int, stop: int) -> Rows:
        """Elements [start, stop) of the flattened tensor in every checkpoint, as T read-only row views."""
        info = self.traj._info(name)
        if not self.serves(name):
            raise ValueError(f"tensor {name} ({set(info.dtypes)}) cannot be mapped as stored; use Trajectory.read")
        dtype = np.dtype(self.RAW[info.dtypes[0]])
        if not 0 <= start <= stop <= info.numel:
            raise ValueError(f"range [{start}, {stop}) outside tensor {name} of {info.numel} elements")
        views = []
        for path, offset in info.locations:
            m = self._map(path)
            end = offset + stop * dtype.itemsize
            if end > len(m):
                raise ValueError(f"truncated safetensors file {path}: tensor {name} ends past the end of the file")
            views.append(np.frombuffer(m, dtype, stop - start, offset + start * dtype.itemsize))
        return Rows(views)

    def release(self, name: str, start: int, stop: int) -> None:
        """Drop the pages of elements [start, stop) of every checkpoint from this process's resident set."""
        if not hasattr(mmap.mmap, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
            return  # the pages stay resident until the files are unmapped
        info = self.traj._info(name)
        size = np.dtype(self.RAW[info.dtypes[0]]).itemsize
        for path, offset in info.locations:
            m = self.maps.get(path)
            if m is not None and stop > start:
                # a page fault also maps cached pages around it (fault-around, large folios): drop those too
                first = (offset + start * size) // self.AROUND * self.AROUND
                end = min(len(m), -(-(offset + stop * size) // self.AROUND) * self.AROUND)
                m.madvise(mmap.MADV_DONTNEED, first, end - first)

    def _map(self, path: Path) -> mmap.mmap:
        with self.lock:
            if path not in self.maps:
                with open(path, "rb") as f:
                    self.maps[path] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            return self.maps[path]


def storage_dtype(dtypes: Iterable[str]) -> type:
    """The array dtype `Trajectory.read` returns for a tensor stored with these per-checkpoint dtypes."""
    dtypes = set(dtypes)
    if dtypes == {"BF16"}:
        return np.uint16
    return np.float64 if "F64" in dtypes else np.float32


def bf16_to_float32(bits: np.ndarray) -> np.ndarray:
    """bf16 bit patterns (uint16) to float32 values, exactly (bf16 is the top half of a float32)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def raise_nonfinite(traj: Trajectory, name: str, bad: np.ndarray) -> None:
    """ValueError naming the tensor, checkpoint and count of a NaN/Inf found in chunk mask bad [T, n]."""
    i = int(np.argmax(bad.any(axis=1)))
    raise ValueError(f"non-finite weights (NaN or Inf) in tensor {name} of the checkpoint at step "
                     f"{traj.steps[i]} ({traj.dirs[i]}): {int(bad[i].sum())} values in the chunk read")


# ---------------------------------------------------------------------------------------------
# Finding checkpoints
# ---------------------------------------------------------------------------------------------

def load_trajectory(
    run: str | Path | Sequence[tuple[int, str | Path]],
    base: str | Path | None = None,
    *,
    layout: str | None = None,
    check_finite: bool = False,
    progress: bool = True,
) -> Trajectory:
    """Find, validate and index the checkpoints of a run (a run directory, or a list of (step, dir)).

    Checkpoints are found by `checkpoint_files.scan_checkpoints` (layout: 'rlvr-nb', 'hf' or 'verl' when
    the directory holds more than one); those their writer has not marked complete are left out, with a
    warning naming them. `base` is a `save_pretrained` directory counted as step 0. With `check_finite`
    every weight is read once up front to rule out NaN/Inf (the R^2 engine checks them anyway as it reads).
    """
    if isinstance(run, (str, Path)):
        found = scan_checkpoints(run, layout)
        pending = [c for c in found if c.marked is False]
        if pending:
            warnings.warn(f"{len(pending)} checkpoint(s) of {run} are not marked complete by their writer and are "
                          f"left out: {', '.join(str(c.path) for c in pending[:3])}", stacklevel=2)
        pairs = [(c.step, c.path) for c in found if c.marked is not False]
        if not found:
            raise FileNotFoundError(
                f"no checkpoints found in {run} (looked for checkpoints/step_N/, step_N/, checkpoint-N/ "
                "and global_step_N/actor/huggingface/)")
    else:
        pairs = [(int(s), Path(d)) for s, d in run]
    if base is not None:
        pairs = [(0, Path(base))] + list(pairs)
    for step, d in pairs:
        if not d.is_dir():
            raise FileNotFoundError(f"checkpoint directory {d} (step {step}) does not exist")
    steps = [s for s, _ in pairs]
    dupes = sorted({s for s in steps if steps.count(s) > 1})
    if dupes:
        where = [f"{s}: " + ", ".join(str(d) for t, d in pairs if t == s) for s in dupes]
        raise CheckpointError("duplicate checkpoint steps " + "; ".join(where))
    if len(pairs) < MIN_CHECKPOINTS:
        raise CheckpointError(f"found {len(pairs)} complete checkpoint(s) ({', '.join(str(d) for _, d in pairs)}); "
                              f"a linear fit needs at least {MIN_CHECKPOINTS}")
    pairs = sorted(pairs, key=lambda sd: sd[0])
    headers = [read_weight_index(d) for _, d in tqdm(pairs, desc="reading checkpoint headers", unit="ckpt",
                                                     disable=not progress)]
    check_same_tensors(pairs, headers)
    check_same_tokenizer([d for _, d in pairs])
    tensors = {
        n: TensorInfo(n, h0.shape, tuple(h[n].dtype for h in headers), tuple((h[n].file, h[n].offset) for h in headers))
        for n, h0 in headers[0].items()
    }
    traj = Trajectory([s for s, _ in pairs], [d for _, d in pairs], tensors)
    if check_finite:
        traj.check_finite(progress=progress)
    return traj


# ---------------------------------------------------------------------------------------------
# Headers and validation
# ---------------------------------------------------------------------------------------------

def check_same_tensors(pairs: list[tuple[int, Path]], headers: list[dict[str, TensorHeader]]) -> None:
    """ValueError naming the first few keys or shapes that differ from the first checkpoint."""
    ref = headers[0]
    for (step, d), h in zip(pairs[1:], headers[1:]):
        missing = sorted(set(ref) - set(h))
        extra = sorted(set(h) - set(ref))
        if missing or extra:
            raise ValueError(f"checkpoint {d} (step {step}) has different tensors from {pairs[0][1]}: "
                             f"missing {missing[:5]}, extra {extra[:5]}")
        shapes = [f"{k} {list(ref[k].shape)} vs {list(h[k].shape)}" for k in ref if ref[k].shape != h[k].shape]
        if shapes:
            raise ValueError(f"checkpoint {d} (step {step}) has tensors of different shapes from "
                             f"{pairs[0][1]}: " + "; ".join(shapes[:5]))
