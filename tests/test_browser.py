"""The sliders as a reader sees them: 05's alpha explorer and 04's SNR explorer in a real JupyterLab under
headless Chromium (Debian's package, driven by playwright), and what a JupyterLab without the widget front
end shows instead.

The browser tests start JupyterLab on 127.0.0.1 over a temporary root holding copies of the notebooks at
`smoke` with `interactive = True`, run every cell with the registered `Python (rlvr-nb)` kernel (the trained
runs come from the suite's smoke cache, `smoke_runs` in conftest.py), then move each slider by keyboard and by
drag (and 05's t_second dropdown), asserting every time that the figure's PNG changes and that the console has no widget error. Screenshots
before and after each interaction go to tests/output/browser/; the median redraw time per interaction is
printed. Chromium is installed with apt-get when missing (as root); when it cannot be, the tests fail,
unless RLVR_NB_NO_BROWSER=1 is set, which skips them. The first group needs no browser.
"""

from __future__ import annotations

import base64
import os
import statistics
import time
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
import torch
from browser_lab import (SKIP_ENV, WIDGET_ERRORS, BrowserSetupError, check_kernel, ensure_chromium, jupyterlab,
                         lab_notebook)

from rlvr_nb.extrapolate import ResponseLogits, target_step_for
from rlvr_nb.notebook.widgets import FRONT_END_NOTE, alpha_explorer

SHOTS = Path(__file__).resolve().parent / "output" / "browser"
TIMINGS: dict[str, list[float]] = {}  # "notebook: interaction" -> redraw seconds
WRITTEN: list[Path] = []


def fake_cache(seconds=(20, 30), n_tokens=(4, 5), vocab=7, seed=0) -> ResponseLogits:
    """Cached logits of two made-up responses (no model), base at step 10."""
    g = torch.Generator().manual_seed(seed)
    base = [torch.randn(n, vocab, generator=g) * 2 for n in n_tokens]
    return ResponseLogits(
        prompts=["12+34=", "5+6="], responses=["64", "11"],
        token_ids=[torch.randint(vocab, (n,), generator=g) for n in n_tokens],
        token_text=[[f"t{i}" for i in range(n)] for n in n_tokens], base_step=10, base_logits=base,
        second_logits={t: [b + torch.randn(b.shape, generator=g) * (t / 10) for b in base] for t in seconds})


GRID = {20: ([1.0, 1.5, 2.0], [0.3, 0.35, 0.2]), 30: ([1.0, 1.5, 2.0, 3.0], [0.4, 0.45, 0.3, 0.1])}
RL = {0: 0.1, 10: 0.2, 20: 0.3, 30: 0.4, 40: 0.42}

# ----------------------------------------------------------------------------------------------------
# The explorer's figure and text, without a browser


def test_alpha_figure_axes_and_legend_hold_still_over_the_slider_range():
    cache, seen = fake_cache(), set()
    for t in (20, 30):
        for alpha in (0.0, 0.05, 1.5, 2.5, 3.0):
            fig = alpha_explorer(cache, GRID, interactive=False, alpha=alpha, t_second=t, rl_accuracy=RL)
            ax_acc, ax_lp = fig.axes
            legend = ax_acc.get_legend()
            seen.add((ax_acc.get_xlim(), ax_acc.get_ylim(), ax_lp.get_ylim(), ax_acc.get_position().bounds,
                      ax_lp.get_position().bounds, len(legend.get_texts()), tuple(legend.get_bbox_to_anchor().bounds)))
            (x0, x1), (y0, y1) = ax_acc.get_xlim(), ax_lp.get_ylim()
            assert x0 < target_step_for(10, t, alpha) < x1  # the alpha marker is never at (or past) the edge
            heights = [p.get_height() for p in ax_lp.patches]
            assert heights and y0 < min(heights) and max(heights) < y1  # no bar clipped
            plt.close(fig)
    assert len(seen) == 1, f"the axes or the legend moved with alpha / t_second: {seen}"


def test_explorer_says_what_is_missing_where_no_widget_front_end_renders_it():
    from IPython.core.formatters import DisplayFormatter

    box = alpha_explorer(fake_cache(), GRID, interactive=True, alpha=1.5, rl_accuracy=RL)
    data, _ = DisplayFormatter().format(box)
    assert data["text/plain"] == FRONT_END_NOTE and "jupyterlab_widgets" in FRONT_END_NOTE
    assert "application/vnd.jupyter.widget-view+json" in data  # a front end with widgets still gets the sliders


