"""The verl launcher and its config without a GPU: every override key checked against verl's own packaged config
(OmegaConf struct mode), the estimator mapping checked against verl's source, dry runs (data parquet,
reward file, command), the subprocess plumbing with a stand-in command, and ingestion of a fabricated verl
checkpoint tree (FSDP shards + huggingface/).

The config checks need verl's wheel installed without its dependencies:
    .venv/bin/pip install --no-deps verl==0.9.1
"""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import rlvr_nb.backends.verl_launcher as vl
from rlvr_nb.checkpoint_files import VERL_TRACKER, CheckpointError, find_checkpoints, verl_merge_command
from rlvr_nb.grpo import RLConfig
from rlvr_nb.models import ModelConfig, build_model, build_tokenizer, load_model
from rlvr_nb.tasks import TaskConfig
from rlvr_nb.backends.verl_config import (
    ADV_ESTIMATORS, CONTENT_ONLY_TEMPLATE, ESTIMATORS, VERL_VERSION, RunFiles, VerlRunConfig, build_overrides, hydra_value,
    installed_verl_version, resolve, validate_overrides, validate_verl_config)
from rlvr_nb.backends.verl_launcher import (VerlRun, complete_verl_checkpoints, ingest_verl_checkpoints, launch, main,
                                            prepare_run, train_block_verl)

HAVE_VERL = importlib.util.find_spec("verl") is not None
needs_verl = pytest.mark.skipif(not HAVE_VERL, reason=f"verl not installed: pip install --no-deps verl=={VERL_VERSION}")


CHAT_TEMPLATE = "{% for m in messages %}{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}={% endif %}"


def write_model(d: Path, newline: bool = True, im_end: bool = True, chat_template: str | None = CHAT_TEMPLATE) -> Path:
    """A tiny Qwen2 (model_type qwen2) whose tokenizer is the embedded one with, as asked, or without "\\n" as a
    token, '<|im_end|>' as a token (else '<eos>' ends a response) and a chat template: with all three it is a model
    verl 0.9.1's rollout accepts (the embedded default has all three)."""
    from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer
    from rlvr_nb.models import CHARS, NEWLINE

    eos = "<|im_end|>" if im_end else "<eos>"
    vocab = {"<|endoftext|>": 0, eos: 1, **{c: i + 2 for i, c in enumerate(CHARS)}, **({NEWLINE: 14} if newline else {})}
    tok = Qwen2Tokenizer(vocab=vocab, merges=[], eos_token=eos, padding_side="left")
    if chat_template is not None:
        tok.chat_template = chat_template
    build_model(ModelConfig(), tok).save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def init_dir(tmp_path_factory) -> Path:
    return write_model(tmp_path_factory.mktemp("init"))


@pytest.fixture(scope="module")
def embedded_dir(tmp_path_factory) -> Path:
    """The embedded default model and tokenizer as they are (rlvr_nb.models)."""
    d = tmp_path_factory.mktemp("embedded")
    tok = build_tokenizer()
    build_model(ModelConfig(), tok).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def tiny_cfg(init_dir: Path, out: Path, **kw) -> VerlRunConfig:
    kw = {"max_prompt_length": 16, **kw}
    return VerlRunConfig(model_path=str(init_dir), output_dir=str(out), steps=6, prompts_per_step=4, group_size=4,
                         max_response_length=6, ckpt_every=2, **kw)


def math_file(path: Path, n: int = 8) -> Path:
    path.write_text("".join(json.dumps({"question": f"What is {i}+1?", "answer": str(i + 1)}) + "\n" for i in range(n)))
    return path


def as_dict(overrides: list[str]) -> dict[str, str]:
    return dict(o.split("=", 1) for o in overrides)


# ----------------------------------------------------------------------------------------------------
# Overrides against verl's packaged config


@needs_verl
def test_installed_verl_is_the_validated_version():
    assert installed_verl_version() == VERL_VERSION


