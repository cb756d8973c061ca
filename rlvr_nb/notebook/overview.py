"""What `00_overview` and the README show, read from the runners' outputs: the map of notebooks with each one's
wall time per profile (from the manifests) and the findings table (from the notebooks' findings files).

    python -m rlvr_nb.notebook.overview --readme   # rewrite the README's findings section from papermill_runs/cpu
    python -m rlvr_nb.notebook.overview --check    # exit status 1 when that section differs from what --readme writes
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rlvr_nb.checkpoint_writes import write_text
from rlvr_nb.embedded import repo_root
from rlvr_nb.findings import findings_markdown, read_findings
from rlvr_nb.notebook.profiles import NOTEBOOKS, PROFILES

WHAT = {
    "00_overview": "the paper in one page; this map; the findings table",
    "01_training": "the embedded RLVR run (GRPO) and the matched SFT run, trained on a CPU",
    "02_weight_linearity": "Sec. 4: per-weight R^2 of RL vs SFT, module x layer heatmap, the tuning sweep",
    "03_logprob_linearity": "Sec. 4: token log-prob and activation R^2 on fixed probes",
    "04_lowpass_theory": "Sec. 5: the low-pass filter, noise-injected SFT (Fig. 3), output-change sources (Fig. 4)",
    "05_extrapolation": "Sec. 6: weight and logits extrapolation, the alpha slider",
    "06_rl_extra": "Sec. 6: periodic re-grounding (RL-Extra), speed-up to a target accuracy",
}
README_PROFILE = "cpu"
"""The profile whose findings the README shows (the committed reference run)."""
README_START = "<!-- findings:start -->"
README_END = "<!-- findings:end -->"
README_COMMAND = "python -m rlvr_nb.notebook.overview --readme"


def runs_dir() -> Path:
    return repo_root() / "papermill_runs"


def wall_time(rec: dict) -> str:
    """A manifest entry's wall time, marked with what it spent: "812 (trained 2 runs, 790 s)" when the notebook
    trained runs, "15 (nothing trained)" when every run it used was cached; unmarked for an entry written before
    runners recorded it. A notebook that did not complete says so."""
    text = f"{rec['wall_seconds']:.0f}"
    trained = rec.get("trained")
    if trained:
        seconds = sum(t.get("seconds") or 0 for t in trained)
        text += f" (trained {len(trained)} run{'s' if len(trained) > 1 else ''}, {seconds:.0f} s)"
    elif trained is not None:
        text += " (nothing trained)"
    return text + ("" if rec.get("status") == "ok" else f" ({rec.get('status')})")


def timings(root: Path | None = None) -> list[dict]:
    """One row per notebook: what it shows and its wall time (`wall_time`) at each profile that has a manifest."""
    root = root or runs_dir()
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
            row[f"{p} (s)"] = "—" if rec is None else wall_time(rec)
        rows.append(row)
    return rows


def findings_section(profile: str, root: Path | None = None) -> str:
    """The findings table of papermill_runs/<profile> as markdown, or one line saying that none are recorded."""
    found = read_findings((root or runs_dir()) / profile)
    if not found:
        return (f"*(no findings recorded yet at {profile}: each notebook records its own when it runs, "
                f"`python -m rlvr_nb.notebook.run --profile {profile}`)*")
    return findings_markdown(found)


def readme_section(root: Path | None = None) -> str:
    """The README's findings section, markers included, as `--readme` writes it."""
    source = f"papermill_runs/{README_PROFILE}/findings/"
    return "\n".join([README_START, f"<!-- generated from {source} by `{README_COMMAND}`; do not edit by hand -->",
                      "", findings_section(README_PROFILE, root), "", README_END])


def split_readme(text: str, path: Path) -> tuple[str, str, str]:
    """(before, the section with its markers, after); ValueError naming `path` when the markers are not there once each."""
    if text.count(README_START) != 1 or text.count(README_END) != 1 or text.index(README_START) > text.index(README_END):
        raise ValueError(f"{path} needs one findings section: a line {README_START} followed by a line {README_END}")
    start, end = text.index(README_START), text.index(README_END) + len(README_END)
    return text[:start], text[start:end], text[end:]


def update_readme(path: Path | None = None, root: Path | None = None) -> bool:
    """Rewrite the findings section of the README (atomically; nothing else changes). True when it changed."""
    path = path or repo_root() / "README.md"
    before, section, after = split_readme(path.read_text(), path)
    new = readme_section(root)
    if new != section:
        write_text(path, before + new + after)
    return new != section


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rlvr_nb.notebook.overview", description=__doc__.splitlines()[0])
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--readme", action="store_true", help=f"rewrite README.md's findings section from "
                                                             f"papermill_runs/{README_PROFILE}")
    what.add_argument("--check", action="store_true", help="exit status 1 when that section is out of date")
    args = ap.parse_args(argv)
    path = repo_root() / "README.md"
    if args.readme:
        print(f"{path}: findings section {'rewritten' if update_readme(path) else 'already up to date'}")
        return 0
    stale = split_readme(path.read_text(), path)[1] != readme_section()
    if stale:
        print(f"{path}: the findings section differs from what `{README_COMMAND}` writes", file=sys.stderr)
    return int(stale)


if __name__ == "__main__":
    sys.exit(main())
