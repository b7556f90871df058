import json
import re

import numpy as np
import open_clip
import pytest
import torch
from safetensors.torch import load_file

from clipml.backbones import TOY_MODELS, load_backbone
from clipml.backbones.base import resize_grid_embedding
from clipml.errors import ConfigError, DataError
from clipml.lab.pool import PretrainPool, caption_tokens, pretrain_pool
from clipml.lab.toyclip import (
    TOYS,
    ToyClipTrainConfig,
    clip_loss,
    encode_text_prefix,
    image_grid_size,
    new_toy_model,
    set_input_size,
    train_toy_clip,
)
from clipml.lab.world import SceneGenerator


def tiny_clip(resnet: bool = False, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    vision = ({"image_size": 64, "layers": [1, 1, 1, 1], "width": 8, "head_width": 32} if resnet else
              {"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "patch_size": 8, "pool_type": "avg"})
    return open_clip.CLIP(embed_dim=32, vision_cfg=vision,
                          text_cfg={"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1})


@pytest.fixture(scope="module")
def pool_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("pool")


@pytest.fixture(scope="module")
def small_pool(pool_dir):
    return pretrain_pool("coco_like", 3, 96, pool_dir, image_size=32)


def test_pool_holds_the_pretrain_streams_scenes_and_is_reused(small_pool, pool_dir):
    generator = SceneGenerator(3, image_size=32, stream="pretrain", preset="coco_like")
    for index in (0, 57, 95):
        scene = generator.scene(index)
        assert np.array_equal(small_pool.images[index], np.asarray(scene.image))
        assert small_pool.captions[index] == scene.caption
    assert len(list(pool_dir.iterdir())) == 2  # one image array, one caption list
    again = pretrain_pool("coco_like", 3, 96, pool_dir, image_size=32)
    assert again.captions == small_pool.captions and isinstance(again.images, np.memmap)


def test_an_unfinished_pool_is_never_read(tmp_path):
    stem = tmp_path / "pretrain-coco_like-32px-seed3-8"
    np.save(str(stem) + ".partial.npy", np.zeros((8, 32, 32, 3), np.uint8))  # an interrupted rendering
    pool = pretrain_pool("coco_like", 3, 8, tmp_path, image_size=32)
    assert pool.images.any() and len(pool) == 8
    np.save(stem.with_suffix(".npy"), np.zeros((4, 32, 32, 3), np.uint8))
    with pytest.raises(DataError, match="expected 8"):
        pretrain_pool("coco_like", 3, 8, tmp_path, image_size=32)


def test_caption_tokens_are_cut_after_the_longest_caption_and_encode_as_open_clip():
    captions = ["a photo of a boat, two fish and a cloud.", "a sun.", "an image of an umbrella."]
    tokens = caption_tokens(captions)
    full = open_clip.tokenize(captions)
    assert tokens.shape[1] == int((full != 0).sum(1).max()) < 77
    model = tiny_clip().eval()
    with torch.no_grad():
        torch.testing.assert_close(encode_text_prefix(model, tokens), model.encode_text(full, normalize=True),
                                   atol=1e-5, rtol=1e-5)


def test_a_short_training_run_lowers_the_contrastive_loss(small_pool):
    model = tiny_clip()
    held_out = PretrainPool(small_pool.images[:48], small_pool.captions[:48])
    tokens = caption_tokens(held_out.captions)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    images = (torch.from_numpy(np.array(held_out.images)).permute(0, 3, 1, 2).float() / 255 - mean) / std

    def loss() -> float:
        with torch.no_grad():
            return float(clip_loss(model.encode_image(images, normalize=True), encode_text_prefix(model, tokens),
                                   torch.tensor(10.0)))

    before = loss()
    cfg = ToyClipTrainConfig(steps=30, batch_size=48, lr=2e-3, warmup_steps=5, pool_scenes=96, log_every=10,
                             checkpoint_every=10, data_seed=3)
    threads = torch.get_num_threads()
    try:
        result = train_toy_clip(cfg, small_pool, model=model)
    finally:
        torch.set_num_threads(threads)
    assert len(result.losses) == 3 and result.final_loss < result.first_loss
    assert loss() < before - 0.2


def test_an_interrupted_build_resumes_to_the_same_weights(small_pool, tmp_path):
    """The batches and augmentation depend only on the step, so 4 + 2 steps equal 6 steps,
    across the switch from half to full input size."""
    settings = dict(steps=6, batch_size=16, warmup_steps=2, pool_scenes=96, low_res_steps=3, log_every=1,
                    checkpoint_every=2, data_seed=3)
    threads = torch.get_num_threads()
    try:
        straight = train_toy_clip(ToyClipTrainConfig(**settings), small_pool, model=tiny_clip(resnet=True))
        cut = ToyClipTrainConfig(**settings)
        train_toy_clip(cut, small_pool, model=tiny_clip(resnet=True), work_dir=tmp_path,
                               progress=_stop_after(4))
    except _Stop:
        pass
    finally:
        torch.set_num_threads(threads)
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    assert state["step"] == 4
    try:
        resumed = train_toy_clip(ToyClipTrainConfig(**settings), small_pool, model=tiny_clip(resnet=True),
                                 work_dir=tmp_path)
    finally:
        torch.set_num_threads(threads)
    assert image_grid_size(resumed.model) == 64
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)
    assert resumed.losses == pytest.approx(straight.losses, rel=1e-5)
    with pytest.raises(ConfigError, match="another config"):
        train_toy_clip(ToyClipTrainConfig(**{**settings, "lr": 1e-3}), small_pool, model=tiny_clip(resnet=True),
                       work_dir=tmp_path)


class _Stop(Exception):
    pass


def _stop_after(steps):
    def progress(step, loss):
        if step + 1 == steps:
            raise _Stop

    return progress


def test_input_size_switch_interpolates_the_pool_embedding_and_hands_the_optimizer_the_new_one():
    model = tiny_clip(resnet=True)
    pool = model.visual.attnpool
    original = pool.positional_embedding.detach().clone()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    set_input_size(model, 32, optimizer)
    assert image_grid_size(model) == 32 and pool.positional_embedding.shape == (2, original.shape[1])
    torch.testing.assert_close(pool.positional_embedding.detach(), resize_grid_embedding(original, (1, 1)))
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert id(pool.positional_embedding) in held
    model.encode_image(torch.zeros(2, 3, 32, 32)).sum().backward()  # autograd follows the new shape
    optimizer.step()
    with pytest.raises(ConfigError, match="multiple"):
        set_input_size(model, 40)


def test_toy_specs_name_shipped_configs():
    assert set(TOY_MODELS) == {"toy", "toy-vit", "toy-rn"}
    for tower, spec in TOYS.items():
        config = json.loads(spec.config_path.read_text())
        assert config["quick_gelu"] is False and config["text_cfg"]["vocab_size"] == 49408
        model = new_toy_model(tower)
        assert image_grid_size(model) == config["vision_cfg"]["image_size"]
        assert TOY_MODELS[f"toy-{tower}"] == spec.model_name
    assert re.fullmatch(r"clipml-lab-\w+", TOY_MODELS["toy"])


@pytest.mark.parametrize("tower", sorted(TOYS))
def test_shipped_toys_are_small_fp16_and_load_as_fp32_with_their_build_record(tower):
    spec = TOYS[tower]
    stored = load_file(str(spec.weights_path))
    assert {tensor.dtype for tensor in stored.values()} == {torch.float16}
    backbone = load_backbone(f"toy-{tower}")
    state = backbone.model.state_dict()
    assert set(stored) == set(state)
    for name, tensor in stored.items():
        if "positional_embedding" not in name or tower == "vit":
            assert torch.equal(state[name], tensor.float()), name
    record = json.loads(spec.metadata_path.read_text())
    assert record["model_name"] == spec.model_name and record["train_data"]["stream"] == "pretrain"
    for preset in ("coco_like", "voc_like"):
        numbers = record["evaluation"][preset]
        assert numbers["zero_shot_global_map"] > numbers["chance"] + 0.2  # far above chance
        assert numbers["linear_probe_map"] > numbers["zero_shot_global_map"] + 0.1  # room to learn
    assert backbone.identity["weights"].startswith("toy:")


def test_all_shipped_weights_fit_the_budget():
    assert sum(spec.weights_path.stat().st_size for spec in TOYS.values()) <= 25_000_000
