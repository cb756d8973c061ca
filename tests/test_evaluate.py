"""Evaluation: answer extraction, graders, estimators, seeded sampling, the result cache, bad inputs."""

from math import comb

import pytest
import torch

import rlvr_nb.evaluate as ev
from rlvr_nb.checkpoint_files import CheckpointError
from rlvr_nb.evaluate import (
    EvalConfig, EvalResult, ModelPolicy, checkpoint_fingerprint, evaluate, extract_boxed, get_grader, math_grader,
    mean_ci, paired_difference, pass_at_k,
)
from rlvr_nb.models import ModelConfig, build_model, build_tokenizer
from rlvr_nb.sampling import encode_prompts
from rlvr_nb.tasks import AdditionTask, Problem, TaskConfig

@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run ~10x faster on one thread than on two shared cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


CFG = EvalConfig(k=4, temperature=1.0, top_p=1.0, max_new_tokens=6, seed=0, batch_size=16)


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return build_model(ModelConfig(), tok)


@pytest.fixture(scope="module")
def problems():
    return AdditionTask(TaskConfig(n_eval=10)).eval_problems


class OraclePolicy:
    """Answers the addition correctly on the first `n_right` samples of each question (rows are
    prompt-major, k per prompt), with a fixed wrong answer otherwise."""

    def __init__(self, tok, k: int, n_right: int):
        self.tokenizer, self.k, self.n_right, self.row = tok, k, n_right, 0

    def sample(self, input_ids, attention_mask, *, max_new_tokens, temperature, top_p, generator):
        prompts = self.tokenizer.batch_decode(input_ids, skip_special_tokens=True)
        answers = []
        for p in prompts:
            a, b = p.rstrip("=").split("+")
            right = self.row % self.k < self.n_right
            answers.append(str(int(a) + int(b)).zfill(4)[::-1] if right else "0000")
            self.row += 1
        ids, _ = encode_prompts(self.tokenizer, answers)
        eos = torch.full((len(answers), 1), self.tokenizer.eos_token_id)
        return torch.cat([ids, eos], 1), torch.ones(len(answers), ids.shape[1] + 1, dtype=torch.long)

    def fingerprint(self):
        return f"oracle-{self.n_right}"

    def describe(self):
        return {"kind": "oracle"}


def test_extract_boxed_takes_the_last_balanced_box():
    assert extract_boxed(r"first \boxed{1} then \boxed{\frac{1}{2}}.") == r"\frac{1}{2}"
    assert extract_boxed(r"\boxed{a{b{c}}d}") == "a{b{c}}d"
    assert extract_boxed(r"\boxed{7} and a truncated \boxed{\frac{1}{") == "7"
    assert extract_boxed("no box at all") is None
    assert extract_boxed(r"\fbox{3}") == "3"


def test_graders():
    assert math_grader(r"so the answer is \boxed{\frac{1}{2}}", "0.5") == 1.0
    assert math_grader(r"\boxed{2\sqrt{2}}", r"\sqrt{8}") == 1.0
    assert math_grader(r"\boxed{3}", "4") == 0.0
    assert math_grader("3", "3") == 0.0  # no box, no credit
    name, exact = get_grader("exact")
    assert name == "exact" and exact("2111", "2111") == 1.0 and exact("2112", "2111") == 0.0
    with pytest.raises(ValueError, match="grader must be one of"):
        get_grader("fuzzy")


def test_pass_at_k_matches_binomials_and_is_stable():
    for n in range(1, 12):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = 1 - comb(n - c, k) / comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)
    big = pass_at_k(5000, 3, 2500)  # C(5000, 2500) has ~1500 digits
    assert 0.87 < big < 0.88  # 1 - (1/2)^3 approximately
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)


