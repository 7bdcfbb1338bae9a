"""Pictures of SimCLR: pure plotting functions behind the chapters' figures and sliders.

Every function here takes tensors or numbers and returns a matplotlib Figure; it never
reads files or global state, so the notebooks can call it once statically (a figure always
renders, also under nbval) and again from sliders (``sliders``).
"""

from __future__ import annotations

import base64
import io
import math
from typing import Callable

import matplotlib.pyplot as plt
import torch
from matplotlib.colors import ListedColormap

from clr_lib.diagnostics import alignment, anchor_softmax, hard_negative_share, uniformity
from clr_lib.loss import nt_xent, positive_index


# --- chapter 01: augmentations ---

def _pixels(image: torch.Tensor):
    """(3, H, W) uint8, or float in [0, 1] -> (H, W, 3) numpy array for imshow."""
    x = image.detach().cpu()
    x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
    return x.clamp(0, 1).permute(1, 2, 0).numpy()


def plot_view_grid(views: torch.Tensor, row_titles: list[str] | None = None,
                   col_titles: list[str] | None = None, title: str = "",
                   scale: float = 1.3) -> plt.Figure:
    """A grid of images, one row per source image: views (R, K, 3, H, W), or (K, 3, H, W)
    for a single row; uint8, or float pixels in [0, 1] (``augment.denormalize`` undoes the
    normalisation). Pixels drawn as squares, no smoothing: 32x32 is what the encoder sees."""
    views = views[None] if views.dim() == 4 else views
    n_rows, n_cols = views.shape[:2]
    fig, axes = plt.subplots(n_rows, n_cols, squeeze=False, layout="constrained",
                             figsize=(scale * n_cols, scale * n_rows + (0.35 if title else 0)))
    for r in range(n_rows):
        for k in range(n_cols):
            ax = axes[r][k]
            ax.imshow(_pixels(views[r, k]), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0 and col_titles:
                ax.set_title(col_titles[k], fontsize=9)
            if k == 0 and row_titles:
                ax.set_ylabel(row_titles[r], fontsize=9)
    if title:
        fig.suptitle(title)
    return fig


def plot_param_laws(reference: dict[str, list[float]], batched: dict[str, list[float]],
                    bins: int = 30) -> plt.Figure:
    """One panel per parameter (e.g. crop area fraction, aspect ratio): histograms of the
    per-image reference's draws and the batched implementation's, on the same bins."""
    keys = list(reference)
    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 2.8), squeeze=False,
                             layout="constrained")
    for ax, key in zip(axes[0], keys):
        both = torch.tensor(list(reference[key]) + list(batched[key]), dtype=torch.float64)
        edges = torch.linspace(float(both.min()), float(both.max()), bins + 1,
                               dtype=torch.float64).tolist()  # float32 edges can drop the max
        ax.hist(reference[key], bins=edges, alpha=0.5,
                label=f"torchvision v2 (n={len(reference[key])})")
        ax.hist(batched[key], bins=edges, histtype="step", lw=1.5, color="k",
                label=f"batched (n={len(batched[key])})")
        ax.set(xlabel=key, ylabel="draws")
    axes[0][0].legend(fontsize=8)
    return fig


# --- chapter 03: NT-Xent ---

