"""PositiveCoOp: a learned positive prompt per class and a learned negative embedding per class
in the joint space, aggregated as DualCoOp."""

import torch

from clipml.decoupler import dualcoop_aggregate
from clipml.engine.checkpoint import load_into, model_tensors, read_prompt_checkpoint, save_prompt_checkpoint
from clipml.model import ModelConfig, MultiLabelCLIP

CLASSES = ["red", "green", "blue"]


def test_negatives_are_embeddings_and_logits_are_dualcoops_aggregation(tiny_backbones, tmp_path):
    backbone = tiny_backbones["open_clip_vit"]
    torch.manual_seed(0)
    model = MultiLabelCLIP(backbone, CLASSES, ModelConfig.of(method="positivecoop", n_ctx=4))
    assert model.prompts.negative.shape == (3, backbone.embed_dim) and model.prompts.negative.requires_grad
    calls = []
    original = backbone.encode_embeddings
    backbone.encode_embeddings = lambda *args: calls.append(args[0].shape[0]) or original(*args)
    try:
        dense = model.encode(torch.randn(2, 3, backbone.image_size, backbone.image_size))
        output = model.forward_dense(dense)
    finally:
        del backbone.encode_embeddings
    assert calls == [3]  # one text-encoder pass: the positive prompts; none for negatives
    positive = model.prompts.positive()
    want, attention = dualcoop_aggregate(dense.tokens, positive, model.prompts.negative)
    torch.testing.assert_close(output.logits, want)
    torch.testing.assert_close(output.attention, attention)
    output.logits.sum().backward()
    assert model.prompts.negative.grad.abs().sum() > 0 and model.prompts.positive.ctx.grad.abs().sum() > 0

    # the negative embeddings follow their class into another class list
    save_prompt_checkpoint(tmp_path / "p.safetensors", model, {})
    tensors, metadata = read_prompt_checkpoint(tmp_path / "p.safetensors")
    other = MultiLabelCLIP(backbone, ["blue", "red", "new"], ModelConfig.of(method="positivecoop", n_ctx=4))
    load_into(other, tensors, metadata)
    torch.testing.assert_close(other.prompts.negative[:2], model.prompts.negative[[2, 0]].detach())
    assert set(model_tensors(model)) == {"prompts.negative", *(f"prompts.positive.ctx/{c}" for c in CLASSES)}
