"""The RLVR trainer: its equations, its checkpoints and resuming."""

import json

import pytest
import torch
from safetensors.torch import load_file

from rlvr_nb.checkpoints import is_complete, list_checkpoints, read_metrics
from rlvr_nb.grpo import RLConfig, aggregate_loss, clipped_surrogate, group_advantages, importance_ratio, train_rl
from rlvr_nb.models import ModelConfig, build_model, build_tokenizer
from rlvr_nb.sft import SFTConfig, train_sft
from rlvr_nb.tasks import AdditionTask, TaskConfig, format_problem

TINY = ModelConfig(hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=2, intermediate_size=32)
TASK = TaskConfig(digits=2, n_eval=16)
RL = RLConfig(steps=6, prompts_per_step=4, group_size=4, lr=1e-3, ckpt_every=3, eval_problems=8)


@pytest.fixture(autouse=True)
def partial_credit(monkeypatch):
    """An untrained model never answers exactly, so every advantage would be 0 and nothing would move:
    reward a correct first digit instead, which a random model hits about one time in ten."""
    monkeypatch.setattr(AdditionTask, "reward", staticmethod(lambda r, a: float(r[:1] == a[:1])))


@pytest.fixture(scope="module")
def init_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("init")
    tok = build_tokenizer()
    build_model(TINY, tok).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def test_task_answers_are_reversed_sums():
    p = format_problem(123, 989, 3, reverse_answer=True)
    assert (p.prompt, p.answer) == ("123+989=", "2111")
    task = AdditionTask(TaskConfig(digits=3, n_eval=64))
    held = {q.prompt for q in task.eval_problems}
    train = task.sample_train(2000, torch.Generator().manual_seed(0))
    assert not held & {q.prompt for q in train}


def test_advantages():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    a = group_advantages(r, "grpo")
    assert torch.allclose(a[0], torch.tensor([1.0, -1.0, -1.0, 1.0]) / (r[0].std() / 0.5 * 0.5 + 1e-6) * 0.5, atol=1e-4)
    assert torch.all(a[1] == 0)  # a solved group carries no signal
    assert torch.allclose(group_advantages(r, "dr_grpo")[0], torch.tensor([0.5, -0.5, -0.5, 0.5]))
    rpp = group_advantages(r, "reinforce_pp")
    assert abs(rpp.mean().item()) < 1e-5 and rpp[1].min() > 0  # global baseline: solved groups still positive
    with pytest.raises(ValueError, match="valid: grpo"):
        group_advantages(r, "ppo")


def test_clip_and_aggregation():
    ratio = torch.tensor([[0.5, 1.0, 2.0]])
    adv = torch.ones(1, 1)
    loss = clipped_surrogate(ratio, adv, 0.2, 0.28)
    assert torch.allclose(loss, torch.tensor([[-0.5, -1.0, -1.28]]))  # pessimistic bound
    lt = torch.tensor([[1.0, 1.0, 0.0], [3.0, 0.0, 0.0]])
    m = torch.tensor([[1, 1, 0], [1, 0, 0]]).float()
    assert aggregate_loss(lt, m, "token-mean", 3).item() == pytest.approx(5 / 3)
    assert aggregate_loss(lt, m, "seq-mean-token-mean", 3).item() == pytest.approx(2.0)
    assert aggregate_loss(lt, m, "seq-mean-token-sum-norm", 3).item() == pytest.approx((2 / 3 + 1) / 2)
    logp, old = torch.tensor([[0.1, 0.3]]), torch.zeros(1, 2)
    seq = importance_ratio(logp, old, torch.ones(1, 2), sequence_level=True)
    assert torch.allclose(seq, torch.exp(torch.tensor(0.2)).expand(1, 2))


def test_checkpoints_are_hf_directories(init_dir, tmp_path):
    run = train_rl(RL, init_dir, tmp_path / "rl", TASK, progress=False)
    steps = [s for s, _ in list_checkpoints(run)]
    assert steps == [0, 3, 6] and is_complete(run)
    ck = list_checkpoints(run)[-1][1]
    for f in ("model.safetensors", "config.json", "tokenizer.json", "trainer_state.json",
              "training_state/optimizer.safetensors", "training_state/rng.safetensors"):
        assert (ck / f).exists(), f
    assert sorted(p.name for p in ck.glob("*.safetensors")) == ["model.safetensors"]  # vLLM globs the folder
    assert json.loads((ck / "trainer_state.json").read_text())["step"] == 6
    assert not list((run / "checkpoints").glob(".tmp*"))
    assert [m["step"] for m in read_metrics(run)] == list(range(7))


