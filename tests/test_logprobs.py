"""Token log-prob and activation R^2: probes (sampling, JSONL), teacher forcing against an unbatched
computation, the 0.2 log-prob filter, hidden-state trajectories."""

import shutil

import numpy as np
import pytest
import torch
from trajectory_fixtures import make_run, reference_r2

from rlvr_nb.activations import ActivationConfig, activation_linearity, activation_trajectories, hidden_states
from rlvr_nb.checkpoint_files import TOKENIZER_FILES
from rlvr_nb.logprobs import (
    Probe,
    ProbeConfig,
    load_probes,
    logprob_linearity,
    logprob_trajectories,
    probes_from_first_checkpoint,
    response_logprobs,
    sample_probes,
    save_probes,
    token_linearity,
)
from rlvr_nb.models import load_model, load_tokenizer
from rlvr_nb.trajectory import load_trajectory

PROMPTS = ["123+456=", "999+001=", "050+050="]
STEPS = (0, 100, 200, 400)


@pytest.fixture(scope="module")
def traj(tmp_path_factory):
    run = make_run(tmp_path_factory.mktemp("run"), "ours", STEPS)
    return load_trajectory(run, progress=False)


@pytest.fixture(scope="module")
def probes(traj):
    return probes_from_first_checkpoint(traj, PROMPTS, ProbeConfig(responses_per_prompt=3, max_new_tokens=6),
                                        progress=False)


def test_probes_are_seeded_and_round_trip_through_jsonl(traj, probes, tmp_path):
    assert len(probes) == 9 and [p.prompt for p in probes[:3]] == [PROMPTS[0]] * 3
    assert all(1 <= len(p.response_ids) <= 6 for p in probes)
    again = sample_probes(load_model(traj.dirs[0]), load_tokenizer(traj.dirs[0]), PROMPTS,
                          ProbeConfig(responses_per_prompt=3, max_new_tokens=6), progress=False)
    assert again == probes
    other = sample_probes(load_model(traj.dirs[0]), load_tokenizer(traj.dirs[0]), PROMPTS,
                          ProbeConfig(responses_per_prompt=3, max_new_tokens=6, seed=1), progress=False)
    assert other != probes
    path = save_probes(probes, tmp_path / "probes.jsonl")
    assert load_probes(path) == probes
    path.write_text(path.read_text() + '{"prompt": "1+1="}\n')
    with pytest.raises(ValueError, match=r"probes\.jsonl:10: not a probe record"):
        load_probes(path)
    with pytest.raises(FileNotFoundError):
        load_probes(tmp_path / "none.jsonl")


def test_teacher_forcing_matches_one_sequence_at_a_time(traj, probes):
    model, tok = load_model(traj.dirs[2]), load_tokenizer(traj.dirs[2])
    batched = response_logprobs(model, tok, probes, batch_size=4)  # padding inside batches
    expected = []
    for p in probes:
        prompt = tok(p.prompt, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt + p.response_ids])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)  # [L, V]
        expected += [logp[len(prompt) - 1 + i, t].item() for i, t in enumerate(p.response_ids)]
    assert batched.shape == (sum(len(p.response_ids) for p in probes),)
    np.testing.assert_allclose(batched, expected, atol=1e-5)


def test_token_linearity_filter_and_r2(traj, probes):
    lp = logprob_trajectories(traj, probes, batch_size=5, progress=False)  # [T, N]
    assert lp.shape == (len(STEPS), sum(len(p.response_ids) for p in probes))
    res = token_linearity(traj, probes, progress=False)
    np.testing.assert_allclose(res.values, lp)
    moved = np.abs(lp[-1] - lp[0]) > 0.2
    assert res.kept.tolist() == moved.tolist()
    np.testing.assert_allclose(res.r2[moved], reference_r2(lp[:, moved], STEPS), atol=1e-10)
    assert res.overall.count == moved.sum() and res.overall.total == lp.shape[1]


def test_logprob_filter_on_known_trajectories():
    steps = [0, 10, 20, 40]
    lp = np.array([[-1.0, -1.0, -2.0], [-0.8, -1.05, -2.5], [-0.6, -1.1, -2.2], [-0.2, -1.1, -3.0]])
    res = logprob_linearity(lp, steps, min_change=0.2)
    assert res.kept.tolist() == [True, False, True]  # token 1 moved only 0.1
    assert res.r2[0] == pytest.approx(reference_r2(lp[:, :1], steps)[0])
    assert len(res.examples) == 2 and all(e.name.startswith("#") for e in res.examples)