@needs_verl
@pytest.mark.parametrize("estimator", ADV_ESTIMATORS)
@pytest.mark.parametrize("data", ["embedded", "file"])
def test_every_override_key_is_known_to_verl(tmp_path, init_dir, estimator, data):
    kw = {}
    if data == "file":
        kw = dict(train_data=str(math_file(tmp_path / "math.jsonl")), save_resumable=True, max_prompt_length=128,
                  attn_implementation="flash_attention_2")
    run = prepare_run(tiny_cfg(init_dir, tmp_path / "run", adv_estimator=estimator, **kw), validate_against_verl=False)
    overrides = run.command[3:]
    assert len(overrides) > 40
    validate_overrides(overrides)  # raises on any key verl does not know


@needs_verl
def test_unknown_keys_and_wrong_kinds_fail(tmp_path, init_dir):
    run = prepare_run(tiny_cfg(init_dir, tmp_path / "run"), validate_against_verl=False)
    good = run.command[3:]
    bad = ["actor_rollout_ref.actor.no_such_key=1", "trainer.save_frequency=5",
           "trainer.save_freq=often", "actor_rollout_ref.rollout.n=[1,2]",
           "+trainer.save_freq=3"]
    with pytest.raises(ValueError) as e:
        validate_overrides(good + bad)
    msg = str(e.value)
    assert msg.startswith("5 override(s)")
    for key in ("actor_rollout_ref.actor.no_such_key", "trainer.save_frequency", "trainer.save_freq",
                "actor_rollout_ref.rollout.n"):
        assert key in msg
    with pytest.raises(ValueError, match="no_such"):  # a launch validates before running anything
        prepare_run(replace(tiny_cfg(init_dir, tmp_path / "run2"), extra_overrides=("data.no_such=1",)))


@needs_verl
def test_estimator_mapping_names_exist_in_verl_source():
    root = Path(list(importlib.util.find_spec("verl").submodule_search_locations)[0])
    core = (root / "trainer" / "ppo" / "core_algos.py").read_text()
    estimators = set(re.findall(r'^\s+[A-Z_]+ = "([a-z_]+)"', core.split("class AdvantageEstimator")[1].split("\n\n\n")[0], re.M))
    losses = set(re.findall(r'@register_policy_loss\("([a-z_]+)"\)', core))
    actor = (root / "workers" / "config" / "actor.py").read_text()
    aggs = set(re.findall(r'"((?:token|seq)-[a-z-]+)"', actor.split("valid_loss_agg_modes")[1].split("]")[0]))
    for verl_est, loss, _, agg, _, _ in ESTIMATORS.values():
        assert verl_est in estimators and loss in losses and agg in aggs