@pytest.mark.parametrize("kind", ["rl", "sft"])
def test_resume_reaches_the_same_weights(init_dir, tmp_path, kind):
    def go(run, **kw):
        if kind == "rl":
            return train_rl(RL, init_dir, run, TASK, progress=False, **kw)
        return train_sft(SFTConfig(steps=6, batch_size=4, lr=1e-3, ckpt_every=3, eval_problems=8), run, init_dir, TASK, progress=False, **kw)

    full = go(tmp_path / "full")
    part = tmp_path / "part"
    go(part, stop_after=5)  # "killed" after step 5: steps 4-5 are lost, step 3 is the last checkpoint
    assert [s for s, _ in list_checkpoints(part)] == [0, 3] and not is_complete(part)
    go(part, resume=True)
    a = load_file(str(list_checkpoints(full)[-1][1] / "model.safetensors"))
    b = load_file(str(list_checkpoints(part)[-1][1] / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [m["step"] for m in read_metrics(part)] == list(range(7))
    start = load_file(str(init_dir / "model.safetensors"))
    assert any(not torch.equal(a[k], start[k]) for k in a)  # training did move the weights


def test_resume_guards(init_dir, tmp_path):
    run = train_rl(RL, init_dir, tmp_path / "rl", TASK, progress=False, stop_after=3)
    with pytest.raises(FileExistsError, match="resume=True"):
        train_rl(RL, init_dir, run, TASK, progress=False)
    other = RLConfig(**{**RL.__dict__, "lr": 2e-3, "group_size": 8})
    with pytest.raises(ValueError, match=r"rl.group_size: 4 -> 8.*rl.lr"):
        train_rl(other, init_dir, run, TASK, progress=False, resume=True)
    with pytest.raises(ValueError, match="adv_estimator"):
        train_rl(RLConfig(adv_estimator="nope"), init_dir, tmp_path / "x", TASK)


def test_init_optimizer_continues_another_runs_adamw_state(init_dir, tmp_path):
    first = train_rl(RL, init_dir, tmp_path / "first", TASK, progress=False)
    last = list_checkpoints(first)[-1][1]
    run = train_rl(RL, last, tmp_path / "next", TASK, progress=False, stop_after=0, init_optimizer=last)
    prev = load_file(str(last / "training_state" / "optimizer.safetensors"))
    start = load_file(str(list_checkpoints(run)[0][1] / "training_state" / "optimizer.safetensors"))
    assert prev and prev.keys() == start.keys() and all(torch.equal(prev[k], start[k]) for k in prev)
    train_rl(RL, last, run, TASK, progress=False, resume=True, init_optimizer=last)
    after = load_file(str(list_checkpoints(run)[-1][1] / "training_state" / "optimizer.safetensors"))
    assert {after[k].item() for k in after if k.endswith(".step")} == {2 * RL.steps}  # the step count went on
    with pytest.raises(ValueError, match="init_optimizer"):  # resuming without it is a different run
        train_rl(RL, last, run, TASK, progress=False, resume=True)
    with pytest.raises(FileNotFoundError, match="init_optimizer: no optimizer.safetensors in .*training_state"):
        train_rl(RL, init_dir, tmp_path / "x", TASK, progress=False, init_optimizer=tmp_path)


def test_checkpoints_of_the_older_layout_still_resume(init_dir, tmp_path):
    """Checkpoints written before the training_state/ subfolder kept optimizer and RNG state beside the
    weights: resuming from one reaches the same weights as an uninterrupted run."""
    full = train_rl(RL, init_dir, tmp_path / "full", TASK, progress=False)
    part = train_rl(RL, init_dir, tmp_path / "part", TASK, progress=False, stop_after=3)
    last = list_checkpoints(part)[-1][1]
    for f in ("optimizer.safetensors", "rng.safetensors"):
        (last / "training_state" / f).rename(last / f)
    (last / "training_state").rmdir()
    train_rl(RL, init_dir, part, TASK, progress=False, resume=True)
    a = load_file(str(list_checkpoints(full)[-1][1] / "model.safetensors"))
    b = load_file(str(list_checkpoints(part)[-1][1] / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
