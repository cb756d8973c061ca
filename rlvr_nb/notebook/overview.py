"""The map of notebooks and how long each took per profile, read from the runners' manifests."""

from __future__ import annotations

import json
from pathlib import Path

from rlvr_nb.embedded import repo_root
from rlvr_nb.notebook.profiles import NOTEBOOKS, PROFILES

WHAT = {
    "00_overview": "the paper in one page; this map",
    "01_training": "the embedded RLVR run (GRPO) and the matched SFT run, trained on a CPU",
    "02_weight_linearity": "Sec. 4: per-weight R^2 of RL vs SFT, module x layer heatmap, the tuning sweep",
    "03_logprob_linearity": "Sec. 4: token log-prob and activation R^2 on fixed probes",
    "04_lowpass_theory": "Sec. 5: the low-pass filter, noise-injected SFT (Fig. 3), output-change sources (Fig. 4)",
    "05_extrapolation": "Sec. 6: weight and logits extrapolation, the alpha slider",
    "06_rl_extra": "Sec. 6: periodic re-grounding (RL-Extra), speed-up to a target accuracy",
}


def timings(root: Path | None = None) -> list[dict]:
    """One row per notebook: what it shows and its wall time at each profile that has a manifest."""
    root = root or repo_root() / "papermill_runs"
    manifests = {}
    for p in PROFILES:
        path = root / p / "manifest.json"
        if path.exists():
            manifests[p] = json.loads(path.read_text()).get("notebooks", {})
    rows = []
    for name in NOTEBOOKS:
        row = {"notebook": name, "shows": WHAT[name]}
        for p in PROFILES:
            rec = manifests.get(p, {}).get(name)
            row[f"{p} (s)"] = "—" if rec is None else (f"{rec['wall_seconds']:.0f}" + ("" if rec["status"] == "ok" else f" ({rec['status']})"))
        rows.append(row)
    return rows