def test_estimator_mapping():
    def ov(est, **kw):
        cfg = VerlRunConfig(model_path="m", output_dir="o", adv_estimator=est, **kw)
        return as_dict(build_overrides(cfg, n_train=1000))

    g, d, r, s = ov("grpo"), ov("dr_grpo"), ov("reinforce_pp"), ov("gspo")
    assert g["algorithm.adv_estimator"] == "grpo" and g["algorithm.norm_adv_by_std_in_grpo"] == "true"
    assert g["actor_rollout_ref.actor.loss_agg_mode"] == "seq-mean-token-mean"  # the paper's setting
    assert g["actor_rollout_ref.actor.clip_ratio_high"] == "0.28"
    assert d["algorithm.norm_adv_by_std_in_grpo"] == "false"
    assert d["actor_rollout_ref.actor.loss_agg_mode"] == "seq-mean-token-sum-norm"
    assert r["algorithm.adv_estimator"] == "reinforce_plus_plus"
    assert s["actor_rollout_ref.actor.policy_loss.loss_mode"] == "gspo" and s["algorithm.adv_estimator"] == "grpo"
    assert float(s["actor_rollout_ref.actor.clip_ratio_low"]) == 3e-4
    assert g["actor_rollout_ref.actor.checkpoint.save_contents"] == "[hf_model]"
    assert g["trainer.resume_mode"] == "disable" and g["trainer.total_epochs"] == str(1000 * 128 // 1000)
    assert ov("grpo", clip_high=0.3, loss_agg="token-mean")["actor_rollout_ref.actor.loss_agg_mode"] == "token-mean"
    # Dr. GRPO divides by the longest response, a constant; the other modes do not read loss_scale_factor
    assert d["actor_rollout_ref.actor.loss_scale_factor"] == "16384" == str(VerlRunConfig().max_response_length)
    assert all("actor_rollout_ref.actor.loss_scale_factor" not in o for o in (g, r, s))
    # every prompt is checked to fit before verl starts; verl 0.9.1 reads data.truncation nowhere
    assert "data.truncation" not in g and g["data.filter_overlong_prompts"] == "false"


def test_validate_rejects_bad_configs():
    ok = VerlRunConfig(model_path="m", output_dir="o")
    validate_verl_config(ok)
    for bad, match in [(dict(adv_estimator="ppo"), "adv_estimator"),
                       (dict(adv_estimator="dr_grpo", loss_agg="token-mean"), "dr_grpo"),
                       (dict(n_gpus=3, prompts_per_step=5, group_size=2), "divisible"),
                       (dict(n_gpus=2, rollout_tp=4), "multiple"),
                       (dict(group_size=1), "group_size"),
                       (dict(model_path=""), "model_path"),
                       (dict(extra_overrides=("novalue",)), "key=value")]:
        with pytest.raises(ValueError, match=match):
            validate_verl_config(replace(ok, **bad))


def test_hydra_values():
    assert hydra_value(True) == "true" and hydra_value(None) == "null" and hydra_value(1e-6) == "1e-06"
    assert hydra_value(["console", "file"]) == "[console,file]"
    assert hydra_value("/a/b-c/train.parquet") == "/a/b-c/train.parquet"
    assert hydra_value("has space") == "'has space'"
    assert hydra_value("123") == "'123'" and hydra_value("null") == "'null'"  # strings stay strings
    assert hydra_value("{{ m['content'] }}") == "\"{{ m['content'] }}\""
    for bad in ("a'b\"c", "a\\b", "${x}"):
        with pytest.raises(ValueError):
            hydra_value(bad)


# ----------------------------------------------------------------------------------------------------
# Dry runs: data, reward file, command


def test_dry_run_writes_verl_data_reward_and_command(tmp_path, init_dir, capsys):
    out = tmp_path / "run"
    run = main(["--model_path", str(init_dir), "--output_dir", str(out), "--steps", "6", "--prompts_per_step", "4",
                "--group_size", "4", "--max_prompt_length", "16", "--max_response_length", "6", "--ckpt_every", "2",
                "--adv_estimator", "dr_grpo", "--dry-run"])
    printed = capsys.readouterr().out
    assert "-m verl.trainer.main_ppo" in printed and "algorithm.adv_estimator=grpo" in printed
    assert run.returncode is None and not (out / "verl.log").exists()  # nothing ran
    import pyarrow.parquet as pq

    rows = pq.read_table(out / "data" / "train.parquet").to_pylist()
    assert len(rows) == 6 * 4  # one epoch of fresh problems, as many as the steps consume
    r = rows[0]
    assert r["prompt"][0]["role"] == "user" and re.fullmatch(r"\d{3}\+\d{3}=", r["prompt"][0]["content"])
    assert r["reward_model"]["style"] == "rule" and r["data_source"] == "rlvr_nb/addition3"
    a, b = map(int, r["prompt"][0]["content"][:-1].split("+"))
    assert r["reward_model"]["ground_truth"] == str(a + b).zfill(4)[::-1]
    assert r["extra_info"]["split"] == "train"
    assert len(pq.read_table(out / "data" / "val.parquet")) == 512  # the task's held-out split
    spec = importlib.util.spec_from_file_location("reward", out / "reward.py")
    reward = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reward)
    truth = r["reward_model"]["ground_truth"]
    assert reward.compute_score(r["data_source"], truth, truth) == 1.0
    assert reward.compute_score(r["data_source"], truth + "1", truth) == 0.0
    launch_info = json.loads((out / "launch.json").read_text())
    assert launch_info["resolved"]["loss_agg"] == "seq-mean-token-sum-norm"
    assert "custom_chat_template" in (out / "command.sh").read_text()