def test_warm_start_bar_ends_green_when_it_stops_early_by_design(tmp_path, monkeypatch):
    """The warm start stops at its target accuracy, long before cfg.steps: its Jupyter bar ends full and
    green ('success'), saying so, not red at a few percent like a loop that failed."""
    from tqdm.notebook import tqdm as notebook_tqdm

    from rlvr_nb import sft
    from rlvr_nb.models import ModelConfig
    from rlvr_nb.tasks import TaskConfig

    bars = []
    monkeypatch.setattr(sft, "tqdm", lambda *a, **k: bars.append(notebook_tqdm(*a, **k)) or bars[-1])
    cfg = sft.SFTConfig(steps=50, batch_size=4, ckpt_every=2, eval_problems=4, lr=1e-3, stop_at_accuracy=0.0)
    sft.train_sft(cfg, tmp_path / "warm", None, TaskConfig(digits=1, n_eval=8), ModelConfig(hidden_size=16, num_heads=2,
                  num_kv_heads=2, intermediate_size=32), progress=True)
    (bar,) = bars
    label, progress, _ = bar.container.children
    assert progress.bar_style == "success" and progress.value == progress.max == 2
    assert "stopped early by design at step 2 of at most 50" in label.value.replace("\u2007", " ")


# ----------------------------------------------------------------------------------------------------
# In JupyterLab under Chromium


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's Chromium (installed when missing) and a registered kernel, or one clear failure."""
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"{SKIP_ENV}=1: the real-browser tests are skipped")
    try:
        import jupyterlab  # noqa: F401
        import playwright  # noqa: F401
    except ImportError as e:
        pytest.fail(f"{e.name} is not installed in this environment: run `make setup` (the `test` and `lab` extras)")
    try:
        path = ensure_chromium()
        check_kernel()
    except BrowserSetupError as e:
        pytest.fail(str(e))
    return path


@pytest.fixture(scope="module")
def browser(chromium):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def lab(chromium, tmp_path_factory, smoke_runs):
    try:
        with jupyterlab(tmp_path_factory.mktemp("lab"), runs=smoke_runs[0]) as server:
            yield server
    except BrowserSetupError as e:
        pytest.fail(str(e))


@pytest.fixture
def page(browser, capsys):
    """A fresh page whose console (and page errors) is recorded in `console_lines`; at the end the notebook's
    kernel is shut down and the screenshots and redraw times are printed."""
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    pg = context.new_page()
    pg.console_lines = []
    pg.on("console", lambda m: pg.console_lines.append(f"{m.type}: {m.text}"))
    pg.on("pageerror", lambda e: pg.console_lines.append(f"pageerror: {e}"))
    try:
        yield pg
    finally:
        try:  # the notebook's kernel, so that the next notebook has the CPU to itself
            pg.evaluate(f"() => {NOTEBOOK_JS} && {NOTEBOOK_JS}.sessionContext && {NOTEBOOK_JS}.sessionContext.shutdown()")
        except Exception as e:  # noqa: BLE001  (the server's shutdown stops it in any case)
            print(f"could not shut the kernel down from the page: {e}")
        context.close()
        with capsys.disabled():
            report()


def report() -> None:
    """Print the screenshots written and the median redraw seconds per interaction so far."""
    if WRITTEN:
        print("\nscreenshots:\n  " + "\n  ".join(str(p) for p in WRITTEN))
        WRITTEN.clear()
    for name, times in TIMINGS.items():
        print(f"redraw {name}: median {statistics.median(times):.2f} s over {len(times)} "
              f"({', '.join(f'{t:.2f}' for t in times)})")
    TIMINGS.clear()


NOTEBOOK_JS = "window.jupyterapp && window.jupyterapp.shell.currentWidget"
READY_JS = f"""(path) => {{ const w = {NOTEBOOK_JS};
  return !!(w && w.context && w.context.path === path && w.sessionContext.session && w.sessionContext.session.kernel
            && w.sessionContext.kernelDisplayStatus === 'idle'); }}"""
