"""Training logs: the text log (exp/log/train.log and stderr), metrics.jsonl and TensorBoard
scalars, and the training-curve plot."""

from __future__ import annotations

import json
import logging
import math
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from asr.fileio import atomic_open, atomic_write_text

if TYPE_CHECKING:  # asr.runtime imports torch; the console handler serves verbs that start without it
    from asr.runtime import Runtime

log = logging.getLogger("asr.train")


class _TqdmHandler(logging.StreamHandler):
    """Log lines that do not break a tqdm bar on a terminal (written to whatever sys.stderr is
    when the line is logged)."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # pragma: no cover - logging must never crash training
            self.handleError(record)


@contextmanager
def console_warnings() -> Iterator[None]:
    """Warnings of the `asr` loggers on stderr, one line each, for a verb other than `asr train`
    (which routes its logs itself: `training_logs`)."""
    logger = logging.getLogger("asr")
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter("warning: %(message)s"))
    handler.setLevel(logging.WARNING)
    old_propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False  # a root handler (the user's, pytest's) would print it twice
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = old_propagate


@contextmanager
def training_logs(exp_dir: Path, runtime: Runtime) -> Iterator[None]:
    """Route the `asr` loggers to exp/log/train.log and stderr (rank 0; other ranks: warnings)."""
    logger = logging.getLogger("asr")
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    handlers: list[logging.Handler] = []
    console = _TqdmHandler()
    console.setFormatter(logging.Formatter(f"[rank {runtime.rank}] %(levelname)s %(message)s")
                         if runtime.distributed else logging.Formatter("%(message)s"))
    console.setLevel(logging.INFO if runtime.is_main else logging.WARNING)
    handlers.append(console)
    if runtime.is_main:
        (exp_dir / "log").mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(exp_dir / "log" / "train.log", encoding="utf-8")
        file_handler.setFormatter(formatter)
        file_handler.setLevel(logging.INFO)
        handlers.append(file_handler)
    old_level, old_propagate = logger.level, logger.propagate
    logger.setLevel(logging.INFO)
    logger.propagate = False  # pytest's or the user's root handlers would print every line twice
    for handler in handlers:
        logger.addHandler(handler)
    try:
        yield
    finally:
        for handler in handlers:
            logger.removeHandler(handler)
            handler.close()
        logger.setLevel(old_level)
        logger.propagate = old_propagate


class MetricsLog:
    """metrics.jsonl (one JSON object a line) and TensorBoard scalars, rank 0 only; and with
    `debug_rank` (train.debug_rank_files, for tests) each rank's log/debug/rank<R>.<name> files."""

    def __init__(self, exp_dir: Path, enabled: bool, resume_step: int, debug_rank: int | None = None) -> None:
        self.path = exp_dir / "log" / "metrics.jsonl"
        self.enabled = enabled
        self.writer = None
        self.debug_prefix = exp_dir / "log" / "debug" / f"rank{debug_rank}" if debug_rank is not None else None
        if not enabled:
            return
        if self.path.exists():
            # A resumed run repeats the steps after its checkpoint: drop their old lines.
            lines = [line for line in self.path.read_text(encoding="utf-8").splitlines()
                     if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            atomic_write_text(self.path, "".join(line + "\n" for line in lines))
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(exp_dir / "log" / "tensorboard"), purge_step=resume_step + 1)
        except ImportError:  # pragma: no cover - tensorboard is a declared dependency
            log.warning("tensorboard is not installed: no TensorBoard scalars")

    def write(self, kind: str, step: int, values: dict) -> None:
        if not self.enabled:
            return
        entry = {"kind": kind, "step": step, **values}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")
        if self.writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and key != "epoch" and math.isfinite(value):
                    self.writer.add_scalar(f"{kind}/{key}", value, step)

    def debug(self, name: str, text: str) -> None:
        """Append `text` to this rank's debug file `name` (only with debug_rank)."""
        if self.debug_prefix is None:
            return
        path = self.debug_prefix.with_name(f"{self.debug_prefix.name}.{name}")
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write(text)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def plot_curves(metrics_path: Path, png_path: Path) -> bool:
    """Draw loss (train and valid) and valid CER/WER against the step from metrics.jsonl into a
    PNG (atomically). Returns False when there is nothing to draw."""
    if not metrics_path.exists():
        return False
    entries = [json.loads(line) for line in metrics_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    train = [e for e in entries if e["kind"] == "train"]
    valid = [e for e in entries if e["kind"] == "valid"]
    if not train and not valid:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (loss_axes, error_axes) = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        loss_axes.plot([e["step"] for e in train], [e["loss"] for e in train], label="train loss", lw=1)
    if valid:
        loss_axes.plot([e["step"] for e in valid], [e["loss"] for e in valid], "o-", label="valid loss")
        error_axes.plot([e["step"] for e in valid], [100 * e["cer"] for e in valid], "o-", label="valid CER")
        error_axes.plot([e["step"] for e in valid], [100 * e["wer"] for e in valid], "s-", label="valid WER")
    loss_axes.set(xlabel="step", ylabel="CTC loss per utterance", title="loss")
    error_axes.set(xlabel="step", ylabel="%", title="validation error rates (greedy)")
    for axes in (loss_axes, error_axes):
        axes.grid(alpha=0.3)
        if axes.lines:
            axes.legend()
    figure.tight_layout()
    with atomic_open(png_path, "wb", encoding=None) as f:
        figure.savefig(f, format="png", dpi=100)
    plt.close(figure)
    return True


