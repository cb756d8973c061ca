"""The one checkpoint layer (reading): where a run's checkpoints are, which are complete, what they hold.

Every reader of the package (linearity, log-probs, the monitor, the TRL callback, decomposition,
extrapolation, the verl ingestion, the vLLM writer) finds checkpoints, parses steps, lists weight files,
reads tensors and compares tokenizers through this module; `rlvr_nb.checkpoint_writes` is its writing half.

Layouts of a run directory (`find_checkpoints`):

    rlvr-nb  <run>/checkpoints/step_<N>/ or <run>/step_<N>/        complete: trainer_state.json (written
                                                                   last, then the directory is renamed in)
    hf       <run>/checkpoint-<N>/  (TRL, HF Trainer)             complete: trainer_state.json (the Trainer
                                                                   writes it after the weights)
    verl     <run>/[verl_checkpoints/]global_step_<N>/actor/huggingface/
                                                                   complete: N <= the number in verl's
                                                                   latest_checkpointed_iteration.txt

A layout without its writer's marker (a bare copy, an explicit `save_pretrained` directory) is "unmarked":
it counts when its safetensors headers validate (and, for `rlvr-nb watch`, when sizes and mtimes are stable).
Steps are ASCII digits only. Two layouts in one directory are an error naming both, unless one is chosen.
Only `model.safetensors` or the shards of `model.safetensors.index.json` are ever opened: never pickles.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

from safetensors import safe_open

if TYPE_CHECKING:
    import torch

LAYOUTS = ("rlvr-nb", "hf", "verl")
STEP_NAMES = {  # directory name -> step, per layout (ASCII digits only: "checkpoint-٣٣" is no step)
    "rlvr-nb": re.compile(r"step_([0-9]+)", re.ASCII),
    "hf": re.compile(r"checkpoint-([0-9]+)", re.ASCII),
    "verl": re.compile(r"global_step_([0-9]+)", re.ASCII),
}
VERL_TRACKER = "latest_checkpointed_iteration.txt"
"""verl writes the step of its newest complete checkpoint here, after the checkpoint itself."""
WEIGHT_INDEX, WEIGHT_FILE = "model.safetensors.index.json", "model.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "merges.txt", "tokenizer.model", "chat_template.jinja", "chat_template.json")
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
               "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
READ_DTYPES = ("F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL")
"""safetensors dtypes a tensor can be read in (`read_rows`, as the torch dtype of `torch_dtype`)."""
FLOATING_DTYPES = frozenset({"F64", "F32", "F16", "BF16"})
"""The floating ones among them (the values the R^2 engine and extrapolation follow)."""


def torch_dtype(code: str):
    """The torch dtype of a safetensors dtype in READ_DTYPES (torch is imported here, not at module import, so that
    the linearity command's start-up does not pay for it)."""
    import torch

    return {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
            "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
            "BOOL": torch.bool}[code]


class CheckpointError(ValueError):
    """A checkpoint that cannot be read as it is; the message names the file, tensor or step."""


def describe_error(e: BaseException) -> str:
    """The one-line message of a bad-input error (an operating-system error names its file)."""
    if isinstance(e, OSError) and e.filename is not None:
        return f"{e.filename}: {e.strerror or e}"
    if isinstance(e, KeyError) and e.args:
        return str(e.args[0])
    return str(e)


BAD_INPUT = (OSError, ValueError, KeyError)
"""What a command reports as bad input (CheckpointError is a ValueError); anything else is a bug."""


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint directory found in a run."""

    step: int
    path: Path
    """The HuggingFace directory (config.json, weights, usually tokenizer files)."""
    layout: str
    """'rlvr-nb', 'hf', 'verl' or 'bare' (an explicit directory)."""
    marked: bool | None
    """True: its writer marked it complete; False: the writer's marker is missing (still being written);
    None: the layout has no marker here (judge it by its files)."""


# ---------------------------------------------------------------------------------------------
# Steps


def parse_step(name: str, layout: str | None = None) -> int | None:
    """The step in a checkpoint directory's name (step_N, checkpoint-N, global_step_N), ASCII digits only."""
    for lay in (layout,) if layout else LAYOUTS:
        if m := STEP_NAMES[lay].fullmatch(name):
            return int(m.group(1))
    return None


def read_step(ckpt_dir: str | Path, missing_ok: bool = False) -> int | None:
    """The training step of a checkpoint: trainer_state.json's "step" (ours) or "global_step" (HF), else the
    step in its directory name (or its verl global_step_N parent); None when unknown and missing_ok."""
    d = Path(ckpt_dir)
    f = d / "trainer_state.json"
    if f.is_file():
        state = read_json(f)
        for key in ("step", "global_step"):
            if isinstance(state, dict) and isinstance(state.get(key), int):
                return state[key]
    for part in (d.name, *(p.name for p in d.parents[:2])):
        if (s := parse_step(part)) is not None:
            return s
    if missing_ok:
        return None
    where = f"no 'step' or 'global_step' in {f}" if f.is_file() else f"no {f.name} in {d}"
    raise CheckpointError(f"cannot tell the step of {d}: {where} and no step_N, checkpoint-N or global_step_N "
                          "in its name; give the step explicitly")


def read_json(path: Path):
    """A JSON file's value, or CheckpointError naming the file."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from None


# ---------------------------------------------------------------------------------------------
# Finding checkpoints


def verl_merge_command(actor_dir: Path) -> str:
    """The command that turns verl's FSDP shards of one step into a HuggingFace directory."""
    return (f"python -m verl.model_merger merge --backend fsdp --local_dir {actor_dir} "
            f"--target_dir {actor_dir / 'huggingface'}")


def has_weights(d: Path) -> bool:
    return (d / WEIGHT_FILE).is_file() or (d / WEIGHT_INDEX).is_file()


def _subdirs(d: Path) -> list[Path]:
    try:
        return sorted(p for p in d.iterdir() if p.is_dir())
    except OSError as e:
        raise CheckpointError(f"cannot list {d}: {e.strerror}") from None


def _verl_tracker(root: Path) -> int | None:
    f = root / VERL_TRACKER
    try:
        return int(f.read_text().strip()) if f.is_file() else None
    except (OSError, ValueError):
        return None


def scan_layout(run_dir: Path, layout: str) -> list[Checkpoint]:
    """Every checkpoint directory of one layout under run_dir, complete or not (see `Checkpoint.marked`)."""
    found: list[Checkpoint] = []
    if layout == "rlvr-nb":
        for parent in (run_dir / "checkpoints", run_dir):
            if parent.is_dir():
                found += [Checkpoint(s, p, layout, (p / "trainer_state.json").is_file()) for p in _subdirs(parent)
                          if (s := parse_step(p.name, layout)) is not None]
    elif layout == "hf":
        found += [Checkpoint(s, p, layout, (p / "trainer_state.json").is_file()) for p in _subdirs(run_dir)
                  if (s := parse_step(p.name, layout)) is not None]
    elif layout == "verl":
        roots = [run_dir] + [p for p in _subdirs(run_dir) if any(parse_step(q.name, "verl") is not None
                                                                 for q in _subdirs(p))]
        for root in roots:
            latest = _verl_tracker(root)
            for p in _subdirs(root):
                if (s := parse_step(p.name, layout)) is None:
                    continue
                actor, hf = p / "actor", p / "actor" / "huggingface"
                marked = None if latest is None else s <= latest
                if not has_weights(hf) and marked is not False and actor.is_dir():
                    raise CheckpointError(
                        f"verl checkpoint {p} holds FSDP shards but no HuggingFace weights in {hf}; merge them "
                        f"first with:\n  {verl_merge_command(actor)}\n(or save with "
                        "actor_rollout_ref.actor.checkpoint.save_contents including hf_model)")
                found.append(Checkpoint(s, hf, layout, marked))
    else:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    return sorted(found, key=lambda c: c.step)


def scan_checkpoints(run_dir: str | Path, layout: str | None = None) -> list[Checkpoint]:
    """Every checkpoint directory under run_dir in its one layout (or the one given), complete or not.

    Two layouts in one directory (a TRL run and a verl run side by side) are an error naming both, unless
    `layout` picks one. A run of `rlvr_nb.backends.verl_launcher` holds verl's tree and, once ingested, the
    same steps as checkpoints/step_N (plus step 0): the ingested copy is read."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    if layout is not None:
        return scan_layout(run_dir, layout)
    present = {lay: cks for lay in LAYOUTS if (cks := scan_layout(run_dir, lay))}
    initial = launcher_initial_model(run_dir)
    if set(present) == {"rlvr-nb", "verl"} and (run_dir / "launch.json").is_file():
        del present["verl"]  # the launcher's ingested copy of its own verl tree
    if len(present) > 1:
        where = "; ".join(f"{lay}: {cks[0].path} ... ({len(cks)} checkpoints)" for lay, cks in present.items())
        raise CheckpointError(f"{run_dir} holds checkpoints of {len(present)} layouts ({where}); they may be "
                              "different runs: choose one with layout=... (--layout on the command line)")
    found = next(iter(present.values()), [])
    if found and initial is not None and all(c.step != 0 for c in found):
        found.insert(0, Checkpoint(0, initial, "bare", None))  # verl saves no step 0: the launcher's model is
    return found


def launcher_initial_model(run_dir: Path) -> Path | None:
    """The model a run of `rlvr_nb.backends.verl_launcher` started from (its launch.json's model_path), or
    None (no launcher run, or none named)."""
    f = run_dir / "launch.json"
    if not f.is_file():
        return None
    cfg = read_json(f)
    path = (cfg.get("config") or {}).get("model_path") if isinstance(cfg, dict) else None
    if path and not has_weights(Path(path)):
        raise CheckpointError(f"{f} names model_path {path}, which holds no safetensors weights (step 0 of this run)")
    return Path(path) if path else None


def find_checkpoints(run_dir: str | Path, layout: str | None = None, *, allow_empty: bool = False) -> list[tuple[int, Path]]:
    """(step, HuggingFace directory) of every complete checkpoint under run_dir, sorted by step.

    A checkpoint whose writer has not marked it complete is left out (see the module docstring)."""
    found = [(c.step, c.path) for c in scan_checkpoints(run_dir, layout) if c.marked is not False]
    if not found and not allow_empty:
        raise FileNotFoundError(
            f"no complete checkpoints found in {run_dir} (looked for checkpoints/step_N/, step_N/, checkpoint-N/ "
            "and global_step_N/actor/huggingface/)")
    return found


# ---------------------------------------------------------------------------------------------
# Weight files and their headers


def weight_files(d: str | Path) -> list[Path]:
    """The safetensors files of a checkpoint directory: model.safetensors or the shards of its index."""
    d = Path(d)
    index = d / WEIGHT_INDEX
    if index.is_file():
        wm = read_json(index)
        if not isinstance(wm, dict) or not isinstance(wm.get("weight_map"), dict):
            raise CheckpointError(f"corrupt shard index {index}: no 'weight_map' object")
        return [d / f for f in dict.fromkeys(str(v) for v in wm["weight_map"].values())]
    if (d / WEIGHT_FILE).is_file():
        return [d / WEIGHT_FILE]
    other = sorted(p.name for p in d.glob("*.bin")) + sorted(p.name for p in d.glob("*.pt")) if d.is_dir() else []
    hint = f" (found {', '.join(other[:3])}: only safetensors are read, never pickle)" if other else ""
    raise FileNotFoundError(f"no {WEIGHT_FILE} or {WEIGHT_INDEX} in {d}{hint}")


@dataclass(frozen=True)
class TensorHeader:
    """One tensor's entry in a safetensors header."""

    dtype: str
    shape: tuple[int, ...]
    offset: int
    """Absolute byte offset of the tensor's data in its file."""
    nbytes: int
    file: Path


def _bad(path: Path, why: str) -> CheckpointError:
    return CheckpointError(f"corrupt safetensors file {path}: {why}")


def read_safetensors_header(path: str | Path) -> tuple[dict[str, TensorHeader], dict]:
    """({name: TensorHeader}, metadata) of one safetensors file, validated against its size and shape.

    Every defect (unreadable, truncated, a header of the wrong JSON shape, offsets past the end, a byte
    count that does not match the shape) is one CheckpointError naming the file and the tensor."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise _bad(path, f"{size} bytes, too short for a header")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                raise _bad(path, f"header of {n} bytes in a file of {size} bytes")
            raw = json.loads(f.read(n))
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror or e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _bad(path, f"header is not JSON ({e})") from None
    if not isinstance(raw, dict):
        raise _bad(path, f"header is a JSON {type(raw).__name__}, not an object")
    meta = raw.pop("__metadata__", None) or {}
    header, spans = {}, []
    for name, m in raw.items():
        ok = (isinstance(m, dict) and isinstance(m.get("dtype"), str) and isinstance(m.get("shape"), list)
              and all(isinstance(x, int) and x >= 0 for x in m["shape"]) and isinstance(m.get("data_offsets"), list)
              and len(m["data_offsets"]) == 2 and all(isinstance(x, int) and x >= 0 for x in m["data_offsets"]))
        if not ok:
            raise _bad(path, f"entry of tensor {name!r} is not {{dtype, shape, data_offsets}}: {str(m)[:120]}")
        begin, end = m["data_offsets"]
        if m["dtype"] not in DTYPE_BYTES:
            raise _bad(path, f"tensor {name} has unknown dtype {m['dtype']}")
        if end - begin != math.prod(m["shape"]) * DTYPE_BYTES[m["dtype"]]:
            raise _bad(path, f"tensor {name} has {end - begin} bytes for shape {m['shape']} {m['dtype']}")
        if 8 + n + end > size:
            raise CheckpointError(f"truncated safetensors file {path}: tensor {name} ends at byte {8 + n + end} "
                                  f"of a {size}-byte file")
        spans.append((begin, end, name))
        header[name] = TensorHeader(m["dtype"], tuple(m["shape"]), 8 + n + begin, end - begin, path)
    spans.sort()
    for (b0, e0, n0), (b1, _, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise _bad(path, f"tensors {n0} and {n1} overlap")
    try:  # the library's own checks (alignment, ...), as every HF tool will run them (numpy: no torch import)
        with safe_open(str(path), framework="numpy") as f:
            f.keys()
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise _bad(path, str(e)) from None
    return header, meta if isinstance(meta, dict) else {}


def read_weight_index(d: str | Path) -> dict[str, TensorHeader]:
    """Every tensor of one checkpoint directory (single file, or the shards its index names), validated."""
    d = Path(d)
    index = d / WEIGHT_INDEX
    header: dict[str, TensorHeader] = {}
    for f in weight_files(d):
        if not f.is_file():
            raise FileNotFoundError(f"shard {f} listed in {index} does not exist")
        part, _ = read_safetensors_header(f)
        header.update(part)
    if index.is_file():
        wm = read_json(index)["weight_map"]
        missing = [k for k, v in wm.items() if k not in header or header[k].file.name != v]
        if missing:
            raise CheckpointError(f"{index} places {missing[:3]} in shards that do not hold them")
    return header


def read_exactly(path: Path, offset: int, buf: memoryview, name: str) -> None:
    """Fill buf with the bytes of `path` from `offset` (unbuffered: straight into the caller's memory)."""
    try:
        with open(path, "rb", buffering=0) as f:
            f.seek(offset)
            done = 0
            while done < len(buf):
                got = f.readinto(buf[done:])
                if not got:
                    raise CheckpointError(f"truncated safetensors file {path}: tensor {name} ends past the end of the file")
                done += got
    except OSError as e:
        raise CheckpointError(f"cannot read tensor {name} from {path}: {e.strerror or e}") from None


def read_rows(t: TensorHeader, name: str, start: int, stop: int) -> "torch.Tensor":
    """Rows [start, stop) of a tensor (the whole tensor for 0-d ones) in its stored dtype, by plain reads."""
    import torch

    if t.dtype not in READ_DTYPES:
        raise CheckpointError(f"{t.file}: tensor {name} has dtype {t.dtype}, which is not read")
    dtype = torch_dtype(t.dtype)
    row = math.prod(t.shape[1:]) * dtype.itemsize
    n_bytes = (stop - start) * row if t.shape else dtype.itemsize
    out_shape = ((stop - start), *t.shape[1:]) if t.shape else ()
    buf = bytearray(n_bytes)
    if n_bytes:
        read_exactly(t.file, t.offset + start * row, memoryview(buf), name)
    return torch.frombuffer(buf, dtype=dtype).reshape(out_shape) if n_bytes else torch.empty(out_shape, dtype=dtype)


def read_tensors(d: str | Path, names: Iterable[str] | None = None, header: dict[str, TensorHeader] | None = None,
                 floating_only: bool = True) -> dict[str, "torch.Tensor"]:
    """Whole tensors of a checkpoint directory by name (all floating ones by default), read lazily."""
    header = read_weight_index(d) if header is None else header
    wanted = list(header) if names is None else list(names)
    missing = [n for n in wanted if n not in header]
    if missing:
        raise CheckpointError(f"{d} has no tensor(s) {missing[:3]}")
    out = {}
    for n in wanted:
        t = header[n]
        if floating_only and t.dtype not in FLOATING_DTYPES:
            continue
        out[n] = read_rows(t, n, 0, t.shape[0] if t.shape else 1)
    return out


def files_signature(d: str | Path) -> tuple:
    """(name, size, mtime_ns) of a checkpoint's weight files: equal on two looks = the files did not change."""
    sig = []
    for f in weight_files(d):
        try:
            st = f.stat()
        except OSError as e:
            raise CheckpointError(f"cannot read {f}: {e.strerror}") from None
        sig.append((f.name, st.st_size, st.st_mtime_ns))
    return tuple(sig)


def read_model_config(model_dir: str | Path) -> dict:
    """config.json of a HuggingFace model directory that holds safetensors weights, or one clear error
    naming the directory (vLLM is asked to load nothing else: never pickled weights)."""
    model_dir = Path(model_dir)
    f = model_dir / "config.json"
    if not f.is_file():
        raise FileNotFoundError(f"{model_dir} is not a HuggingFace model directory (no config.json)")
    weight_files(model_dir)  # FileNotFoundError naming the directory (and any pickles found instead)
    config = read_json(f)
    if not isinstance(config, dict):
        raise CheckpointError(f"{f} is a JSON {type(config).__name__}, not an object")
    return config


# ---------------------------------------------------------------------------------------------
# Tokenizers


def has_tokenizer(d: str | Path) -> bool:
    return any((Path(d) / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "vocab.json"))


def tokenizer_fingerprint(d: str | Path) -> str | None:
    """Hash of what defines a tokenizer (vocabulary, merges, added tokens, special tokens), or None when the
    directory holds no tokenizer files. Formatting and fields that libraries add on re-saving are ignored,
    so a base model's tokenizer and the copy a trainer saved compare equal."""
    d = Path(d)
    if not has_tokenizer(d):
        return None
    parts: list = []
    if (d / "tokenizer.json").is_file():
        tok = read_json(d / "tokenizer.json")
        model = tok.get("model", {}) if isinstance(tok, dict) else {}
        merges = [" ".join(m) if isinstance(m, list) else m for m in model.get("merges", []) or []]
        added = sorted((a.get("id"), a.get("content")) for a in (tok.get("added_tokens") or []))
        parts += [model.get("type"), model.get("vocab"), merges, added]
    for name in ("vocab.json", "merges.txt", "tokenizer.model"):
        if (d / name).is_file():
            parts.append(hashlib.sha256((d / name).read_bytes()).hexdigest())
    if (d / "tokenizer_config.json").is_file():
        cfg = read_json(d / "tokenizer_config.json")
        parts.append([cfg.get(k) for k in ("bos_token", "eos_token", "pad_token", "unk_token")] if isinstance(cfg, dict) else None)
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def check_same_tokenizer(dirs: Sequence[str | Path]) -> None:
    """CheckpointError when two of the directories carry tokenizer files that define different tokenizers
    (directories without tokenizer files are not compared)."""
    first: tuple[Path, str] | None = None
    for d in map(Path, dirs):
        fp = tokenizer_fingerprint(d)
        if fp is None:
            continue
        if first is None:
            first = (d, fp)
        elif fp != first[1]:
            raise CheckpointError(f"tokenizers differ: {first[0]} and {d} define different vocabularies or special "
                                  "tokens; these checkpoints are not one run")