def similarity_masks(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Boolean (2N, 2N) masks of the self, positive and negative pairs of N images, with the
    views stacked as [x_i of images 0..N-1; x_j of images 0..N-1] (as nt_xent stacks them)."""
    rows = torch.arange(2 * n)
    self_mask = torch.eye(2 * n, dtype=torch.bool)
    pos_mask = torch.zeros(2 * n, 2 * n, dtype=torch.bool)
    pos_mask[rows, positive_index(n, 2)[:, 0]] = True  # view 1 of image k <-> view 2 of image k
    return self_mask, pos_mask, ~(self_mask | pos_mask)


def plot_similarity_matrix(z_i: torch.Tensor, z_j: torch.Tensor, title: str = "") -> plt.Figure:
    """Heatmap of the 2N x 2N cosine similarities of [z_i; z_j], next to the masks NT-Xent
    puts on it: the diagonal (self) is removed, the positive is each row's target, the other
    2N-2 entries of the row are its negatives. z_i, z_j: (N, d)."""
    n = z_i.shape[0]
    z = torch.nn.functional.normalize(torch.cat([z_i, z_j]).float(), dim=1)
    sim = (z @ z.T).detach().cpu()  # (2N, 2N)
    self_mask, pos_mask, _ = similarity_masks(n)
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 4.4), layout="constrained")
    shown = torch.where(self_mask, float("nan"), sim)  # NaN draws as the 'bad' colour
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad="lightgrey")
    im = ax0.imshow(shown.numpy(), cmap=cmap, vmin=-1, vmax=1)
    fig.colorbar(im, ax=ax0, fraction=0.046, label="sim(z_a, z_b)")
    ax0.set_title(title or "cosine similarity of the 2N views")
    kinds = self_mask.long() * 2 + pos_mask.long()  # 0 negative, 1 positive, 2 self
    colours = ListedColormap(["#c6dbef", "#d62728", "lightgrey"])
    ax1.imshow(kinds.numpy(), cmap=colours, vmin=0, vmax=2, interpolation="nearest")
    ax1.set_title("masks: positive (red), negatives (blue), self (grey)")
    for ax in (ax0, ax1):
        ax.axhline(n - 0.5, color="k", lw=0.8)
        ax.axvline(n - 0.5, color="k", lw=0.8)
        ax.set_xticks([(n - 1) / 2, n + (n - 1) / 2], ["z_i (view 1)", "z_j (view 2)"])
        ax.set_yticks([(n - 1) / 2, n + (n - 1) / 2], ["z_i", "z_j"])
    return fig


def plot_temperature(z_i: torch.Tensor, z_j: torch.Tensor, temperature: float,
                     anchor: int = 0, fraction: float = 0.1,
                     taus: torch.Tensor | None = None) -> plt.Figure:
    """What tau does, in three panels. (a) For one anchor, the softmax weight p_k of each of
    its 2N-1 candidates against its cosine similarity (the gradient on negative k is p_k/tau).
    (b) The NT-Xent loss of the batch against tau. (c) The share of the gradient on negatives
    that the hardest ``fraction`` of them receive, against tau. z_i, z_j: (N, d)."""
    taus = torch.logspace(-2, 0.5, 40) if taus is None else taus
    sim, p, pos = (t.cpu().numpy() if torch.is_tensor(t) else t
                   for t in anchor_softmax(z_i, z_j, temperature, anchor))
    neg = torch.arange(len(sim)).numpy() != pos
    fig, (ax0, ax1, ax2) = plt.subplots(1, 3, figsize=(13, 3.8), layout="constrained")
    ax0.scatter(sim[neg], p[neg], s=10, label="negatives")
    ax0.scatter(sim[pos], p[pos], s=80, marker="*", color="C3", label="positive")
    # On a log scale p_k = exp(s_k / tau) / Z is a straight line of slope 1 / tau.
    ax0.set(xlabel="cosine similarity s_k to the anchor", ylabel="softmax weight p_k",
            yscale="log", ylim=(1e-6, 1.5), title=f"anchor {anchor}, tau = {temperature:.2f}")
    ax0.legend(loc="upper left")
    losses = [nt_xent(z_i.detach(), z_j.detach(), float(t)).item() for t in taus]
    ax1.plot(taus.tolist(), losses)
    ax1.plot([temperature], [nt_xent(z_i.detach(), z_j.detach(), temperature).item()], "o",
             color="C3")
    ax1.axhline(math.log(2 * len(z_i) - 1), ls="--", color="grey", label="log(2N-1)")
    ax1.set(xscale="log", xlabel="tau", ylabel="NT-Xent loss", title="loss of the batch")
    ax1.legend()
    shares = [hard_negative_share(z_i, z_j, float(t), fraction) for t in taus]
    ax2.plot(taus.tolist(), shares)
    ax2.plot([temperature], [hard_negative_share(z_i, z_j, temperature, fraction)], "o",
             color="C3")
    ax2.axhline(fraction, ls="--", color="grey", label="all negatives equal")
    ax2.set(xscale="log", xlabel="tau", ylim=(0, 1.02),
            ylabel=f"gradient share of the hardest {fraction:.0%}",
            title="how hard negatives are weighted")
    ax2.legend()
    return fig


def plot_alignment_uniformity(cases: dict[str, tuple[torch.Tensor, torch.Tensor]]
                              ) -> plt.Figure:
    """Each case's 2-D embeddings on the unit circle, positive pairs joined by a line, then
    all cases on the alignment-uniformity plane (Wang & Isola, 2020: lower-left is better).
    cases: name -> (z_i, z_j), each (N, 2)."""
    fig, axes = plt.subplots(1, len(cases) + 1, figsize=(3.4 * (len(cases) + 1), 3.8),
                             layout="constrained")
    points = {}
    for ax, (name, (z_i, z_j)) in zip(axes, cases.items()):
        if z_i.shape[1] != 2:
            raise ValueError(f"plot_alignment_uniformity draws 2-D embeddings; case {name!r} "
                             f"has d={z_i.shape[1]}.")
        a, b = (torch.nn.functional.normalize(z.detach().float().cpu(), dim=1)
                for z in (z_i, z_j))
        ax.add_patch(plt.Circle((0, 0), 1, fill=False, color="lightgrey"))
        for u, v in zip(a.tolist(), b.tolist()):
            ax.plot([u[0], v[0]], [u[1], v[1]], color="grey", lw=0.6)
        ax.scatter(*a.numpy().T, s=12, label="z_i")
        ax.scatter(*b.numpy().T, s=12, label="z_j")
        points[name] = (uniformity(torch.cat([a, b])), alignment(a, b))
        ax.set(xlim=(-1.2, 1.2), ylim=(-1.2, 1.2), aspect="equal", xticks=[], yticks=[],
               title=f"{name}\nalign {points[name][1]:.2f}, unif {points[name][0]:.2f}")
    for name, (u, a) in points.items():
        axes[-1].scatter(u, a)
        axes[-1].annotate(name, (u, a), textcoords="offset points", xytext=(4, 4))
    axes[-1].set(xlabel="uniformity (lower: more spread)", ylabel="alignment (lower: closer)",
                 title="alignment vs uniformity")
    axes[-1].margins(0.3)
    return fig


# --- chapters 05 and 06: evaluation and representations ---

def plot_accuracy_bars(table: dict[str, dict[str, float]], title: str = "",
                       chance: float | None = None) -> plt.Figure:
    """Grouped bars of accuracies (fractions): one group per row of ``table`` (e.g. "random
    init", "SimCLR h"), one bar per metric (e.g. "kNN", "linear"), each value written on its
    bar; a dashed line at ``chance``. table: row name -> {metric name -> accuracy}."""
    rows = list(table)
    metrics = list(dict.fromkeys(m for row in table.values() for m in row))
    width = 0.8 / len(metrics)
    fig, ax = plt.subplots(figsize=(1.5 * len(rows) + 2, 3.4), layout="constrained")
    for k, metric in enumerate(metrics):
        present = [i for i, r in enumerate(rows) if metric in table[r]]
        bars = ax.bar([i + (k - (len(metrics) - 1) / 2) * width for i in present],
                      [table[rows[i]][metric] for i in present], width, label=metric)
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
    if chance is not None:
        ax.axhline(chance, ls="--", color="grey", label="chance")
    ax.set_xticks(range(len(rows)), rows)
    ax.set(ylabel="top-1 accuracy", ylim=(0, 1.08), title=title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside, not on, bars
    return fig


def plot_label_fractions(fractions: list[float], curves: dict[str, list[float]],
                         title: str = "") -> plt.Figure:
    """Accuracy against the fraction of training labels (log axis), one line per method.
    curves: method name -> accuracies, one per fraction."""
    fig, ax = plt.subplots(figsize=(5, 3.4), layout="constrained")
    for name, accs in curves.items():
        ax.plot(fractions, accs, "o-", label=name)
    ax.set_xscale("log")
    ax.set_xticks(fractions, [f"{f:.0%}" for f in fractions])
    ax.minorticks_off()
    ax.set(xlabel="labels used (class-balanced)", ylabel="top-1 accuracy", title=title)
    ax.legend(fontsize=8)
    return fig


def confusion_matrix(labels: torch.Tensor, preds: torch.Tensor, num_classes: int
                     ) -> torch.Tensor:
    """Counts (C, C): row = true class, column = predicted class (scikit-learn's)."""
    from sklearn.metrics import confusion_matrix as counts
    if len(labels) and not (0 <= min(labels.min(), preds.min())
                            and max(labels.max(), preds.max()) < num_classes):
        raise ValueError(f"labels and predictions must be classes 0..{num_classes - 1}: pass "
                         "the number of classes they come from")
    return torch.from_numpy(counts(labels.cpu().numpy(), preds.cpu().numpy(),
                                   labels=list(range(num_classes))))


def plot_confusion_matrix(labels: torch.Tensor, preds: torch.Tensor, classes: list[str],
                          title: str = "") -> plt.Figure:
    """The confusion matrix normalised by row: the share of each true class (rows) predicted
    as each class (columns); the diagonal holds the per-class recall. labels, preds: (N,)."""
    counts = confusion_matrix(labels.cpu(), preds.cpu(), len(classes)).float()
    share = counts / counts.sum(1, keepdim=True).clamp_min(1)
    fig, ax = plt.subplots(figsize=(0.5 * len(classes) + 2.5, 0.5 * len(classes) + 1.8),
                           layout="constrained")
    im = ax.imshow(share.numpy(), cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of the true class")
    for r in range(len(classes)):
        for c in range(len(classes)):
            if counts[r, c] > 0:
                ax.text(c, r, f"{share[r, c]:.2f}"[1:] if share[r, c] < 1 else "1", fontsize=7,
                        ha="center", va="center", color="white" if share[r, c] > 0.5 else "k")
    ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set(xlabel="predicted", ylabel="true",
           title=title or f"accuracy {counts.diagonal().sum() / counts.sum():.2f}")
    return fig


def class_colours(num_classes: int) -> list:
    """One colour per class: tab10 up to 10 classes, tab20 up to 20."""
    cmap = plt.get_cmap("tab10" if num_classes <= 10 else "tab20")
    return [cmap(c % cmap.N) for c in range(num_classes)]


def plot_embedding_maps(maps: dict[str, torch.Tensor], labels: torch.Tensor,
                        classes: list[str], ncols: int | None = None,
                        title: str = "") -> plt.Figure:
    """2-D maps side by side (e.g. UMAP of h and of z), points coloured by class, and one
    legend of the class names. maps: panel title -> (N, 2) points; labels: (N,) classes."""
    ncols = ncols or len(maps)
    nrows = math.ceil(len(maps) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.9 * ncols + 1.4, 3.7 * nrows),
                             squeeze=False, layout="constrained")
    colours = class_colours(len(classes))
    labels = labels.cpu()
    for ax, (name, xy) in zip(axes.flat, maps.items()):
        xy = xy.detach().cpu()
        for c, cls in enumerate(classes):
            mask = labels == c
            ax.scatter(xy[mask, 0].numpy(), xy[mask, 1].numpy(), s=3, color=colours[c],
                       label=cls, rasterized=True)
        ax.set(title=name, xticks=[], yticks=[])
    for ax in axes.flat[len(maps):]:
        ax.set_axis_off()
    fig.legend(*axes.flat[0].get_legend_handles_labels(), loc="outside right upper",
               markerscale=4, fontsize=8, frameon=False)
    if title:
        fig.suptitle(title)
    return fig


def plot_retrieval(queries: torch.Tensor, neighbours: torch.Tensor,
                   query_labels: torch.Tensor, neighbour_labels: torch.Tensor,
                   classes: list[str], scale: float = 1.1) -> plt.Figure:
    """One row per query: the query image, then its k nearest training images, most similar
    first; a neighbour of the query's class is framed green, one of another class red.
    queries (Q, 3, H, W) and neighbours (Q, k, 3, H, W) uint8 or float in [0, 1];
    query_labels (Q,), neighbour_labels (Q, k)."""
    if queries.dim() == 3:  # a single query
        queries, neighbours = queries[None], neighbours[None]
        query_labels, neighbour_labels = query_labels.view(1), neighbour_labels[None]
    n_q, k = neighbour_labels.shape
    fig, axes = plt.subplots(n_q, k + 1, figsize=(scale * (k + 1.3), scale * n_q + 0.4),
                             squeeze=False, layout="constrained")
    for r in range(n_q):
        q = int(query_labels[r])
        axes[r][0].imshow(_pixels(queries[r]), interpolation="nearest")
        axes[r][0].set_title(f"query: {classes[q]}", fontsize=8)
        hits = 0
        for j in range(k):
            ax, c = axes[r][j + 1], int(neighbour_labels[r, j])
            ax.imshow(_pixels(neighbours[r, j]), interpolation="nearest")
            ax.set_title(classes[c], fontsize=7)
            for spine in ax.spines.values():
                spine.set(color="tab:green" if c == q else "tab:red", linewidth=3)
            hits += c == q
        axes[r][0].set_ylabel(f"{hits}/{k} right", fontsize=8)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    return fig


# --- sliders ---

def sliders(plot: Callable[..., plt.Figure], **controls):
    """The controls (ipywidgets), then the figure ``plot(**values)``, redrawn whenever a
    control changes: ``display(sliders(fn, tau=FloatSlider(...), ...))``.

    Like ``ipywidgets.interact``, except that the figure is handed to an Output widget as a
    PNG instead of being printed into it: printing into an Output widget can leave
    ``jupyter nbconvert --execute`` waiting forever for a reply it already has (nbclient
    issue 312), while JupyterLab shows both alike."""
    import ipywidgets as widgets

    out = widgets.Output()

    def redraw(change=None):
        fig = plot(**{name: c.value for name, c in controls.items()})
        png = io.BytesIO()
        fig.savefig(png, format="png", bbox_inches="tight")
        plt.close(fig)
        out.outputs = ({"output_type": "display_data", "metadata": {},
                        "data": {"image/png": base64.b64encode(png.getvalue()).decode("ascii"),
                                 "text/plain": "<Figure>"}},)

    for control in controls.values():
        control.observe(redraw, names="value")
    redraw()
    return widgets.VBox([*controls.values(), out])

