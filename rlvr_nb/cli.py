"""The `rlvr-nb` command, for people who never open a notebook.

    rlvr-nb linearity RUN_DIR [--base DIR] [--out DIR] [--json] [--no-figures] [--layout {rlvr-nb,hf,verl}]
    rlvr-nb watch RUN_DIR [--once] [--layout ...]

Bad input (a missing or unreadable file, a corrupt checkpoint, NaN weights, ...) is one line on stderr
naming the file, tensor, step or parameter, and exit status 2; no output lies inside an input, and a
file is renamed into place only once complete (`rlvr_nb.checkpoint_writes`).

Each subcommand is a `main(argv)` function somewhere in the package, named in `COMMANDS` and imported
only when it is called; registering another one is one line there.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Sequence

COMMANDS: dict[str, tuple[str, str]] = {
    "linearity": ("rlvr_nb.cli:linearity_main", "R^2 of every weight (and of probe log-probs) of a run"),
    "watch": ("rlvr_nb.cli:watch_main", "follow a run in progress: running R^2, drift stability, horizon"),
}
"""subcommand -> ("module:function" taking argv, one-line description)."""


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    listing = "\n".join(f"  {name:<12} {desc}" for name, (_, desc) in COMMANDS.items())
    parser = argparse.ArgumentParser(prog="rlvr-nb", formatter_class=argparse.RawDescriptionHelpFormatter,
                                     description="Linear dynamics in RLVR training (arXiv 2601.04537).",
                                     epilog=f"commands:\n{listing}\n\n`rlvr-nb COMMAND --help` for its options.")
    parser.add_argument("command", choices=sorted(COMMANDS), metavar="COMMAND")
    parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    ns = parser.parse_args(argv[:1] or ["--help"])
    module, func = COMMANDS[ns.command][0].split(":")
    result = getattr(importlib.import_module(module), func)(argv[1:])
    return result if isinstance(result, int) else 0


def linearity_parser() -> argparse.ArgumentParser:
    from rlvr_nb.checkpoint_files import LAYOUTS
    from rlvr_nb.linearity import LinearityConfig

    d = LinearityConfig()
    p = argparse.ArgumentParser(prog="rlvr-nb linearity",
                                description="Weight R^2 against the training step for every parameter of a run "
                                            "(PAPER.md Sec. 4); with --probes or --prompts also token log-prob R^2.")
    p.add_argument("run_dir", help="run directory (checkpoints/step_N, checkpoint-N or global_step_N layouts)")
    p.add_argument("--base", help="base model directory, counted as step 0")
    p.add_argument("--layout", choices=LAYOUTS, help="read only checkpoints of this layout (a directory holding "
                                                     "two layouts is an error without it)")
    p.add_argument("--out", help="directory for figures and linearity.json (default: ./linearity-<run name>)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON instead of a table")
    p.add_argument("--sample-fraction", type=float, default=None, help="the paper's sampled mode, e.g. 0.001")
    p.add_argument("--skip-first", type=int, default=d.skip_first, help="drop this many first checkpoints")
    p.add_argument("--min-range", type=float, default=d.min_range, help="keep weights whose range exceeds this")
    p.add_argument("--min-distinct", type=int, default=d.min_distinct, help="... and with this many distinct values")
    p.add_argument("--no-drift", action="store_true", help="skip the drift spectrum (faster)")
    p.add_argument("--save-r2", help="write the per-parameter R^2 to this safetensors file")
    p.add_argument("--probes", help="probe responses (JSONL from a previous run): also token log-prob R^2")
    p.add_argument("--prompts", help="text file, one prompt per line: sample probes from the first checkpoint "
                                     "(saved as <out>/probes.jsonl), then token log-prob R^2")
    p.add_argument("--responses-per-prompt", type=int, default=8, help="probe responses per prompt")
    p.add_argument("--max-new-tokens", type=int, default=64, help="longest probe response")
    p.add_argument("--min-change", type=float, default=0.2, help="keep tokens whose log-prob moved more than this")
    p.add_argument("--no-figures", action="store_true", help="write linearity.json only (no PNG figures; faster)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def linearity_main(argv: Sequence[str] | None = None) -> int:
    from rlvr_nb.checkpoint_files import BAD_INPUT, describe_error

    args = linearity_parser().parse_args(argv)
    try:
        report = run_linearity(args)
    except BAD_INPUT as e:
        print(f"rlvr-nb linearity: error: {describe_error(e)}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else report["table"])
    return 0


def run_linearity(args: argparse.Namespace) -> dict:
    """Measure, write figures (unless --no-figures) and linearity.json to --out, and return the report.
    transformers (token log-probs) and matplotlib (figures) are imported only when they are used."""
    from rlvr_nb.checkpoint_writes import refuse_overlap, write_json
    from rlvr_nb.linearity import LinearityConfig, weight_linearity
    from rlvr_nb.trajectory import load_trajectory

    progress = not args.no_progress
    run_dir = Path(args.run_dir)
    out = Path(args.out) if args.out else Path.cwd() / f"linearity-{run_dir.resolve().name}"
    if args.probes and args.prompts:
        raise ValueError("give --probes or --prompts, not both")
    traj = load_trajectory(run_dir, args.base, layout=args.layout, progress=progress)
    tokens = bool(args.probes or args.prompts)
    names = ["linearity.json"] + (["probes.jsonl"] if args.prompts else [])
    if not args.no_figures:
        names += ["weight_r2_hist.png", "weight_r2_module_layer.png", "weight_examples.png"]
        names += ["token_r2_hist.png", "token_examples.png"] if tokens else []
    # before any weight is read: no output may be, or lie inside, a checkpoint of the run
    targets = [(out / n, "output") for n in names] + ([(Path(args.save_r2), "--save-r2")] if args.save_r2 else [])
    for target, what in targets:
        refuse_overlap(target, traj.dirs, what)
    probes = prompts = None
    if args.probes:  # checked now, not after the weight pass
        from rlvr_nb.logprobs import check_probes, load_probes, vocab_size

        probes = load_probes(args.probes)
        check_probes(probes, vocab_size(traj.dirs[0]), traj.dirs[0])
    elif args.prompts:
        from rlvr_nb.logprobs import tokenizer_dir

        prompts = [line for line in Path(args.prompts).read_text().splitlines() if line.strip()]
        if not prompts:
            raise ValueError(f"--prompts {args.prompts} holds no prompt (no non-empty line)")
        tokenizer_dir(traj)
    cfg = LinearityConfig(min_range=args.min_range, min_distinct=args.min_distinct,
                          sample_fraction=args.sample_fraction, skip_first=args.skip_first, drift=not args.no_drift)
    res = weight_linearity(traj, cfg, save_r2=args.save_r2, progress=progress)
    report = res.to_dict()
    report["table"] = res.table()
    tok = None
    written = []
    if tokens:
        from rlvr_nb.logprobs import ProbeConfig, probes_from_first_checkpoint, save_probes, token_linearity

        if prompts is not None:
            pcfg = ProbeConfig(responses_per_prompt=args.responses_per_prompt, max_new_tokens=args.max_new_tokens)
            probes = probes_from_first_checkpoint(traj, prompts, pcfg, progress=progress)
        token_traj = traj if not args.skip_first else traj.without_first(args.skip_first)
        tok = token_linearity(token_traj, probes, min_change=args.min_change, progress=progress)
        report["token_logprob"] = tok.to_dict()
        report["table"] += "\n" + token_table(tok)
    # everything is measured: the outputs now (figures, then linearity.json)
    label = run_dir.name
    if not args.no_figures:
        written += save_figures(out, [(lambda f: f.plot_r2_histograms({label: res.overall}), "weight_r2_hist"),
                                      (lambda f: f.plot_module_layer_heatmap({label: res.per_module_layer}),
                                       "weight_r2_module_layer"),
                                      (lambda f: f.plot_example_trajectories(res.examples, res.steps),
                                       "weight_examples")])
    if prompts is not None:
        written.append(save_probes(probes, out / "probes.jsonl", inputs=traj.dirs))
    if tok is not None and not args.no_figures:
        written += save_figures(out, [(lambda f: f.plot_r2_histograms({label: tok.overall}, "token log-prob R$^2$"),
                                       "token_r2_hist"),
                                      (lambda f: f.plot_example_trajectories(tok.examples, tok.steps, "log-prob"),
                                       "token_examples")])
    write_json(out / "linearity.json", {k: v for k, v in report.items() if k != "table"}, traj.dirs)
    report["written"] = [str(p) for p in written + [out / "linearity.json"]]
    report["table"] += f"\nwrote {len(report['written'])} files to {out}"
    return report


def save_figures(out: Path, plots: list) -> list[Path]:
    """Each (plot, name) of `plots` as out/<name>.png, where plot(rlvr_nb.figures) draws the figure
    (matplotlib is imported here, the first time a figure is wanted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rlvr_nb import figures

    written = [figures.save_figure(plot(figures), name, out) for plot, name in plots]
    plt.close("all")
    return written


def watch_main(argv: Sequence[str] | None = None) -> int:
    """`rlvr-nb watch` (`rlvr_nb.monitor.watch`): exit status 0, or 2 after bad input (one line on stderr) or
    when a checkpoint could not be used (its error row in the table)."""
    from rlvr_nb.checkpoint_files import LAYOUTS
    from rlvr_nb.monitor import MonitorConfig, watch

    p = argparse.ArgumentParser(prog="rlvr-nb watch", description="Follow a run directory's weight linearity.")
    p.add_argument("run_dir")
    p.add_argument("--interval", type=float, default=60.0, help="seconds between looks at the run directory")
    p.add_argument("--out", default=None, help="where to write linearity_monitor.png/.jsonl (default: run_dir)")
    p.add_argument("--initial-model", default=None, help="HF directory to take as step 0 (TRL and verl save none)")
    p.add_argument("--layout", choices=LAYOUTS, help="read only checkpoints of this layout (a directory holding "
                                                     "two layouts is an error without it)")
    p.add_argument("--sample-fraction", type=float, default=MonitorConfig.sample_fraction)
    p.add_argument("--skill-min", type=float, default=MonitorConfig.skill_min)
    p.add_argument("--once", action="store_true", help="one pass over the checkpoints present, then exit")
    a = p.parse_args(argv)
    from rlvr_nb.checkpoint_files import BAD_INPUT, describe_error

    try:
        cfg = MonitorConfig(sample_fraction=a.sample_fraction, skill_min=a.skill_min)
        m = watch(a.run_dir, a.interval, out_dir=a.out, initial_model=a.initial_model, cfg=cfg, once=a.once,
                  layout=a.layout)
    except BAD_INPUT as e:
        print(f"rlvr-nb watch: error: {describe_error(e)}", file=sys.stderr)
        return 2
    return 2 if m.errors else 0


def token_table(tok) -> str:
    s = tok.overall.row()
    fmt = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
    return (f"token log-prob R^2: median {fmt(s['median'])}, mean {fmt(s['mean'])}, >0.7 {fmt(s['frac_above'])}, "
            f"{s['count']} of {s['total']} tokens moved enough to count")


if __name__ == "__main__":
    sys.exit(main())