DONE_JS = f"""() => {{ const p = {NOTEBOOK_JS}; const code = p.content.widgets.filter(c => c.model.type === 'code');
  const errors = code.flatMap(c => c.model.outputs.toJSON().filter(o => o.output_type === 'error'));
  if (errors.length) return 'error: ' + errors.map(o => o.ename + ': ' + o.evalue).join('; ');
  return code.every(c => c.model.executionCount !== null) && p.sessionContext.kernelDisplayStatus === 'idle'; }}"""
NEW_FIGURE_JS = """([root, before]) => { const imgs = root.querySelectorAll('.widget-output img');
  return imgs.length === 1 && imgs[0].getAttribute('src') !== before && imgs[0].complete && imgs[0].naturalWidth > 0; }"""


def run_all_cells(page, lab, name: str, timeout_s: float = 300) -> None:
    """Open <name>.ipynb in JupyterLab, check its kernel is `Python (rlvr-nb)`, run all cells, wait for the end."""
    lab_notebook(name, lab.root)
    page.goto(lab.open_url(f"{name}.ipynb"))
    page.wait_for_function(READY_JS, arg=f"{name}.ipynb", timeout=90_000)
    kernel = page.evaluate(f"() => [{NOTEBOOK_JS}.sessionContext.session.kernel.name, "
                           f"{NOTEBOOK_JS}.sessionContext.kernelDisplayName]")
    assert kernel == ["rlvr-nb", "Python (rlvr-nb)"]
    t0 = time.perf_counter()
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    done = page.wait_for_function(DONE_JS, timeout=timeout_s * 1000, polling=250).json_value()
    assert done is True, f"{name}: {done}\nserver log:\n{lab.log_tail()}"
    print(f"{name}: all cells ran in JupyterLab in {time.perf_counter() - t0:.1f} s")


def png(src: str) -> bytes:
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix), src[:60]
    data = base64.b64decode(src[len(prefix):])
    assert data.startswith(b"\x89PNG")
    return data


