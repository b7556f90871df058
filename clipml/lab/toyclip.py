"""The toy CLIPs of the lab: tiny open_clip models trained contrastively on a synthetic world.

They let the whole toolkit run offline: ordinary open_clip `CLIP`s, registered from the JSON
configs in `clipml/assets/model_configs` (like timm's test models), trained on scene/caption
pairs of the world's "pretrain" stream (never an evaluation stream). Weights ship as fp16
safetensors and load back as fp32 through `open_clip.create_model(name, pretrained=<file>)`.

Two towers, as in the published MLR-PL settings:

- ``vit`` (`clipml-lab-vit`): a ViT whose global feature is the mean of its patch tokens
  (`pool_type: avg`), so contrastive training aligns every location with the text, as the
  attention pool does for CLIP's ResNets (with class-token pooling the first toy's dense map
  stayed nearly untrained: zero-shot mAP 30 % dense vs 57 % global);
- ``rn`` (`clipml-lab-rn`): open_clip's own ModifiedResNet with its attention pool (a tiny
  RN101), so the dense path of METHODS §1 (the pool's value and output projections) runs on
  trained weights. It is trained at half its input size first, then at full size with the
  pool's positional embedding interpolated: progressive resizing, 4x cheaper early steps.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from clipml.errors import ConfigError

logger = logging.getLogger(__name__)

ASSET_DIR = Path(__file__).resolve().parent.parent / "assets"


@dataclasses.dataclass(frozen=True)
class ToySpec:
    """Where a toy tower's config, weights and build record live."""

    model_name: str

    @property
    def config_path(self) -> Path:
        return ASSET_DIR / "model_configs" / f"{self.model_name}.json"

    @property
    def weights_path(self) -> Path:
        return ASSET_DIR / f"{self.model_name}.safetensors"

    @property
    def metadata_path(self) -> Path:
        return ASSET_DIR / f"{self.model_name}.json"


TOYS: Dict[str, ToySpec] = {"vit": ToySpec("clipml-lab-vit"), "rn": ToySpec("clipml-lab-rn")}
"""The lab's toy towers by short name (backbone specs ``toy`` / ``toy-vit`` and ``toy-rn``)."""

# The mean/std open_clip applies by default (OpenAI's); the toy models are trained with them.
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)
ZERO_SHOT_TEMPLATE = "a photo of a {}."


def toy_spec(tower: str) -> ToySpec:
    if tower not in TOYS:
        raise ConfigError(f"unknown toy tower {tower!r}; expected one of {sorted(TOYS)}")
    return TOYS[tower]


def register_toy_config(tower: str = "vit") -> str:
    """Make open_clip know a toy model by name; returns that name (the config's file stem)."""
    import open_clip

    open_clip.add_model_config(toy_spec(tower).config_path)
    return toy_spec(tower).model_name


def new_toy_model(tower: str = "vit", seed: int = 0) -> torch.nn.Module:
    """A randomly initialised toy CLIP (fixed seed), fp32."""
    import open_clip

    name = register_toy_config(tower)
    torch.manual_seed(seed)
    return open_clip.create_model(name).float()


@dataclasses.dataclass
class ToyClipTrainConfig:
    """Everything that determines a toy CLIP build (recorded in its metadata)."""

    tower: str = "vit"
    preset: str = "coco_like"  # the world whose pretrain stream it sees
    steps: int = 2000
    batch_size: int = 128
    lr: float = 2e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.1
    warmup_steps: int = 60
    seed: int = 0  # model init, batch order, augmentation
    data_seed: int = 0  # scenes of the "pretrain" stream
    pool_scenes: int = 100_000  # the first scenes of the stream, rendered once and cycled through
    low_res_steps: int = 0  # the first steps at half the input size (progressive resizing)
    threads: int = 1  # torch intra-op threads (0: torch's default); 1 reproduces the shipped weights exactly
    log_every: int = 20
    checkpoint_every: int = 100  # steps between saves of the resumable training state


RECIPES: Dict[str, Dict[str, int]] = {
    "vit": {"steps": 2400},
    "rn": {"steps": 2250, "low_res_steps": 2000},
}
"""Per-tower settings of the shipped builds that differ from ToyClipTrainConfig's defaults."""


@dataclasses.dataclass
class ToyClipTrainResult:
    """The trained model and how its training went."""

    model: torch.nn.Module
    losses: List[float]  # mean contrastive loss per logged window, in order
    first_loss: float
    final_loss: float
    seconds: float


