"""verl 0.9.1's own code run on what the launcher gives it, where it runs without a GPU, against the launcher's
checks: its Qwen prompt builder and chat-template call on our tokenizers, its dataset on our parquet (the one
prompt format of training and evaluation; data.truncation), its Dr. GRPO loss aggregation, its reward-function
loading and thread call convention (our reward bounded there); and the gpu profile's data files, and the
training table of a verl run.

verl's package __init__ imports ray, so the `verl_src` fixture registers the package without running it and
imports the submodules that need only transformers, datasets and omegaconf (verl is installed with --no-deps).
"""

import ast
import asyncio
import importlib.util
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import pytest
import torch

from rlvr_nb.backends.verl_config import (CONTENT_ONLY_TEMPLATE, VERL_VERSION, PromptFormat, VerlRunConfig,
                                          build_overrides, resolve)
from rlvr_nb.backends.verl_inputs import check_tokenizer, heldout_problems, verl_tokenizer
from rlvr_nb.backends.verl_launcher import ingest_verl_checkpoints, prepare_run
from rlvr_nb.backends.verl_reward import GraderPool
from rlvr_nb.sampling import encode_prompts
from rlvr_nb.tasks import Problem
from test_verl_launcher import HAVE_VERL, init_dir, math_file, tiny_cfg, write_model  # noqa: F401 (init_dir: a fixture)

needs_verl = pytest.mark.skipif(not HAVE_VERL, reason=f"verl not installed: pip install --no-deps verl=={VERL_VERSION}")
PATHOLOGICAL = "so the answer is \\boxed{9^{9^{9^{9}}}}"  # math-verify never returns on it without its timeout


@pytest.fixture(scope="module")
def verl_src():
    """The root of the installed verl package, importable submodule by submodule."""
    root = Path(list(importlib.util.find_spec("verl").submodule_search_locations)[0])
    added = "verl" not in sys.modules
    if added:
        spec = importlib.util.spec_from_file_location("verl", root / "__init__.py", submodule_search_locations=[str(root)])
        pkg = importlib.util.module_from_spec(spec)
        pkg.DataProto = object  # only named by verl.trainer.ppo.reward's imports
        sys.modules["verl"] = pkg
    yield root
    if added:
        for name in [n for n in sys.modules if n == "verl" or n.startswith("verl.")]:
            del sys.modules[name]


def verl_function(path: Path, name: str, namespace: dict):
    """One top-level function of a verl source file, compiled on its own into namespace."""
    node = next(n for n in ast.parse(path.read_text()).body if isinstance(n, ast.FunctionDef) and n.name == name)
    exec(compile(ast.Module(body=[node], type_ignores=[]), str(path), "exec"), namespace)
    return namespace[name]


def builder_for(model_dir: Path, chat_template: str | None = None):
    """verl's rollout prompt builder for a model directory, built as its agent loop builds it: verl's hf_tokenizer,
    custom_chat_template set on it (workers/config/model.py), the family from config.json's model_type."""
    from verl.utils.tokenizer import hf_tokenizer
    from verl.utils.tokenizer.continuous_token_wiring import create_continuous_token_builder

    tok = hf_tokenizer(str(model_dir))
    if chat_template is not None:
        tok.chat_template = chat_template
    model_type = json.loads((model_dir / "config.json").read_text())["model_type"]
    return create_continuous_token_builder(tok, hf_model_type=model_type)


# ----------------------------------------------------------------------------------------------------
# The tokenizer: verl's Qwen prompt builder and its apply_chat_template call


