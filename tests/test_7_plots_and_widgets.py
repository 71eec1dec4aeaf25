"""bnlib section 7, plots and widgets: LiveFigure (a slider's redraw by blitting shows what a
full redraw shows, and blits instead of drawing everything) and plot_bn_graph (the
computational graph of Algorithm 1 of Ioffe & Szegedy, 2015, arXiv 1502.03167, for one
neuron, drawn as boxes and arrows), slider_panel's still picture, and the progress line of train_model."""
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import bnlib  # noqa: E402


# --- LiveFigure ------------------------------------------------------------------------------

def _figure():
    fig, ax = plt.subplots(figsize=(5, 3), layout="constrained")
    x = np.linspace(0, 1, 200)
    ax.plot(x, x ** 2, color="0.6", label="fixed")
    (line,) = ax.plot(x, x, color=bnlib.BN_COLOR, label="moves")
    ax.set(ylim=(0, 2), title="a title")
    ax.legend(loc="upper left")
    return fig, line, x


def _pixels(fig):
    return np.asarray(fig.canvas.buffer_rgba()).copy()


def test_blitted_redraw_equals_a_full_redraw():
    fig, line, x = _figure()
    live = bnlib.LiveFigure(fig, [line])
    live.redraw()                                  # first call: a full draw saves the background
    for k in range(1, 4):
        line.set_ydata(x * (1 + 0.3 * k))
        live.redraw()
        blitted = _pixels(fig)
        live.redraw(full=True)
        assert np.array_equal(blitted, _pixels(fig)), f"step {k}: blit and full draw differ"
    plt.close(fig)


def test_redraw_shows_the_change_and_the_old_state_leaves_no_trace():
    fig, line, x = _figure()
    live = bnlib.LiveFigure(fig, [line])
    live.redraw()
    start = _pixels(fig)
    line.set_ydata(1.5 - x)
    live.redraw()
    assert (start != _pixels(fig)).any(axis=2).sum() > 100
    line.set_ydata(x)                             # back to the start: the same picture
    live.redraw()
    assert np.array_equal(start, _pixels(fig))
    plt.close(fig)


def test_follow_switches_the_moving_artist_and_keeps_the_picture_right():
    fig, line, x = _figure()
    other = fig.axes[0].lines[0]                  # the "fixed" curve
    live = bnlib.LiveFigure(fig, [line])
    live.redraw()
    live.follow([other])
    assert live.background is None and other.get_animated() and not line.get_animated()
    live.redraw()                                 # full: the new background holds `line`
    other.set_ydata(1.8 - x)
    live.redraw()
    blitted = _pixels(fig)
    live.redraw(full=True)
    assert np.array_equal(blitted, _pixels(fig))
    plt.close(fig)


@pytest.fixture
def drawn_live_figure(monkeypatch):
    """A LiveFigure after its first full draw, with its canvas's blit, restore_region and
    draw_idle counted (each still does its work)."""
    fig, line, x = _figure()
    live = bnlib.LiveFigure(fig, [line])
    live.redraw()                                 # the first full draw saves the background
    assert live.background is not None
    calls = {"blit": 0, "restore_region": 0, "draw_idle": 0}
    for name in calls:
        method = getattr(fig.canvas, name)

        def counted(*args, _name=name, _method=method, **kwargs):
            calls[_name] += 1
            return _method(*args, **kwargs)
        monkeypatch.setattr(fig.canvas, name, counted)
    yield live, line, x, calls
    plt.close(fig)


def test_redraw_after_the_first_full_draw_blits_instead_of_drawing_everything(drawn_live_figure):
    live, line, x, calls = drawn_live_figure
    line.set_ydata(1.5 - x)
    live.redraw()
    assert calls == {"blit": 1, "restore_region": 1, "draw_idle": 0}


def test_redraw_full_asks_for_a_full_draw(drawn_live_figure):
    live, line, x, calls = drawn_live_figure
    live.redraw(full=True)
    assert calls["draw_idle"] == 1 and calls["blit"] == 0


# --- plot_bn_graph ---------------------------------------------------------------------------

