"""Per-case evaluation tables, and their picture."""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .checkpoints import atomic_write
from .transforms import eval_space

__all__ = ["PerCaseMetricsWriter"]

logger = logging.getLogger("monai_unet_variants.bundle")


class PerCaseMetricsWriter:
    """Dice, 95th-percentile Hausdorff distance (mm) and the predicted and labelled volumes (ml) per case and class,
    written as a CSV and printed as a table. A class predicted in a case whose label has none (Dice undefined, left
    out of the mean, as the Decathlon scores) is named in a warning with its predicted volume. Beside the table,
    ``metrics.png`` shows each class's Dice and HD95 over the cases (a box, every case a point, the mean a diamond,
    the lowest Dice named; without matplotlib the picture is left out, with a warning).

    Expects one-hot ``pred`` and ``label`` in the engine output (batch size 1 or more) at the label's spacing; the
    ``space`` column says on which grid they were scored (``evaluate.json``: each case's ``original`` grid by default,
    see ``OriginalGridd``; ``resampled``: the preprocessed one). In a
    distributed run (``multi_gpu_evaluate.json``: each rank evaluates its share of the cases) the rows of every rank
    are gathered and rank 0 writes them all, in case order; the other ranks write nothing.
    """

    def __init__(self, output_dir: str, class_names: Mapping[int, str] | None = None, filename: str = "metrics.csv",
                 space: str = "original"):
        self.output_dir = Path(output_dir)
        self.space = eval_space(space)
        self.class_names = {int(k): v for k, v in (class_names or {1: "pancreas", 2: "tumour"}).items()}
        self.filename = filename
        self.rows: list[dict] = []
        self.sources: list[str] = []  # each row's file, to tell apart cases of one name and a padded sampler's repeats

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, lambda e: (self.rows.clear(), self.sources.clear()))
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def iteration(self, engine: Any) -> None:
        from monai.metrics import compute_dice, compute_hausdorff_distance

        for item in engine.state.output:
            pred, label = item["pred"], item["label"]
            name = str(getattr(label, "meta", {}).get("filename_or_obj", f"case_{len(self.rows)}"))
            spacing = None
            if hasattr(label, "pixdim"):
                spacing = [float(s) for s in label.pixdim]
            row: dict[str, Any] = {"case": os.path.basename(name.rstrip("/")), "space": self.space}
            self.sources.append(name)
            voxel_ml = float(np.prod(spacing)) / 1000.0 if spacing else 0.001
            for c, cname in self.class_names.items():
                p, g = pred[None, c : c + 1].float(), label[None, c : c + 1].float()
                dice = compute_dice(p, g, include_background=True, ignore_empty=True)
                row[f"dice_{cname}"] = float(dice.item())
                if g.sum() > 0 and p.sum() > 0:
                    hd = compute_hausdorff_distance(p, g, include_background=True, percentile=95, spacing=spacing)
                    row[f"hd95_{cname}"] = float(hd.item())
                else:
                    row[f"hd95_{cname}"] = float("nan")
                row[f"pred_ml_{cname}"] = float(p.sum()) * voxel_ml  # a class predicted where the label has none:
                row[f"label_ml_{cname}"] = float(g.sum()) * voxel_ml  # its Dice is undefined, its volume is not
            self.rows.append(row)

    def _gathered(self) -> list[dict] | None:
        """Every rank's rows sorted by case on rank 0, each source file once (a sampler that pads its shares to equal
        length, as with fewer cases than ranks, repeats cases); ``None`` on the other ranks; this rank's rows outside a
        distributed run."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self.rows
        shares: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(shares, list(zip(self.sources, self.rows, strict=True)))
        if dist.get_rank() != 0:
            return None
        unique = {source: row for share in shares for source, row in share}
        return [unique[source] for source in sorted(unique, key=lambda src: (unique[src]["case"], src))]

    def write(self, engine: Any) -> None:
        rows = self._gathered()
        if not rows:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        cols = list(rows[0])
        scores = [c for c in cols if isinstance(rows[0][c], float)]
        mean = {"case": "mean", "space": self.space}
        for c in scores:
            vals = [r[c] for r in rows if not math.isnan(r[c])]
            mean[c] = float(np.mean(vals)) if vals else float("nan")
        path = self.output_dir / self.filename
        table = io.StringIO(newline="")
        writer = csv.DictWriter(table, fieldnames=cols)
        writer.writeheader()
        for r in rows + [mean]:
            writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()})
        atomic_write(path, lambda f: f.write(table.getvalue().encode()))  # complete or absent, never half written
        width = max(len(r["case"]) for r in rows + [mean]) + 2
        lines = ["".join([f"{'case':<{width}}"] + [f"{c:>16}" for c in scores])]
        for r in rows + [mean]:
            lines.append("".join([f"{r['case']:<{width}}"] + [f"{r[c]:>16.4f}" for c in scores]))
        print("\n".join(lines), flush=True)
        picture = self._draw(rows, path.with_suffix(".png"))
        also = f" and drawn in {picture}" if picture else ""
        engine.logger.info(f"per-case metrics ({self.space} grid of each case) written to {path}{also}")
        for cname in self.class_names.values():  # left out of the mean Dice: say so, with what was predicted
            unlabelled = [r for r in rows if r[f"label_ml_{cname}"] == 0 and r[f"pred_ml_{cname}"] > 0]
            if unlabelled:
                shown = ", ".join(f"{r['case']} {r[f'pred_ml_{cname}']:.3g} ml" for r in unlabelled[:5])
                engine.logger.warning(
                    f"{len(unlabelled)} case(s) without {cname} in their label have {cname} predicted ({shown}"
                    f"{' ...' if len(unlabelled) > 5 else ''}): Dice is undefined there and left out of the mean; "
                    f"see pred_ml_{cname} in {path}")

    def _draw(self, rows: list[dict], path: Path) -> Path | None:
        """Each class's Dice and HD95 over the cases, in one picture; ``None`` without matplotlib."""
        from ..visualize import pyplot, save_figure

        plt = pyplot()
        if plt is None:
            logger.warning(f"no {path.name}: matplotlib is not installed (pip install matplotlib); the table holds "
                           "the same numbers")
            return None
        names = list(self.class_names.values())
        fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
        for ax, (metric, title) in zip(axes, (("dice", "Dice"), ("hd95", "HD95 (mm)")), strict=True):
            ticks = []
            for x, cname in enumerate(names, start=1):
                scored = [(r[f"{metric}_{cname}"], r["case"]) for r in rows if not math.isnan(r[f"{metric}_{cname}"])]
                ticks.append(f"{cname}\n{len(scored)} of {len(rows)} cases")
                if not scored:  # every case undefined (no such class in any label or prediction)
                    continue
                values = [v for v, _ in scored]
                ax.boxplot(values, positions=[x], widths=0.5, showfliers=False)
                jitter = np.random.default_rng(x).uniform(-0.15, 0.15, len(values))  # the same picture every run
                ax.scatter(x + jitter, values, s=14, alpha=0.7, zorder=3)
                ax.scatter([x], [np.mean(values)], marker="D", color="black", zorder=4)
                if metric == "dice":
                    low, case = min(scored)
                    ax.annotate(case, (x, low), xytext=(6, -4), textcoords="offset points", fontsize=7)
            ax.set_xticks(range(1, len(names) + 1), ticks)
            ax.set(title=title, xlim=(0.4, len(names) + 0.6))
            ax.grid(alpha=0.3, axis="y")
        axes[0].set_ylim(-0.02, 1.02)
        fig.suptitle(f"{len(rows)} case(s), scored on each case's {self.space} grid (diamond: mean)")
        fig.tight_layout()
        return save_figure(fig, path)