@needs_verl
def test_verl_raises_on_exactly_the_tokenizers_the_launcher_refuses(verl_src, tmp_path):
    """The embedded tokenizer and variants with and without a newline token and '<|im_end|>': verl's own Qwen
    builder raises (inside its rollout workers, GPU started) on exactly the ones our check refuses before anything
    starts, and accepts the embedded one."""
    from rlvr_nb.models import ModelConfig, build_model, build_tokenizer

    embedded = tmp_path / "embedded"
    build_model(ModelConfig(), build_tokenizer()).save_pretrained(embedded)
    build_tokenizer().save_pretrained(embedded)
    dirs = {"embedded": embedded,
            **{f"newline={n}, im_end={e}": write_model(tmp_path / f"m{n:d}{e:d}", newline=n, im_end=e)
               for n in (False, True) for e in (False, True)}}
    fmt = PromptFormat("", CONTENT_ONLY_TEMPLATE)
    verdicts = {}
    for name, d in dirs.items():
        try:
            builder_for(d, CONTENT_ONLY_TEMPLATE)
            verl_ok = True
        except ValueError as e:
            verl_ok = False
            assert re.search(r"Expected Qwen newline to tokenize to one token|does not define required token", str(e))
        try:
            check_tokenizer(d, fmt, "12+34=")
            ours_ok = True
        except ValueError as e:
            ours_ok = False
            assert str(e).startswith(f"verl {VERL_VERSION} would fail on the model at {d}")
        verdicts[name] = (verl_ok, ours_ok)
    assert all(v == o for v, o in verdicts.values()), verdicts
    assert verdicts["embedded"] == (True, True) and verdicts["newline=True, im_end=True"] == (True, True)


@needs_verl
def test_verl_raises_in_apply_chat_template_on_file_data_without_a_template(verl_src, tmp_path):
    model = write_model(tmp_path / "model", chat_template=None)
    messages = resolve(VerlRunConfig(train_data="x.jsonl")).prompt_format.messages("What is 1+1?")
    with pytest.raises(ValueError, match="chat_template is not set"):
        builder_for(model).build_initial_tokens(messages)  # what verl's rollout does with each file-data row
    with pytest.raises(ValueError, match=f"model at {model} .*\n  - its tokenizer has no usable chat template"):
        check_tokenizer(model, PromptFormat("", None), "What is 1+1?")
    builder_for(model, CONTENT_ONLY_TEMPLATE).build_initial_tokens(messages)  # the embedded task's template: fine


# ----------------------------------------------------------------------------------------------------
# One prompt format: verl's tokens for a training row are the tokens we evaluate on


def verl_dataset(parquet: Path, model: Path, tmp_path: Path, monkeypatch, **data):
    """verl's RLHFDataset on a parquet file, configured by the packaged config's data section and `data`."""
    import datasets
    from omegaconf import OmegaConf
    from verl.utils.dataset.rl_dataset import RLHFDataset

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    cfg = OmegaConf.load(Path(sys.modules["verl"].__path__[0]) / "trainer/config/_generated_ppo_trainer.yaml").data
    cfg = OmegaConf.merge(cfg, {"cache_dir": str(tmp_path / "verl-cache"), **data})
    return RLHFDataset(str(parquet), verl_tokenizer(model, PromptFormat()), cfg)


@needs_verl
@pytest.mark.parametrize("data", ["file", "embedded"])
def test_training_rows_and_evaluation_prompts_are_the_same_tokens(verl_src, tmp_path, monkeypatch, data):
    model = write_model(tmp_path / "model")
    f = math_file(tmp_path / "math.jsonl")
    kw = dict(train_data=str(f), max_prompt_length=128) if data == "file" else {}
    run = prepare_run(tiny_cfg(model, tmp_path / "run", **kw), validate_against_verl=False)
    ingest_verl_checkpoints(run.files.verl_checkpoints, run.files.root, model)  # step_0: the model itself
    fmt = resolve(run.cfg).prompt_format
    rows = verl_dataset(run.files.train, model, tmp_path, monkeypatch)
    builder = builder_for(model, fmt.chat_template)
    if data == "file":
        evals = heldout_problems(f, run.files.root)  # 05 / 06 at gpu
        assert evals[0].prompt.startswith("What is 0+1? Let's think step by step") and evals[0].answer == "1"
    else:  # the embedded task is evaluated on its raw prompts, which the content-only template leaves as they are
        evals = [Problem(rows[i]["extra_info"]["question"], "") for i in range(4)]
    tok = verl_tokenizer(model, fmt)
    for i in range(4):
        verl_ids = builder.build_initial_tokens(rows[i]["raw_prompt"])
        ours = encode_prompts(tok, [evals[i].prompt])[0][0].tolist()
        assert verl_ids == ours and len(ours) > 0
    if data == "file":  # the raw question, as 05 / 06 evaluated before, is not what training saw
        assert encode_prompts(tok, ["What is 0+1?"])[0][0].tolist() != builder.build_initial_tokens(rows[0]["raw_prompt"])


