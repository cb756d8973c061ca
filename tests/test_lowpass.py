"""Sec. 5 low-pass filter: the closed forms against Monte-Carlo, the failure sides, the injected noise, and
04's figures of it (rlvr_nb.experiments.lowpass_theory). Simulated trajectories are scored with the package's
one R^2, rlvr_nb.linearity.r2_against_steps."""

import math

import numpy as np
import pytest
import torch

from rlvr_nb import lowpass as lp
from rlvr_nb.experiments import lowpass_theory as lt
from rlvr_nb.linearity import r2_against_steps

# Monte-Carlo size: the standard error of a mean or median R^2 is at most ~0.3 / sqrt(20000) = 0.002,
# so the stated tolerance 0.01 is about 5 standard errors.
N_MC = 20000
TOL = 0.01


def mc_r2(snr: float, T: int, K: int, adam: bool = False, seed: int = 0, n: int = N_MC) -> np.ndarray:
    W = lp.simulate_trajectories(snr, 1.0, T, K, n, adam=adam, seed=seed)  # [T, n]
    return r2_against_steps(W, np.arange(T) * K)[0]


@pytest.mark.parametrize("snr,T,K", [(0.0, 14, 1), (0.05, 14, 20), (0.2, 21, 5), (1.0, 5, 1), (0.3, 8, 10)])
def test_closed_form_matches_monte_carlo(snr, T, K):
    r2 = mc_r2(snr, T, K, seed=T + K)
    assert abs(lp.expected_r2(snr, T, K) - r2.mean()) < TOL
    assert abs(lp.median_r2(snr, T, K) - np.median(r2)) < TOL
    for q in (0.1, 0.9):
        assert abs(lp.r2_quantile(q, snr, T, K) - np.quantile(r2, q)) < TOL


def test_sign_noise_and_adam_follow_the_same_curve_once_k_is_long():
    snr, T, K = lp.db_to_snr(-20.0), 14, 50
    theory = lp.median_r2(snr, T, K)
    sign = lp.simulate_trajectories(snr, 1.0, T, K, 4000, noise="sign", seed=1)
    assert abs(np.median(r2_against_steps(sign, np.arange(T) * K)[0]) - theory) < 0.02
    assert abs(np.median(mc_r2(snr, T, K, adam=True, seed=2, n=4000)) - theory) < 0.02


def test_sums_of_squares_match_their_closed_forms():
    # E[SS_res] / (sigma^2 K) = (T^2 - 4) / 15 and E[SS_tot] / (sigma^2 K) = rho^2 T (T^2 - 1) / 12 + (T^2 - 1) / 6
    T, K, snr, n = 10, 3, 0.2, 40000
    W = lp.simulate_trajectories(snr, 1.0, T, K, n, seed=3)
    t = np.arange(T) * K
    Wc = W - W.mean(0)
    tc = t - t.mean()
    ss_tot = (Wc**2).sum(0)
    ss_res = ss_tot - (tc @ Wc) ** 2 / (tc @ tc)
    rho2 = snr**2 * K
    assert ss_res.mean() / K == pytest.approx((T * T - 4) / 15, rel=0.02)
    assert ss_tot.mean() / K == pytest.approx(rho2 * T * (T * T - 1) / 12 + (T * T - 1) / 6, rel=0.02)
    assert lp.r2_ratio_approx(snr, T, K) == pytest.approx(1 - ss_res.mean() / ss_tot.mean(), abs=0.01)


def test_no_signal_is_the_random_walk_value():
    # A pure random walk read at 14-21 checkpoints has median R^2 ~0.45.
    for T in (14, 21):
        assert 0.43 < lp.median_r2(0.0, T) < 0.46
        assert 0.42 < lp.expected_r2(0.0, T) < 0.45
    r2 = r2_against_steps(lp.simulate_trajectories(0.0, 2.0, 14, 7, N_MC, seed=5), np.arange(14) * 7)[0]
    assert abs(np.median(r2) - lp.median_r2(0.0, 14)) < TOL
    # The ratio of expectations is far off here, which is why the exact mean is used.
    assert lp.r2_ratio_approx(0.0, 14) - lp.expected_r2(0.0, 14) > 0.1


def test_perfectly_linear_gives_one():
    t = np.arange(14) * 100
    W = 3.0 + np.outer(t, np.linspace(-2, 2, 7))  # [T, 7] straight lines (one with slope 0 is constant)
    r2 = r2_against_steps(W, t)[0]
    assert np.isnan(r2[3])  # constant: R^2 undefined
    np.testing.assert_allclose(np.delete(r2, 3), 1.0, atol=1e-12)
    noiseless = lp.simulate_trajectories(0.5, 0.0, 14, 100, 5, adam=True)
    np.testing.assert_allclose(r2_against_steps(noiseless, t)[0], 1.0, atol=1e-12)
    assert lp.expected_r2(100.0, 14, 100) > 0.99999
    assert lp.median_r2(100.0, 14, 100) > 0.99999


