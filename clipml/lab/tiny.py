"""A tiny random ModifiedResNet CLIP for parity checks against reference code: the golden values
under tests/golden were computed with it (benchmarks/parity/*.py --write-golden), so the tests
and the parity scripts rebuild the same model from its seed here."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

# ----------------------------------------------------------------------------- a tiny CLIP
# A ModifiedResNet CLIP in OpenAI's layout that both the references' clip/model.py and open_clip
# can build: text heads = width // 64 and vision heads = width * 32 // 64 as the references infer
# them, QuickGELU as OpenAI's text tower, 224 px (7x7 attention-pool grid, which DualCoOp's
# build_model_conv_proj hard-codes).
TINY_RN = {
    "embed_dim": 64,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 224, "layers": [1, 1, 1, 1], "width": 16, "head_width": 64},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 2},
}
TINY_NAME = "parity-tiny-rn"


def tiny_openclip(workdir: Path, seed: int = 0):
    """An open_clip CLIP of TINY_RN with every weight perturbed (the library's init zeroes the
    residual branches' last BN) and then rounded to fp16 (DualCoOp's loader stores fp16)."""
    import open_clip

    cfg_dir = workdir / "model_configs"
    cfg_dir.mkdir(parents=True, exist_ok=True)
    (cfg_dir / f"{TINY_NAME}.json").write_text(json.dumps(TINY_RN))
    open_clip.add_model_config(cfg_dir)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = open_clip.create_model(TINY_NAME, pretrained=None)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("logit_scale"):
                    continue
                if p.dim() >= 2 or "positional_embedding" in name or "class_embedding" in name:
                    p.add_(0.3 * p.std().clamp(min=1e-3) * torch.randn_like(p))
                elif name.endswith(".weight"):  # norms
                    p.copy_(1.0 + 0.2 * torch.randn_like(p))
                else:  # biases
                    p.copy_(0.05 * torch.randn_like(p))
            for name, b in model.named_buffers():
                if name.endswith("running_mean"):
                    b.copy_(0.1 * torch.randn_like(b))
                elif name.endswith("running_var"):
                    b.copy_(1.0 + 0.2 * torch.rand_like(b))
            for p in model.parameters():
                p.copy_(p.half().float())
    model.eval()
    return model


def clipml_backbone(model, image_size: int):
    """clipml's frozen tower around (a copy of) the tiny open_clip model."""
    from clipml.backbones import BackboneConfig
    from clipml.backbones.open_clip import OpenCLIPBackbone

    return OpenCLIPBackbone(copy.deepcopy(model), TINY_NAME, "random", BackboneConfig(image_size=image_size))


def images(batch: int, size: int, seed: int = 1) -> torch.Tensor:
    """A seeded batch of random images [batch, 3, size, size]."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, size, size, generator=g)