@needs_verl
def test_verl_does_not_refuse_long_prompts_whatever_data_truncation_says(verl_src, tmp_path, monkeypatch):
    """In 0.9.1 RLHFDataset reads data.truncation and never uses it, and filter_overlong_prompts is off: a prompt
    over max_prompt_length reaches the rollout, which left-truncates it. The launcher refuses it instead."""
    model = write_model(tmp_path / "model")
    f = tmp_path / "long.jsonl"
    f.write_text(json.dumps({"question": "1+" * 60 + "1=", "answer": "61"}) + "\n")
    with pytest.raises(ValueError, match="longer than max_prompt_length=32"):
        prepare_run(tiny_cfg(model, tmp_path / "run", train_data=str(f), max_prompt_length=32),
                    validate_against_verl=False)
    run = prepare_run(tiny_cfg(model, tmp_path / "run", train_data=str(f), max_prompt_length=256),
                      validate_against_verl=False)
    rows = verl_dataset(run.files.train, model, tmp_path, monkeypatch, max_prompt_length=32, truncation="error")
    assert len(rows) == 1 and len(builder_for(model).build_initial_tokens(rows[0]["raw_prompt"])) > 32  # kept, no error
    src = (verl_src / "utils" / "dataset" / "rl_dataset.py").read_text()
    assert src.count("self.truncation") == 1  # assigned, read nowhere
    loop = (verl_src / "experimental" / "agent_loop" / "agent_loop.py").read_text()
    assert "left-truncating" in loop and "return prompt_ids[-prompt_length:]" in loop


# ----------------------------------------------------------------------------------------------------
# Dr. GRPO: verl's agg_loss with and without loss_scale_factor


@needs_verl
def test_dr_grpo_loss_is_independent_of_padding_only_with_loss_scale_factor(verl_src):
    ns: dict = {"torch": torch, "Optional": Optional}
    ns["verl_F"] = type("verl_F", (), {"masked_sum": staticmethod(
        verl_function(verl_src / "utils" / "torch_functional.py", "masked_sum", {"torch": torch}))})
    agg_loss = verl_function(verl_src / "trainer" / "ppo" / "core_algos.py", "agg_loss", ns)
    g = torch.Generator().manual_seed(0)
    loss, lengths = torch.randn(4, 8, generator=g), torch.tensor([3, 8, 5, 1])
    factor = int(VerlRunConfig(adv_estimator="dr_grpo").max_response_length)

    def at_width(width, scale):  # the same sequences in a micro-batch padded to `width`
        mat = torch.zeros(4, width)
        mat[:, :8] = loss
        mask = (torch.arange(width)[None] < lengths[:, None]).float()
        return agg_loss(mat, mask, "seq-mean-token-sum-norm", loss_scale_factor=scale)

    assert not torch.isclose(at_width(8, None), at_width(12, None))  # verl's default: divides by the padded width
    torch.testing.assert_close(at_width(8, factor), at_width(12, factor))
    overrides = dict(o.split("=", 1) for o in build_overrides(
        VerlRunConfig(model_path="m", output_dir="o", adv_estimator="dr_grpo"), 1000))
    assert overrides["actor_rollout_ref.actor.loss_scale_factor"] == str(factor)


# ----------------------------------------------------------------------------------------------------
# The reward: loaded and called as verl's reward manager does, in a thread


