"""The frozen CLIP adapters against each library's own encoders."""

import pytest
import torch
import torch.nn.functional as F

from clipml.backbones import BackboneConfig, load_backbone
from clipml.backbones.base import trainable_parameters
from clipml.errors import BackboneError
from conftest import TINY_SPECS, tiny_backbone

FAMILIES = list(TINY_SPECS)
PROMPTS = ["a photo of a dog.", "a photo of a dining table and a chair.", "x"]


def library_text(backbone, ids):
    if backbone.identity["library"] == "open_clip":
        return backbone.model.encode_text(ids)
    return backbone.model.get_text_features(input_ids=ids).pooler_output


def library_image(backbone, images):
    if backbone.identity["library"] == "open_clip":
        return backbone.model.encode_image(images)
    return backbone.model.get_image_features(pixel_values=images).pooler_output


def images_for(backbone, n=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, backbone.image_size, backbone.image_size, generator=generator)


@pytest.mark.parametrize("family", FAMILIES)
def test_text_from_embeddings_equals_library_encode_text(tiny_backbones, family):
    backbone = tiny_backbones[family]
    ids = backbone.tokenize(PROMPTS)
    with torch.no_grad():
        ours = backbone.encode_embeddings(backbone.token_embedding(ids), ids)
        theirs = library_text(backbone, ids)
    assert ours.shape == (len(PROMPTS), backbone.embed_dim)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_text_is_causal_and_truncation_is_exact(tiny_backbones, family):
    """Tokens after the end token cannot change the feature: fails without the causal mask."""
    backbone = tiny_backbones[family]
    ids = backbone.tokenize(PROMPTS)
    with torch.no_grad():
        embeddings = backbone.token_embedding(ids)
        full = backbone.encode_embeddings(embeddings, ids)
        noisy = embeddings.clone()
        end = backbone.pooled_positions(ids)  # the contract's pooled token (CLIP: the end token)
        assert backbone.truncatable and torch.equal(backbone.text_lengths(ids), end + 1)
        for row, position in enumerate(end.tolist()):
            noisy[row, position + 1 :] += torch.randn_like(noisy[row, position + 1 :])
        assert torch.allclose(backbone.encode_embeddings(noisy, ids), full, atol=1e-5)
        length = int(end.max()) + 1
        assert backbone.text_ids(PROMPTS).shape == (len(PROMPTS), length)
        truncated = backbone.encode_embeddings(embeddings[:, :length], ids[:, :length])
    torch.testing.assert_close(truncated, full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_global_feature_equals_library_encode_image(tiny_backbones, family):
    backbone = tiny_backbones[family]
    images = images_for(backbone)
    with torch.no_grad():
        dense = backbone.encode_dense(images)
        theirs = library_image(backbone, images)
    torch.testing.assert_close(dense.pooled, theirs, rtol=1e-5, atol=1e-5)
    h, w = dense.grid
    assert dense.tokens.shape == (2, h * w, backbone.embed_dim)


def test_open_clip_vit_dense_tokens_equal_library_token_output(tiny_backbones):
    backbone = tiny_backbones["open_clip_vit"]
    visual = backbone.model.visual
    images = images_for(backbone)
    visual.output_tokens = True
    try:
        with torch.no_grad():
            _, tokens = visual(images)
            dense = backbone.encode_dense(images)
    finally:
        visual.output_tokens = False
    torch.testing.assert_close(dense.tokens, tokens @ visual.proj, rtol=1e-5, atol=1e-5)


def test_hf_dense_tokens_equal_library_hidden_states(tiny_backbones):
    backbone = tiny_backbones["hf_vit"]
    model = backbone.model
    images = images_for(backbone)
    with torch.no_grad():
        hidden = model.vision_model(pixel_values=images).last_hidden_state
        expected = model.visual_projection(model.vision_model.post_layernorm(hidden[:, 1:]))
        dense = backbone.encode_dense(images)
    torch.testing.assert_close(dense.tokens, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("trained", [False, True], ids=["random", "trained-toy-rn"])
def test_resnet_pool_is_attention_mixture_of_dense_tokens(trained):
    """METHODS §1: pooled = sum over heads of c_proj_h(sum_j A_h[0, j] v_j^h) + b, on random
    weights and on the lab's trained toy ResNet."""
    backbone = load_backbone("toy-rn") if trained else tiny_backbone("open_clip_rn", image_size=128)
    pool = backbone.model.visual.attnpool
    images = images_for(backbone)
    with torch.no_grad():
        dense = backbone.encode_dense(images)
        feature_map = backbone.resnet_feature_map(images)
        x = feature_map.flatten(2).permute(2, 0, 1)
        x = torch.cat([x.mean(dim=0, keepdim=True), x]) + pool.positional_embedding[:, None]
        _, weights = F.multi_head_attention_forward(
            x, x, x, x.shape[-1], pool.num_heads,
            q_proj_weight=pool.q_proj.weight, k_proj_weight=pool.k_proj.weight,
            v_proj_weight=pool.v_proj.weight, in_proj_weight=None,
            in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]),
            bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0,
            out_proj_weight=pool.c_proj.weight, out_proj_bias=pool.c_proj.bias,
            use_separate_proj_weight=True, need_weights=True, average_attn_weights=False,
        )
        attention = weights[:, :, 0, 1:]  # [B, heads, N]: the query is the mean token
        values = pool.v_proj(x[1:].transpose(0, 1))  # [B, N, C] for the spatial locations
        # The dense tokens are exactly c_proj of these values.
        torch.testing.assert_close(dense.tokens, pool.c_proj(values), rtol=1e-5, atol=1e-5)
        mean_value = pool.v_proj(x[0])  # [B, C]
        head = values.shape[-1] // pool.num_heads
        mixture = torch.zeros_like(values[:, 0])
        for h in range(pool.num_heads):
            part = slice(h * head, (h + 1) * head)
            mixed = weights[:, h, 0, 0, None] * mean_value[:, part] + torch.einsum(
                "bn,bnc->bc", attention[:, h], values[:, :, part]
            )
            mixture[:, part] = mixed
        expected = F.linear(mixture, pool.c_proj.weight, pool.c_proj.bias)
    torch.testing.assert_close(dense.pooled, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("positional", [True, False])
def test_attention_pool_mean_token_is_the_pools_own(positional):
    """DualCoOp's extra token: the pool's mean token through v_proj and c_proj, computed from the
    dense tokens alone, equals the pool's own value path of that token (with and without the
    pool's positional embedding, TaI-DPT's image features)."""
    backbone = load_backbone(BackboneConfig("open_clip:clipml-tiny-rn", image_size=128, allow_random=True,
                                            attnpool_positional=positional))
    pool = backbone.model.visual.attnpool
    images = images_for(backbone)
    with torch.no_grad():
        dense = backbone.encode_dense(images)
        x = backbone.resnet_feature_map(images).flatten(2).transpose(1, 2)  # [B, N, C]
        mean = x.mean(dim=1)
        if positional:
            mean = mean + pool.positional_embedding[0]
        expected = pool.c_proj(pool.v_proj(mean))
        torch.testing.assert_close(backbone.attention_pool_mean_token(dense.tokens), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "family,size,grid",
    [("open_clip_vit", 64, (8, 8)), ("open_clip_rn", 128, (4, 4)), ("hf_vit", 64, (8, 8))],
)
def test_interpolated_resolution(family, size, grid):
    backbone = tiny_backbone(family, image_size=size)
    images = images_for(backbone)
    with torch.no_grad():
        dense = backbone.encode_dense(images)
        theirs = library_image(backbone, images)
    assert backbone.image_size == size and dense.grid == grid
    assert dense.tokens.shape == (2, grid[0] * grid[1], backbone.embed_dim)
    torch.testing.assert_close(dense.pooled, theirs, rtol=1e-5, atol=1e-5)


def test_interpolation_keeps_the_native_embedding_and_resizes_smoothly():
    native = tiny_backbone("open_clip_vit", seed=3)
    doubled = tiny_backbone("open_clip_vit", image_size=64, seed=3)
    old = native.model.visual.positional_embedding
    new = doubled.model.visual.positional_embedding
    assert new.shape == (1 + 64, old.shape[1])
    torch.testing.assert_close(new[0], old[0])  # the class position is untouched
    # Each 2x2 block of the new grid averages close to the old cell it came from.
    old_grid = old[1:].reshape(4, 4, -1)
    new_grid = new[1:].reshape(8, 8, -1)
    pooled = new_grid.reshape(4, 2, 4, 2, -1).mean(dim=(1, 3))
    assert (pooled - old_grid).abs().mean() < 0.5 * old_grid.abs().mean()


def test_antialiased_resize_reproduces_open_clips_force_image_size(tmp_path):
    """backbone.pos_embed_resize=bicubic_antialias is open_clip's own resize (create_model with
    force_image_size and a weights file); the default plain bicubic is not (Pillow's kernel differs)."""
    import open_clip
    from safetensors.torch import save_file

    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_backbone("open_clip_vit", seed=7).model.state_dict().items()},
              str(path))
    theirs = open_clip.create_model("clipml-tiny-vit", pretrained=str(path), force_image_size=96).eval()
    ours = load_backbone(BackboneConfig(f"open_clip:clipml-tiny-vit@{path}", image_size=96,
                                        pos_embed_resize="bicubic_antialias"))
    plain = load_backbone(BackboneConfig(f"open_clip:clipml-tiny-vit@{path}", image_size=96))
    reference = theirs.visual.positional_embedding
    assert torch.equal(ours.model.visual.positional_embedding, reference)
    assert not torch.allclose(plain.model.visual.positional_embedding, reference, rtol=1e-4, atol=1e-5)
    images = images_for(ours)
    with torch.no_grad():
        torch.testing.assert_close(ours.encode_image(images), theirs.encode_image(images), rtol=1e-5, atol=1e-6)
    # the kernel is part of the identity (feature caches, checkpoints) only where it changes something
    assert ours.identity["pos_embed_resize"] == "bicubic_antialias" and "pos_embed_resize" not in plain.identity
    native = load_backbone(BackboneConfig(f"open_clip:clipml-tiny-vit@{path}", pos_embed_resize="bicubic_antialias"))
    assert "pos_embed_resize" not in native.identity
    with pytest.raises(BackboneError, match="pos_embed_resize must be one of"):
        load_backbone(BackboneConfig(f"open_clip:clipml-tiny-vit@{path}", image_size=96, pos_embed_resize="nearest"))


