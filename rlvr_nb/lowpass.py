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
SNR knob of this theory on a real SFT run. The R^2 of a simulated trajectory is the package's one R^2,
`rlvr_nb.linearity.r2_against_steps`; 04's figures and widget of this theory are in
`rlvr_nb.experiments.lowpass_theory`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

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
# Theory: R^2 of drift + random walk read at T checkpoints


def check_walk(n_checkpoints: int, steps_between: int) -> None:
    """ValueError unless the walk is read at an integer T >= 3 checkpoints an integer K >= 1 steps apart."""
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
    check_walk(n_checkpoints, steps_between)
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
    check_walk(n_checkpoints, steps_between)
    rho = np.abs(np.atleast_1d(np.asarray(snr, dtype=np.float64))) * math.sqrt(steps_between)
    if not np.all(np.isfinite(rho)):
        raise ValueError("snr must be finite")
    out = _mean_r2_rho(rho.ravel(), int(n_checkpoints)).reshape(rho.shape)
    return float(out[0]) if np.ndim(snr) == 0 else out


def r2_quantile(q: float, snr: float | np.ndarray, n_checkpoints: int, steps_between: int = 1) -> float | np.ndarray:
    """The q-quantile of R^2 for drift + random walk (exact CDF by Gil-Pelaez inversion, then bisection).

    PAPER.md Sec. 5, low-pass filter. Same model and arguments as `expected_r2`; error < 1e-9.
    """
    check_walk(n_checkpoints, steps_between)
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
    check_walk(n_checkpoints, steps_between)
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
    check_walk(n_checkpoints, steps_between)
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
