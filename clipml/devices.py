"""The one device check every tool and loader goes through: a torch device name that this machine
has, or one ConfigError saying what is there instead (never a torch traceback)."""

from __future__ import annotations

import torch

from clipml.errors import ConfigError

KINDS = ("cpu", "cuda", "mps")
EXPECTED = "expected auto, cpu, cuda, cuda:N or mps"


def parse_device(name) -> torch.device:
    """The torch device `name` stands for, by its form only (what this machine has aside): the
    config's ``device`` key is checked with it when read."""
    try:
        device = torch.device(str(name).strip())
    except (RuntimeError, ValueError):
        raise ConfigError(f"device {name!r} is not a device name; {EXPECTED}") from None
    if device.type not in KINDS:
        raise ConfigError(f"device {name!r} is not supported; {EXPECTED}")
    return device


def select_device(name) -> str:
    """`name` ("auto": CUDA when available) checked against this machine; returns a torch device string."""
    name = str(name).strip()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    device = parse_device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is built without CUDA" if torch.version.cuda is None else "no GPU is visible"
            raise ConfigError(f"device {name!r} was asked for but CUDA is not available ({why}); "
                              f"use device cpu (--device cpu, or the config key device=cpu)")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigError(f"device {name!r} was asked for but {count} CUDA device(s) are visible "
                              f"(cuda:0 to cuda:{count - 1})")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {name!r} was asked for but Apple's MPS is not available here; use device cpu")
    return name
