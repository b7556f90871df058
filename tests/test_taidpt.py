"""TaI-DPT (texts as images): the text path against the libraries' encoders, the double-grained
scores and ranking loss by hand, caption batches, checkpoints and training on the toy CLIP."""

from pathlib import Path

import numpy as np
import pytest
import torch

from clipml.backbones import TextDense, load_backbone
from clipml.config import load_config
from clipml.data.captions import CaptionSet
from clipml.decoupler import double_grained_scores
from clipml.engine.captions import CaptionSource
from clipml.engine.checkpoint import read_prompt_checkpoint, save_prompt_checkpoint
from clipml.engine.checkpoint import load_model
from clipml.engine.train import train, training_loss
from clipml.errors import ConfigError
from clipml.experiment import ExperimentConfig
from clipml.losses import build_loss, partial_ranking
from clipml.methods.taidpt import TaIDPTConfig
from clipml.model import ModelConfig, MultiLabelCLIP, TransportConfig
from conftest import TINY_SPECS

REPO = Path(__file__).resolve().parent.parent
CAPTIONS = ["a photo of a dog.", "two men riding horses on a beach at sunset, next to a bus", "x"]
CLASSES = ["dog", "horse", "bus", "dining table"]


def taidpt(backbone, **settings):
    torch.manual_seed(0)
    return MultiLabelCLIP(backbone, CLASSES, ModelConfig.of(method="taidpt", n_ctx=4, **settings))


@pytest.mark.parametrize("family", list(TINY_SPECS))
def test_global_text_feature_equals_encode_text(tiny_backbones, family):
    """The caption's global feature is exactly the backbone's encode_text, and the library's own."""
    backbone = tiny_backbones[family]
    with torch.no_grad():
        dense = backbone.encode_text_dense(CAPTIONS)
        ours = backbone.encode_text(CAPTIONS)
        ids = backbone.tokenize(CAPTIONS)
        library = (backbone.model.encode_text(ids) if backbone.identity["library"] == "open_clip"
                   else backbone.model.get_text_features(input_ids=ids).pooler_output)
    torch.testing.assert_close(dense.pooled, ours, rtol=0, atol=0)
    torch.testing.assert_close(dense.pooled, library, rtol=1e-5, atol=1e-5)
    assert isinstance(dense, TextDense) and dense.tokens.shape[:2] == dense.mask.shape
    assert dense.grid == (1, dense.tokens.shape[1])
    real = (ids != 0).sum(dim=1)  # these captions hold no token with id 0: start..end are the real tokens
    assert dense.mask.sum(dim=1).tolist() == real.tolist()
    assert dense.tokens.shape[1] == int(real.max())  # cut after the longest caption's end token


def test_toy_global_text_feature_equals_encode_text():
    backbone = load_backbone("toy")
    with torch.no_grad():
        dense = backbone.encode_text_dense(CAPTIONS)
        library = backbone.model.encode_text(backbone.tokenize(CAPTIONS))
    torch.testing.assert_close(dense.pooled, backbone.encode_text(CAPTIONS), rtol=0, atol=0)
    torch.testing.assert_close(dense.pooled, library, rtol=1e-5, atol=1e-5)


def test_token_features_equal_open_clip_token_output(tiny_backbones):
    """Per-token features = the text transformer's token outputs (after ln_final) times the projection."""
    backbone = tiny_backbones["open_clip_vit_customtext"]
    text = backbone.model.text
    ids = backbone.tokenize(CAPTIONS)
    text.output_tokens = True
    try:
        with torch.no_grad():
            _, tokens = text(ids)
            dense = backbone.encode_text_dense(CAPTIONS)
    finally:
        text.output_tokens = False
    projection = text.text_projection
    expected = projection(tokens) if isinstance(projection, torch.nn.Linear) else tokens @ projection
    length = dense.tokens.shape[1]
    mask = dense.mask
    torch.testing.assert_close(dense.tokens[mask], expected[:, :length][mask], rtol=1e-5, atol=1e-5)
    # The end token's feature is the global one.
    end = mask.sum(dim=1) - 1
    torch.testing.assert_close(dense.tokens[torch.arange(len(CAPTIONS)), end], dense.pooled, rtol=1e-5, atol=1e-5)


def test_token_features_equal_transformers_hidden_states(tiny_backbones):
    backbone = tiny_backbones["hf_vit"]
    model = backbone.model
    ids = backbone.tokenize(CAPTIONS)
    with torch.no_grad():
        hidden = model.text_model(input_ids=ids).last_hidden_state
        expected = model.text_projection(hidden)
        dense = backbone.encode_text_dense(CAPTIONS)
    length, mask = dense.tokens.shape[1], dense.mask
    torch.testing.assert_close(dense.tokens[mask], expected[:, :length][mask], rtol=1e-5, atol=1e-5)


