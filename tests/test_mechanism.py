"""04's test of the low-pass mechanism: the scratchpad task variant (format, reward on the final answer only, SFT
targets), the unchanged hash of the default config, RL's gradient moments, and the whole study at a tiny size."""

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from rlvr_nb.checkpoints import to_jsonable
from rlvr_nb.embedded import EmbeddedConfig, config_hash
from rlvr_nb.experiments import mechanism as mech
from rlvr_nb.experiments.lowpass_theory import plot_mechanism
from rlvr_nb.grpo import RLConfig, checkpoint_eval, policy_loss, sample_rollouts, token_logprobs
from rlvr_nb.models import ModelConfig, build_model, build_tokenizer
from rlvr_nb.notebook import profiles
from rlvr_nb.sft import SFTConfig, sequence_batch
from rlvr_nb.tasks import (AdditionTask, ScratchpadTaskConfig, TaskConfig, format_problem, scratchpad_len,
                           with_scratchpad)

TINY = ModelConfig(hidden_size=32, num_heads=2, num_kv_heads=2, intermediate_size=64, max_positions=32)


def test_scratchpad_records_are_the_column_working():
    p = format_problem(123, 989, 3, True)
    assert (p.prompt, p.answer, p.scratch, p.target) == ("123+989=", "2111", "", "2111")  # the bare task, unchanged
    assert format_problem(123, 989, 3, True, "carries").target == "111\n2111"
    assert format_problem(123, 989, 3, True, "sums").target == "121111\n2111"
    assert format_problem(123, 989, 3, True, "work").target == "391228111911\n2111"
    assert format_problem(45, 50, 2, False, "sums").target == "0509\n095"  # 5+0=05, 4+5=09; forward answer
    for kind, k in (("carries", 3), ("sums", 6), ("work", 12)):
        task = AdditionTask(with_scratchpad(TaskConfig(n_eval=8), kind))
        assert scratchpad_len(task.cfg) == k and task.response_len == k + 1 + 4
        assert all(len(p.target) == task.response_len for p in task.eval_problems)
    with pytest.raises(ValueError, match="unknown scratchpad 'steps'; valid: carries, sums, work"):
        ScratchpadTaskConfig(scratchpad="steps")


def test_reward_grades_the_final_answer_only():
    task = AdditionTask(with_scratchpad(TaskConfig(n_eval=8), "carries"))
    assert task.reward("111\n2111", "2111") == 1.0
    assert task.reward("999\n2111", "2111") == 1.0  # a wrong scratchpad is not graded
    assert task.reward("111\n2112", "2111") == 0.0
    assert task.reward("2111", "2111") == 0.0  # no separator: no final answer
    assert task.reward("1\n1\n2111", "2111") == 1.0  # the text after the last newline
    bare = AdditionTask(TaskConfig(n_eval=8))
    assert bare.reward("2111", "2111") == 1.0 and bare.reward("111\n2111", "2111") == 0.0  # the whole response


def test_sft_targets_the_whole_response_and_newline_is_one_token():
    tok = build_tokenizer()
    task = AdditionTask(with_scratchpad(TaskConfig(digits=2, n_eval=8), "sums"))
    problems = task.eval_problems[:3]
    ids, mask, L = sequence_batch(tok, problems)
    assert ids.shape == (3, L + task.response_len + 1) and mask.shape == (3, task.response_len + 1) and mask.all()
    for row, p in zip(ids.tolist(), problems):
        assert tok.decode(row[L:-1]) == p.target and row[-1] == tok.eos_token_id
        assert row[L + 4] == tok.convert_tokens_to_ids("\u010a")  # "\n" after the 4 scratchpad tokens


