import dataclasses
import logging

import numpy as np
import pytest
import torch

from clipml.backbones import BackboneConfig, load_backbone
from clipml.engine.train import build_scheduler

# The tests run tiny models: one thread avoids OpenMP overhead (and stalls on a busy machine).
torch.set_num_threads(1)

TINY_SPECS = {
    "open_clip_vit": "open_clip:clipml-tiny-vit",
    "open_clip_vit_customtext": "open_clip:clipml-tiny-vit-customtext",
    "open_clip_rn": "open_clip:clipml-tiny-rn",
    "hf_vit": "hf:clipml-tiny-hf",
}

EVERY_TOWER = [*TINY_SPECS.values(), "open_clip:clipml-tiny-siglip", "open_clip:clipml-tiny-siglip2",
               "open_clip:clipml-tiny-pe-core", "open_clip:clipml-tiny-eva02", "open_clip:clipml-tiny-mobileclip2-b",
               "open_clip:clipml-tiny-mobileclip2-l", "open_clip:clipml-tiny-mobileclip2-s"]
"""Every tiny tower of every family: each method is trained, saved and reloaded on each (test_every_tower.py).
A new family adds its tiny spec here."""

TINY_RUN = ["backbone.spec=open_clip:clipml-tiny-vit", "backbone.image_size=32", "backbone.allow_random=true",
            "data.workers=0", "data.batch_size=16", "model.n_ctx=4", "model.sdm_csp.decoupler_dim=16",
            "optim.name=adamw", "optim.lr=0.01", "loss.reduction=mean"]
"""Overrides of a tiny training run (the tiny random ViT at 32 px, small prompts and batches): the
one experiment the end-to-end tests share; each adds its data, epochs and run folder. Its
model.sdm_csp section is for the default method: a run of another method leaves it out."""


def tiny_run(folder, name: str, *overrides: str):
    """TINY_RUN with its mask and run folders under `folder`, named `name`, then `overrides`."""
    return [*TINY_RUN, f"data.mask_dir={folder / 'masks'}", f"output_dir={folder / 'runs' / '{name}'}",
            f"name={name}", *overrides]


def rates_per_step(optim, epochs: int, steps: int):
    """The learning rate of every optimizer step [epochs, steps] under clipml's schedule for `optim`
    with `epochs` epochs of `steps` steps (what the parity tests set beside a reference scheduler)."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=optim.lr)
    scheduler = build_scheduler(dataclasses.replace(optim, epochs=epochs), optimizer, steps)
    rates = []
    for _ in range(epochs * steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return np.reshape(rates, (epochs, steps))


@pytest.fixture(autouse=True)
def _quiet_open_clip():
    logging.getLogger().setLevel(logging.ERROR)
    yield


def tiny_backbone(family: str, image_size=None, seed: int = 0):
    torch.manual_seed(seed)
    return load_backbone(BackboneConfig(TINY_SPECS[family], image_size=image_size, allow_random=True))


@pytest.fixture
def float64():
    """float64 as the default dtype for one test, restored so other tests are unaffected."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture(scope="session")
def tiny_backbones():
    return {family: tiny_backbone(family) for family in TINY_SPECS}
