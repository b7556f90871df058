"""The shipped toy CLIP: a tiny open_clip ViT trained contrastively on synthetic scenes.

It lets the whole toolkit run offline in minutes: an ordinary open_clip `CLIP`, registered
under TOY_MODEL_NAME from the JSON config in `clipml/assets/model_configs`, trained on
scene/caption pairs of the synthetic world's "pretrain" stream (never used for evaluation).
Weights ship as fp16 safetensors and load back as fp32 through
`open_clip.create_model(TOY_MODEL_NAME, pretrained=<file>)`.

Its image tower pools by averaging the patch tokens (`pool_type: avg`), not through the class
token: the global feature is then the mean of the dense features `ln_post(t_j) @ proj`, so
training aligns every location with the text, as the attention pool does for CLIP's ResNets.
With class-token pooling the dense map was nearly untrained (zero-shot mAP 30% dense vs 57%
global); with average pooling it is 50% dense vs 53% global, and the dense methods have a map
worth reading.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from clipml.lab.world import CAPTION_TEMPLATES, SYNTHETIC_CLASSES, Scene, SceneGenerator, caption_for
from clipml.errors import ConfigError

logger = logging.getLogger(__name__)

TOY_MODEL_NAME = "clipml-toy-vit"
ASSET_DIR = Path(__file__).resolve().parent.parent / "assets"
TOY_CONFIG_PATH = ASSET_DIR / "model_configs" / f"{TOY_MODEL_NAME}.json"
TOY_WEIGHTS_PATH = ASSET_DIR / "toy_clip.safetensors"
TOY_METADATA_PATH = ASSET_DIR / "toy_clip.json"

# The mean/std open_clip applies by default (OpenAI's); the toy model is trained with them.
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)
ZERO_SHOT_TEMPLATE = "a photo of a {}."


def register_toy_config(config_path: Path = TOY_CONFIG_PATH) -> str:
    """Make open_clip know the toy model by name; returns that name (the file stem)."""
    import open_clip

    open_clip.add_model_config(config_path)
    return config_path.stem


def load_toy_clip(weights: Path = TOY_WEIGHTS_PATH, config_path: Path = TOY_CONFIG_PATH) -> torch.nn.Module:
    """The shipped toy CLIP in fp32, eval mode, loaded through open_clip's own path."""
    import open_clip

    name = register_toy_config(config_path)
    model = open_clip.create_model(name, pretrained=str(weights), require_pretrained=True)
    return model.float().eval()


@dataclasses.dataclass
class ToyClipTrainConfig:
    """Everything that determines a toy CLIP build (recorded in its metadata)."""

    steps: int = 1800
    batch_size: int = 96
    lr: float = 2e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.1
    warmup_steps: int = 40
    seed: int = 0  # model init, augmentation
    data_seed: int = 0  # scenes of the "pretrain" stream
    partial_caption_probability: float = 0.5  # share of captions naming only some objects
    train_context_length: int = 24  # captions are short; a shorter causal prefix is exact and cheaper
    image_size: int = 64
    threads: int = 1  # torch intra-op threads (0: torch's default); 1 reproduces the shipped weights exactly
    log_every: int = 20


@dataclasses.dataclass
class ToyClipTrainResult:
    """The trained model and how its training went."""

    model: torch.nn.Module
    losses: List[float]  # mean contrastive loss per logged window, in order
    first_loss: float
    final_loss: float
    seconds: float


def images_to_tensor(images: Sequence, mean: Sequence[float] = IMAGE_MEAN, std: Sequence[float] = IMAGE_STD) -> torch.Tensor:
    """PIL RGB images (all one size) -> normalised float tensor [B, 3, H, W]."""
    array = np.stack([np.asarray(image, dtype=np.uint8) for image in images])
    pixels = torch.from_numpy(array).permute(0, 3, 1, 2).float().div_(255.0)
    mean_t = torch.tensor(mean).view(1, 3, 1, 1)
    std_t = torch.tensor(std).view(1, 3, 1, 1)
    return (pixels - mean_t) / std_t


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