# Algorithm 1's forward steps, named as batchnorm_forward's lines name them (std, invstd, out;
# the paper's output y_i is `out`, since y names the labels): each must appear as one box.
ALGORITHM_1_NODES = [r"$x_i$", r"$\mu=\frac{1}{m}\sum_i x_i$", r"$x_{c,i}=x_i-\mu$",
                     r"$\sigma^2=\frac{1}{m}\sum_i x_{c,i}^2$", r"$\mathrm{std}=\sqrt{\sigma^2+\epsilon}$",
                     r"$\mathrm{invstd}=1/\mathrm{std}$", r"$\hat x_i=x_{c,i}\,\mathrm{invstd}$",
                     r"$\gamma,\ \beta$", r"$\mathrm{out}_i=\gamma\hat x_i+\beta$"]

# Algorithm 1's data flow, (from, to), each step's inputs written out from its formula:
# x feeds mu and x_c; mu feeds x_c; x_c feeds var and x_hat; var -> std -> invstd -> x_hat;
# x_hat and (gamma, beta) feed out.
X, MU, XC, VAR, STD, INVSTD, XHAT, GAMMA_BETA, OUT = ALGORITHM_1_NODES
ALGORITHM_1_EDGES = {(X, MU), (X, XC), (MU, XC), (XC, VAR), (VAR, STD), (STD, INVSTD),
                     (INVSTD, XHAT), (XC, XHAT), (XHAT, OUT), (GAMMA_BETA, OUT)}


@pytest.fixture
def fig():
    figure = bnlib.plot_bn_graph()
    yield figure
    plt.close(figure)


def boxed_texts(figure):
    return [t.get_text() for t in figure.axes[0].texts if t.get_bbox_patch() is not None]


def arrows(figure):
    return [a for a in figure.axes[0].texts if isinstance(a, matplotlib.text.Annotation)]


def test_plot_bn_graph_returns_one_figure_with_one_axes(fig):
    assert isinstance(fig, matplotlib.figure.Figure)
    assert len(fig.axes) == 1


def test_plot_bn_graph_draws_one_box_per_step_of_algorithm_1(fig):
    assert sorted(boxed_texts(fig)) == sorted(ALGORITHM_1_NODES)


def test_plot_bn_graph_draws_the_ten_forward_edges(fig):
    # x feeds mu and x_c; mu feeds x_c; x_c feeds var and x_hat; var -> std -> invstd -> x_hat;
    # x_hat and (gamma, beta) feed out: 10 arrows.
    assert len(arrows(fig)) == 10


def test_plot_bn_graph_arrows_go_from_each_input_box_to_the_box_it_feeds(fig):
    # an arrow is an Annotation drawn from the box textcoords names to the box xycoords names
    drawn = [(a.anncoords.get_text(), a.xycoords.get_text()) for a in arrows(fig)]
    assert sorted(drawn) == sorted(ALGORITHM_1_EDGES)      # each edge once, no other arrow


def test_plot_bn_graph_labels_local_derivatives(fig):
    texts = " ".join(t.get_text() for t in fig.axes[0].texts)
    for local in (r"1/m", r"1/(2\,\mathrm{std})", r"-1/\mathrm{std}^2", r"2x_{c,i}/m"):
        assert local in texts


def test_a_slider_panel_carries_a_still_picture_with_its_moving_artists_and_fixed_text():
    import base64
    import io
    import ipywidgets
    from ipympl.backend_nbagg import new_figure_manager_given_figure
    fig, ax = plt.subplots(figsize=(3, 2), dpi=50)
    new_figure_manager_given_figure(990, fig)            # an ipympl canvas, as in the notebooks
    ax.set_xlim(0, 1), ax.set_ylim(0, 1)
    (line,) = ax.plot([0, 1], [0.5, 0.5], color="red", lw=8)
    bnlib.LiveFigure(fig, [line])                      # the line becomes animated
    slider = ipywidgets.FloatSlider(value=1.0)
    panel = bnlib.slider_panel([slider], fig)
    bundle = panel._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert bundle["text/plain"] == bnlib._SLIDER_PANEL_TEXT and "FloatSlider" not in bundle["text/plain"]
    picture = plt.imread(io.BytesIO(base64.b64decode(bundle["image/png"])))
    reds = (picture[..., 0] > 0.9) & (picture[..., 1] < 0.2) & (picture[..., 2] < 0.2)
    assert reds.sum() > 100                              # the moving line is in the picture
    assert line.get_animated()                           # and still moves by blitting afterwards
    live_background = np.asarray(panel.children[1].copy_from_bbox(fig.bbox))
    assert ((live_background[..., 0] > 230) & (live_background[..., 1] < 50)).sum() == 0   # no ghost
    assert fig.canvas._data_url == "data:image/png;base64," + bundle["image/png"]
    line.set_ydata([0.2, 0.8])
    fig.canvas.draw()                                    # a redraw before any browser connects
    assert fig.canvas._data_url == "data:image/png;base64," + bundle["image/png"]   # picture kept
    plt.close(fig)


