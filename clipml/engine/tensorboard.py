"""TensorBoard scalars beside log.jsonl: the same per-epoch records, one scalar per number, for
people who follow runs in TensorBoard. Optional: needs the `tensorboard` package."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, Optional, Union

from clipml.errors import ConfigError

logger = logging.getLogger(__name__)
FOLDER = "tensorboard"


def summary_writer_class(setting: Union[str, bool]):
    """torch's SummaryWriter when `train.tensorboard` asks for one and it can be had; None when
    the setting is false, or "auto" without the package. `true` without it is a ConfigError, so
    a run that promised TensorBoard logs stops before any data or weights load."""
    if setting is False:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:
        if setting is True:
            raise ConfigError(f"train.tensorboard=true, but TensorBoard cannot be imported ({error}); "
                              "pip install tensorboard (or clipml[tensorboard]), or set "
                              "train.tensorboard=auto or false") from None
        logger.debug("tensorboard is not installed: no TensorBoard scalars (train.tensorboard=auto)")
        return None
    return SummaryWriter


def scalars(record: Dict[str, object]) -> Dict[str, float]:
    """A log.jsonl record as TensorBoard tags: `val/mAP` for the nested validation metrics,
    `train/loss` and `train/lr` for the others; the epoch is the step, not a scalar."""
    out: Dict[str, float] = {}
    for key, value in record.items():
        if key == "epoch":
            continue
        if isinstance(value, dict):
            out.update({f"{key}/{name}": float(number) for name, number in value.items()})
        else:
            out[f"train/{key}"] = float(value)
    return out


class EpochScalars:
    """Writes each epoch's record to <run>/tensorboard/. Every start hides what earlier event
    files hold (TensorBoard's purge from step 1) and the saved history is written again, as
    log.jsonl is: an epoch logged but not saved before an interruption is not shown twice."""

    def __init__(self, writer_class, run: Path) -> None:
        self.writer = writer_class(log_dir=str(run / FOLDER), purge_step=1)

    def write(self, record: Dict[str, object]) -> None:
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, global_step=int(record["epoch"]))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()