def test_math_grader_in_a_thread_is_unbounded():
    """The premise: in a thread, math-verify's timeouts are off and a pathological answer does not return (it even
    holds the GIL, so a thread waiting with a timeout does not get to run: only another process bounds it)."""
    code = ("import os, threading\nfrom rlvr_nb.grading import math_grader\n"
            f"t = threading.Thread(target=math_grader, args=({PATHOLOGICAL!r}, '4'), daemon=True)\n"
            "t.start(); t.join(3); print('hung' if t.is_alive() else 'returned', flush=True); os._exit(0)\n")
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=15).stdout
    except subprocess.TimeoutExpired:  # killed: not even the main thread's join(3) came back
        out = "hung"
    assert out.strip() == "hung"


@needs_verl
def test_reward_is_bounded_in_verls_reward_threads(verl_src, tmp_path, init_dir):
    from omegaconf import OmegaConf
    from verl.trainer.ppo.reward import get_custom_reward_fn

    run = prepare_run(tiny_cfg(init_dir, tmp_path / "run", train_data=str(math_file(tmp_path / "m.jsonl")),
                               max_prompt_length=128), validate_against_verl=False)
    ov = dict(o.split("=", 1) for o in run.command[3:])
    fn = get_custom_reward_fn(OmegaConf.create({"reward": {"custom_reward_function": {
        "path": ov["reward.custom_reward_function.path"], "name": ov["reward.custom_reward_function.name"]}}}))
    naive = (verl_src / "experimental" / "reward_loop" / "reward_manager" / "naive.py").read_text()
    assert re.search(r"run_in_executor\(\s*None,\s*lambda: self\.compute_score\(\s*data_source=data_source,"
                     r"\s*solution_str=response_str,\s*ground_truth=ground_truth,\s*extra_info=extra_info", naive)

    async def manager(responses):  # NaiveRewardManager.run_single's call, one task per response
        loop = asyncio.get_running_loop()
        calls = [loop.run_in_executor(None, lambda r=r: fn(data_source="rlvr_nb/m", solution_str=r, ground_truth="1/2",
                                                          extra_info={"index": 0})) for r in responses]
        return await asyncio.wait_for(asyncio.gather(*calls), timeout=90)

    t0 = time.monotonic()
    scores = asyncio.run(manager([PATHOLOGICAL, "\\boxed{0.5}", "\\boxed{2}", "no box"]))
    assert scores == [0.0, 1.0, 0.0, 0.0] and time.monotonic() - t0 < 90