@pytest.mark.parametrize("spec,size", [("open_clip:clipml-tiny-vit", 36), ("open_clip:clipml-tiny-rn", 100)])
def test_image_size_must_fit_the_stride(spec, size):
    with pytest.raises(BackboneError, match="multiple of"):
        load_backbone(BackboneConfig(spec, image_size=size, allow_random=True))


@pytest.mark.parametrize("family", FAMILIES)
def test_frozen_no_gradient_reaches_clip(tiny_backbones, family):
    backbone = tiny_backbones[family]
    assert len(trainable_parameters(backbone)) == 0
    assert sum(p.numel() for p in backbone.parameters() if p.requires_grad) == 0
    backbone.train()
    assert not any(module.training for module in backbone.modules())
    ids = backbone.tokenize(PROMPTS)
    prompt = backbone.token_embedding(ids).detach().requires_grad_(True)
    images = images_for(backbone).requires_grad_(True)
    text = backbone.encode_embeddings(prompt, ids)
    dense = backbone.encode_dense(images)
    loss = (dense.tokens.mean(1) @ text.T).sum() + dense.pooled.sum()
    loss.backward()
    assert prompt.grad is not None and prompt.grad.abs().sum() > 0  # gradient reaches prompts
    assert all(p.grad is None for p in backbone.parameters())


