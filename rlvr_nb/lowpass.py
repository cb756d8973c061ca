"""Sec. 5: why RLVR weights move linearly. Summing noisy per-step updates acts as a low-pass filter.

The model (PAPER.md Sec. 5, "low-pass filter"): one scalar parameter gets a per-step update
u_s = mu + sigma * eps_s (drift mu, noise of standard deviation sigma, optionally passed through
Adam's normalisation), and is read every K steps at T checkpoints, steps 0, K, ..., (T-1) K. With
w_0 = 0 and Gaussian noise the checkpoint values are

    w_j = mu K j + sigma sqrt(K) B_j,   B_j = z_1 + ... + z_j,  z_i ~ N(0, 1) i.i.d.,

so Cov(w_j, w_k) = sigma^2 K min(j, k) (a random walk). R^2 of the least-squares line through
(j, w_j) is scale-free, so its whole distribution depends only on T and on the per-checkpoint SNR

    rho = (mu / sigma) sqrt(K),

and, for T beyond ~10, almost only on the drift-to-noise ratio of the whole run,
lambda = rho sqrt(T - 1) = mu N / (sigma sqrt(N)), N = K (T - 1) steps: final drift over accumulated noise.

Closed forms (C centres, P projects on the centred step axis; SS_res = w' (C - P) w, SS_tot = w' C w):

    E[SS_res] / (sigma^2 K) = (T^2 - 4) / 15,
    E[SS_tot] / (sigma^2 K) = rho^2 T (T^2 - 1) / 12 + (T^2 - 1) / 6.

Their ratio gives `r2_ratio_approx`, which is good only once R^2 > ~0.96: at mu = 0 it says
1 - 0.4 (T^2 - 4) / (T^2 - 1) ~ 0.60 where the true mean is 0.44 (`expected_r2`). So the mean and the
quantiles of R^2 are computed exactly instead, each as a one-dimensional integral of Gaussian
quadratic forms (`expected_r2`, `r2_quantile`): the quadrature and root-finding errors are below 1e-9,
and both agree with simulations within Monte-Carlo error (tests/test_lowpass.py: 0.01 with 20000 draws).

The two ways to lose linearity: a drift that itself curves with nothing to average out
(`simulate_curved_drift`, SFT on a loss that changes as it is minimised), and no drift at all
(`simulate_trajectories(mu=0)`, a pure random walk: median R^2 0.45 at 14 checkpoints).

Figure 3's injected noise (`token_noise_weights`) lives here too: it is how the notebook turns the
SNR knob of this theory on a real SFT run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

# --------------------------------------------------------------------------------------------------
# Units


def db_to_snr(snr_db: float | np.ndarray) -> float | np.ndarray:
    """SNR as an amplitude ratio from decibels: SNR = 10^(SNR_dB / 20)."""
    out = 10.0 ** (np.asarray(snr_db, dtype=np.float64) / 20.0)
    return float(out) if out.ndim == 0 else out


def snr_to_db(snr: float | np.ndarray) -> float | np.ndarray:
    """Decibels of an amplitude ratio: SNR_dB = 20 log10(SNR)."""
    return 20.0 * np.log10(snr)


def drift_to_noise(snr: float | np.ndarray, n_checkpoints: int, steps_between: int) -> float | np.ndarray:
    """lambda = SNR sqrt(K (T - 1)): drift over the run divided by the noise accumulated over it."""
    return np.abs(snr) * math.sqrt(steps_between * (n_checkpoints - 1))


# --------------------------------------------------------------------------------------------------
# R^2 of trajectories (a small self-contained float64 version; rlvr_nb.linearity holds the real engine)


def r2_of_trajectories(steps: np.ndarray, W: np.ndarray) -> np.ndarray:
    """R^2 of the least-squares line w ~ a + b t through each column of W (PAPER.md Sec. 4, weight linearity).

    steps: [T], W: [T, P]. Returns [P] in float64; NaN where a trajectory is constant (SS_tot = 0).
    """
    t = np.asarray(steps, dtype=np.float64)  # [T]
    W = np.asarray(W, dtype=np.float64)
    if W.ndim == 1:
        W = W[:, None]
    if t.ndim != 1 or W.ndim != 2 or W.shape[0] != t.shape[0]:
        raise ValueError(f"steps must be [T] and W [T, P]; got steps {t.shape} and W {W.shape}")
    if t.shape[0] < 3:
        raise ValueError(f"R^2 of a line needs at least 3 checkpoints, got {t.shape[0]}")
    tc = t - t.mean()  # [T]
    Wc = W - W.mean(axis=0, keepdims=True)  # [T, P]
    slope = tc @ Wc / (tc @ tc)  # [P]
    ss_tot = (Wc**2).sum(axis=0)  # [P]
    ss_res = ((Wc - tc[:, None] * slope[None, :]) ** 2).sum(axis=0)  # [P]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ss_tot > 0, 1.0 - ss_res / np.where(ss_tot > 0, ss_tot, 1.0), np.nan)


# --------------------------------------------------------------------------------------------------
# Theory: R^2 of drift + random walk read at T checkpoints


def _check_walk(n_checkpoints: int, steps_between: int) -> None:
    if int(n_checkpoints) != n_checkpoints or n_checkpoints < 3:
        raise ValueError(f"n_checkpoints must be an integer >= 3 (R^2 of 2 points is always 1), got {n_checkpoints}")
    if int(steps_between) != steps_between or steps_between < 1:
        raise ValueError(f"steps_between must be an integer >= 1, got {steps_between}")


def _walk_matrices(T: int) -> dict[str, np.ndarray]:
    """Quadratic forms of R^2 in the walk's increments z ~ N(0, I_{T-1}), per-checkpoint SNR rho = 1.

    w = rho t + S z (t = 0..T-1). SS_res = z' A z (the drift is a line, so it leaves no residual);
    SS_tot = z' G z + 2 rho h' z + rho^2 c0.
    """
    t = np.arange(T, dtype=np.float64)  # [T]
    S = np.tril(np.ones((T, T - 1)), -1)  # [T, T-1]: w_j = sum_{i < j} z_i
    C = np.eye(T) - 1.0 / T  # centring
    tc = t - t.mean()
    P = np.outer(tc, tc) / (tc @ tc)  # projection on the centred step axis
    return {
        "A": S.T @ (C - P) @ S,  # [T-1, T-1]
        "G": S.T @ C @ S,  # [T-1, T-1], positive definite
        "h": S.T @ C @ t,  # [T-1]
        "c0": np.array(t @ C @ t),  # []
    }


def r2_ratio_approx(snr: float | np.ndarray, n_checkpoints: int, steps_between: int = 1) -> float | np.ndarray:
    """R^2 ~ 1 - E[SS_res] / E[SS_tot] = 1 - 4 (T^2 - 4) / (5 (T^2 - 1) (rho^2 T + 2)), rho = SNR sqrt(K).

    PAPER.md Sec. 5, low-pass filter (closed form of the ratio of expectations). Too high at low SNR
    (0.61 vs the exact 0.44 at SNR = 0, T = 14; up to 0.19 too high); within 0.01 of `expected_r2`
    once that exceeds 0.96, within 0.005 above 0.97 (T = 5 to 50).
    """
    _check_walk(n_checkpoints, steps_between)
    T = n_checkpoints
    rho2 = np.asarray(snr, dtype=np.float64) ** 2 * steps_between
    out = 1.0 - 4.0 * (T * T - 4) / (5.0 * (T * T - 1) * (rho2 * T + 2.0))
    return float(out) if np.ndim(snr) == 0 else out


def _mean_r2_rho(rho: np.ndarray, T: int, n_grid: int = 4000) -> np.ndarray:
    """E[R^2] = 1 - integral_0^inf E[SS_res exp(-s SS_tot)] ds, for each per-checkpoint SNR rho. [R] -> [R]."""
    M = _walk_matrices(T)
    lam, U = np.linalg.eigh(M["G"])  # [T-1], [T-1, T-1]
    A = U.T @ M["A"] @ U  # [T-1, T-1] in G's eigenbasis
    h1 = U.T @ M["h"]  # [T-1]
    out = np.empty(len(rho))
    v0 = np.linspace(-25.0, 25.0, n_grid)  # log s around the scale 1 / E[SS_tot]
    rows = max(1, 2_000_000 // (n_grid * (T - 1)))
    for lo in range(0, len(rho), rows):
        r = rho[lo : lo + rows]  # [R]
        h = r[:, None] * h1[None, :]  # [R, T-1]
        c0 = r**2 * M["c0"]  # [R]
        v = v0[None, :] - np.log(lam.sum() + c0)[:, None]  # [R, N]
        s = np.exp(v)[:, :, None]  # [R, N, 1]
        d = 1.0 + 2.0 * s * lam  # [R, N, T-1]: tilted precision I + 2 s G, diagonal
        # E[exp(-s SS_tot)] = det(I + 2sG)^(-1/2) exp(2 s^2 h'(I + 2sG)^(-1) h - s c0)
        log_z = -0.5 * np.log(d).sum(-1) + 2.0 * s[..., 0] ** 2 * (h[:, None, :] ** 2 / d).sum(-1) - s[..., 0] * c0[:, None]
        m = -2.0 * s * h[:, None, :] / d  # [R, N, T-1]: mean of z under the tilt
        quad = (np.diagonal(A) / d).sum(-1) + np.einsum("rni,ij,rnj->rn", m, A, m)  # E_tilt[z' A z]
        integrand = np.exp(log_z) * quad * s[..., 0]  # ds = s dv
        out[lo : lo + rows] = 1.0 - np.trapezoid(integrand, v, axis=1)
    return out


def _cdf_r2_rho(r2: np.ndarray, rho: np.ndarray, M: dict[str, np.ndarray], n_grid: int = 3000) -> np.ndarray:
    """P(R^2 <= r2) for each row (Gil-Pelaez inversion of a Gaussian quadratic form). [R], [R] -> [R].

    R^2 <= r  <=>  Y = SS_res - (1 - r) SS_tot >= 0, and Y = z' D z + 2 b' z + c with z ~ N(0, I), whose
    characteristic function is prod_j (1 - 2iu l_j)^(-1/2) exp(iuc - 2u^2 sum_j b_j^2 / (1 - 2iu l_j)).
    """
    g = 1.0 - r2  # [R]
    D = M["A"][None] - g[:, None, None] * M["G"][None]  # [R, T-1, T-1]
    lam, U = np.linalg.eigh(D)  # [R, T-1], [R, T-1, T-1]
    b = np.einsum("rji,rj->ri", U, -(g * rho)[:, None] * M["h"][None, :])  # [R, T-1]
    c = -g * rho**2 * M["c0"]  # [R]
    scale = np.maximum.reduce([np.abs(lam).max(-1), np.abs(c), np.sqrt((b**2).sum(-1))])  # P(Y>=0) is scale-free
    lam, b, c = lam / scale[:, None], b / scale[:, None], c / scale
    v = np.linspace(-20.0, 12.0, n_grid)  # log u
    u = np.exp(v)[None, :]  # [1, N]
    x = 2.0 * u[..., None] * lam[:, None, :]  # [R, N, T-1]; 1 - 2iu l = 1 - ix, in real arithmetic:
    mod2 = 1.0 + x * x  # |1 - ix|^2, and 1 / (1 - ix) = (1 + ix) / mod2
    bb = b[:, None, :] ** 2 / mod2  # [R, N, T-1]
    log_abs = -0.25 * np.log(mod2).sum(-1) - 2.0 * u**2 * bb.sum(-1)  # log |phi|
    arg = 0.5 * np.arctan(x).sum(-1) + u * c[:, None] - 2.0 * u**2 * (bb * x).sum(-1)  # arg phi
    return 0.5 + np.trapezoid(np.exp(log_abs) * np.sin(arg), v, axis=1) / np.pi  # integral of Im phi(u) / u du


def _quantile_r2_rho(q: float, rho: np.ndarray, T: int, n_iter: int = 14) -> np.ndarray:
    """The q-quantile of R^2 for each rho: root of CDF - q in y = -log(1 - R^2), Illinois false position. [R] -> [R].

    y spreads the mass that piles up near R^2 = 1 at high SNR; 12 iterations already reach |error| < 1e-9.
    """
    M = _walk_matrices(T)
    cdf = lambda y, r: _cdf_r2_rho(-np.expm1(-y), r, M) - q  # noqa: E731
    out = np.empty(len(rho))
    rows = max(1, 2_000_000 // (3000 * (T - 1)))
    for i in range(0, len(rho), rows):
        r = rho[i : i + rows]
        a, b = np.zeros(len(r)), np.full(len(r), 40.0)  # R^2 in [0, 1 - 4e-18]
        fa, fb = np.full(len(r), -q), cdf(b, r)
        side = np.zeros(len(r))
        for _ in range(n_iter):
            x = np.clip(b - fb * (b - a) / np.where(fb > fa, fb - fa, 1.0), a, b)
            fx = cdf(x, r)
            left = fx < 0  # the root lies right of x: x replaces a
            fb = np.where(left & (side < 0), fb / 2, fb)  # Illinois: halve the end kept twice
            fa = np.where(~left & (side > 0), fa / 2, fa)
            a, fa = np.where(left, x, a), np.where(left, fx, fa)
            b, fb = np.where(left, b, x), np.where(left, fb, fx)
            side = np.where(left, -1.0, 1.0)
        out[i : i + rows] = -np.expm1(-np.where(np.abs(fa) < np.abs(fb), a, b))
    return out


def expected_r2(snr: float | np.ndarray, n_checkpoints: int, steps_between: int = 1) -> float | np.ndarray:
    """E[R^2] of w(t) = drift + random walk read at T checkpoints K steps apart, exact for Gaussian noise.

    PAPER.md Sec. 5, low-pass filter. snr = mu / sigma of the per-step update (a ratio, not dB);
    depends only on T and rho = |snr| sqrt(K). E[R^2] = 1 - int_0^inf E[SS_res exp(-s SS_tot)] ds,
    each term a Gaussian integral, the outer one a trapezoid rule on log s (error < 1e-9).
    """
    _check_walk(n_checkpoints, steps_between)
    rho = np.abs(np.atleast_1d(np.asarray(snr, dtype=np.float64))) * math.sqrt(steps_between)
    if not np.all(np.isfinite(rho)):
        raise ValueError("snr must be finite")
    out = _mean_r2_rho(rho.ravel(), int(n_checkpoints)).reshape(rho.shape)
    return float(out[0]) if np.ndim(snr) == 0 else out


def r2_quantile(q: float, snr: float | np.ndarray, n_checkpoints: int, steps_between: int = 1) -> float | np.ndarray:
    """The q-quantile of R^2 for drift + random walk (exact CDF by Gil-Pelaez inversion, then bisection).

    PAPER.md Sec. 5, low-pass filter. Same model and arguments as `expected_r2`; error < 1e-9.
    """
    _check_walk(n_checkpoints, steps_between)
    if not 0.0 < q < 1.0:
        raise ValueError(f"q must lie in (0, 1), got {q}")
    rho = np.abs(np.atleast_1d(np.asarray(snr, dtype=np.float64))) * math.sqrt(steps_between)
    if not np.all(np.isfinite(rho)):
        raise ValueError("snr must be finite")
    out = _quantile_r2_rho(q, rho.ravel(), int(n_checkpoints)).reshape(rho.shape)
    return float(out[0]) if np.ndim(snr) == 0 else out


def median_r2(snr: float | np.ndarray, n_checkpoints: int, steps_between: int = 1) -> float | np.ndarray:
    """Median R^2 of drift + random walk (the statistic the paper reports). See `r2_quantile`."""
    return r2_quantile(0.5, snr, n_checkpoints, steps_between)


def r2_curved_drift(rate: float, n_checkpoints: int, steps_between: int) -> float:
    """R^2 of a noiseless exponential approach w(t) = w* (1 - (1 - rate)^t): the curvature side of the filter."""
    _check_walk(n_checkpoints, steps_between)
    if not 0.0 < rate < 1.0:
        raise ValueError(f"rate must lie in (0, 1), got {rate}")
    t = np.arange(n_checkpoints) * steps_between
    return float(r2_of_trajectories(t, 1.0 - (1.0 - rate) ** t)[0])


# --------------------------------------------------------------------------------------------------
# Simulations


def _noise(rng: np.random.Generator, shape: tuple[int, ...], noise: str) -> np.ndarray:
    if noise == "gaussian":
        return rng.standard_normal(shape)
    if noise == "sign":
        return rng.integers(0, 2, size=shape) * 2.0 - 1.0
    raise ValueError(f"noise must be 'gaussian' or 'sign', got {noise!r}")


def simulate_trajectories(
    mu: float,
    sigma: float,
    n_checkpoints: int,
    steps_between: int,
    n_params: int,
    adam: bool = False,
    seed: int = 0,
    noise: str = "gaussian",
    lr: float = 1.0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> np.ndarray:
    """P independent parameters, each updated T-1 blocks of K steps by g_s = mu + sigma eps_s. Returns [T, P].

    Plain: w += lr g_s. adam=True: w += lr m_hat / (sqrt(v_hat) + eps) with Adam's bias-corrected running
    moments m, v of g (no weight decay). Adam rescales drift and noise alike, so the SNR and R^2 stay as
    for the plain sum once K >> 1 / (1 - beta1). mu = 0 is the "no signal" side (a pure random walk).
    """
    _check_walk(n_checkpoints, steps_between)
    if sigma < 0 or n_params < 1:
        raise ValueError(f"need sigma >= 0 and n_params >= 1, got sigma={sigma}, n_params={n_params}")
    rng = np.random.default_rng(seed)
    W = np.zeros((n_checkpoints, n_params))  # [T, P]
    w = np.zeros(n_params)
    m, v = np.zeros(n_params), np.zeros(n_params)
    b1, b2 = betas
    step = 0
    for j in range(1, n_checkpoints):
        g = mu + sigma * _noise(rng, (steps_between, n_params), noise)  # [K, P]
        if not adam:
            w = w + lr * g.sum(axis=0)
        else:
            for k in range(steps_between):
                step += 1
                m = b1 * m + (1 - b1) * g[k]
                v = b2 * v + (1 - b2) * g[k] ** 2
                w = w + lr * (m / (1 - b1**step)) / (np.sqrt(v / (1 - b2**step)) + eps)
        W[j] = w
    return W


def simulate_no_signal(sigma: float, n_checkpoints: int, steps_between: int, n_params: int, seed: int = 0) -> np.ndarray:
    """The "no signal" failure side: mu = 0, so each parameter is a pure random walk. Returns [T, P]."""
    return simulate_trajectories(0.0, sigma, n_checkpoints, steps_between, n_params, seed=seed)


def simulate_curved_drift(
    n_checkpoints: int,
    steps_between: int,
    n_params: int,
    rate: float | np.ndarray,
    sigma: float = 0.0,
    seed: int = 0,
) -> np.ndarray:
    """The "curved drift" failure side: gradient descent on 1/2 (w - w*)^2, w* ~ N(0, 1), from w = 0. Returns [T, P].

    Per step w += rate (w* - w) + sigma eps: an exponential approach to the optimum, as in SFT on a loss
    that changes as it is minimised. rate is a float or one rate per parameter ([P], each in (0, 1)).
    With sigma = 0 nothing is noisy, yet R^2 < 1: after rate K (T - 1) e-foldings the path bends.
    """
    _check_walk(n_checkpoints, steps_between)
    rate = np.broadcast_to(np.asarray(rate, dtype=np.float64), (n_params,))
    if np.any(rate <= 0) or np.any(rate >= 1):
        raise ValueError("rate must lie in (0, 1)")
    rng = np.random.default_rng(seed)
    w_star = rng.standard_normal(n_params)  # [P]
    W = np.zeros((n_checkpoints, n_params))  # [T, P]
    w = np.zeros(n_params)
    for j in range(1, n_checkpoints):
        eps = rng.standard_normal((steps_between, n_params)) if sigma > 0 else np.zeros((steps_between, n_params))
        for k in range(steps_between):
            w = w + rate * (w_star - w) + sigma * eps[k]
        W[j] = w
    return W


# --------------------------------------------------------------------------------------------------
# Figure 3's injected noise: token-level random-sign weights on the SFT loss


def noise_amplitudes(snr_db: float | None, zero_signal: bool = False) -> tuple[float, float]:
    """(a, sigma) of the token weights w_i = a + sigma eps_i (PAPER.md Sec. 5, Figure 3 noise injection).

    SNR_dB = 20 log10(a / sigma), with the power normalised, a^2 + sigma^2 = 1:
        a = s / sqrt(1 + s^2),  sigma = 1 / sqrt(1 + s^2),  s = 10^(SNR_dB / 20).
    snr_db None: plain SFT, (1, 0). zero_signal: (0, 1), the SNR -> -inf limit, i.e. the noise of the
    lowest SNR setting without its signal (at -20 dB sigma = 0.995).
    """
    if zero_signal:
        if snr_db is not None:
            raise ValueError("zero_signal=True fixes a = 0, sigma = 1 (the SNR -> -inf limit); pass snr_db=None")
        return 0.0, 1.0
    if snr_db is None:
        return 1.0, 0.0
    if not math.isfinite(snr_db):
        raise ValueError(f"snr_db must be finite (use None for plain SFT, zero_signal=True for no signal), got {snr_db}")
    s = 10.0 ** (snr_db / 20.0)
    return s / math.sqrt(1.0 + s * s), 1.0 / math.sqrt(1.0 + s * s)


def token_noise_weights(
    shape: Sequence[int] | torch.Size,
    snr_db: float | None,
    zero_signal: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Per-token weights on the SFT negative log-likelihood, loss = mean_i w_i * (-log p(y_i | ...)).

    PAPER.md Sec. 5, Figure 3 (token-level random-sign noise):
        w_i = a + sigma eps_i,  eps_i = +1 or -1 with probability 1/2 (independent per token and step),
        SNR_dB = 20 log10(a / sigma),  a^2 + sigma^2 = 1   (see `noise_amplitudes`).
    E[w_i] = a carries the SFT signal, the sign flips carry zero-mean noise of std sigma. The power
    normalisation keeps E[w_i^2] = 1 at every setting, so the loss scale, the gradient norm seen by
    gradient clipping and Adam's epsilon are comparable across the sweep (with Adam, a = 1 and any
    sigma would give the same updates up to those two). snr_db=None: plain SFT, all ones.
    zero_signal=True (snr_db None): a = 0, sigma = 1.
    """
    a, sigma = noise_amplitudes(snr_db, zero_signal)
    if sigma == 0.0:
        return torch.ones(tuple(shape), device=device, dtype=dtype)
    signs = torch.randint(0, 2, tuple(shape), generator=generator, device=device).to(dtype) * 2 - 1
    return a + sigma * signs