def test_math_file_data_uses_boxed_instruction_and_math_grader(tmp_path, init_dir):
    f = tmp_path / "math.jsonl"
    f.write_text("".join(json.dumps({"problem": f"Compute {i}/2.", "solution": f"{i}/2"}) + "\n" for i in range(1, 9)))
    with pytest.raises(ValueError, match=r"line 1: no 'question' or 'answer'; its columns are \['problem', 'solution'\]"):
        prepare_run(tiny_cfg(init_dir, tmp_path / "bad", train_data=str(f)), validate_against_verl=False)
    assert not (tmp_path / "bad").exists()  # refused before anything was written
    cfg = tiny_cfg(init_dir, tmp_path / "run", train_data=str(f), question_key="problem", answer_key="solution",
                   max_prompt_length=128)
    run = prepare_run(cfg, validate_against_verl=False)
    import pyarrow.parquet as pq

    rows = pq.read_table(run.files.train).to_pylist()
    assert rows[0]["prompt"][0]["content"].endswith("\\boxed{}.") and len(rows) == 8
    ov = as_dict(run.command[3:])
    assert "actor_rollout_ref.model.custom_chat_template" not in ov  # the model's own template
    assert ov["trainer.total_epochs"] == "3"  # 6 steps x 4 prompts over 8 rows
    spec = importlib.util.spec_from_file_location("reward_math", run.files.reward)
    reward = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reward)
    assert reward.compute_score("x", "so the answer is \\boxed{0.5}", "1/2") == 1.0
    assert reward.compute_score("x", "so the answer is \\boxed{2}", "1/2") == 0.0


def test_refuses_a_run_directory_with_checkpoints(tmp_path, init_dir):
    out = tmp_path / "run"
    (out / "verl_checkpoints" / "global_step_2").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="fresh"):
        prepare_run(tiny_cfg(init_dir, out), validate_against_verl=False)
    with pytest.raises(FileNotFoundError):
        prepare_run(tiny_cfg(tmp_path / "nope", tmp_path / "run2"), validate_against_verl=False)


# ----------------------------------------------------------------------------------------------------
# verl checkpoints -> our layout; the subprocess


def fabricate_verl_tree(root: Path, init_dir: Path, steps=(2, 4, 6), tracker: int | None = -1) -> dict[int, torch.Tensor]:
    """What verl 0.9.1 writes with save_contents=[..., hf_model]: FSDP shards beside actor/huggingface/, and
    after each checkpoint its step in latest_checkpointed_iteration.txt (tracker; -1: the last step)."""
    tok = build_tokenizer()
    heads = {}
    for s in steps:
        actor = root / f"global_step_{s}" / "actor"
        (actor / "model_world_size_1_rank_0.pt").parent.mkdir(parents=True, exist_ok=True)
        (actor / "model_world_size_1_rank_0.pt").write_bytes(b"FSDP shard (never read)")
        m = load_model(init_dir)
        with torch.no_grad():
            m.lm_head.weight.add_(0.01 * s)
        m.save_pretrained(actor / "huggingface")
        tok.save_pretrained(actor / "huggingface")
        heads[s] = m.lm_head.weight.detach().clone()
    if tracker is not None:
        (root / VERL_TRACKER).write_text(str(max(steps) if tracker == -1 else tracker))
    return heads