def shot(locator, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    locator.screenshot(path=path)
    WRITTEN.append(path)


def redraws(page, explorer, action, name: str, timing: str) -> None:
    """Do `action`, wait for the explorer's one figure to be replaced by a different PNG, time it."""
    img = explorer.locator(".widget-output img")
    assert img.count() == 1
    before = img.get_attribute("src")
    shot(explorer, f"{name}_before")
    t0 = time.perf_counter()
    action()
    page.wait_for_function(NEW_FIGURE_JS, arg=[explorer.element_handle(), before], timeout=60_000, polling="raf")
    TIMINGS.setdefault(timing, []).append(time.perf_counter() - t0)
    assert png(img.get_attribute("src")) != png(before)
    shot(explorer, f"{name}_after")


def press(handle, key: str):
    def go():
        handle.focus()
        handle.press(key)
    return go


def drag(page, slider, value: float):
    """Drag the slider's handle with the mouse to where `value` sits on its track."""
    def go():
        handle, track = slider.locator(".noUi-handle"), slider.locator(".noUi-base")
        lo, hi = float(handle.get_attribute("aria-valuemin")), float(handle.get_attribute("aria-valuemax"))
        h, t = handle.bounding_box(), track.bounding_box()
        y = h["y"] + h["height"] / 2
        page.mouse.move(h["x"] + h["width"] / 2, y)
        page.mouse.down()
        page.mouse.move(t["x"] + t["width"] * (value - lo) / (hi - lo), y, steps=8)
        page.mouse.up()
    return go


def track_px_per_step(slider, step: float) -> float:
    handle = slider.locator(".noUi-handle")
    lo, hi = float(handle.get_attribute("aria-valuemin")), float(handle.get_attribute("aria-valuemax"))
    return slider.locator(".noUi-base").bounding_box()["width"] / ((hi - lo) / step)


def check_page(page) -> None:
    """No widget error in the console or on the page, no widget shown as text, no progress bar in red."""
    errors = [line for line in page.console_lines if any(e in line for e in WIDGET_ERRORS)]
    assert not errors, "widget errors in the browser console:\n" + "\n".join(errors[:10])
    text = page.locator(".jp-Notebook").inner_text()
    for bad in ("Error displaying widget", "VBox(children", FRONT_END_NOTE[:40]):
        assert bad not in text
    assert page.locator(".progress-bar-danger").count() == 0


def find_explorer(page, slider_label: str):
    explorer = page.locator(".widget-vbox").filter(has=page.locator(".widget-hslider", has_text=slider_label))
    assert explorer.count() == 1, f"{explorer.count()} explorers with a {slider_label!r} slider"
    explorer.scroll_into_view_if_needed()
    return explorer


def test_05_alpha_slider_and_dropdown_redraw_in_jupyterlab(page, lab):
    run_all_cells(page, lab, "05_extrapolation")
    explorer = find_explorer(page, "alpha")
    slider = explorer.locator(".widget-hslider")
    handle, readout, select = slider.locator(".noUi-handle"), slider.locator(".widget-readout"), explorer.locator("select")
    assert readout.text_content() == "1.50"
    assert track_px_per_step(slider, 0.05) >= 6, "the alpha track is too short to set alpha to 0.05 by dragging"
    for i, expected in enumerate(("1.55", "1.60")):
        redraws(page, explorer, press(handle, "ArrowRight"), f"05_alpha_keyboard_{i}", "05 alpha slider, arrow key")
        assert readout.text_content() == expected
    for i, value in enumerate((2.25, 0.05)):
        redraws(page, explorer, drag(page, slider, value), f"05_alpha_drag_{i}", "05 alpha slider, drag")
        assert readout.text_content() == f"{value:.2f}"  # dragging reaches the slider's 0.05 step exactly
    options = select.locator("option").all_inner_texts()
    for i, value in enumerate([o for o in options if o != select.input_value()] + [select.input_value()]):
        redraws(page, explorer, lambda v=value: select.select_option(v), f"05_t_second_{i}", "05 t_second dropdown")
    check_page(page)


def test_04_snr_slider_redraws_in_jupyterlab(page, lab):
    run_all_cells(page, lab, "04_lowpass_theory")
    explorer = find_explorer(page, "SNR (dB)")
    slider = explorer.locator(".widget-hslider", has_text="SNR (dB)")
    handle, readout = slider.locator(".noUi-handle"), slider.locator(".widget-readout")
    value = lambda: float(readout.text_content().replace("\u2212", "-"))  # noqa: E731  (a true minus sign)
    start = value()
    for i in range(2):
        redraws(page, explorer, press(handle, "ArrowRight"), f"04_snr_keyboard_{i}", "04 SNR slider, arrow key")
        assert value() == start + i + 1
    for i, target in enumerate((0.0, 20.0)):  # 20 dB: the end of the range
        redraws(page, explorer, drag(page, slider, target), f"04_snr_drag_{i}", "04 SNR slider, drag")
        assert abs(value() - target) <= 2
    print(f"04 SNR track: {track_px_per_step(slider, 1.0):.1f} px per 1 dB step")
    check_page(page)


NO_FRONT_END_CELL = '''\
import torch
from rlvr_nb.extrapolate import ResponseLogits
from rlvr_nb.notebook.widgets import alpha_explorer

logits = [torch.randn(3, 5)]
cache = ResponseLogits(prompts=["1+2="], responses=["3"], token_ids=[torch.tensor([1, 2, 3])], token_text=[["3", "", ""]],
                       base_step=0, base_logits=logits, second_logits={10: [2 * logits[0]]})
alpha_explorer(cache, {10: ([1.0, 2.0], [0.5, 0.6])}, interactive=True)
'''


def test_a_jupyterlab_without_the_widget_front_end_says_what_is_missing(browser, chromium, tmp_path, capsys):
    import nbformat

    try:
        with jupyterlab(tmp_path, widget_front_end=False) as server:
            nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(NO_FRONT_END_CELL)])
            nb.metadata["kernelspec"] = {"name": "rlvr-nb", "display_name": "Python (rlvr-nb)", "language": "python"}
            nbformat.write(nb, server.root / "no_front_end.ipynb")
            context = browser.new_context(viewport={"width": 1200, "height": 800})
            try:
                pg = context.new_page()
                pg.goto(server.open_url("no_front_end.ipynb"))
                pg.wait_for_function(READY_JS, arg="no_front_end.ipynb", timeout=90_000)
                pg.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
                assert pg.wait_for_function(DONE_JS, timeout=120_000, polling=250).json_value() is True
                output = pg.locator(".jp-Cell-outputArea").first  # the figure (drawn once), then the note
                text = output.text_content()
                shot(output, "no_front_end")
                assert "jupyterlab_widgets" in text and "make lab" in text and "VBox(" not in text, text
            finally:
                context.close()
    except BrowserSetupError as e:
        pytest.fail(str(e))
    finally:
        with capsys.disabled():
            report()