# Weights and errors --------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".bin"])
def test_local_weight_file_loads_exactly(tmp_path, suffix):
    source = tiny_backbone("open_clip_vit", seed=7)
    state = source.model.state_dict()
    path = tmp_path / f"tiny{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    loaded = load_backbone(f"open_clip:clipml-tiny-vit@{path}")
    images = images_for(loaded)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_image(images), source.encode_image(images))
        torch.testing.assert_close(loaded.encode_text(PROMPTS), source.encode_text(PROMPTS))
    assert loaded.identity["weights"].startswith(f"file:tiny{suffix}:")


def test_hf_folder_round_trip(tmp_path):
    source = tiny_backbone("hf_vit", seed=5)
    source.model.save_pretrained(tmp_path / "tiny-hf")
    loaded = load_backbone(f"hf:{tmp_path / 'tiny-hf'}")
    images = images_for(loaded)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_image(images), source.encode_image(images))
        torch.testing.assert_close(loaded.encode_text(PROMPTS), source.encode_text(PROMPTS))


def test_random_weights_refused_unless_asked():
    with pytest.raises(BackboneError, match="random weights"):
        load_backbone("open_clip:clipml-tiny-vit")
    with pytest.raises(BackboneError, match="allow_random"):
        load_backbone("hf:clipml-tiny-hf")


def test_unknown_model_name_suggests():
    with pytest.raises(BackboneError, match="Did you mean.*RN101"):
        load_backbone("open_clip:RN10l@openai")


def test_bad_spec():
    with pytest.raises(BackboneError, match="unknown backbone spec"):
        load_backbone("clip-rn101")


def test_missing_weight_file(tmp_path):
    with pytest.raises(BackboneError, match="weights file not found"):
        load_backbone(f"open_clip:clipml-tiny-vit@{tmp_path / 'nope.safetensors'}")
    with pytest.raises(BackboneError, match="folder not found"):
        load_backbone(f"hf:{tmp_path / 'no-folder'}")


def test_weight_file_of_another_architecture(tmp_path):
    path = tmp_path / "vit.pt"
    torch.save(tiny_backbone("open_clip_vit").model.state_dict(), path)
    with pytest.raises(BackboneError, match="does not fit open_clip:clipml-tiny-rn"):
        load_backbone(f"open_clip:clipml-tiny-rn@{path}")


def test_hub_weights_unavailable_offline(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BackboneError, match=r"open_clip:RN50@/path/to/weights"):
        load_backbone("open_clip:RN50@openai")
    with pytest.raises(BackboneError, match=r"hf:/path/to/folder"):
        load_backbone("hf:openai/clip-vit-base-patch16")