def test_ingest_fabricated_verl_checkpoint_tree(tmp_path, init_dir):
    verl_dir = tmp_path / "run" / "verl_checkpoints"
    heads = fabricate_verl_tree(verl_dir, init_dir)
    metrics = tmp_path / "run" / "verl_metrics.jsonl"
    metrics.write_text("".join(json.dumps({"step": s, "data": {"critic/score/mean": s / 10}}) + "\n" for s in range(1, 7)))
    out = ingest_verl_checkpoints(verl_dir, tmp_path / "run", init_dir, metrics)
    assert [s for s, _ in out] == [0, 2, 4, 6]
    assert [s for s, _ in find_checkpoints(tmp_path / "run", "rlvr-nb")] == [0, 2, 4, 6]  # our layout, read by our code
    for s in (2, 4, 6):
        torch.testing.assert_close(load_model(tmp_path / "run" / "checkpoints" / f"step_{s}").lm_head.weight, heads[s])
    state = json.loads((tmp_path / "run" / "checkpoints" / "step_4" / "trainer_state.json").read_text())
    assert state["step"] == 4 and state["metrics"]["critic/score/mean"] == 0.4
    assert state["path"] == "verl_checkpoints/global_step_4/actor/huggingface"  # relative inside the run
    assert not os.readlink(tmp_path / "run" / "checkpoints" / "step_4" / "model.safetensors").startswith("/")
    moved = tmp_path / "moved"  # relative links: the run directory can be renamed or moved
    (tmp_path / "run").rename(moved)
    torch.testing.assert_close(load_model(moved / "checkpoints" / "step_6").lm_head.weight, heads[6])


def add_fsdp_only_step(verl_dir: Path, step: int) -> Path:
    actor = verl_dir / f"global_step_{step}" / "actor"
    actor.mkdir(parents=True)
    (actor / "model_world_size_1_rank_0.pt").write_bytes(b"x")
    return actor


def test_ingest_refuses_an_fsdp_only_step_with_the_merge_command(tmp_path, init_dir):
    verl_dir = tmp_path / "run" / "verl_checkpoints"
    fabricate_verl_tree(verl_dir, init_dir, steps=(2,))
    actor = add_fsdp_only_step(verl_dir, 4)
    (verl_dir / VERL_TRACKER).write_text("4")  # verl finished step 4: complete, but without HF weights
    with pytest.raises(CheckpointError) as err:
        ingest_verl_checkpoints(verl_dir, tmp_path / "run", init_dir)
    assert verl_merge_command(actor) in str(err.value)
    assert f"--local_dir {actor} --target_dir {actor / 'huggingface'}" in str(err.value)
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing written


def test_ingest_skips_steps_past_verls_tracker(tmp_path, init_dir):
    """Steps after the one in latest_checkpointed_iteration.txt are still being written by verl: an FSDP-only
    one is not an error and a complete-looking one is not ingested yet."""
    verl_dir = tmp_path / "run" / "verl_checkpoints"
    fabricate_verl_tree(verl_dir, init_dir, steps=(2, 4, 6), tracker=4)
    add_fsdp_only_step(verl_dir, 8)
    out = ingest_verl_checkpoints(verl_dir, tmp_path / "run", init_dir)
    assert [s for s, _ in out] == [0, 2, 4] and not (tmp_path / "run" / "checkpoints" / "step_6").exists()
    (verl_dir / VERL_TRACKER).write_text("6")  # verl got further: step 6 now counts, step 8 still does not
    assert [s for s, _ in ingest_verl_checkpoints(verl_dir, tmp_path / "run", init_dir)] == [0, 2, 4, 6]
    (verl_dir / VERL_TRACKER).unlink()  # no tracker at all (verl's async_save): which steps are complete is unknown
    shutil.rmtree(verl_dir / "global_step_8")
    with pytest.raises(CheckpointError, match=f"no readable {VERL_TRACKER}"):
        complete_verl_checkpoints(verl_dir)


