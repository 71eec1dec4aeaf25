"""bnlib.plot_bn_graph (notebook 03): the computational graph of Algorithm 1 of Ioffe & Szegedy
(2015, arXiv 1502.03167) for one neuron, drawn as boxes and arrows."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

import bnlib  # noqa: E402

# Algorithm 1's forward steps, as written in the paper: each must appear as one box.
ALGORITHM_1_NODES = [r"$x_i$", r"$\mu=\frac{1}{m}\sum_i x_i$", r"$x_{c,i}=x_i-\mu$",
                     r"$\sigma^2=\frac{1}{m}\sum_i x_{c,i}^2$", r"$s=\sqrt{\sigma^2+\epsilon}$",
                     r"$\mathrm{invstd}=1/s$", r"$\hat x_i=x_{c,i}\,\mathrm{invstd}$",
                     r"$\gamma,\ \beta$", r"$y_i=\gamma\hat x_i+\beta$"]


@pytest.fixture
def fig():
    figure = bnlib.plot_bn_graph()
    yield figure
    plt.close(figure)


def boxed_texts(figure):
    return [t.get_text() for t in figure.axes[0].texts if t.get_bbox_patch() is not None]


def test_plot_bn_graph_returns_one_figure_with_one_axes(fig):
    assert isinstance(fig, matplotlib.figure.Figure)
    assert len(fig.axes) == 1


def test_plot_bn_graph_draws_one_box_per_step_of_algorithm_1(fig):
    assert sorted(boxed_texts(fig)) == sorted(ALGORITHM_1_NODES)


def test_plot_bn_graph_draws_the_ten_forward_edges(fig):
    # x feeds mu and x_c; mu feeds x_c; x_c feeds var and x_hat; var -> s -> invstd -> x_hat;
    # x_hat and (gamma, beta) feed y: 10 arrows.
    arrows = [a for a in fig.axes[0].texts if isinstance(a, matplotlib.text.Annotation)]
    assert len(arrows) == 10


def test_plot_bn_graph_labels_local_derivatives(fig):
    texts = " ".join(t.get_text() for t in fig.axes[0].texts)
    for local in (r"1/m", r"1/(2s)", r"-1/s^2", r"2x_{c,i}/m"):
        assert local in texts
