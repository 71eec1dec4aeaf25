"""bnlib.LiveFigure: a slider's redraw by blitting shows what a full redraw shows."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import bnlib  # noqa: E402


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