def snapshot(run: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime_ns) of every step directory and file under run/checkpoints (links not followed)."""
    return {str(p.relative_to(run)): (p.lstat().st_ino, p.lstat().st_mtime_ns) for p in sorted((run / "checkpoints").rglob("*"))}


def test_ingest_twice_is_idempotent_and_atomic(tmp_path, init_dir, monkeypatch):
    run = tmp_path / "run"
    verl_dir = run / "verl_checkpoints"
    fabricate_verl_tree(verl_dir, init_dir)
    metrics = run / "verl_metrics.jsonl"
    metrics.write_text("".join(json.dumps({"step": s, "data": {"score": s}}) + "\n" for s in (2, 4)) + '{"step": 6, "da')
    first = ingest_verl_checkpoints(verl_dir, run, init_dir, metrics)  # a cut-off last metrics line is left out
    before = snapshot(run)
    assert ingest_verl_checkpoints(verl_dir, run, init_dir, metrics) == first
    assert snapshot(run) == before  # nothing rewritten, not even in place
    assert not [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]  # no temporary left
    # step 6's metrics arrive: its directory is replaced as a whole (a new trainer_state.json, not the old one rewritten)
    metrics.write_text(metrics.read_text().rsplit("\n", 1)[0] + "\n" + json.dumps({"step": 6, "data": {"score": 6}}) + "\n")
    ingest_verl_checkpoints(verl_dir, run, init_dir, metrics)
    after = snapshot(run)
    assert json.loads((run / "checkpoints/step_6/trainer_state.json").read_text())["metrics"] == {"score": 6}
    assert after["checkpoints/step_6/trainer_state.json"] != before["checkpoints/step_6/trainer_state.json"]
    assert {k: v for k, v in after.items() if "step_6" not in k} == {k: v for k, v in before.items() if "step_6" not in k}
    # killed while building step 4 of a fresh ingestion: steps 0 and 2 are complete, step 4 does not exist
    real_write_json = vl.write_json

    def dies_at_step_4(path, obj, *a, **kw):
        if obj.get("step") == 4:
            raise KeyboardInterrupt
        return real_write_json(path, obj, *a, **kw)

    monkeypatch.setattr(vl, "write_json", dies_at_step_4)
    other = tmp_path / "other"
    with pytest.raises(KeyboardInterrupt):
        ingest_verl_checkpoints(verl_dir, other, init_dir)
    assert sorted(p.name for p in (other / "checkpoints").iterdir()) == ["step_0", "step_2"]


def fake_verl(calls: list):
    """A stand-in for run_verl that writes what a finished run ingests: step_0 (the start model) and step_m."""
    def run_verl(cfg, dry_run=False, progress=True):
        calls.append(cfg)
        for step in (0, cfg.steps):
            d = Path(cfg.output_dir) / "checkpoints" / f"step_{step}"
            shutil.copytree(cfg.model_path, d)
            (d / "trainer_state.json").write_text(json.dumps({"step": step}))
    return run_verl


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_train_block_verl_deletes_only_what_it_wrote(tmp_path, init_dir, monkeypatch):
    calls: list = []
    monkeypatch.setattr(vl, "run_verl", fake_verl(calls))
    rl, task = RLConfig(steps=2, ckpt_every=2), TaskConfig(digits=2)
    blocks = tmp_path / "blocks"
    # a user's directory where the block would go (or an older version's incomplete block): left as it is
    (blocks / "block_0").mkdir(parents=True)
    (blocks / "block_0" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="incomplete verl run .* left as it is"):
        train_block_verl(rl, init_dir, blocks / "block_0", task, progress=False)
    assert (blocks / "block_0" / "notes.txt").read_text() == "mine" and not calls
    # a block killed mid-run left only its temporary directory: removed by the next write, then trained again
    stale = blocks / f".block_1.rlvr-nb-tmp-{dead_pid()}-0123abcd"
    (stale / "verl_checkpoints").mkdir(parents=True)
    assert train_block_verl(rl, init_dir, blocks / "block_1", task, progress=False)
    assert not stale.exists() and (blocks / "block_1" / "complete.json").exists()
    assert [s for s, _ in find_checkpoints(blocks / "block_1", "rlvr-nb")] == [0, 2]
    assert calls[0].output_dir != str(blocks / "block_1")  # verl ran beside the block, renamed in when done
    assert train_block_verl(rl, init_dir, blocks / "block_1", task, progress=False) and len(calls) == 1
    # interrupted: nothing appears at the block's place and no temporary directory stays
    monkeypatch.setattr(vl, "run_verl", lambda cfg, dry_run=False, progress=True: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        train_block_verl(rl, init_dir, blocks / "block_2", task, progress=False)
    assert sorted(p.name for p in blocks.iterdir()) == ["block_0", "block_1"]
    with pytest.raises(ValueError, match="optimizer='reset'"):
        train_block_verl(rl, init_dir, blocks / "block_3", task, optimizer_from=init_dir, progress=False)


def test_launch_streams_the_log_and_ingests(tmp_path, init_dir):
    """The subprocess plumbing, with a stand-in for verl that prints verl-style lines and saves checkpoints."""
    cfg = tiny_cfg(init_dir, tmp_path / "run")
    files = RunFiles(tmp_path / "run")
    files.root.mkdir()
    script = ("import sys\n"
              "for s in (1, 2): print(f'step:{s} - critic/score/mean:0.{s} - actor/pg_loss:0.0', flush=True)\n")
    fabricate_verl_tree(files.verl_checkpoints, init_dir, steps=(2,))
    run = launch(VerlRun(cfg, files, [sys.executable, "-c", script], n_train=24), progress=False)
    assert run.returncode == 0 and "step:2 - critic/score/mean:0.2" in files.log.read_text()
    assert [s for s, _ in run.checkpoints] == [0, 2]
    failing = VerlRun(cfg, files, [sys.executable, "-c", "print('boom'); raise SystemExit(3)"], n_train=24)
    with pytest.raises(RuntimeError, match="code 3"):
        launch(failing, progress=False)
    assert "boom" in files.log.read_text()


def test_resolve_defaults_follow_the_data():
    emb = resolve(VerlRunConfig(model_path="m", output_dir="o"))
    assert emb.grader == "exact" and emb.prompt_suffix == "" and emb.chat_template is not None
    fil = resolve(VerlRunConfig(model_path="m", output_dir="o", train_data="x.jsonl"))
    assert fil.grader == "math" and "\\boxed{}" in fil.prompt_suffix and fil.chat_template is None


# ----------------------------------------------------------------------------------------------------
# Checked before anything is written: the model's tokenizer and the prompts


def test_accepts_the_embedded_model_as_it_is(tmp_path, embedded_dir):
    """The embedded model and tokenizer pass the checks of verl 0.9.1's Qwen prompt builder (tests/test_verl_checks.py
    runs verl's own builder on it): a newline token, '<|im_end|>' and a chat template."""
    run = prepare_run(tiny_cfg(embedded_dir, tmp_path / "run"), validate_against_verl=False)
    assert run.files.command.is_file() and run.files.launch.is_file() and run.files.train.is_file()