def test_hidden_states_and_activation_linearity(traj, probes):
    model, tok = load_model(traj.dirs[1]), load_tokenizer(traj.dirs[1])
    h = hidden_states(model, tok, probes, batch_size=4)
    n_tokens = sum(len(tok(p.prompt, add_special_tokens=False)["input_ids"]) + len(p.response_ids) for p in probes)
    assert h.shape == (model.config.num_hidden_layers + 1, n_tokens, model.config.hidden_size)
    cfg = ActivationConfig(max_coordinates=500, batch_size=4)
    values, subset = activation_trajectories(traj, probes, cfg, progress=False)
    assert values.shape == (len(STEPS), 500)
    np.testing.assert_allclose(values[1], h.reshape(-1).numpy()[subset.flat], atol=1e-5)
    res = activation_linearity(traj, probes, cfg, progress=False)
    assert set(res.groups) <= {f"layer {i}" for i in range(model.config.num_hidden_layers + 1)}
    kept = res.kept
    np.testing.assert_allclose(res.r2[kept], reference_r2(values[:, kept].astype(np.float64), STEPS), atol=1e-8)


def test_identical_checkpoints_keep_nothing(tmp_path, probes):
    run = make_run(tmp_path / "run", "trl", (0, 100, 200))
    same = load_trajectory([(s, run / "checkpoint-0") for s in (0, 100, 200)], progress=False)
    res = token_linearity(same, probes, progress=False)
    assert res.overall.count == 0 and res.overall.row()["median"] is None
    act = activation_linearity(same, probes, ActivationConfig(max_coordinates=200), progress=False)
    assert act.overall.count == 0



# ---------------------------------------------------------------------------------------------
# Steps of any size; probes that cannot be measured


def test_token_and_activation_r2_at_steps_near_2_53(traj, probes):
    big = load_trajectory([(2**53 + s, d) for s, d in zip(traj.steps, traj.dirs)], progress=False)
    lp = np.random.default_rng(0).standard_normal((4, 50)).cumsum(0)
    np.testing.assert_array_equal(logprob_linearity(lp, big.steps, min_change=0.0).r2,
                                  logprob_linearity(lp, traj.steps, min_change=0.0).r2)
    np.testing.assert_array_equal(token_linearity(big, probes, progress=False).r2,
                                  token_linearity(traj, probes, progress=False).r2)
    cfg = ActivationConfig(max_coordinates=300)
    np.testing.assert_array_equal(activation_linearity(big, probes, cfg, progress=False).r2,
                                  activation_linearity(traj, probes, cfg, progress=False).r2)


def test_probes_without_tokens_or_outside_the_vocabulary(traj, probes):
    empty = [Probe(p.prompt, [], "") for p in probes[:3]]
    with pytest.raises(ValueError, match=r"the probe set holds no response tokens \(3 probe\(s\), every response empty\)"):
        token_linearity(traj, empty, progress=False)
    vocab = load_model(traj.dirs[0]).get_input_embeddings().weight.shape[0]
    bad = list(probes)
    bad[4] = Probe(bad[4].prompt, [3, vocab + 7], "")
    with pytest.raises(ValueError, match=rf"probe 4 \(prompt '999\+001='\) has response token id {vocab + 7}, outside "
                                         rf"the vocabulary of {vocab} tokens"):
        token_linearity(traj, bad, progress=False)
    with pytest.raises(ValueError, match=rf"id {vocab + 7}, outside the vocabulary of {vocab}"):
        activation_linearity(traj, bad, ActivationConfig(max_coordinates=100), progress=False)


def test_checkpoints_without_tokenizer_files(traj, probes, tmp_path):
    pairs = []
    for s, d in zip(traj.steps, traj.dirs):
        copy = shutil.copytree(d, tmp_path / f"c{s}")
        for name in TOKENIZER_FILES:
            (copy / name).unlink(missing_ok=True)
        pairs.append((s, copy))
    bare = load_trajectory(pairs, progress=False)
    for call in (lambda: probes_from_first_checkpoint(bare, PROMPTS, progress=False),
                 lambda: token_linearity(bare, probes, progress=False),
                 lambda: activation_linearity(bare, probes, progress=False)):
        with pytest.raises(ValueError, match="no checkpoint of the trajectory holds a tokenizer"):
            call()
    # one checkpoint with a tokenizer is enough (trainers do not always save one)
    shutil.copy(traj.dirs[2] / "tokenizer.json", pairs[2][1])
    shutil.copy(traj.dirs[2] / "tokenizer_config.json", pairs[2][1])
    np.testing.assert_array_equal(token_linearity(load_trajectory(pairs, progress=False), probes, progress=False).r2,
                                  token_linearity(traj, probes, progress=False).r2)