def _augment(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Light, label-preserving augmentation on [0, 1] pixels: flips and brightness/contrast."""
    batch = pixels.shape[0]
    flip = torch.rand(batch, generator=generator) < 0.5
    pixels = torch.where(flip.view(-1, 1, 1, 1), pixels.flip(-1), pixels)
    gain = 1.0 + (torch.rand(batch, 1, 1, 1, generator=generator) - 0.5) * 0.3
    shift = (torch.rand(batch, 1, 1, 1, generator=generator) - 0.5) * 0.2
    mean = pixels.mean(dim=(1, 2, 3), keepdim=True)
    return ((pixels - mean) * gain + mean + shift).clamp_(0.0, 1.0)


def _param_groups(model: torch.nn.Module, weight_decay: float) -> List[Dict]:
    """Decay only matrices of linear/conv layers; not gains, biases, embeddings or the scale."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_embedding = "embedding" in name or "class_embedding" in name
        if param.ndim >= 2 and not is_embedding and name != "logit_scale":
            decay.append(param)
        else:
            no_decay.append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _lr_at(step: int, cfg: ToyClipTrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * progress))


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over the batch: image i belongs with caption i."""
    logits = logit_scale * image_features @ text_features.t()
    targets = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets))


def encode_text_prefix(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Normalised text features of tokens cut to a short context (the toy model's causal tower).

    With a causal mask, the first L positions do not see the padding after them, so this
    equals `model.encode_text` on the same captions padded to 77 tokens, at a fraction of the cost.
    """
    length = tokens.shape[1]
    x = model.token_embedding(tokens) + model.positional_embedding[:length]
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    pooled = x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ model.text_projection
    return F.normalize(pooled, dim=-1)


def image_grid_size(model: torch.nn.Module) -> int:
    """The input size the image tower's positional embedding currently fits."""
    visual = model.visual
    if hasattr(visual, "attnpool"):
        side = int(round(math.sqrt(visual.attnpool.positional_embedding.shape[0] - 1)))
        return side * 32
    side = int(round(math.sqrt(visual.positional_embedding.shape[0] - 1)))
    return side * visual.conv1.kernel_size[0]


def set_input_size(model: torch.nn.Module, size: int, optimizer: Optional[torch.optim.Optimizer] = None) -> None:
    """Interpolate the image tower's positional embedding to `size` px inputs.

    The embedding becomes a new Parameter (autograd cannot follow a change of shape in place);
    an `optimizer` holding the old one gets the new one, and the old one's Adam moments, which
    belong to the old grid, are dropped.
    """
    from clipml.backbones.base import resize_grid_embedding

    visual = model.visual
    owner, stride = (visual.attnpool, 32) if hasattr(visual, "attnpool") else (visual, visual.conv1.kernel_size[0])
    if size % stride:
        raise ConfigError(f"toy input size {size} is not a multiple of the tower's stride {stride}")
    old = owner.positional_embedding
    new = torch.nn.Parameter(resize_grid_embedding(old.detach(), (size // stride, size // stride)).contiguous())
    owner.positional_embedding = new
    if owner is visual:
        visual.grid_size = (size // stride, size // stride)
        visual.image_size = (size, size)
    else:
        visual.image_size = size
    if optimizer is not None:
        optimizer.state.pop(old, None)
        for group in optimizer.param_groups:
            group["params"] = [new if param is old else param for param in group["params"]]


def _step_batch(pool_size: int, step: int, cfg: ToyClipTrainConfig) -> np.ndarray:
    """Pool indices of step `step`: the pool is cycled through in seeded epoch permutations, so a
    resumed run sees exactly the batches of an uninterrupted one."""
    first = step * cfg.batch_size
    epoch, offset = divmod(first, pool_size)
    order = np.random.default_rng([cfg.seed, cfg.data_seed, epoch]).permutation(pool_size)
    if offset + cfg.batch_size > pool_size:
        following = np.random.default_rng([cfg.seed, cfg.data_seed, epoch + 1]).permutation(pool_size)
        order = np.concatenate([order, following])
    return np.sort(order[offset : offset + cfg.batch_size])  # sorted: faster reads from the memory map


def _images(pool, index: np.ndarray, size: int, generator: torch.Generator) -> torch.Tensor:
    pixels = torch.from_numpy(np.ascontiguousarray(pool.images[index])).permute(0, 3, 1, 2).float().div_(255.0)
    pixels = _augment(pixels, generator)
    if pixels.shape[-1] != size:
        pixels = F.interpolate(pixels, size=(size, size), mode="bicubic", align_corners=False).clamp_(0.0, 1.0)
    mean = torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD).view(1, 3, 1, 1)
    return (pixels - mean) / std


def train_toy_clip(
    cfg: ToyClipTrainConfig,
    pool,
    model: Optional[torch.nn.Module] = None,
    work_dir: Optional[Path] = None,
    progress: Optional[Callable[[int, float], None]] = None,
) -> ToyClipTrainResult:
    """Contrastive training on a PretrainPool; returns the model in eval mode.

    With `work_dir`, the training state is saved every `checkpoint_every` steps and a run
    started again with the same config resumes from it (the batches depend only on the step).
    `progress(step, loss)` is called after every step.
    """
    from clipml.lab.pool import caption_tokens

    if cfg.checkpoint_every % cfg.log_every:
        raise ConfigError(f"checkpoint_every ({cfg.checkpoint_every}) must be a multiple of log_every ({cfg.log_every})")
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    if model is None:
        model = new_toy_model(cfg.tower, cfg.seed)
    full_size = image_grid_size(model)
    tokens = caption_tokens(pool.captions)
    losses: List[float] = []
    first_loss, start, spent = float("nan"), 0, 0.0
    state_path = Path(work_dir) / "state.pt" if work_dir is not None else None
    state = torch.load(state_path, weights_only=True) if state_path is not None and state_path.is_file() else None
    if state is not None and state["config"] != json.dumps(dataclasses.asdict(cfg), sort_keys=True):
        raise ConfigError(f"{state_path} holds a toy build with another config; remove it to start over")
    if cfg.low_res_steps > 0 and (state is None or state["step"] < cfg.low_res_steps):
        set_input_size(model, full_size // 2)
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, losses, first_loss, spent = state["step"], state["losses"], state["first_loss"], state["seconds"]
        logger.info("resuming the toy build at step %d of %d", start, cfg.steps)
    model.train()
    window: List[float] = []
    started = time.perf_counter()
    for step in range(start, cfg.steps):
        if step == cfg.low_res_steps and cfg.low_res_steps > 0:
            set_input_size(model, full_size, optimizer)
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, cfg)
        index = _step_batch(len(pool), step, cfg)
        generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        images = _images(pool, index, image_grid_size(model), generator)
        image_features = model.encode_image(images, normalize=True)
        text_features = encode_text_prefix(model, tokens[torch.from_numpy(index)])
        loss = clip_loss(image_features, text_features, model.logit_scale.exp())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        value = float(loss.detach())
        if step == 0:
            first_loss = value
        window.append(value)
        if len(window) == cfg.log_every or step == cfg.steps - 1:
            losses.append(float(np.mean(window)))
            logger.info("step %d/%d loss %.4f", step + 1, cfg.steps, losses[-1])
            window = []
        done = step + 1
        if state_path is not None and (done % cfg.checkpoint_every == 0 or done == cfg.steps):
            state_path.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"step": done, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "losses": losses, "first_loss": first_loss,
                        "seconds": spent + time.perf_counter() - started,
                        "config": json.dumps(dataclasses.asdict(cfg), sort_keys=True)}, str(state_path) + ".tmp")
            Path(str(state_path) + ".tmp").replace(state_path)
        if progress is not None:
            progress(step, value)
    model.eval()
    return ToyClipTrainResult(model, losses, first_loss, losses[-1], spent + time.perf_counter() - started)


def save_toy_clip(model: torch.nn.Module, weights_path: Path, model_name: str) -> int:
    """Write the weights as fp16 safetensors; returns the file's size in bytes."""
    from safetensors.torch import save_file

    state = {name: tensor.detach().to(torch.float16).contiguous() for name, tensor in model.state_dict().items()}
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(weights_path), metadata={"format": "pt", "model": model_name})
    return weights_path.stat().st_size