def test_refuses_a_tokenizer_verl_cannot_take_before_writing_anything(tmp_path):
    """Without a newline token verl 0.9.1's Qwen prompt builder raises (tests/test_verl_checks.py shows verl's own
    check raising): the launcher says so first, naming the model directory, and writes nothing."""
    model = write_model(tmp_path / "model", newline=False)
    out = tmp_path / "run"
    with pytest.raises(ValueError) as err:
        prepare_run(tiny_cfg(model, out), validate_against_verl=False)
    msg = str(err.value)
    assert msg.startswith(f"verl {VERL_VERSION} would fail on the model at {model} before its first step")
    assert "for config.json model_type 'qwen2' verl's rollout uses its Qwen prompt builder, which needs" in msg
    assert not out.exists()


def test_refuses_file_data_for_a_model_without_chat_template(tmp_path):
    model = write_model(tmp_path / "model", chat_template=None)
    cfg = tiny_cfg(model, tmp_path / "run", train_data=str(math_file(tmp_path / "math.jsonl")), max_prompt_length=128)
    with pytest.raises(ValueError, match=f"(?s)model at {model} .*no usable chat template.*apply_chat_template"):
        prepare_run(cfg, validate_against_verl=False)
    assert not (tmp_path / "run").exists()
    prepare_run(replace(cfg, chat_template=CONTENT_ONLY_TEMPLATE), validate_against_verl=False)  # one given: accepted


