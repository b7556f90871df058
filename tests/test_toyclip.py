import json
import re

import numpy as np
import open_clip
import pytest
import torch
from safetensors.torch import load_file

from clipml.lab.world import SYNTHETIC_CLASSES, SceneGenerator
from clipml.lab.toyclip import (
    TOY_CONFIG_PATH,
    TOY_METADATA_PATH,
    TOY_MODEL_NAME,
    TOY_WEIGHTS_PATH,
    ToyClipTrainConfig,
    _batch,
    clip_loss,
    encode_text_prefix,
    images_to_tensor,
    partial_caption,
    register_toy_config,
    train_toy_clip,
    zero_shot_map,
    zero_shot_scores,
)


@pytest.fixture(scope="module")
def shipped():
    """The shipped weights, loaded exactly the way the backbone loader does."""
    open_clip.add_model_config(TOY_CONFIG_PATH)
    model = open_clip.create_model(TOY_MODEL_NAME, pretrained=str(TOY_WEIGHTS_PATH), require_pretrained=True)
    return model.eval()


def test_shipped_weights_are_small_fp16_and_load_as_fp32(shipped):
    assert TOY_WEIGHTS_PATH.stat().st_size <= 8_000_000
    stored = load_file(str(TOY_WEIGHTS_PATH))
    assert {tensor.dtype for tensor in stored.values()} == {torch.float16}
    state = shipped.state_dict()
    assert set(stored) == set(state)
    for name, tensor in stored.items():
        assert state[name].dtype == torch.float32
        assert torch.equal(state[name], tensor.float()), name
    config = json.loads(TOY_CONFIG_PATH.read_text())
    assert config["quick_gelu"] is False and config["text_cfg"]["vocab_size"] == 49408
    assert config["text_cfg"]["context_length"] == 77
    metadata = json.loads(TOY_METADATA_PATH.read_text())
    assert metadata["model_name"] == TOY_MODEL_NAME
    assert metadata["zero_shot"]["global_map"] > metadata["zero_shot"]["chance"] + 0.25


def test_shipped_model_has_an_8x8_dense_map(shipped):
    images = torch.zeros(2, 3, 64, 64)
    shipped.visual.output_tokens = True
    try:
        pooled, tokens = shipped.visual(images)
    finally:
        shipped.visual.output_tokens = False
    assert tokens.shape[:2] == (2, 64)
    assert (tokens @ shipped.visual.proj).shape == (2, 64, pooled.shape[-1])
    assert torch.allclose(pooled, shipped.encode_image(images), atol=1e-6)


def test_shipped_model_zero_shot_is_far_above_chance(shipped):
    result = zero_shot_map(shipped, num_images=200, seed=11, split="test")
    assert result["global_map"] > result["chance"] + 0.25, result


def test_zero_shot_scores_match_open_clip_encoders(shipped):
    """Independent check of the global path: plain open_clip encode_image / encode_text cosines."""
    scenes = SceneGenerator(3, stream="test")
    images = images_to_tensor([scenes.render(i)[0] for i in range(4)])
    scores = zero_shot_scores(shipped, images, SYNTHETIC_CLASSES[:5])
    with torch.no_grad():
        text = shipped.encode_text(open_clip.tokenize([f"a photo of a {c}." for c in SYNTHETIC_CLASSES[:5]]), normalize=True)
        expected = shipped.encode_image(images, normalize=True) @ text.t()
    np.testing.assert_allclose(scores["global"], expected.numpy(), atol=1e-5)
    assert scores["dense"].shape == (4, 5) and np.all(np.abs(scores["dense"]) <= 1 + 1e-5)


def test_short_context_text_encoding_equals_open_clip():
    register_toy_config()
    torch.manual_seed(0)
    model = open_clip.create_model(TOY_MODEL_NAME).eval()
    tokens = open_clip.tokenize(["a photo of a boat, a fish and a cloud.", "a sun.", "an image of an umbrella."])
    with torch.no_grad():
        short = encode_text_prefix(model, tokens[:, :24])
        full = model.encode_text(tokens, normalize=True)
    torch.testing.assert_close(short, full, atol=1e-5, rtol=1e-5)


def test_partial_captions_name_a_nonempty_subset_of_the_scene():
    generator = SceneGenerator(0, stream="pretrain")
    rng = np.random.default_rng(0)
    shorter = 0
    for index in range(40):
        scene = generator.scene(index)
        drawn = {placed.name for placed in scene.objects}
        caption = partial_caption(scene, rng)
        named = {name for name in SYNTHETIC_CLASSES if re.search(rf"\b{name}\b", caption)}
        assert named and named <= drawn, (caption, drawn)
        shorter += len(named) < len(drawn)
    assert shorter > 5


def test_a_short_training_run_lowers_the_contrastive_loss():
    torch.manual_seed(0)
    model = open_clip.CLIP(
        embed_dim=32,
        vision_cfg={"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "patch_size": 8},
        text_cfg={"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    )
    held_out = SceneGenerator(0, image_size=32, stream="val")
    pixels, tokens = _batch(held_out, 0, 48, 24)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    images = (pixels - mean) / std

    def held_out_loss() -> float:
        with torch.no_grad():
            image = model.encode_image(images, normalize=True)
            return float(clip_loss(image, encode_text_prefix(model, tokens), torch.tensor(10.0)))

    before = held_out_loss()
    cfg = ToyClipTrainConfig(steps=40, batch_size=48, lr=2e-3, warmup_steps=5, image_size=32,
                             train_context_length=24, log_every=10, threads=1)
    threads = torch.get_num_threads()
    try:
        result = train_toy_clip(cfg, model=model)
    finally:
        torch.set_num_threads(threads)
    after = held_out_loss()
    assert len(result.losses) == 4 and result.final_loss < result.first_loss
    assert after < before - 0.2, (before, after)