def test_curved_drift_loses_linearity_without_any_noise():
    T, K = 14, 10
    t = np.arange(T) * K

    def exponential_r2(rate):  # R^2 of the noiseless approach w*(1 - (1 - rate)^t): scale-free in w*
        return r2_against_steps((1.0 - (1.0 - rate) ** t)[:, None], t)[0][0]

    W = lp.simulate_curved_drift(T, K, 3, rate=0.02, seed=0)
    np.testing.assert_allclose(r2_against_steps(W, t)[0], exponential_r2(0.02), atol=1e-12)
    values = [exponential_r2(rate) for rate in (1e-4, 1e-3, 1e-2, 5e-2)]
    assert values[0] > 0.9999 and values[-1] < 0.8
    assert all(a > b for a, b in zip(values, values[1:]))
    with pytest.raises(ValueError, match="rate"):
        lp.simulate_curved_drift(T, K, 3, rate=1.5)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="n_checkpoints"):
        lp.expected_r2(0.1, 2)
    with pytest.raises(ValueError, match="steps_between"):
        lp.median_r2(0.1, 14, 0)
    with pytest.raises(ValueError, match="n_checkpoints"):
        lp.check_walk(14.5, 1)
    with pytest.raises(ValueError, match="noise"):
        lp.simulate_trajectories(0.1, 1.0, 5, 2, 3, noise="uniform")


# --------------------------------------------------------------------------------------------------
# Figure 3's token weights


@pytest.mark.parametrize("snr_db", [10.0, 0.0, -5.0, -10.0, -20.0])
def test_token_noise_has_the_stated_snr(snr_db):
    g = torch.Generator().manual_seed(0)
    w = lp.token_noise_weights((1000, 500), snr_db, generator=g).double()
    a, sigma = lp.noise_amplitudes(snr_db)
    assert w.mean().item() / w.std().item() == pytest.approx(10 ** (snr_db / 20), rel=0.03)
    assert (w**2).mean().item() == pytest.approx(1.0, rel=0.01)  # power normalised
    np.testing.assert_allclose(np.unique(w.numpy()), [a - sigma, a + sigma], atol=1e-6)  # two values only
    assert 20 * math.log10(a / sigma) == pytest.approx(snr_db)


def test_token_noise_plain_zero_signal_and_seed():
    shape = (64, 12)
    assert torch.equal(lp.token_noise_weights(shape, None), torch.ones(shape))
    z = lp.token_noise_weights((2000, 100), None, zero_signal=True, generator=torch.Generator().manual_seed(1))
    assert abs(z.mean().item()) < 0.01 and z.abs().eq(1).all()
    a1 = lp.token_noise_weights(shape, -10.0, generator=torch.Generator().manual_seed(7))
    a2 = lp.token_noise_weights(shape, -10.0, generator=torch.Generator().manual_seed(7))
    a3 = lp.token_noise_weights(shape, -10.0, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a1, a2) and not torch.equal(a1, a3)
    with pytest.raises(ValueError, match="snr_db=None"):
        lp.token_noise_weights(shape, -20.0, zero_signal=True)


# --------------------------------------------------------------------------------------------------
# Figures and the widget


def test_figures_and_explorer():
    import ipywidgets as widgets
    from matplotlib.figure import Figure

    fig = lt.snr_explorer(False, snr_db=-15.0, steps_between=10, n_params=100)
    assert isinstance(fig, Figure)
    box = lt.snr_explorer(True, snr_db=-15.0, steps_between=10, n_params=100)
    assert isinstance(box, widgets.VBox)
    sliders = box.children[0].children
    assert [s.value for s in sliders] == [-15.0, 10] and not any(s.continuous_update for s in sliders)
    assert isinstance(lt.failure_modes_figure(n_checkpoints=6, steps_between=5, n_params=50), Figure)
    assert isinstance(lt.theory_figure(n_checkpoints=6, steps_between=(1, 10), sim_snr_db=(-10, 0), n_params=20,
                                       adam_steps_between=10, other_n_checkpoints=(5,), n_points=6), Figure)
    with pytest.raises(ValueError, match="n_checkpoints"):
        lt.theory_figure(n_checkpoints=2)


def test_theory_curves_are_the_exact_mean_and_median():
    rho = np.array([0.0, 0.1, 1.0])
    mean, med = lt.theory_curves(9, rho)
    np.testing.assert_array_equal(mean, [lp.expected_r2(r, 9) for r in rho])
    np.testing.assert_array_equal(med, [lp.median_r2(r, 9) for r in rho])


def test_snr_explorer_shows_the_whole_slider_range_smoothly():
    """The theory marker is never clipped at the ends of the slider, and the theory curve is smooth over the
    shown range at every K (it was 10 points over a fixed grid at smoke, 6 of them in view at K = 100)."""
    import math

    import matplotlib.pyplot as plt

    from rlvr_nb.experiments import lowpass_theory as lt

    rho, mean, med = lt.explorer_curve(14, n_points=10)
    for k in lt.EXPLORER_KS:
        x = lp.snr_to_db(rho / math.sqrt(k))
        assert ((x >= lt.SNR_RANGE_DB[0]) & (x <= lt.SNR_RANGE_DB[1])).sum() >= 25, k
    fig = lt.explorer_figure(lt.SNR_RANGE_DB[1], 1000, n_checkpoints=14, n_params=20, curve=(rho, mean, med))
    cx = fig.axes[2]
    lo, hi = cx.get_xlim()
    assert lo < lt.SNR_RANGE_DB[0] and hi > lt.SNR_RANGE_DB[1] and cx.get_ylim()[1] > 1.0
    assert cx.lines[-1].get_clip_on() is False
    plt.close(fig)