def test_refuses_prompts_longer_than_max_prompt_length(tmp_path, init_dir):
    f = tmp_path / "long.jsonl"
    f.write_text("".join(json.dumps({"question": "1+" * (20 + 10 * i) + "1=", "answer": "2"}) + "\n" for i in range(4)))
    prepare_run(tiny_cfg(init_dir, tmp_path / "ok", train_data=str(f), max_prompt_length=128), validate_against_verl=False)
    cfg = tiny_cfg(init_dir, tmp_path / "run", train_data=str(f), max_prompt_length=80)
    with pytest.raises(ValueError, match=r"2 prompt\(s\) of train_data .* longer than max_prompt_length=80 tokens "
                                         r"\(chat template included\), the longest row 3 with 1\d\d tokens"):
        prepare_run(cfg, validate_against_verl=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("bad, match", [
    ("", "train_data is required"),
    ("missing.jsonl", "train_data .*missing.jsonl: no such file"),
    ("notes.txt", "must be .jsonl or .parquet"),
    ("broken.jsonl", "broken.jsonl, line 2: not JSON"),
    ("partial.jsonl", r"partial.jsonl, line 2: no 'answer'"),
    ("empty.jsonl", "holds no rows"),
    ("fake.parquet", "cannot be read as parquet"),
])
def test_bad_data_files_are_one_clear_error(tmp_path, init_dir, bad, match):
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "broken.jsonl").write_text('{"question": "1", "answer": "1"}\n{"question": \n')
    (tmp_path / "partial.jsonl").write_text('{"question": "1", "answer": "1"}\n{"question": "2"}\n')
    (tmp_path / "empty.jsonl").write_text("\n")
    (tmp_path / "fake.parquet").write_text("not parquet")
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        prepare_run(tiny_cfg(init_dir, tmp_path / "run", train_data=str(tmp_path / bad) if bad else ""),
                    validate_against_verl=False)
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------------------------------
# A standard verl run is cached by config hash; 01 and 06 at gpu share it


def test_standard_run_is_cached_reused_and_shared_by_01_and_06(tmp_path, init_dir, monkeypatch):
    import rlvr_nb.experiments.rl_extra as rx
    from rlvr_nb.notebook import profiles

    monkeypatch.setenv("RLVR_NB_RUNS", str(tmp_path / "runs"))
    calls: list = []
    monkeypatch.setattr(vl, "run_verl", fake_verl(calls))
    data = math_file(tmp_path / "math.jsonl")
    rl01 = profiles.rl_config("gpu", seed=0)  # 01's recipe at gpu (its parameters cell passes seed=P.seed)
    rl06 = profiles.rl_config("gpu", **profiles.PARAMS["06_rl_extra"]["gpu"]["rl_recipe"])  # 06's seed 0
    assert rl01 == rl06
    monkeypatch.chdir(tmp_path)
    first = rx.ensure_verl_standard_run(replace(rl01, steps=2, ckpt_every=2), init_dir, str(data), 1)
    again = rx.ensure_verl_standard_run(replace(rl06, steps=2, ckpt_every=2), os.path.relpath(init_dir), "math.jsonl", 1,
                                        progress=False)  # re-running 01, or 06: the same run, reused
    assert first == again and len(calls) == 1 and (first / "complete.json").exists()
    data.write_text(data.read_text() + json.dumps({"question": "new", "answer": "1"}) + "\n")
    assert rx.ensure_verl_standard_run(replace(rl01, steps=2, ckpt_every=2), init_dir, str(data), 1) != first
    assert len(calls) == 2  # other data content: another run
    root = Path(__file__).resolve().parents[1] / "notebooks"
    for nb in ("01_training.py", "06_rl_extra.py"):
        assert "ensure_verl_standard_run(" in (root / nb).read_text()
    assert "run_verl(" not in (root / "01_training.py").read_text()