def test_a_grading_process_imports_neither_torch_nor_transformers():
    """What a grading child imports (`serve`: rlvr_nb.grading and math-verify): no torch, so that it starts in
    under a second (it took ~5 s when the graders lived in rlvr_nb.evaluate)."""
    code = ("import sys, rlvr_nb.backends.verl_reward, rlvr_nb.grading, math_verify\n"
            "print(sorted({'torch', 'transformers', 'numpy'} & set(sys.modules)))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.strip() == "[]"


def test_grader_pool_kills_a_grading_that_does_not_answer():
    pool = GraderPool(size=1, hard_timeout=2.0)
    try:
        assert pool.grade("\\boxed{1/2}", "0.5") == 1.0
        t0 = time.monotonic()
        assert pool.grade(PATHOLOGICAL, "4") == 0.0 and time.monotonic() - t0 < 4 and pool.timeouts == 1
        assert pool.grade("\\boxed{3}", "3") == 1.0  # a fresh grading process took the killed one's place
    finally:
        pool.close()


# ----------------------------------------------------------------------------------------------------
# The gpu profile's data files; the training table of a verl run


def test_gpu_profile_requires_and_checks_its_data_files(tmp_path):
    from rlvr_nb.notebook import profiles

    good = math_file(tmp_path / "math.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"problem": "1+1", "solution": "2"}) + "\n")
    with pytest.raises(ValueError, match="01_training at profile gpu needs data_path: .* embedded task"):
        profiles.resolve("01_training", "gpu")  # the profile's default data_path is ""
    with pytest.raises(FileNotFoundError, match="data_path .*nope.jsonl: no such file"):
        profiles.resolve("01_training", "gpu", data_path=str(tmp_path / "nope.jsonl"))
    with pytest.raises(ValueError, match=r"data_path .*bad.jsonl, line 1: no 'question' or 'answer'"):
        profiles.resolve("01_training", "gpu", data_path=str(bad))
    assert profiles.resolve("01_training", "gpu", data_path=str(good)).data_path == str(good)
    with pytest.raises(ValueError, match="06_rl_extra at profile gpu needs eval_data"):
        profiles.resolve("06_rl_extra", "gpu", data_path=str(good))
    profiles.resolve("06_rl_extra", "gpu", data_path=str(good), eval_data=str(good))
    profiles.resolve("05_extrapolation", "gpu")  # the embedded run on the embedded task
    with pytest.raises(ValueError, match="05_extrapolation at profile gpu needs eval_data"):
        profiles.resolve("05_extrapolation", "gpu", run_dir=str(tmp_path))
    with pytest.raises(ValueError, match="eval_data .*bad.jsonl"):
        profiles.resolve("05_extrapolation", "gpu", eval_data=str(bad))
    profiles.resolve("01_training", "cpu")  # other profiles: no data files


def test_training_table_of_a_verl_run(tmp_path, init_dir):
    from rlvr_nb.experiments.training import NO_HELDOUT, accuracy_table, plot_training, training_metrics
    from test_verl_launcher import fabricate_verl_tree

    run = tmp_path / "run"
    fabricate_verl_tree(run / "verl_checkpoints", init_dir, steps=(2, 4))
    (run / "verl_metrics.jsonl").write_text("".join(json.dumps({"step": s, "data": {
        "critic/score/mean": s / 10, "response_length/mean": 5.0 + s, "actor/entropy": 1.0 / s}}) + "\n" for s in (1, 2, 3, 4)))
    ingest_verl_checkpoints(run / "verl_checkpoints", run, init_dir, run / "verl_metrics.jsonl")
    assert [m["reward"] for m in training_metrics(run)] == [0.1, 0.2, 0.3, 0.4]
    assert accuracy_table({"RL (verl)": run}) == [{"run": "RL (verl)", "steps": 4, "training reward: start": 0.1,
                                                   "training reward: end": 0.4, "held-out accuracy": NO_HELDOUT}]
    (run / "verl_metrics.jsonl").unlink()  # verl's metrics file gone: what was ingested with the checkpoints
    assert [(m["step"], m["reward"]) for m in training_metrics(run)] == [(2, 0.2), (4, 0.4)]
    plot_training({"RL (verl)": run}, window=1)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=f"run 'x' at {empty} has no metrics"):
        accuracy_table({"x": empty})


# ----------------------------------------------------------------------------------------------------
# The GPU environment: verl's FSDP model patch and trl


@needs_verl
def test_verl_builds_no_actor_where_trl_1_is_installed_so_the_gpu_environment_has_no_trl(verl_src, monkeypatch):
    """verl 0.9.1's apply_monkey_patch, run on every model its FSDP workers build, imports
    AutoModelForCausalLMWithValueHead whenever trl is importable; trl 1.x no longer has it (verl's fsdp extra pins
    trl==0.27.0). environment.yml therefore installs no trl, neither itself nor through our `test` extra."""
    import yaml

    import verl.models.transformers.monkey_patch as mp
    from rlvr_nb.models import ModelConfig, build_model, build_tokenizer

    model = build_model(ModelConfig(), build_tokenizer())
    trl = importlib.util.find_spec("trl")
    if trl is not None and int(__import__("trl").__version__.split(".")[0]) >= 1:
        with pytest.raises(ImportError, match="AutoModelForCausalLMWithValueHead"):
            mp.apply_monkey_patch(model=model, use_remove_padding=False, ulysses_sp_size=1)
    monkeypatch.setattr(mp, "is_trl_available", lambda: False)  # the GPU environment: no trl
    mp.apply_monkey_patch(model=model, use_remove_padding=False, ulysses_sp_size=1)
    env = yaml.safe_load((Path(__file__).resolve().parents[1] / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "verl[vllm]==0.9.1" in pip and "vllm==0.24.0" in pip
    assert not [p for p in pip if p.startswith("trl") or "[test" in p or "fsdp" in p], pip