class _Handle:
    def __init__(self, shown):
        self.shown = shown

    def update(self, bundle, raw=True):
        self.shown.append(bundle)


@pytest.fixture
def progress_shown(monkeypatch):
    """Every bundle train_model's progress display shows, as if in a notebook."""
    import IPython.display
    shown = []
    monkeypatch.setattr(bnlib, "_in_notebook", lambda: True)
    monkeypatch.setattr(IPython.display, "display",
                        lambda bundle, raw=True, display_id=False: shown.append(bundle) or _Handle(shown))
    return shown


def _nbval_sanitized(text):
    import configparser
    import re
    config = configparser.ConfigParser()
    config.read(Path(__file__).parent / "sanitize.cfg")
    for section in config.sections():
        text = re.sub(config[section]["regex"], config[section]["replace"], text)
    return text


def test_progress_ends_as_a_line_saying_how_many_steps_ran(progress_shown):
    X, y = bnlib.load_mnist(train=True)
    bnlib.train_model(bnlib.MLP([784, 20, 10], seed=0), X[:500], y[:500], steps=30, progress=True)
    first, last = progress_shown[0], progress_shown[-1]
    assert first["text/plain"] == "training: 0/30 steps"
    assert re.fullmatch(r"training: 30 steps in \d+\.\d s", last["text/plain"]), last
    for mime in ("text/plain", "text/html"):                 # nbval compares the first with the last
        assert _nbval_sanitized(first[mime]) == _nbval_sanitized(last[mime])


def test_a_diverged_run_says_where_it_stopped(progress_shown):
    X, y = bnlib.load_mnist(train=True)
    hist = bnlib.train_model(bnlib.MLP([784, 50, 10], activation="linear", seed=0), X, y, steps=50,
                             lr=5.0, progress=True)
    last = progress_shown[-1]["text/plain"]
    assert f"diverged at step {len(hist['loss'])} of 50 (loss " in last and "#b00" in progress_shown[-1]["text/html"]
    assert _nbval_sanitized(last) == _nbval_sanitized(progress_shown[0]["text/plain"])


def test_no_progress_display_outside_a_notebook(capsys):
    X, y = bnlib.load_mnist(train=True)
    bnlib.train_model(bnlib.MLP([784, 20, 10], seed=0), X[:100], y[:100], steps=3, progress=True)
    assert capsys.readouterr() == ("", "")


def test_one_colour_per_method_and_none_shared_with_data():
    colours = list(bnlib.METHOD_COLORS.values())
    assert len(set(colours)) == len(colours) and not set(colours) & set(bnlib.DATA_COLORS)
    assert set(bnlib.NORM_LAYERS) | {None} <= set(bnlib.METHOD_COLORS)
    assert bnlib.method_color("batch") == bnlib.BN_COLOR and bnlib.method_color(None) == bnlib.PLAIN_COLOR
    with pytest.raises(KeyError, match="METHOD_COLORS"):
        bnlib.method_color("Batch")


def test_a_live_figure_is_an_ipympl_widget_outside_pyplot():
    import ipywidgets
    fig, axes = bnlib.interactive_figure(1, 2, figsize=(4, 2), layout="constrained")
    assert isinstance(fig.canvas, ipywidgets.DOMWidget) and len(axes) == 2
    assert not fig.canvas.header_visible and not fig.canvas.toolbar_visible
    assert fig not in [plt.figure(n) for n in plt.get_fignums()]   # the inline backend will not print it