def partial_caption(scene: Scene, rng: np.random.Generator) -> str:
    """A caption naming a random non-empty subset of the scene's objects, like real alt-text.

    Training on such captions teaches "a photo of a boat." to match any scene that holds a
    boat, which is what multi-label zero-shot scoring asks of the text feature.
    """
    names = [placed.name for placed in scene.objects]
    keep = rng.permutation(len(names))[: int(rng.integers(1, len(names) + 1))]
    return caption_for([names[i] for i in keep], CAPTION_TEMPLATES[int(rng.integers(len(CAPTION_TEMPLATES)))])


def _batch(
    generator: SceneGenerator,
    start: int,
    count: int,
    context_length: int,
    partial_probability: float = 0.0,
    rng: Optional[np.random.Generator] = None,
):
    import open_clip

    scenes = [generator.scene(start + i) for i in range(count)]
    array = np.stack([np.asarray(scene.image, dtype=np.uint8) for scene in scenes])
    pixels = torch.from_numpy(array).permute(0, 3, 1, 2).float().div_(255.0)
    captions = [
        partial_caption(scene, rng) if rng is not None and rng.random() < partial_probability else scene.caption
        for scene in scenes
    ]
    tokens = open_clip.tokenize(captions, context_length=context_length)
    cut = torch.nonzero(tokens[:, -1] != 0).flatten()
    if len(cut):
        raise ConfigError(
            f"train_context_length={context_length} truncates caption {captions[int(cut[0])]!r}; "
            f"raise it (77 at most)"
        )
    return pixels, tokens


def new_toy_model(seed: int = 0, config_path: Path = TOY_CONFIG_PATH) -> torch.nn.Module:
    """A randomly initialised toy CLIP (fixed seed), fp32."""
    import open_clip

    name = register_toy_config(config_path)
    torch.manual_seed(seed)
    return open_clip.create_model(name).float()


def train_toy_clip(
    cfg: ToyClipTrainConfig,
    model: Optional[torch.nn.Module] = None,
    progress: Optional[Callable[[int, float], None]] = None,
) -> ToyClipTrainResult:
    """Contrastive training on freshly rendered pretrain-stream scenes; returns the model in eval mode.

    Scene `k` of the stream is seen exactly once (step s uses scenes s*B .. s*B+B-1), so the
    run is reproducible from `cfg` alone. `progress(step, loss)` is called after every step.
    """
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    if model is None:
        model = new_toy_model(cfg.seed)
    model.train()
    mean = torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD).view(1, 3, 1, 1)
    scenes = SceneGenerator(cfg.data_seed, image_size=cfg.image_size, stream="pretrain")
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    augment_rng = torch.Generator().manual_seed(cfg.seed)
    caption_rng = np.random.default_rng([cfg.seed, cfg.data_seed])
    losses: List[float] = []
    window: List[float] = []
    first_loss = float("nan")
    started = time.perf_counter()
    for step in range(cfg.steps):
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, cfg)
        pixels, tokens = _batch(
            scenes,
            step * cfg.batch_size,
            cfg.batch_size,
            cfg.train_context_length,
            cfg.partial_caption_probability,
            caption_rng,
        )
        images = (_augment(pixels, augment_rng) - mean) / std
        image_features = model.encode_image(images, normalize=True)
        text_features = encode_text_prefix(model, tokens)
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
        if progress is not None:
            progress(step, value)
    model.eval()
    return ToyClipTrainResult(model, losses, first_loss, losses[-1], time.perf_counter() - started)


@torch.no_grad()
def zero_shot_scores(
    model: torch.nn.Module, images: torch.Tensor, classes: Sequence[str], batch_size: int = 256
) -> Dict[str, np.ndarray]:
    """Per-class scores [N, C] of normalised images: global cosine and max-over-locations dense cosine.

    Dense features are `ln_post(tokens) @ proj` of the patch tokens, the map the decoupler uses.
    """
    import open_clip

    model.eval()
    tokens = open_clip.tokenize([ZERO_SHOT_TEMPLATE.format(name) for name in classes])
    text = model.encode_text(tokens, normalize=True)
    visual = model.visual
    global_scores, dense_scores = [], []
    previous = visual.output_tokens
    visual.output_tokens = True
    try:
        for start in range(0, images.shape[0], batch_size):
            pooled, patch_tokens = visual(images[start : start + batch_size])
            dense = F.normalize(patch_tokens @ visual.proj, dim=-1)
            global_scores.append(F.normalize(pooled, dim=-1) @ text.t())
            dense_scores.append(torch.einsum("bnd,cd->bcn", dense, text).amax(-1))
    finally:
        visual.output_tokens = previous
    return {"global": torch.cat(global_scores).numpy(), "dense": torch.cat(dense_scores).numpy()}