def test_the_default_config_and_its_hash_are_unchanged():
    assert to_jsonable(TaskConfig()) == {"digits": 3, "reverse_answer": True, "n_eval": 512, "seed": 0}
    assert config_hash(TaskConfig()) == "cfdfda1081"  # as before the scratchpad variant existed
    assert with_scratchpad(TaskConfig(), "") == TaskConfig() and type(with_scratchpad(TaskConfig(), "")) is TaskConfig
    emb = EmbeddedConfig()
    assert config_hash(replace(emb, task=with_scratchpad(emb.task, ""))) == config_hash(emb)
    assert config_hash(replace(emb, task=with_scratchpad(emb.task, "carries"))) != config_hash(emb)
    # the study's bare RL run is the RLConfig default's response room (6 tokens)
    assert mech.rl_config(mech.MechanismStudy(), TaskConfig()).max_new_tokens == RLConfig().max_new_tokens


def test_heldout_accuracy_scores_with_the_tasks_reward():
    tok = build_tokenizer()
    model = build_model(TINY, tok)
    task = AdditionTask(with_scratchpad(TaskConfig(digits=1, n_eval=8), "carries"))
    got = checkpoint_eval(model, tok, task, 8, task.response_len + 2, 0)
    assert set(got) == {"heldout_greedy", "heldout_sampled"} and 0.0 <= got["heldout_greedy"] <= 1.0


def test_rl_moments_average_the_policy_gradient_of_fresh_rollouts():
    tok = build_tokenizer()
    model = build_model(TINY, tok)
    task = AdditionTask(TaskConfig(digits=1, n_eval=8))
    rl = RLConfig(prompts_per_step=4, group_size=4, temperature=1.0)
    # rewards from a task whose every answer is right half the time would need a trained model: a reward that
    # depends on the sample makes the advantages non-zero instead
    task.reward = lambda response, answer: float(len(response) % 2)
    m = mech.rl_moments(model, tok, task, rl, 3, seed=5)
    gen = torch.Generator().manual_seed(5)
    grads = []
    for _ in range(3):
        batch = sample_rollouts(model, tok, task, rl, gen)
        logp, entropy = token_logprobs(model, batch.full, batch.prompt_len, batch.full_mask)
        loss = policy_loss(rl, logp, logp.detach(), batch.adv, batch.mask, entropy)
        grads.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(model.parameters()))]).double())
    g = torch.stack(grads).numpy()
    assert np.abs(g).sum() > 0
    np.testing.assert_allclose(m["mean"], g.mean(0), rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(m["var"], g.var(0, ddof=1), rtol=1e-5, atol=1e-14)


def test_policy_loss_is_the_token_mean_policy_gradient_on_policy():
    rl = RLConfig()
    logp = torch.log(torch.rand(3, 5)).requires_grad_()
    adv = torch.tensor([[1.0], [-0.5], [2.0]])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.float)
    policy_loss(rl, logp, logp.detach(), adv, mask, torch.zeros(3, 5)).backward()
    torch.testing.assert_close(logp.grad, -adv * mask / mask.sum())


