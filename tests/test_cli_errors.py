"""Bad input to `rlvr-nb linearity` and `rlvr-nb watch`: one line on stderr naming the file, tensor, step or
parameter, exit status 2, no traceback, and nothing written (no output file, no partial or temporary file,
no input touched)."""

import builtins
import io
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file
from trajectory_fixtures import fabricated_weights, make_run, write_hf_dir

from rlvr_nb.checkpoint_files import TOKENIZER_FILES
from rlvr_nb.cli import main

STEPS = (0, 100, 200, 300)


def one_error(capsys, command: str = "linearity") -> str:
    """The single line a failed command printed on stderr (after its prefix)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith(f"rlvr-nb {command}: error: ")
    return lines[0].removeprefix(f"rlvr-nb {command}: error: ")


def files_under(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture
def run(tmp_path) -> Path:
    return make_run(tmp_path / "run", "trl", STEPS)


def linearity(run: Path, *extra: str) -> int:
    return main(["linearity", str(run), "--no-progress", "--out", str(run.parent / "out"), *extra])


# ---------------------------------------------------------------------------------------------
# Unreadable and corrupt checkpoints


def write_header(path: Path, header) -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(64))


@pytest.mark.parametrize("header, why", [
    ([1, 2, 3], "header is a JSON list, not an object"),
    ({"w": 5}, "entry of tensor 'w' is not {dtype, shape, data_offsets}: 5"),
    ({"w": {"dtype": "F32", "shape": "4", "data_offsets": [0, 16]}}, "entry of tensor 'w' is not"),
])
def test_header_of_the_wrong_json_shape(run, capsys, header, why):
    f = run / "checkpoint-200" / "model.safetensors"
    write_header(f, header)
    assert linearity(run) == 2
    assert one_error(capsys).startswith(f"corrupt safetensors file {f}: {why}")
    assert not (run.parent / "out").exists()


def test_corrupt_and_truncated_files(run, capsys):
    f = run / "checkpoint-100" / "model.safetensors"
    full = f.read_bytes()
    f.write_bytes(os.urandom(4096))
    assert linearity(run) == 2
    assert one_error(capsys).startswith(f"corrupt safetensors file {f}: header of ")
    f.write_bytes(full[: len(full) - 100])
    assert linearity(run) == 2
    assert one_error(capsys).startswith(f"truncated safetensors file {f}: tensor ")


def test_unreadable_file(run, capsys, monkeypatch):
    f = run / "checkpoint-200" / "model.safetensors"
    real = builtins.open

    def guarded(file, *args, **kwargs):  # as for a file without read permission (the tests may run as root)
        if isinstance(file, (str, os.PathLike)) and Path(file) == f:
            raise PermissionError(13, "Permission denied", str(file))
        return real(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded)
    monkeypatch.setattr(io, "open", guarded)
    assert linearity(run) == 2
    assert one_error(capsys) == f"cannot read {f}: Permission denied"


def test_nan_weights_name_tensor_and_step(tmp_path, capsys):
    weights = fabricated_weights(STEPS)
    weights[2]["model.layers.0.self_attn.q_proj.weight"][1, 1] = float("nan")
    for s, w in zip(STEPS, weights):
        write_hf_dir(tmp_path / "run" / f"checkpoint-{s}", w, step=s)
    assert linearity(tmp_path / "run") == 2
    assert one_error(capsys).startswith("non-finite weights (NaN or Inf) in tensor "
                                        "model.layers.0.self_attn.q_proj.weight of the checkpoint at step 200")


def test_missing_run_directory(tmp_path, capsys):
    assert linearity(tmp_path / "missing") == 2
    assert one_error(capsys) == f"run directory {tmp_path / 'missing'} does not exist"


# ---------------------------------------------------------------------------------------------
# Writes: --save-r2 and --out never touch an input, and leave no partial file


def test_save_r2_over_an_input_checkpoint_is_refused(run, capsys):
    before = files_under(run)
    target = run / "checkpoint-100" / "model.safetensors"
    assert linearity(run, "--save-r2", str(target)) == 2
    assert one_error(capsys) == (f"--save-r2 {target} lies inside the input {run / 'checkpoint-100'}; "
                                 "refusing to write into it")
    inside = run / "checkpoint-200" / "r2.safetensors"
    assert linearity(run, "--save-r2", str(inside)) == 2
    assert "lies inside the input" in one_error(capsys)
    assert files_under(run) == before  # the weights are intact, nothing was added
    assert not (run.parent / "out").exists()


def test_save_r2_is_complete_or_absent(run, tmp_path, capsys):
    target = tmp_path / "maps" / "r2.safetensors"
    assert linearity(run, "--save-r2", str(target)) == 0
    capsys.readouterr()
    saved = load_file(str(target))
    assert "model.norm.weight" in saved and all(v.dtype == np.float32 for v in saved.values())
    target.unlink()
    # an error during the pass (NaN weights found while reading) leaves neither the file nor a temporary one
    f = run / "checkpoint-300" / "model.safetensors"
    weights = fabricated_weights(STEPS)[3]
    weights["model.norm.weight"][0] = float("nan")
    write_hf_dir(f.parent, weights, step=300)
    assert linearity(run, "--save-r2", str(target)) == 2
    assert one_error(capsys).startswith("non-finite weights (NaN or Inf) in tensor model.norm.weight")
    assert list((tmp_path / "maps").iterdir()) == []


def test_out_inside_a_checkpoint_is_refused(run, capsys):
    before = files_under(run)
    out = run / "checkpoint-0" / "figures"
    assert main(["linearity", str(run), "--no-progress", "--out", str(out)]) == 2
    assert "lies inside the input" in one_error(capsys)
    assert files_under(run) == before and not out.exists()


# ---------------------------------------------------------------------------------------------
# Probes


def write_probes(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_probe_set_with_zero_tokens(run, tmp_path, capsys):
    probes = write_probes(tmp_path / "p.jsonl", [{"prompt": "1+1=", "response_ids": [], "response_text": ""}] * 2)
    assert linearity(run, "--probes", str(probes)) == 2
    assert one_error(capsys) == ("the probe set holds no response tokens (2 probe(s), every response empty): "
                                 "there is no token log-prob to measure")
    assert not (run.parent / "out").exists()


def test_probe_ids_outside_the_vocabulary(run, tmp_path, capsys):
    vocab = json.loads((run / "checkpoint-0" / "config.json").read_text())["vocab_size"]
    probes = write_probes(tmp_path / "p.jsonl", [{"prompt": "1+1=", "response_ids": [4, 3], "response_text": "2"},
                                                  {"prompt": "2+2=", "response_ids": [6, 99999], "response_text": "?"}])
    assert linearity(run, "--probes", str(probes)) == 2
    assert one_error(capsys) == (f"probe 1 (prompt '2+2=') has response token id 99999, outside the vocabulary of "
                                 f"{vocab} tokens of the model in {run / 'checkpoint-0'}")


def test_prompts_without_tokenizer_files(run, tmp_path, capsys):
    for s in STEPS:
        for name in TOKENIZER_FILES:
            (run / f"checkpoint-{s}" / name).unlink(missing_ok=True)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("1+1=\n2+2=\n")
    assert linearity(run, "--prompts", str(prompts)) == 2
    assert one_error(capsys).startswith("no checkpoint of the trajectory holds a tokenizer")


# ---------------------------------------------------------------------------------------------
# Two layouts in one directory


def test_layout_option_reads_one_of_two_layouts(run, capsys):
    make_run(run, "verl", (0, 50, 150), seed=1)  # another run beside the TRL one
    assert linearity(run, "--json") == 2
    message = one_error(capsys)
    assert "holds checkpoints of 2 layouts" in message and "hf: " in message and "verl: " in message
    assert linearity(run, "--json", "--layout", "hf") == 0
    assert json.loads(capsys.readouterr().out)["steps"] == list(STEPS)
    assert linearity(run, "--json", "--layout", "verl") == 0
    assert json.loads(capsys.readouterr().out)["steps"] == [0, 50, 150]
    assert main(["watch", str(run), "--once"]) == 2
    assert "holds checkpoints of 2 layouts" in one_error(capsys, "watch")
    assert main(["watch", str(run), "--once", "--layout", "verl", "--out", str(run.parent / "w")]) == 0


# ---------------------------------------------------------------------------------------------
# watch


def test_watch_bad_input_through_the_top_level_command(tmp_path, capsys):
    assert main(["watch", str(tmp_path / "missing"), "--once"]) == 2
    assert one_error(capsys, "watch") == f"run directory {tmp_path / 'missing'} does not exist"
    assert main(["watch", str(tmp_path), "--once", "--initial-model", str(tmp_path / "nope")]) == 2
    assert one_error(capsys, "watch") == f"initial model directory {tmp_path / 'nope'} does not exist"
    assert main(["watch", str(tmp_path), "--once", "--sample-fraction", "2"]) == 2
    assert one_error(capsys, "watch") == "sample_fraction must be in (0, 1], got 2.0"


def test_linearity_without_figures_never_imports_torch(run, tmp_path):
    """Start-up: `rlvr-nb linearity --no-figures` reads checkpoints without torch (its import was most of the
    command's wall time on a small run); the summary it writes is the same as with torch loaded."""
    import subprocess
    import sys

    out = tmp_path / "out"
    code = ("import sys; from rlvr_nb.cli import main; "
            f"rc = main(['linearity', {str(run)!r}, '--out', {str(out)!r}, '--no-progress', '--no-figures']); "
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH'); sys.exit(rc)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "NO-TORCH"
    assert main(["linearity", str(run), "--out", str(tmp_path / "again"), "--no-progress", "--no-figures"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in (tmp_path / "again").iterdir())