def test_double_grained_scores_by_hand(float64):
    torch.manual_seed(0)
    B, N, D, C = 2, 5, 6, 3
    pooled, dense = torch.randn(B, D), torch.randn(B, N, D)
    t_global, t_local = torch.randn(C, D), torch.randn(C, D)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    scale, spatial = 4.0, 40.0
    glob, local, attention = double_grained_scores(pooled, dense, t_global, t_local, scale, spatial, mask)
    cos = lambda a, b: float(a @ b / (a.norm() * b.norm()))  # noqa: E731
    for b in range(B):
        for c in range(C):
            assert glob[b, c].item() == pytest.approx(scale * cos(pooled[b], t_global[c]), abs=1e-12)
            real = [j for j in range(N) if mask[b, j]]
            sims = np.array([cos(dense[b, j], t_local[c]) for j in real])
            weights = np.exp(spatial * sims - (spatial * sims).max())
            weights /= weights.sum()
            assert local[b, c].item() == pytest.approx(scale * float((weights * sims).sum()), abs=1e-12)
            assert attention[b, c, real].sum().item() == pytest.approx(1.0)
    assert attention[1, :, 3:].abs().max() == 0  # padding gets no attention


def test_taidpt_scores_images_and_texts(tiny_backbones):
    backbone = tiny_backbones["open_clip_vit"]
    model = taidpt(backbone, global_weight=0.3)
    images = torch.randn(2, 3, backbone.image_size, backbone.image_size)
    with torch.no_grad():
        out = model(images)
        dense = model.encode(images)
        t_global, t_local = model.text_features()
        glob, local, _ = double_grained_scores(dense.pooled, dense.tokens, t_global, t_local, 4.0, 40.0)
        torch.testing.assert_close(out.logits, 0.3 * glob + 0.7 * local)
        torch.testing.assert_close(out.parts[0], glob)
        assert out.attention.shape == (2, len(CLASSES), dense.tokens.shape[1])

        text = backbone.encode_text_dense(CAPTIONS)
        scored = model.forward_dense(text)
        glob, local, _ = double_grained_scores(text.pooled, text.tokens, t_global, t_local, 4.0, 50.0, text.mask)
        torch.testing.assert_close(scored.logits, 0.3 * glob + 0.7 * local)
        # What lies after a caption's end token changes nothing.
        noisy = TextDense(tokens=torch.where(text.mask[..., None], text.tokens, torch.randn_like(text.tokens)),
                          pooled=text.pooled, grid=text.grid, mask=text.mask)
        torch.testing.assert_close(model.forward_dense(noisy).logits, scored.logits, rtol=0, atol=0)


def test_ranking_loss_by_hand():
    logits = torch.tensor([[0.5, 1.0, -1.0], [3.0, 1.0, 2.0]])
    targets = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    known = torch.ones(2, 3, dtype=torch.bool)
    # image 0: pairs (0,1): 1 - 0.5 + 1 = 1.5, (0,2): 1 - 0.5 - 1 < 0 -> 0; image 1: all satisfied.
    assert partial_ranking(logits, targets, known, reduction="sum").item() == pytest.approx(1.5)
    assert partial_ranking(logits, targets, known).item() == pytest.approx(0.75)  # mean over images
    assert partial_ranking(logits, targets, known, margin=3.0, reduction="sum").item() == pytest.approx(
        (3.5 + 1.5) + (1.0 + 2.0))
    known[0, 1] = False  # an unknown entry takes part in no pair, whatever its logit
    logits[0, 1] = float("nan")
    assert partial_ranking(logits, targets, known, reduction="sum").item() == pytest.approx(0.0)


def test_ranking_loss_against_brute_force(float64):
    torch.manual_seed(1)
    logits = torch.randn(4, 5, requires_grad=True)
    targets = (torch.rand(4, 5) < 0.4).double()
    known = torch.rand(4, 5) < 0.8
    expected = sum(max(0.0, 1 - logits[b, i].item() + logits[b, j].item())
                   for b in range(4) for i in range(5) for j in range(5)
                   if known[b, i] and known[b, j] and targets[b, i] == 1 and targets[b, j] == 0)
    loss = build_loss("ranking", reduction="sum")(logits, targets, known)
    assert loss.item() == pytest.approx(expected)
    loss.backward()
    assert logits.grad[~known].abs().max() == 0


def test_training_loss_adds_the_loss_of_both_branches(tiny_backbones):
    backbone = tiny_backbones["open_clip_vit"]
    model = taidpt(backbone)
    text = backbone.encode_text_dense(CAPTIONS)
    labels = torch.tensor([[1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 1]], dtype=torch.int8)
    loss_fn = build_loss("ranking")
    total = training_loss(model, loss_fn, text, labels)
    out = model.forward_dense(text)
    targets, known = (labels == 1).float(), labels != -1
    expected = loss_fn(out.parts[0], targets, known) + loss_fn(out.parts[1], targets, known)
    torch.testing.assert_close(total, expected)
    total.backward()
    assert model.prompts.global_context.ctx.grad.abs().sum() > 0
    assert model.prompts.local_context.ctx.grad.abs().sum() > 0