@pytest.fixture(scope="module")
def tiny_table(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("RLVR_NB_RUNS", str(tmp_path_factory.mktemp("runs")))
    emb = EmbeddedConfig(model=TINY, task=TaskConfig(digits=1, n_eval=16))
    study = mech.make_study({"scratchpads": ["", "carries"], "steps": 8, "prompts_per_step": 4, "group_size": 4,
                             "lr": 1e-3, "ckpt_every": 2, "eval_problems": 8, "grad_batches": 3, "probe_prompts": 4,
                             "responses_per_prompt": 2, "warm_start_steps": 60})
    path = tmp_path_factory.mktemp("table") / "mech.json"
    data = mech.mechanism_table(path, True, study, emb, "smoke", progress=False)
    yield data, path, study, emb
    mp.undo()


def test_the_study_end_to_end_at_a_tiny_size(tiny_table):
    data, path, study, emb = tiny_table
    rows = data["rows"]
    assert [(r["study"], r["k"], r["method"]) for r in rows] == [
        ("scratchpad", 0, "RL"), ("scratchpad", 0, "SFT"), ("scratchpad", 1, "RL"), ("scratchpad", 1, "SFT"),
        ("sgd", 0, "RL"), ("sgd", 0, "SFT"), ("new target", 0, "SFT")]
    for r in rows:
        assert r["checkpoints"] == 5 and r["tokens"] > 0 and r["path"] > 0, r
    for r in rows[:4]:
        assert r["snr median"] >= 0 and 0 <= r["theory median"] <= 1
    rl, sft = rows[2], rows[3]
    assert "reward_start" in rl and "reward_start" not in sft
    assert rows[4]["lr"] == study.sgd_lr and rows[5]["optimizer"] == "sgd"
    assert rows[6]["acc_start"] <= 0.25  # the forward order is a target the start does not produce
    assert json.loads(path.read_text())["provenance"]["command"] == "python -m rlvr_nb.experiments.mechanism --profile smoke"
    text = mech.describe(rows)
    assert len(text) == 6 and text[0].startswith("Weight R^2 median over k = 0, 1: RL ")
    keys = [f.key for f in mech.findings(rows, "04_lowpass_theory")]
    assert keys == ["mechanism_weight", "mechanism_token", "mechanism_rl_snr", "control_sgd_weight",
                    "control_sgd_token", "control_new_weight", "control_new_token"]
    assert isinstance(plot_mechanism(rows), Figure)
    assert len(mech.table_rows(rows)) == 7


def test_a_committed_table_of_another_configuration_is_refused(tiny_table):
    data, path, study, emb = tiny_table
    assert mech.mechanism_table(path, False, study, emb, "smoke")["rows"] == data["rows"]  # read back, not recomputed
    with pytest.raises(ValueError, match=r"another configuration \(study.steps: 8 -> 10\).*--profile smoke"):
        mech.mechanism_table(path, False, replace(study, steps=10), emb, "smoke")
    with pytest.raises(FileNotFoundError, match="python -m rlvr_nb.experiments.mechanism --profile cpu"):
        mech.mechanism_table(path.with_name("none.json"), False, study, emb, "cpu")


def test_verdicts_follow_the_numbers():
    def row(study, k, method, w, t, **kw):
        return {"study": study, "k": k, "method": method, "weight median": w, "token median": t, "snr median": kw.get("snr", 0.1),
                "path": kw.get("path", 1.0), "active": 0.5, "acc_start": 0.0, "acc_end": 0.5}

    rows = [row("scratchpad", 0, "RL", 0.80, 0.60, snr=0.2), row("scratchpad", 0, "SFT", 0.80, 0.60),
            row("scratchpad", 6, "RL", 0.90, 0.70, snr=0.1), row("scratchpad", 6, "SFT", 0.70, 0.50),
            row("sgd", 0, "RL", 0.9, 0.8), row("sgd", 0, "SFT", 0.5, None), row("new target", 0, "SFT", 0.81, 0.2)]
    f = {x.key: x for x in mech.findings(rows, "04_lowpass_theory")}
    assert f["mechanism_weight"].value == pytest.approx(0.2) and f["mechanism_weight"].verdict == "holds"
    assert f["mechanism_token"].verdict == "holds"
    assert f["mechanism_rl_snr"].value == pytest.approx(0.5) and f["mechanism_rl_snr"].verdict == "holds"
    assert f["control_sgd_weight"].verdict == "holds" and math.isnan(f["control_sgd_token"].value)
    assert f["control_new_weight"].verdict == "fails" and f["control_new_token"].verdict == "holds"
    text = " ".join(mech.describe(rows))
    assert "the Adam-sign explanation fits" in text and "RL's weights are as linear as this SFT's" in text
    rows[2]["weight median"] = 0.71  # RL's lead rises by 0.01 only: within the margin
    assert mech.findings(rows, "04_lowpass_theory")[0].verdict == "fails"
    rows[0]["weight median"], rows[2]["weight median"] = 0.70, 0.71  # rises by 0.11 but ends level with SFT
    assert mech.findings(rows, "04_lowpass_theory")[0].verdict == "fails"
    assert "not what we see" in mech.describe(rows)[0] and "less linear than SFT at k = 0" in mech.describe(rows)[0]