def test_mean_ci():
    lo, hi = mean_ci([0.0, 1.0] * 50)
    assert lo < 0.5 < hi and hi - lo == pytest.approx(2 * 1.959964 * 0.50252 / 10, rel=1e-3)
    lo_small, hi_small = mean_ci([0.0, 1.0] * 5)
    assert hi_small - lo_small > hi - lo
    assert mean_ci([1.0, 1.0, 1.0]) == (1.0, 1.0)
    assert mean_ci([0.3]) == (0.3, 0.3)
    with pytest.raises(ValueError, match="no values"):
        mean_ci([])


def scored(per_question, k=4):
    lo, hi = mean_ci(per_question)
    return EvalResult(avg_at_k=sum(per_question) / len(per_question), ci_low=lo, ci_high=hi, pass_at_k={1: 0.0},
                      per_question=list(per_question), n_correct=[round(p * k) for p in per_question], k=k)


def test_paired_difference_is_paired_and_gives_verdicts():
    base = [0.25, 0.5, 0.5, 0.75] * 25  # 100 questions
    a = scored(base)
    b = scored([min(1.0, p + (0.2 if i % 2 == 0 else 0.1)) for i, p in enumerate(base)])
    c = paired_difference(b, a)
    assert c.diff == pytest.approx(0.15) and c.ci_low > 0 and c.verdict == "beats"
    assert paired_difference(a, b).verdict == "below"
    assert paired_difference(a, a).verdict == "matches" and paired_difference(a, a).diff == 0
    # the half width is z sd / sqrt(Q) of the per-question differences, not clipped to [0, 1]
    d = [q - p for p, q in zip(base, b.per_question)]
    mean = sum(d) / len(d)
    sd = (sum((x - mean) ** 2 for x in d) / (len(d) - 1)) ** 0.5
    assert c.ci_high - c.diff == pytest.approx(1.959964 * sd / 10, rel=1e-6)
    assert paired_difference(scored([0.0] * 10), scored([1.0] * 10)).ci_low == -1.0
    # unpaired CIs overlap, the paired one does not: noise shared by the questions cancels
    noisy, up = scored([0.0, 1.0] * 50), scored([0.05, 1.0] * 50)
    assert up.ci_low < noisy.ci_high and paired_difference(up, noisy).verdict == "beats"
    assert str(paired_difference(up, noisy)) == "+0.025 [+0.020, +0.030]"
    one = paired_difference(scored([1.0]), scored([0.5]))
    assert (one.diff, one.ci_low, one.ci_high) == (0.5, 0.5, 0.5)
    with pytest.raises(ValueError, match="same non-empty question set"):
        paired_difference(a, scored([0.5] * 3))


def test_oracle_policies_give_known_scores(tok, problems):
    cfg = EvalConfig(k=4, max_new_tokens=6)
    r = evaluate(OraclePolicy(tok, 4, 4), problems, cfg, progress=False)
    assert r.avg_at_k == 1.0 and r.pass_at_k == {1: 1.0, 2: 1.0, 4: 1.0}
    r = evaluate(OraclePolicy(tok, 4, 1), problems, cfg, progress=False)
    assert r.avg_at_k == 0.25 and r.n_correct == [1] * len(problems)
    assert r.pass_at_k[1] == pytest.approx(0.25) and r.pass_at_k[2] == pytest.approx(0.5) and r.pass_at_k[4] == 1.0
    assert r.ci_low == r.ci_high == 0.25  # every question scores the same


def test_seeded_sampling_and_model_or_directory(tmp_path, tok, model, problems):
    a = evaluate(model, problems, CFG, tokenizer=tok, keep_responses=True, progress=False)
    b = evaluate(model, problems, CFG, tokenizer=tok, keep_responses=True, progress=False)
    c = evaluate(model, problems, EvalConfig(**{**CFG.__dict__, "seed": 1}), tokenizer=tok, keep_responses=True,
                 progress=False)
    assert a.responses == b.responses and a.responses != c.responses
    assert len(a.responses) == len(problems) and all(len(r) == CFG.k for r in a.responses)
    model.save_pretrained(tmp_path / "ckpt")
    tok.save_pretrained(tmp_path / "ckpt")
    d = evaluate(tmp_path / "ckpt", problems, CFG, keep_responses=True, progress=False)
    assert d.responses == a.responses


