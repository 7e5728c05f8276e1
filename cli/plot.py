"""`proofkd plot OUTPUT_DIR`: a run's loss parts, divergences and schedule over its steps, as one PNG.

Reads `OUTPUT_DIR/proofkd_log.jsonl` (`proofkd.core.run_log`) and draws one
panel per group of logged values the run has: Stage 1's loss and its parts,
the cross-entropy and KL per span (prompt, derivation, answer), the KL, the
entropies and top-token overlap, the proof weight and the learning rate;
OPD's reverse-KL estimates, its clipping and the reward. Evaluation records
are drawn as points over the training lines.
"""

from __future__ import annotations

from pathlib import Path

from proofkd.core.io import atomic_path, unwritable_reason
from proofkd.core.run_log import LOG_FILE, read_run_log, training_records

# (panel title, logged keys); evaluation keys are the same with `eval_` in front.
PANELS = (
    ("loss", ("loss", "proofkd/ce_weighted", "proofkd/kd_term")),
    ("cross-entropy per span", ("proofkd/prompt/ce", "proofkd/derivation/ce", "proofkd/answer/ce", "proofkd/ce")),
    ("KL(teacher || student) at T, per span", ("proofkd/prompt/kl", "proofkd/derivation/kl", "proofkd/answer/kl")),
    ("KL(teacher || student) at T", ("proofkd/kl",)),
    ("entropy at T = 1", ("proofkd/derivation/student_entropy", "proofkd/derivation/teacher_entropy")),
    ("student mass on the teacher's top tokens", ("proofkd/derivation/topk_overlap", "proofkd/answer/topk_overlap")),
    ("teacher mass outside its top-k", ("proofkd/teacher_tail_mass",)),
    ("proof weight", ("proofkd/proof_weight",)),
    ("learning rate", ("learning_rate",)),
    ("OPD reverse-KL estimates", ("opd/k1", "opd/k2", "opd/k3")),
    ("OPD clipped fraction", ("opd/clip_ratio/low", "opd/clip_ratio/high", "opd/clip_ratio/dual")),
    ("reward", ("reward",)),
)


class PlotError(ValueError):
    """No run log to plot, or nowhere to write the plot."""


def plot_run(output_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draw the run in `output_dir` to `out` (default `OUTPUT_DIR/proofkd_log.png`); return the PNG's path."""
    from matplotlib.figure import Figure

    output_dir = Path(output_dir)
    records = read_run_log(output_dir)
    train = training_records(records)
    evals = [r for r in records if "eval_loss" in r]
    if not train and not evals:
        where = output_dir / LOG_FILE
        found = "is empty" if where.is_file() else "does not exist"
        raise PlotError(f"{where} {found}: give the output_dir of a run that logged at least one step")
    out = Path(out) if out else output_dir / "proofkd_log.png"
    reason = unwritable_reason(out.parent)
    if reason:
        raise PlotError(reason)
    panels = panels_for(records)
    figure = Figure(figsize=(9, 2.6 * len(panels)), layout="constrained")
    axes = figure.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (title, keys) in zip(axes, panels, strict=True):
        for key in keys:
            name = key.removeprefix("proofkd/").removeprefix("opd/")
            color = _line(ax, train, key, name)
            _points(ax, evals, f"eval_{key}", f"eval {name}", color)
        ax.set_title(title, fontsize=10, loc="left")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    axes[-1].set_xlabel("optimizer step")
    figure.suptitle(f"{output_dir}", fontsize=9)
    with atomic_path(out) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    return out


def panels_for(records: list[dict]) -> list[tuple[str, tuple[str, ...]]]:
    """The panels of `PANELS` for which the run logged at least one value, training or evaluation."""
    return [(title, keys) for title, keys in PANELS if any(k in r or f"eval_{k}" in r for r in records for k in keys)]


def _series(records: list[dict], key: str) -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in records if isinstance(r.get(key), int | float) and "step" in r]


def _line(ax, records: list[dict], key: str, label: str):
    """A training value as a line; its colour, for the same value's evaluation points."""
    points = _series(records, key)
    if not points:
        return None
    return ax.plot(*zip(*points, strict=True), label=label, linewidth=1.4)[0].get_color()


def _points(ax, records: list[dict], key: str, label: str, color) -> None:
    points = _series(records, key)
    if points:
        ax.plot(*zip(*points, strict=True), "o--", label=label, markersize=4, linewidth=0.8, color=color)