# --------------------------------------------------------------------------------------------------
# Figures


def _theory_curves(n_checkpoints: int, rho: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, median) of R^2 on a grid of per-checkpoint SNR rho; reused for every K (snr = rho / sqrt(K))."""
    return _mean_r2_rho(rho, n_checkpoints), _quantile_r2_rho(0.5, rho, n_checkpoints)


def theory_figure(
    n_checkpoints: int = 14,
    steps_between: Sequence[int] = (1, 10, 100),
    snr_db_range: tuple[float, float] = (-45.0, 10.0),
    sim_snr_db: Sequence[float] = (-40, -35, -30, -25, -20, -15, -10, -5, 0, 5, 10),
    n_params: int = 400,
    adam_steps_between: int | None = 100,
    other_n_checkpoints: Sequence[int] = (5, 21),
    seed: int = 0,
    n_points: int = 60,
) -> Figure:
    """Closed-form mean and median R^2 against simulated trajectories, over the per-step SNR (dB).

    (a) one curve pair per K at T = n_checkpoints, simulated means (o) and medians (s), and Adam
    simulations (^) at K = adam_steps_between; (b) the same against the drift-to-noise ratio
    lambda = SNR sqrt(K (T - 1)) for several T, with the ratio-of-expectations approximation (dotted).
    n_points: theory points per curve (the exact median costs ~0.1 s a point: fewer for a quick draw).
    """
    _check_walk(n_checkpoints, min(steps_between))
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.4))
    lo_db, hi_db = snr_db_range
    rho = np.logspace((lo_db - 1) / 20, (hi_db + 1) / 20 + math.log10(math.sqrt(max(steps_between))), n_points)
    mean, med = _theory_curves(n_checkpoints, rho)
    steps_of = lambda K: np.arange(n_checkpoints) * K  # noqa: E731
    for i, K in enumerate(steps_between):
        color = f"C{i}"
        x = snr_to_db(rho / math.sqrt(K))
        keep = (x >= lo_db) & (x <= hi_db)
        ax.plot(x[keep], mean[keep], color=color, label=f"K = {K}: mean (theory)")
        ax.plot(x[keep], med[keep], color=color, ls="--", label=f"K = {K}: median (theory)")
        sims = [r2_of_trajectories(steps_of(K), simulate_trajectories(db_to_snr(db), 1.0, n_checkpoints, K, n_params, seed=seed + j))
                for j, db in enumerate(sim_snr_db)]
        ax.plot(sim_snr_db, [s.mean() for s in sims], "o", color=color, ms=5)
        ax.plot(sim_snr_db, [np.median(s) for s in sims], "s", color=color, ms=4, mfc="none")
        if K == adam_steps_between:
            adam = [r2_of_trajectories(steps_of(K), simulate_trajectories(db_to_snr(db), 1.0, n_checkpoints, K, n_params, adam=True,
                                                                          seed=seed + j)) for j, db in enumerate(sim_snr_db)]
            ax.plot(sim_snr_db, [np.median(s) for s in adam], "^", color=color, ms=6, mfc="none", label=f"K = {K}: Adam, median (sim.)")
    ax.plot([], [], "ko", ms=5, label="simulated mean")
    ax.plot([], [], "ks", ms=4, mfc="none", label="simulated median")
    ax.set(xlabel="per-step SNR = mu / sigma (dB)", ylabel="R$^2$ of w(t) vs step", ylim=(0.3, 1.01),
           title=f"(a) T = {n_checkpoints} checkpoints, K steps apart")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")

    lam = np.logspace(-2, 2, max(8, (2 * n_points) // 3))
    for i, T in enumerate(sorted({n_checkpoints, *other_n_checkpoints})):
        m_T, med_T = _theory_curves(T, lam / math.sqrt(T - 1))
        bx.plot(lam, m_T, color=f"C{i}", label=f"T = {T}: mean")
        bx.plot(lam, med_T, color=f"C{i}", ls="--", label=f"T = {T}: median")
    bx.plot(lam, r2_ratio_approx(lam / math.sqrt(n_checkpoints - 1), n_checkpoints), "k:",
            label=f"T = {n_checkpoints}: 1 - E[SS_res]/E[SS_tot]")
    bx.set(xscale="log", xlabel="drift / accumulated noise  lambda = SNR sqrt(K (T-1))", ylim=(0.3, 1.01),
           title="(b) the curves collapse onto lambda")
    bx.grid(alpha=0.3)
    bx.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig


def failure_modes_figure(
    n_checkpoints: int = 14,
    steps_between: int = 100,
    snr_db: float = -25.0,
    n_params: int = 1000,
    e_foldings: tuple[float, float] = (1.0, 10.0),
    seed: int = 0,
    n_show: int = 6,
) -> Figure:
    """Three columns: drift + noise (filtered, linear), curved drift with no noise, noise with no signal.

    Top: n_show example trajectories with their least-squares lines; bottom: the R^2 histogram of all
    n_params. The curved drift draws each parameter's rate so that the run lasts between e_foldings[0]
    and e_foldings[1] time constants (log-uniform), like directions of different curvature.
    """
    _check_walk(n_checkpoints, steps_between)
    steps = np.arange(n_checkpoints) * steps_between
    n_steps = steps[-1]
    rng = np.random.default_rng(seed)
    rates = np.exp(rng.uniform(*np.log(e_foldings), size=n_params)) / n_steps
    cases = [
        (f"drift + noise, SNR {snr_db:g} dB", simulate_trajectories(db_to_snr(snr_db), 1.0, n_checkpoints, steps_between, n_params, seed=seed)),
        (f"curved drift, no noise ({e_foldings[0]:g}-{e_foldings[1]:g} e-foldings)",
         simulate_curved_drift(n_checkpoints, steps_between, n_params, rates, seed=seed)),
        ("noise, no signal (mu = 0)", simulate_trajectories(0.0, 1.0, n_checkpoints, steps_between, n_params, seed=seed)),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5))
    tc = steps - steps.mean()
    for col, (title, W) in enumerate(cases):
        r2 = r2_of_trajectories(steps, W)  # [P]
        top, bottom = axes[0, col], axes[1, col]
        for p in range(n_show):
            w = W[:, p] / (np.abs(W[:, p]).max() + 1e-30)
            fit = w.mean() + tc * (tc @ (w - w.mean())) / (tc @ tc)
            top.plot(steps, w, "o-", color=f"C{p}", ms=3, lw=1)
            top.plot(steps, fit, color=f"C{p}", lw=0.8, ls=":")
        top.set(title=title, xlabel="step", ylabel="w(t) / max |w|")
        bottom.hist(r2, bins=40, range=(0, 1), color="C0", alpha=0.7)
        bottom.axvline(np.median(r2), color="k", ls="--", label=f"median {np.median(r2):.2f}")
        bottom.set(xlabel="R$^2$", ylabel="parameters")
        bottom.legend(fontsize=8)
    fig.suptitle(f"T = {n_checkpoints} checkpoints, K = {steps_between} steps apart", fontsize=10)
    fig.tight_layout()
    return fig


def explorer_figure(
    snr_db: float,
    steps_between: int,
    n_checkpoints: int = 14,
    n_params: int = 500,
    seed: int = 0,
    curve: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> Figure:
    """One setting of the filter: example trajectories, the R^2 histogram with the theory, the theory curve.

    curve: (rho, mean, median) from a previous call's grid, so a slider redraw does not recompute it.
    """
    _check_walk(n_checkpoints, steps_between)
    if curve is None:
        rho = np.logspace(-3, 2.5, 45)
        curve = (rho, *_theory_curves(n_checkpoints, rho))
    rho, mean, med = curve
    steps = np.arange(n_checkpoints) * steps_between
    W = simulate_trajectories(db_to_snr(snr_db), 1.0, n_checkpoints, steps_between, n_params, seed=seed)
    r2 = r2_of_trajectories(steps, W)
    th_mean = expected_r2(db_to_snr(snr_db), n_checkpoints, steps_between)
    th_med = median_r2(db_to_snr(snr_db), n_checkpoints, steps_between)
    fig, (ax, bx, cx) = plt.subplots(1, 3, figsize=(13, 3.8))
    for p in range(5):
        ax.plot(steps, W[:, p], "o-", ms=3, lw=1)
    ax.set(xlabel="step", ylabel="w(t)", title=f"SNR {snr_db:g} dB, K = {steps_between}")
    bx.hist(r2, bins=40, range=(0, 1), color="C0", alpha=0.7, density=True)
    bx.axvline(th_mean, color="k", label=f"theory mean {th_mean:.3f} (sim. {r2.mean():.3f})")
    bx.axvline(th_med, color="k", ls="--", label=f"theory median {th_med:.3f} (sim. {np.median(r2):.3f})")
    bx.set(xlabel="R$^2$", ylabel="density", title=f"{n_params} simulated parameters")
    bx.legend(fontsize=7, loc="upper left")
    x = snr_to_db(rho / math.sqrt(steps_between))
    cx.plot(x, mean, label="mean")
    cx.plot(x, med, ls="--", label="median")
    cx.plot([snr_db], [th_med], "ko")
    cx.set(xlim=(-50, 20), ylim=(0.3, 1.01), xlabel="per-step SNR (dB)", ylabel="R$^2$",
           title=f"theory, T = {n_checkpoints}, K = {steps_between}")
    cx.grid(alpha=0.3)
    cx.legend(fontsize=8)
    fig.tight_layout()
    return fig


def snr_explorer(
    interactive: bool,
    snr_db: float = -20.0,
    steps_between: int = 100,
    n_checkpoints: int = 14,
    n_params: int = 500,
    seed: int = 0,
    n_points: int = 45,
):
    """Sliders for the per-step SNR (dB) and K that redraw `explorer_figure`; or that figure, static.

    interactive=True returns an ipywidgets VBox (sliders with continuous_update=False, wired with
    `ipywidgets.interactive_output`); interactive=False (papermill) returns the matplotlib Figure at
    the given values and opens no kernel comm. n_points: points of the theory curve (computed once).
    """
    rho = np.logspace(-3, 2.5, n_points)
    curve = (rho, *_theory_curves(n_checkpoints, rho))  # computed once: K only rescales the SNR axis
    if not interactive:
        return explorer_figure(snr_db, steps_between, n_checkpoints, n_params, seed, curve)

    import ipywidgets as widgets
    from IPython.display import display

    ks = sorted({1, 3, 10, 30, 100, 300, 1000, int(steps_between)})
    snr_slider = widgets.FloatSlider(value=snr_db, min=-50.0, max=20.0, step=1.0, description="SNR (dB)",
                                     continuous_update=False)
    k_slider = widgets.SelectionSlider(options=ks, value=int(steps_between), description="K (steps)",
                                       continuous_update=False)

    def draw(snr_db: float, steps_between: int) -> None:
        fig = explorer_figure(snr_db, steps_between, n_checkpoints, n_params, seed, curve)
        display(fig)
        plt.close(fig)

    out = widgets.interactive_output(draw, {"snr_db": snr_slider, "steps_between": k_slider})
    return widgets.VBox([widgets.HBox([snr_slider, k_slider]), out])