def test_cache_hits_without_loading_the_model(tmp_path, tok, model, problems):
    ckpt = tmp_path / "ckpt"
    model.save_pretrained(ckpt)
    tok.save_pretrained(ckpt)
    cache = tmp_path / "cache"
    first = evaluate(ckpt, problems, CFG, cache_dir=cache, progress=False)
    assert not first.from_cache and len(list(cache.glob("eval-*.json"))) == 1
    policy = ModelPolicy(path=ckpt)
    again = evaluate(policy, problems, CFG, cache_dir=cache, progress=False)
    assert again.from_cache and policy._model is None
    assert (again.avg_at_k, again.pass_at_k, again.per_question) == (first.avg_at_k, first.pass_at_k, first.per_question)
    # the same weights in memory share the entry only if their fingerprint matches; other settings miss
    other = evaluate(ckpt, problems, EvalConfig(**{**CFG.__dict__, "temperature": 0.5}), cache_dir=cache, progress=False)
    assert not other.from_cache
    fewer = evaluate(ckpt, problems[:5], CFG, cache_dir=cache, progress=False)
    assert not fewer.from_cache
    # changed weights miss the cache
    with torch.no_grad():
        model2 = build_model(ModelConfig(init_seed=1), tok)
    model2.save_pretrained(ckpt)
    assert not evaluate(ckpt, problems, CFG, cache_dir=cache, progress=False).from_cache


def test_bad_inputs(tmp_path, tok, model, problems):
    for bad in ({"k": 0}, {"top_p": 0.0}, {"top_p": 1.5}, {"temperature": -1.0}, {"max_new_tokens": 0}, {"batch_size": 0}):
        with pytest.raises(ValueError):
            EvalConfig(**bad)
    with pytest.raises(ValueError, match="no problems"):
        evaluate(model, [], CFG, tokenizer=tok)
    with pytest.raises(ValueError, match="needs its tokenizer"):
        evaluate(model, problems, CFG)
    with pytest.raises(FileNotFoundError):
        evaluate(tmp_path / "missing", problems, CFG)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        evaluate(tmp_path / "empty", problems, CFG)
    with pytest.raises(TypeError):
        evaluate(42, problems, CFG)
    with pytest.raises(ValueError, match="grader"):
        evaluate(model, [Problem("1+1=", "2")], CFG, tokenizer=tok, grader="nope")


def test_checkpoint_files_through_the_layer(tmp_path, tok, model):
    """Weight files are listed by rlvr_nb.checkpoint_files: pickles are named and never read, a sharded
    checkpoint's fingerprint covers its index and shards, and a corrupt header of a large checkpoint
    is one error naming the file (it was an OverflowError)."""
    (tmp_path / "pickled").mkdir()
    (tmp_path / "pickled" / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(FileNotFoundError, match="found pytorch_model.bin: only safetensors are read, never pickle"):
        ModelPolicy(path=tmp_path / "pickled")
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    tok.save_pretrained(tmp_path / "sharded")
    assert len(list((tmp_path / "sharded").glob("model-*.safetensors"))) > 1
    fp = checkpoint_fingerprint(tmp_path / "sharded")
    last = sorted((tmp_path / "sharded").glob("model-*.safetensors"))[-1]
    data = bytearray(last.read_bytes())
    data[-1] ^= 1  # one weight byte of the last shard
    last.write_bytes(bytes(data))
    assert checkpoint_fingerprint(tmp_path / "sharded") != fp
    (tmp_path / "big").mkdir()
    (tmp_path / "big" / "model.safetensors").write_bytes((2**62).to_bytes(8, "little") + b"{}")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ev, "CONTENT_HASH_MAX_BYTES", 0)  # fingerprinted by metadata and header, as a large model
        with pytest.raises(CheckpointError, match=r"corrupt safetensors file .*big/model.safetensors"):
            checkpoint_fingerprint(tmp_path / "big")