def zero_shot_map(
    model: torch.nn.Module, num_images: int = 1000, seed: int = 0, split: str = "test", image_size: int = 64
) -> Dict[str, float]:
    """Zero-shot mAP of the toy model on held-out synthetic scenes, with the chance level.

    Chance is the mean positive rate: the expected AP of a random ranking.
    """
    from sklearn.metrics import average_precision_score

    scenes = SceneGenerator(seed, image_size=image_size, stream=split)
    rendered = [scenes.scene(i) for i in range(num_images)]
    labels = np.stack([scene.labels for scene in rendered])
    images = images_to_tensor([scene.image for scene in rendered])
    scores = zero_shot_scores(model, images, SYNTHETIC_CLASSES)
    present = labels.sum(0) > 0
    result = {"num_images": float(num_images), "chance": float(labels[:, present].mean())}
    for kind, values in scores.items():
        aps = [average_precision_score(labels[:, c], values[:, c]) for c in np.flatnonzero(present)]
        result[f"{kind}_map"] = float(np.mean(aps))
    return result


def save_toy_clip(model: torch.nn.Module, weights_path: Path, metadata_path: Path, metadata: Dict) -> int:
    """Write the weights as fp16 safetensors and the metadata as JSON; returns the weights' size in bytes."""
    from safetensors.torch import save_file

    state = {name: tensor.detach().to(torch.float16).contiguous() for name, tensor in model.state_dict().items()}
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(weights_path), metadata={"format": "pt", "model": TOY_MODEL_NAME})
    metadata_path.write_text(json.dumps(metadata, indent=2) + "\n")
    return weights_path.stat().st_size


def build_toy_clip(
    cfg: ToyClipTrainConfig,
    weights_path: Path = TOY_WEIGHTS_PATH,
    metadata_path: Path = TOY_METADATA_PATH,
    eval_images: int = 1000,
    eval_seed: int = 0,
    command: str = "",
    progress: Optional[Callable[[int, float], None]] = None,
) -> Dict:
    """Train, save (fp16), reload through open_clip and evaluate the reloaded model; returns the metadata.

    The zero-shot numbers are measured on the shipped weights as loaded back, not on the
    fp32 model in memory, so the record describes exactly what ships.
    """
    import open_clip

    result = train_toy_clip(cfg, progress=progress)
    metadata: Dict = {
        "model_name": TOY_MODEL_NAME,
        "model_config": json.loads(TOY_CONFIG_PATH.read_text()),
        "activation": "GELU (not QuickGELU)",
        "image_mean": list(IMAGE_MEAN),
        "image_std": list(IMAGE_STD),
        "weights_dtype": "float16 (load as float32)",
        "command": command,
        "train_config": dataclasses.asdict(cfg),
        "train_data": {"stream": "pretrain", "seed": cfg.data_seed, "scenes": cfg.steps * cfg.batch_size},
        "train_seconds": round(result.seconds, 1),
        "first_loss": result.first_loss,
        "final_loss": result.final_loss,
        "loss_curve": [round(value, 4) for value in result.losses],
        "parameters": int(sum(p.numel() for p in result.model.parameters())),
        "versions": {"torch": torch.__version__, "open_clip": open_clip.__version__},
    }
    metadata["weights_bytes"] = save_toy_clip(result.model, weights_path, metadata_path, metadata)
    shipped = load_toy_clip(weights_path)
    zero_shot = zero_shot_map(shipped, num_images=eval_images, seed=eval_seed, split="test", image_size=cfg.image_size)
    metadata["zero_shot"] = {
        "data": {"stream": "test", "seed": eval_seed, "images": eval_images},
        "prompt": ZERO_SHOT_TEMPLATE,
        **{key: round(value, 4) for key, value in zero_shot.items() if key != "num_images"},
    }
    metadata_path.write_text(json.dumps(metadata, indent=2) + "\n")
    return metadata
