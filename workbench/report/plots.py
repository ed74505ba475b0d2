"""The report's plots, each a function of the results table (``workbench.results.table.load_table(..., extras=True)``).

Every function saves one PNG and never raises on a run with few or no completed trials: an
empty plot says so in its middle, so a report of a half-finished sweep still renders.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from workbench.core.objectives import OBJECTIVES

# (file name, title) of every plot, in the order the HTML report shows them.
PLOTS = [
    ("pareto.png", "Accuracy vs p90 latency (Pareto front)"),
    ("latency_batch.png", "Latency vs batch size per runtime"),
    ("size_accuracy.png", "Size vs accuracy"),
    ("latency_dist.png", "Latency distributions of the top candidates"),
    ("history.png", "Optimization history"),
]
DPI = 90


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _done(df):
    return df[df.state.isin(["COMPLETE", "BASELINE"])]


def empty(ax, text: str = "no completed trials yet") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)


def save_figure(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    pyplot().close(fig)


def _quality(df) -> tuple[str, str, float]:
    """The quality column to plot: accuracy (%) for classification, MAE for a regression run
    (which has no accuracy). ``sign``: -1 when higher is better, +1 when lower is."""
    if "mae" in df and df["accuracy"].isna().all() and df["mae"].notna().any():
        return "mae", "MAE on the eval split (lower is better)", 1.0
    return "accuracy", "accuracy on the eval split (%)", -1.0


def _trials_and_front(ax, trials, x: str, q: str) -> None:
    """Feasible and infeasible trials of ``x`` vs quality ``q``, and the Pareto front as a line."""
    for feasible, marker, name in ((True, "o", "feasible"), (False, "x", "infeasible")):
        sel = trials[trials.feasible == feasible]  # noqa: E712
        ax.scatter(sel[x], sel[q], marker=marker, s=40,
                   c=["tab:blue" if feasible else "tab:red"] * len(sel), label=name)
    front = trials[trials.pareto == True].sort_values(x)  # noqa: E712
    if len(front):
        ax.plot(front[x], front[q], "-", color="tab:blue", alpha=0.5, label="Pareto front")


def qps_pareto(df, path: Path, max_drop: float) -> None:
    """A server run's trade-off: accuracy vs ``max_qps_at_slo`` (feasible, infeasible, the
    Pareto front). Baselines are in-process and have no QPS, so they give only the max-drop line."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 5))
    q, qlabel, sign = _quality(df)
    done = _done(df)
    trials = done[(done.kind == "trial") & done.max_qps_at_slo.notna()]
    _trials_and_front(ax, trials, "max_qps_at_slo", q)
    for _, r in trials.iterrows():
        ax.annotate(r.trial, (r.max_qps_at_slo, r[q]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    base = done[done.kind == "baseline"]
    ref = (base[q].max() if sign < 0 else base[q].min()) if len(base) else None
    if ref is not None and not math.isnan(ref):
        ax.axhline(ref + sign * max_drop, ls="--", color="grey", lw=1, label=f"max drop {max_drop:g}")
    if trials.empty:
        empty(ax, "no completed server trials yet")
    ax.set_xlabel("max QPS within the SLO (achieved)")
    ax.set_ylabel(qlabel)
    ax.legend(fontsize=8)
    ax.set_title("Accuracy vs max QPS at the SLO")
    save_figure(fig, path)


def pareto(df, path: Path, max_drop: float) -> None:
    """Accuracy vs p90 latency: feasible, infeasible, the Pareto front and the baselines."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 5))
    q, qlabel, sign = _quality(df)
    done = _done(df)
    trials = done[done.kind == "trial"]
    _trials_and_front(ax, trials, "latency_p90_ms", q)
    base = done[done.kind == "baseline"]
    ax.scatter(base.latency_p90_ms, base[q], marker="*", s=140, c="black", label="baselines")
    for _, r in done.iterrows():
        ax.annotate(r.trial.replace("baseline:", ""), (r.latency_p90_ms, r[q]), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    ref = (base[q].max() if sign < 0 else base[q].min()) if len(base) else None
    if ref is not None and not math.isnan(ref):
        ax.axhline(ref + sign * max_drop, ls="--", color="grey", lw=1, label=f"max drop {max_drop:g}")
    if (done.latency_p90_ms > 0).any() and done[q].notna().any():
        ax.set_xscale("log")
    else:
        empty(ax)
    ax.set_xlabel("p90 latency per batch (ms, log scale)")
    ax.set_ylabel(qlabel)
    ax.set_title(f"{q.upper() if q == 'mae' else 'Accuracy'} vs p90 latency")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    save_figure(fig, path)


def _series_label(r) -> str:
    bits = {32: "fp32", 16: "fp16", 8: f"int8-{r.int8_mode or ''}".rstrip("-"), 4: "int4"}
    b = bits.get(int(r.bits), str(r.bits)) if r.bits == r.bits and r.bits is not None else "?"
    sp = f" sp{r.sparsity:g}" if r.sparsity == r.sparsity and r.sparsity else ""
    kind = " (baseline)" if r.kind == "baseline" else ""
    return f"{r.runtime} {b}{sp} t{int(r.threads) if r.threads == r.threads else '?'}{kind}"


def latency_vs_batch(df, path: Path) -> None:
    """p50 per sample (with its 95% CI) against batch size, one line per runtime/precision."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    done = _done(df).dropna(subset=["latency_p50_ms", "batch_size"])
    if done.empty:
        empty(ax)
    groups: dict[str, list] = {}
    for _, r in done.iterrows():
        groups.setdefault(_series_label(r), []).append(r)
    for name, rows in sorted(groups.items()):
        rows = sorted(rows, key=lambda r: r.batch_size)
        b = np.array([r.batch_size for r in rows], dtype=float)
        p50 = np.array([r.latency_p50_ms for r in rows]) / b
        lo = np.array([r.latency_p50_ci_low_ms for r in rows], dtype=float) / b
        hi = np.array([r.latency_p50_ci_high_ms for r in rows], dtype=float) / b
        style = "--*" if "(baseline)" in name else "-o"
        ax.errorbar(b, p50, yerr=[np.clip(p50 - lo, 0, None), np.clip(hi - p50, 0, None)],
                    fmt=style, capsize=3, label=name, ms=5)
    if not done.empty:
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.legend(fontsize=7, loc="best")
    ax.set_xlabel("batch size (log 2)")
    ax.set_ylabel("p50 latency per sample (ms, log)")
    ax.set_title("Latency per sample vs batch size (bars: 95% CI of p50)")
    ax.grid(True, which="both", alpha=0.3)
    save_figure(fig, path)


def size_vs_accuracy(df, path: Path) -> None:
    """Artifact size against accuracy: what each byte saved costs."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    q, qlabel, _ = _quality(df)
    done = _done(df).dropna(subset=["size_bytes", q])
    if done.empty:
        empty(ax)
    for kind, feasible, marker, color, name in (("trial", True, "o", "tab:blue", "feasible"),
                                                ("trial", False, "x", "tab:red", "infeasible"),
                                                ("baseline", None, "*", "black", "baselines")):
        sel = done[done.kind == kind]
        if feasible is not None:
            sel = sel[sel.feasible == feasible]  # noqa: E712
        ax.scatter(sel.size_bytes / 1024, sel[q], marker=marker, c=color, s=60 if marker == "*" else 36,
                   label=name)
    for _, r in done.iterrows():
        ax.annotate(r.trial.replace("baseline:", ""), (r.size_bytes / 1024, r[q]), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    if not done.empty:
        ax.set_xscale("log")
        ax.legend(fontsize=8, loc="lower right")
    ax.set_xlabel("artifact size (KiB, log)")
    ax.set_ylabel(qlabel)
    ax.set_title(f"Size vs {'MAE' if q == 'mae' else 'accuracy'}")
    ax.grid(True, which="both", alpha=0.3)
    save_figure(fig, path)


def top_candidates(df, n: int = 5):
    """The ``n`` fastest completed feasible trials by p50 per sample."""
    ok = df[(df.kind == "trial") & (df.state == "COMPLETE") & (df.feasible == True)].copy()  # noqa: E712
    ok["per_sample"] = ok.latency_p50_ms / ok.batch_size
    return ok.sort_values("per_sample").head(n)


def latency_distributions(df, path: Path, n: int = 5) -> int:
    """Per-sample latency CDFs of the top candidates (from their 201 recorded quantiles);
    returns how many were drawn."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    top = top_candidates(df, n)
    drawn = 0
    if "latency_quantiles_ms" in df.columns:
        q = np.linspace(0, 100, 201)
        for _, r in top.iterrows():
            qs = r.latency_quantiles_ms
            if not isinstance(qs, (list, tuple)) or len(qs) != len(q):
                continue
            x = np.asarray(qs, dtype=float) / r.batch_size
            ax.plot(x, q, label=f"{r.trial}: {r.label}")
            ax.axvline(r.latency_p50_ms / r.batch_size, color=ax.lines[-1].get_color(), lw=0.6, ls=":")
            drawn += 1
    if drawn:
        ax.set_xscale("log")
        ax.legend(fontsize=7, loc="lower right")
    else:
        empty(ax, "no latency distributions recorded")
    ax.set_xlabel("latency per sample (ms, log; dotted: p50)")
    ax.set_ylabel("percentile")
    ax.set_title(f"Latency distribution of the {drawn} fastest feasible trials" if drawn != 1 else
                 "Latency distribution of the fastest feasible trial")
    ax.grid(True, which="both", alpha=0.3)
    save_figure(fig, path)
    return drawn


def history(df, path: Path, objectives: list[str]) -> None:
    """Each objective against trial number, with the best feasible value so far."""
    plt = pyplot()
    objectives = objectives or ["latency_p90_ms"]
    fig, axes = plt.subplots(len(objectives), 1, figsize=(7.5, 2.4 * len(objectives) + 0.6),
                             sharex=True, squeeze=False)
    trials = df[(df.kind == "trial") & (df.state == "COMPLETE")].copy()
    trials["number"] = trials.trial.astype(int)
    trials = trials.sort_values("number")
    for ax, obj in zip(axes[:, 0], objectives):
        if trials.empty or obj not in trials:
            empty(ax)
            ax.set_ylabel(obj)
            continue
        feas = trials.feasible == True  # noqa: E712
        ax.scatter(trials.number[feas], trials[obj][feas], c="tab:blue", s=25, label="feasible")
        ax.scatter(trials.number[~feas], trials[obj][~feas], c="tab:red", marker="x", s=25,
                   label="infeasible")
        best, xs, ys = None, [], []
        better = max if OBJECTIVES.get(obj) == "maximize" else min
        for number, value, ok in zip(trials.number, trials[obj], feas):
            if ok and value == value:
                best = value if best is None else better(best, value)
            if best is not None:
                xs.append(number)
                ys.append(best)
        if xs:
            ax.step(xs, ys, where="post", color="tab:green", label="best feasible so far")
        ax.set_ylabel(obj, fontsize=8)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    axes[-1, 0].set_xlabel("trial number")
    axes[0, 0].set_title("Optimization history")
    save_figure(fig, path)


def draw_all(df, out_dir: Path, objectives: list[str], max_drop: float) -> dict[str, Path]:
    """Write the plots of :data:`PLOTS` into ``out_dir`` (latency vs batch only when more than
    one batch size was measured); returns name -> path."""
    out_dir = Path(out_dir)
    paths = {name: out_dir / name for name, _ in PLOTS}
    pareto(df, paths["pareto.png"], max_drop)
    if _done(df).batch_size.nunique() > 1:
        latency_vs_batch(df, paths["latency_batch.png"])
    else:  # one batch size: a line of one point says nothing
        del paths["latency_batch.png"]
    size_vs_accuracy(df, paths["size_accuracy.png"])
    if top_candidates(df).empty:  # no feasible trial: no empty plot of "the 0 fastest" of them
        paths.pop("latency_dist.png")
    else:
        latency_distributions(df, paths["latency_dist.png"])
    history(df, paths["history.png"], objectives)
    return paths
