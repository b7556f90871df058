"""Every tower resizes images with its library's kernel; CLIP towers keep clipml's bicubic pixels."""

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from clipml.backbones import BackboneConfig, load_backbone, register_test_models
from clipml.backbones.open_clip import OpenCLIPBackbone, _preprocess_of_tags, create_open_clip
from clipml.data.transforms import eval_transform, train_transform, tower_eval_transform, tower_train_transform
from clipml.engine.cache import cache_key, key_digest
from clipml.engine.checkpoint import check_backbone
from clipml.errors import ConfigError
from clipml.lab.tiny_siglip import write_tiny_siglip
from clipml.lab.world import synthetic_split

GOLDEN = Path(__file__).parent / "golden" / "clip_resize.npz"  # main f8f5090's transforms, before this change


def golden_image() -> Image.Image:
    """The fixed 100 x 75 image the golden outputs were computed on."""
    yy, xx = np.mgrid[0:75, 0:100]
    return Image.fromarray(np.stack([(xx * 7 + yy * 3) % 256, (yy * 11) % 256, (xx * yy) % 256], -1).astype(np.uint8))


def open_clip_tower(tiny: str, tag_model: str) -> OpenCLIPBackbone:
    """A tiny random open_clip tower given the preprocessing of a real model's pretrained tags."""
    register_test_models()
    model, _ = create_open_clip(tiny, None, allow_random=True)
    _preprocess_of_tags(model, tag_model)
    return OpenCLIPBackbone(model, tiny, "random", BackboneConfig())


@pytest.fixture(scope="module")
def bilinear_towers(tmp_path_factory):
    naflex = write_tiny_siglip(tmp_path_factory.mktemp("naflex") / "tiny-siglip2", "siglip2")
    return {"PE-Core": open_clip_tower("clipml-tiny-pe-core", "PE-Core-B-16"),
            "MobileCLIP2-S0": open_clip_tower("clipml-tiny-mobileclip2-s", "MobileCLIP2-S0"),
            "SigLIP 2 NaFlex": load_backbone(f"hf:{naflex}")}


@pytest.mark.parametrize("name", ["PE-Core", "MobileCLIP2-S0", "SigLIP 2 NaFlex"])
def test_a_bilinear_tower_gets_bilinear_pixels(bilinear_towers, name):
    backbone = bilinear_towers[name]
    assert backbone.interpolation == "bilinear" and backbone.identity["interpolation"] == "bilinear"
    image, size = golden_image(), backbone.image_size
    ours = tower_eval_transform(backbone.preprocess, normalize=False)(image)
    oracle = TF.resize(TF.pil_to_tensor(image), [size, size], InterpolationMode.BILINEAR, antialias=True)
    assert torch.equal(ours, oracle)
    pil = torch.from_numpy(np.array(image.resize((size, size), Image.BILINEAR))).permute(2, 0, 1)
    assert (ours.int() - pil.int()).abs().max() <= 1  # PIL's own bilinear, to rounding
    bicubic = eval_transform(size, backbone.mean, backbone.std, normalize=False)(image)
    assert not torch.equal(ours, bicubic)


def test_training_transforms_use_the_towers_kernel(bilinear_towers):
    prep = dataclasses.replace(bilinear_towers["PE-Core"].preprocess, size=32)
    image = golden_image()
    torch.manual_seed(0)
    ours = tower_train_transform(prep, "multiscale_crop", normalize=False)(image.resize((600, 450)))
    torch.manual_seed(0)
    bicubic = train_transform(32, prep.mean, prep.std, "multiscale_crop", normalize=False)(image.resize((600, 450)))
    assert ours.shape == bicubic.shape == (3, 32, 32) and not torch.equal(ours, bicubic)


@pytest.mark.parametrize("spec", ["open_clip:clipml-tiny-vit", "open_clip:clipml-tiny-rn", "hf:clipml-tiny-hf"])
def test_clip_towers_pixels_are_unchanged(spec):
    """Bicubic, squashed to a square, antialiased: the same uint8 pixels as before towers had kernels."""
    backbone = load_backbone(BackboneConfig(spec, allow_random=True))
    assert backbone.interpolation == "bicubic" and "interpolation" not in backbone.identity
    golden, image = np.load(GOLDEN), golden_image()
    prep = dataclasses.replace(backbone.preprocess, size=32)
    np.testing.assert_array_equal(tower_eval_transform(prep, normalize=False)(image).numpy(), golden["eval"])
    for policy, extra in [("resized_crop", {}), ("multiscale_crop", dict(scale_size=64, crop_sizes=(64, 48, 40)))]:
        torch.manual_seed(0)
        pixels = train_transform(32, prep.mean, prep.std, policy, interpolation=prep.interpolation,
                                 normalize=False, **extra)(image)
        np.testing.assert_array_equal(pixels.numpy(), golden[policy])


def test_the_cache_key_and_checkpoint_tell_the_kernels_apart(caplog):
    """SigLIP 2's and PE-Core's tags agree on mean and std (0.5) and differ in the kernel alone."""
    bicubic = open_clip_tower("clipml-tiny-siglip", "ViT-B-16-SigLIP2")
    bilinear = open_clip_tower("clipml-tiny-siglip", "PE-Core-B-16")
    assert bicubic.preprocess == dataclasses.replace(bilinear.preprocess, interpolation="bicubic")
    split = synthetic_split("train", num_images=4)
    keys = [cache_key(split, backbone, 1, "resized_crop", 0) for backbone in (bicubic, bilinear)]
    assert key_digest(keys[0]) != key_digest(keys[1])
    assert keys[1]["transform"]["eval"] == "resize-bilinear-antialias"
    assert {**keys[1]["backbone"], "interpolation": None} == {**keys[0]["backbone"], "interpolation": None}
    with caplog.at_level(logging.WARNING, logger="clipml.engine.checkpoint"):
        check_backbone({"backbone": bicubic.identity}, bilinear.identity, "ckpt.safetensors")
    assert "learned on images resized bicubic, used with bilinear" in caplog.text


def test_a_kernel_tensors_cannot_apply_is_one_error_naming_it():
    with pytest.raises(ConfigError, match="kernel 'lanczos'.*one of"):
        eval_transform(32, (0.5,) * 3, (0.5,) * 3, interpolation="lanczos")
