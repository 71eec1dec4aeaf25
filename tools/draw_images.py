#!/usr/bin/env python3
"""Draw the course's explanatory pictures into images/ with matplotlib (nothing downloaded).

    .venv/bin/python tools/draw_images.py

network_4layer.png       a 4-layer network: inputs, three hidden layers, one output
network_covered.png      the same with layers 1-2 covered: layer 3 sees un-normalized inputs
covariate_shift_cats.png trained on black cats only, tested on cats of every colour
"""
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt                                    # noqa: E402
from matplotlib.patches import Circle, Ellipse, FancyBboxPatch, Polygon  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "images"
SIZES = [3, 5, 5, 4, 1]                      # x, a[1], a[2], a[3], y_hat
NAMES = ["$x$", "$a^{[1]}$", "$a^{[2]}$", "$a^{[3]}$", "$\\hat y$"]
BLUE, GREY = "#3b6ea8", "#bbbbbb"


def draw_network(ax, covered=False):
    """Neurons as circles in columns, every pair of neighbours joined by a line."""
    xs = [0, 2, 4, 6, 8]
    ys = [[(j - (n - 1) / 2) * 0.9 for j in range(n)] for n in SIZES]
    for layer in range(4):
        grey = covered and layer < 2
        for y0 in ys[layer]:
            for y1 in ys[layer + 1]:
                ax.plot([xs[layer], xs[layer + 1]], [y0, y1], lw=0.8, zorder=1,
                        color=GREY if grey else ("#d95f02" if covered and layer == 2 else "#999999"))
    for layer, (x, col) in enumerate(zip(xs, ys)):
        for y in col:
            face = "#f2f2f2" if covered and layer < 2 else ("#fde0c5" if covered and layer == 2 else "white")
            ax.add_patch(Circle((x, y), 0.28, fc=face, ec=GREY if covered and layer < 2 else BLUE,
                                lw=1.5, zorder=2))
        ax.text(x, -2.75, NAMES[layer], ha="center", fontsize=14)
    for layer in range(1, 5):
        ax.text(xs[layer] - 1, 2.55, f"layer {layer}", ha="center", fontsize=11, color="#444444")
    if covered:
        ax.add_patch(FancyBboxPatch((-0.6, -2.25), 4.0, 4.35, boxstyle="round,pad=0.1", zorder=3,
                                    fc="#d0d0d0", ec="#888888", alpha=0.93))
        ax.text(1.4, 0.0, "layers 1 and 2\ncovered up", ha="center", va="center", fontsize=13,
                color="#333333", zorder=4)
        ax.text(4, -3.2, "the inputs of layer 3:\nnever standardized", ha="center", va="top",
                fontsize=10.5, color="#d95f02", zorder=4)
    ax.set_xlim(-1, 9.2)
    ax.set_ylim(-4.1 if covered else -3.1, 2.9)
    ax.set_aspect("equal")
    ax.axis("off")


def draw_cat(ax, x, y, body, s=1.0, stripes=None):
    """A sitting cat seen from the front: body, head, ears, eyes, tail."""
    line = "#222222"
    ax.add_patch(Ellipse((x, y), 1.1 * s, 1.3 * s, fc=body, ec=line, lw=1.2))          # body
    ax.plot([x + 0.5 * s, x + 0.85 * s, x + 0.75 * s], [y - 0.4 * s, y - 0.2 * s, y + 0.35 * s],
            color=body if body != "white" else "#dddddd", lw=5 * s, solid_capstyle="round", zorder=0)
    hx, hy = x, y + 0.85 * s
    for side in (-1, 1):                                                                  # ears
        ax.add_patch(Polygon([(hx + side * 0.12 * s, hy + 0.3 * s), (hx + side * 0.42 * s, hy + 0.12 * s),
                              (hx + side * 0.36 * s, hy + 0.55 * s)], fc=body, ec=line, lw=1.2))
    ax.add_patch(Circle((hx, hy), 0.42 * s, fc=body, ec=line, lw=1.2))                  # head
    if stripes:
        for dy in (-0.15, 0.1, 0.35):
            ax.plot([x - 0.3 * s, x + 0.3 * s], [y + dy * s, y + (dy - 0.08) * s], color=stripes, lw=2)
    eye = "#f2c12e" if body in ("black", "#333333") else "#2e7d32"
    for side in (-1, 1):
        ax.add_patch(Ellipse((hx + side * 0.16 * s, hy + 0.05 * s), 0.14 * s, 0.18 * s, fc=eye, ec=line, lw=0.6))
    ax.plot([hx - 0.05 * s, hx, hx + 0.05 * s], [hy - 0.1 * s, hy - 0.14 * s, hy - 0.1 * s], color=line, lw=1)


def draw_cats(path):
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), gridspec_kw={"wspace": 0.08})
    train = [(0.9, 1.0, "black", None), (2.4, 1.2, "black", None), (3.9, 0.9, "#333333", None)]
    test = [(0.8, 1.0, "#e8913a", "#b5651d"), (2.2, 1.25, "white", None), (3.5, 0.95, "#9e9e9e", "#616161"),
            (4.8, 1.15, "#c8a27a", None)]
    for ax, cats, title in ((axes[0], train, "Training set: only black cats"),
                            (axes[1], test, "Later: cats of every colour")):
        for x, y, body, stripes in cats:
            draw_cat(ax, x, y, body, s=0.8, stripes=stripes)
        ax.set_title(title, fontsize=13)
        ax.set_xlim(0, 5.6)
        ax.set_ylim(-1.5, 2.4)
        ax.set_aspect("equal")
        ax.axis("off")
    axes[0].text(2.4, -0.9, "inputs: dark pixels\nlabel: cat", ha="center", fontsize=11)
    axes[1].text(2.8, -0.9, "same label: cat, but the inputs moved\n(new colours): the classifier is unsure",
                 ha="center", fontsize=11, color="#d95f02")
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)


def main():
    OUT.mkdir(exist_ok=True)
    for name, covered, title in (("network_4layer.png", False, "A 4-layer network"),
                                 ("network_covered.png", True,
                                  "Cover layers 1-2: each unit of layer 3 is\nlogistic regression on the inputs $a^{[2]}$")):
        fig, ax = plt.subplots(figsize=(7, 4.2))
        draw_network(ax, covered)
        ax.set_title(title, fontsize=13)
        fig.savefig(OUT / name, dpi=90, bbox_inches="tight")
        plt.close(fig)
    draw_cats(OUT / "covariate_shift_cats.png")
    for p in sorted(OUT.glob("*.png")):
        print(f"{p.name}: {p.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