def test_caption_batches(tiny_backbones):
    backbone = tiny_backbones["open_clip_vit"]
    labels = np.eye(3, 4, dtype=np.int8)
    source = CaptionSource(CaptionSet(CAPTIONS, labels, {}), backbone, batch_size=2)
    assert len(source) == 2
    seen = []
    for dense, batch_labels, index in source.batches(seed=3):
        expected = backbone.encode_text([CAPTIONS[i] for i in index])
        torch.testing.assert_close(dense.pooled, expected, rtol=1e-6, atol=1e-6)
        assert batch_labels.tolist() == labels[index.numpy()].tolist()
        seen += index.tolist()
    assert sorted(seen) == [0, 1, 2]
    assert seen == [i for _, _, index in source.batches(seed=3) for i in index.tolist()]


def test_config_errors(tiny_backbones):
    backbone = tiny_backbones["open_clip_vit"]
    with pytest.raises(ConfigError, match="global_weight"):
        taidpt(backbone, global_weight=1.5)
    with pytest.raises(ConfigError, match="taidpt does not train on images"):
        MultiLabelCLIP(backbone, CLASSES, ModelConfig.of(method="taidpt", n_ctx=4, transport=TransportConfig(enabled=True)))


def test_checkpoint_round_trip(tiny_backbones, tmp_path):
    backbone = tiny_backbones["open_clip_vit"]
    model = taidpt(backbone)
    with torch.no_grad():
        model.prompts.global_context.ctx.add_(torch.randn_like(model.prompts.global_context.ctx))
        model.prompts.local_context.ctx.add_(torch.randn_like(model.prompts.local_context.ctx))
    config = load_config(ExperimentConfig, None, [
        "backbone.spec=open_clip:clipml-tiny-vit", "backbone.allow_random=true", "model.method=taidpt", "model.n_ctx=4"])
    from clipml.config import config_to_dict

    path = save_prompt_checkpoint(tmp_path / "taidpt.safetensors", model, config_to_dict(config))
    tensors, metadata = read_prompt_checkpoint(path)
    assert set(tensors) == {"prompts.global_context.ctx", "prompts.local_context.ctx"}
    assert metadata["method"] == "taidpt"
    loaded = load_model(str(path), backbone=backbone)
    images = torch.randn(2, 3, backbone.image_size, backbone.image_size)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images).logits, model(images).logits, rtol=0, atol=0)
    # Shared contexts transfer to any class list, new classes included.
    other = load_model(str(path), classnames=["zebra", "dog"], backbone=backbone)
    torch.testing.assert_close(other.prompts.local_context.ctx, model.prompts.local_context.ctx, rtol=0, atol=0)


@pytest.mark.integration
def test_train_on_synthetic_captions_improves_on_its_start(tmp_path):
    """The toy CLIP trained on the COCO-like world's pretrain captions only (no image labels):
    the learned prompts must beat the untrained (random-context) start on validation images."""
    cfg = load_config(ExperimentConfig, REPO / "clipml" / "assets" / "demo.yaml", [
        f"output_dir={tmp_path / '{name}'}", f"data.mask_dir={tmp_path / 'masks'}", f"data.cache_dir={tmp_path / 'cache'}",
        "data.options={num_images: 300}", "data.val_fraction=0.3", "data.batch_size=128",
        "data.captions.source=synthetic", "data.captions.options={num_captions: 600}", "backbone.spec=toy",
        "model.method=taidpt", "model.ctx_init=null", "model.n_ctx=8",
        "loss.name=ranking", "loss.reduction=mean", "optim.epochs=3",
    ])
    summary = train(cfg, resume=False)
    losses = [record["loss"] for record in summary["history"]]
    assert losses[-1] < losses[0]
    assert summary["val"]["mAP"] > summary["initial_val"]["mAP"] + 5
    captions = summary["captions"]
    # The world's captions never name an absent class; they leave small objects out (lower recall).
    assert captions["with_label"] == 600 and captions["precision"] == 1.0 and 0.5 < captions["recall"] < 1.0
    classes = len(read_prompt_checkpoint(Path(cfg.run_dir()) / "prompts.safetensors")[1]["classes"])
    assert captions["training_captions"] == 600 + 16 * classes  # plus one prompt per template and class


def test_taidpt_needs_captions(tmp_path):
    cfg = load_config(ExperimentConfig, None, [
        "backbone.spec=open_clip:clipml-tiny-vit", "backbone.image_size=32", "backbone.allow_random=true",
        "data.options={num_images: 40}", f"data.mask_dir={tmp_path / 'masks'}", "data.workers=0",
        "data.val_fraction=0.25", "model.method=taidpt", "model.n_ctx=2", f"output_dir={tmp_path / '{name}'}"])
    with pytest.raises(ConfigError, match="data.captions.source is not set"):
        train(cfg, resume=False)