def build_toy_clip(
    cfg: ToyClipTrainConfig,
    pool_dir: Path,
    work_dir: Path,
    render_workers: int = 1,
    command: str = "",
    progress: Optional[Callable[[int, float], None]] = None,
) -> Dict:
    """Render (or reuse) the pretraining pool, train (resumably), write the shipped fp16 weights and
    the training part of the build record; returns that record (`evaluate_toy` adds the rest)."""
    import open_clip

    from clipml.lab.pool import pretrain_pool

    spec = toy_spec(cfg.tower)
    pool = pretrain_pool(cfg.preset, cfg.data_seed, cfg.pool_scenes, pool_dir, workers=render_workers)
    result = train_toy_clip(cfg, pool, work_dir=work_dir, progress=progress)
    metadata: Dict = {
        "model_name": spec.model_name,
        "model_config": json.loads(spec.config_path.read_text()),
        "activation": "GELU (not QuickGELU)",
        "image_mean": list(IMAGE_MEAN),
        "image_std": list(IMAGE_STD),
        "weights_dtype": "float16 (load as float32)",
        "command": command,
        "train_config": dataclasses.asdict(cfg),
        "train_data": {"preset": cfg.preset, "stream": "pretrain", "seed": cfg.data_seed,
                       "pool_scenes": cfg.pool_scenes, "samples_seen": cfg.steps * cfg.batch_size},
        "train_seconds": round(result.seconds, 1),
        "first_loss": result.first_loss,
        "final_loss": result.final_loss,
        "loss_curve": [round(value, 4) for value in result.losses],
        "parameters": int(sum(p.numel() for p in result.model.parameters())),
        "versions": {"torch": torch.__version__, "open_clip": open_clip.__version__},
    }
    metadata["weights_bytes"] = save_toy_clip(result.model, spec.weights_path, spec.model_name)
    spec.metadata_path.write_text(json.dumps(metadata, indent=2) + "\n")
    return metadata
