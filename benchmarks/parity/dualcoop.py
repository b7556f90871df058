"""clipml's `dualcoop` method against DualCoOp's own code (sunxm2357/DualCoOp).

Run from the clipml checkout root:
    python <this folder>/dualcoop.py --ref <DualCoOp checkout or fetched git dir> [--dassl <Dassl.pytorch folder>]

What runs on the reference side (imported from --ref, not re-typed): clip/model.py
(`build_model_conv_proj`, `ModifiedResNet_conv_proj`, `AttentionConv`), models/dualcoop.py
(`MLCPromptLearner`, `TextEncoder`, `DualCoop`), utils/asymmetric_loss.py (`AsymmetricLoss`),
utils/helper.py (`mAP`), utils/validations.py's F1 arithmetic (copied: it is inline in a data
loop), dataloaders/coco_detection.py + pascal_voc.py (`CocoDetection`, `voc2007`: label and mask
generation, on a small fake COCO / VOC folder), and with --dassl, Dassl's `build_lr_scheduler`.

A tiny ModifiedResNet CLIP (random weights, rounded to fp16 as DualCoOp's loader stores them) is
loaded into both DualCoOp's CLIP class and open_clip (clipml's backbone); both sides get the same
contexts, images, labels and unknown mask. Prints one PASS/FAIL line per check and a summary.
"""
from __future__ import annotations

import copy
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as pc  # noqa: E402

NEEDED = ["models/dualcoop.py", "clip/", "utils/asymmetric_loss.py", "utils/helper.py", "utils/validations.py",
          "dataloaders/coco_detection.py", "dataloaders/pascal_voc.py", "dataloaders/helper.py",
          "configs/models/rn101_ep50.yaml"]
CLASSES = ["person", "bicycle", "car", "dog", "traffic light"]


def load_file_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def main() -> int:
    parser = pc.base_parser(__doc__)
    parser.add_argument("--dassl", default=os.environ.get("PARITY_DASSL"),
                        help="optional, for the LR schedule check: a Dassl.pytorch folder, or a TaI-DPT checkout / "
                             "fetched git dir (its bundled Dassl.pytorch-master is used); env PARITY_DASSL")
    parser.add_argument("--n-ctx", type=int, default=4)
    args = parser.parse_args()
    work = pc.setup(args)
    ref = pc.materialize_ref(args.ref, NEEDED, work)
    report = pc.Report("DualCoOp (sunxm2357/DualCoOp) vs clipml dualcoop")

    pc.purge_modules("clip")
    with pc.on_path(ref):
        from clip import clip as ref_clip  # noqa: F401  (DualCoOp's vendored CLIP)
        import clip.model as ref_model
        ref_dc = load_file_module("ref_dualcoop", ref / "models" / "dualcoop.py")
        ref_asl = load_file_module("ref_asl", ref / "utils" / "asymmetric_loss.py")
        ref_helper = load_file_module("ref_helper", ref / "utils" / "helper.py")

    from clipml.losses import build_loss
    from clipml.model import ModelConfig, MultiLabelCLIP
    from clipml.experiment import OptimConfig
    from clipml.engine.train import build_optimizer, cosine_with_warmup
    from clipml import metrics as M

    size, n_ctx, C = 448, args.n_ctx, len(CLASSES)
    oc_model = pc.tiny_openclip(work, args.seed)
    state = pc.openai_state_dict(oc_model)

    # ---------------------------------------------------------------- both models
    cfg = pc.ns(INPUT={"SIZE": (size, size)}, USE_CUDA=False, MODEL={"BACKBONE": {"NAME": "RN101"}},
                TRAINER={"FINETUNE_BACKBONE": False, "FINETUNE_ATTN": False,
                         "COOP_MLC": {"N_CTX_POS": n_ctx, "N_CTX_NEG": n_ctx, "CSC": True, "LS": 100.0,
                                      "POSITIVE_PROMPT_INIT": "", "NEGATIVE_PROMPT_INIT": "",
                                      "ASL_GAMMA_NEG": 2, "ASL_GAMMA_POS": 1}})
    import contextlib, io
    with contextlib.redirect_stdout(io.StringIO()):
        ref_clip_model = ref_model.build_model_conv_proj(copy.deepcopy(state), cfg).float()
        ref_net = ref_dc.DualCoop(cfg, CLASSES, ref_clip_model)
    for name, p in ref_net.named_parameters():
        p.requires_grad_("prompt_learner" in name)
    ref_net.eval()

    backbone = pc.clipml_backbone(oc_model, size)
    ours = MultiLabelCLIP(backbone, CLASSES, ModelConfig(method="dualcoop", n_ctx=n_ctx))
    with torch.no_grad():
        ref_net.prompt_learner.ctx_pos.copy_(ours.prompts.positive.ctx)
        ref_net.prompt_learner.ctx_neg.copy_(ours.prompts.negative.ctx)

    # Weights after the 7x7 -> 14x14 attention-pool positional embedding resize (both sides, at load).
    report.close("parity: attention-pool positional embedding resized to 448 px (build_model_conv_proj vs "
                 "clipml resize_grid_embedding)",
                 ref_net.image_encoder.attnpool.positional_embedding,
                 backbone.model.visual.attnpool.positional_embedding, atol=1e-6, rtol=1e-6)
    # Tokenisation of the prompts.
    ref_tok = ref_net.prompt_learner.tokenized_prompts  # [neg; pos], 77 long
    ours_ids = ours.prompts.positive.ids
    report.check("parity: prompt token ids ('X'*M + ' <class>.') equal up to the end token",
                 torch.equal(ref_tok[C:, : ours_ids.shape[1]].cpu(), ours_ids.cpu())
                 and bool((ref_tok[C:, ours_ids.shape[1]:] == 0).all()))

    # ---------------------------------------------------------------- text features
    with torch.no_grad():
        prompts, tokenized = ref_net.prompt_learner()
        ref_text = ref_net.text_encoder(prompts, tokenized)  # [2C, D]: negatives then positives
        pos, neg = ours.text_features()
    report.close("parity: positive prompt text features (TextEncoder vs encode_embeddings)", ref_text[C:], pos,
                 atol=2e-5, rtol=2e-5)
    report.close("parity: negative prompt text features", ref_text[:C], neg, atol=2e-5, rtol=2e-5)

    # ---------------------------------------------------------------- dense features
    x = pc.images(2, size, seed=args.seed + 1)
    with torch.no_grad():
        ref_dense, _ = ref_net.image_encoder(x)  # [B, D, HW+1] -- DualCoOp keeps the mean token at 0
        dense = backbone.encode_dense(x)  # tokens [B, HW, D]
    report.check(f"info: DualCoOp's region aggregation runs over HW+1 = {ref_dense.shape[-1]} tokens, clipml's "
                 f"over HW = {dense.tokens.shape[1]}", ref_dense.shape[-1] == dense.tokens.shape[1] + 1,
                 note="AttentionConv.forward returns c_proj(v_proj(x)) for the mean token AND the HW locations")
    report.close("parity: per-location dense features (reference tokens 1..HW vs clipml tokens)",
                 ref_dense[:, :, 1:].transpose(1, 2), dense.tokens, atol=1e-4, rtol=1e-5)

    # ---------------------------------------------------------------- logits, loss, gradients
    g = torch.Generator().manual_seed(args.seed + 2)
    labels = torch.randint(0, 2, (2, C), generator=g)
    unknown = torch.rand(2, C, generator=g) < 0.4
    unknown[0, 0] = True
    labels_ref = torch.where(unknown, torch.full_like(labels, -1), labels)  # DualCoOp: -1 = unknown
    targets, known = (labels == 1).float(), ~unknown

    ref_crit = ref_asl.AsymmetricLoss(cfg.TRAINER.COOP_MLC.ASL_GAMMA_NEG, cfg.TRAINER.COOP_MLC.ASL_GAMMA_POS)
    ours_loss = build_loss("asl", gamma_pos=1.0, gamma_neg=2.0, clip=0.05, reduction="sum")  # configs' settings

    def ref_forward(drop_mean_token: bool):
        ref_net.zero_grad(set_to_none=True)
        if drop_mean_token:  # diagnostic: the reference with its mean token removed from the map
            original = ref_net.image_encoder.forward

            def forward(image):
                feats, attn = original(image)
                return feats[:, :, 1:], attn
            ref_net.image_encoder.forward = forward
        try:
            out = ref_net(x)  # [B, 2, C]
        finally:
            if drop_mean_token:
                del ref_net.image_encoder.forward
        loss = ref_crit(out, labels_ref.clone())
        loss.backward()
        return (out.detach(), loss.detach(), ref_net.prompt_learner.ctx_pos.grad.clone(),
                ref_net.prompt_learner.ctx_neg.grad.clone())

    ours.zero_grad(set_to_none=True)
    out = ours(x)
    loss = ours_loss(out.logits, targets, known)
    loss.backward()
    ours_grads = (ours.prompts.positive.ctx.grad.clone(), ours.prompts.negative.ctx.grad.clone())

    r_out, r_loss, r_gpos, r_gneg = ref_forward(drop_mean_token=False)
    r_margin = r_out[:, 1] - r_out[:, 0]
    with torch.no_grad():
        r_prob = torch.softmax(r_out, dim=1)[:, 1]
    report.close("parity: logits S+ - S- (DualCoop.forward as shipped vs MultiLabelCLIP.forward)",
                 r_margin, out.logits.detach(), atol=1e-3, rtol=1e-4,
                 note="reference softmax/sum include the mean token (see the diagnostic below)")
    report.close("parity: probabilities (reference softmax over (S-, S+) vs sigmoid of clipml logits)",
                 r_prob, torch.sigmoid(out.logits.detach()), atol=1e-4, rtol=1e-4)
    report.close("parity: ASL loss value, full pipeline (DualCoOp AsymmetricLoss vs clipml asl sum)", r_loss,
                 loss.detach(), atol=1e-4, rtol=1e-4)
    report.close("parity: d loss / d positive contexts, full pipeline", r_gpos, ours_grads[0], atol=1e-5, rtol=1e-3)
    report.close("parity: d loss / d negative contexts, full pipeline", r_gneg, ours_grads[1], atol=1e-5, rtol=1e-3)

    d_out, d_loss, d_gpos, d_gneg = ref_forward(drop_mean_token=True)
    report.close("diagnostic: logits equal once the reference drops its mean token", d_out[:, 1] - d_out[:, 0],
                 out.logits.detach(), atol=1e-4, rtol=1e-5)
    report.close("diagnostic: loss equal once the reference drops its mean token", d_loss, loss.detach(),
                 atol=1e-4, rtol=1e-5)
    report.close("diagnostic: d loss / d positive contexts equal once the mean token is dropped", d_gpos,
                 ours_grads[0], atol=1e-6, rtol=1e-4)
    report.close("diagnostic: d loss / d negative contexts equal once the mean token is dropped", d_gneg,
                 ours_grads[1], atol=1e-6, rtol=1e-4)

    # Attention map: reference w_half over HW+1 vs clipml over HW
    with torch.no_grad():
        ref_text_n = ref_text / ref_text.norm(dim=-1, keepdim=True)
        ref_dense_n = ref_dense / ref_dense.norm(dim=1, keepdim=True)
        ref_attn = torch.softmax(20 * F.conv1d(ref_dense_n, ref_text_n[:, :, None])[:, C:], dim=-1)
    report.check(f"info: mass the reference's attention puts on the mean token: mean {float(ref_attn[..., 0].mean()):.4f}, "
                 f"max {float(ref_attn[..., 0].max()):.4f} (uniform would be {1 / ref_attn.shape[-1]:.4f})", True)

    # ---------------------------------------------------------------- loss on identical logits
    torch.manual_seed(args.seed + 3)
    B2, C2 = 64, 16
    margin = torch.randn(B2, C2) * 6
    y2 = torch.randint(0, 2, (B2, C2))
    unk2 = torch.rand(B2, C2) < 0.3
    yref = torch.where(unk2, torch.full_like(y2, -1), y2)
    m_ref = margin.clone().requires_grad_(True)
    m_ours = margin.clone().requires_grad_(True)
    lr_ = ref_crit(torch.stack([torch.zeros_like(m_ref), m_ref], dim=1), yref.clone())
    lr_.backward()
    lo_ = ours_loss(m_ours, (y2 == 1).float(), ~unk2)
    lo_.backward()
    report.close("parity: ASL on identical logits |S+-S-| <= ~13 (value)", lr_, lo_, atol=1e-4, rtol=1e-5)
    report.close("parity: ASL on identical logits (gradient wrt logits)", m_ref.grad, m_ours.grad, atol=1e-6, rtol=1e-4)
    # A known positive far below zero: DualCoOp clamps p at eps = 1e-6 (its AsymmetricLoss default),
    # clipml's configs use partial_asl's eps = 1e-8 (no config key for eps).
    far = torch.tensor([[-16.0, -10.0, 3.0]])
    fy = torch.tensor([[1, 1, 0]])
    a = far.clone().requires_grad_(True)
    b = far.clone().requires_grad_(True)
    la = ref_crit(torch.stack([torch.zeros_like(a), a], dim=1), fy.clone())
    la.backward()
    lb = ours_loss(b, fy.float(), torch.ones_like(fy, dtype=torch.bool))
    lb.backward()
    report.close("parity: ASL for a known positive at logit -16 (eps 1e-6 in DualCoOp vs 1e-8 in clipml's config)",
                 la, lb, atol=1e-4, rtol=1e-5,
                 note=f"reference {float(la.detach()):.4f} / grad {float(a.grad[0, 0]):.3e}; clipml {float(lb.detach()):.4f} / "
                      f"grad {float(b.grad[0, 0]):.3e}")
    lb2 = build_loss("asl", gamma_pos=1.0, gamma_neg=2.0, clip=0.05, reduction="sum", eps=1e-6)
    c_ = far.clone().requires_grad_(True)
    lc = lb2(c_, fy.float(), torch.ones_like(fy, dtype=torch.bool))
    lc.backward()
    report.close("diagnostic: equal with clipml's partial_asl(eps=1e-6) (a library argument, not a config key)",
                 la, lc, atol=1e-4, rtol=1e-5)

    # ---------------------------------------------------------------- one (and three) SGD steps
    # Start both from the same contexts and use the mean-token-free reference so the gradients agree;
    # the update rule (SGD momentum 0.9, wd 5e-4, dampening 0, no Nesterov: DualCoOp train.py) is compared.
    ours2 = MultiLabelCLIP(backbone, CLASSES, ModelConfig(method="dualcoop", n_ctx=n_ctx))
    with torch.no_grad():
        ours2.prompts.positive.ctx.copy_(ours.prompts.positive.ctx)
        ours2.prompts.negative.ctx.copy_(ours.prompts.negative.ctx)
    lr = 0.002
    ref_opt = torch.optim.SGD([{"params": ref_net.prompt_learner.parameters()}], lr=lr, momentum=0.9,
                              weight_decay=5e-4, dampening=0, nesterov=False)
    our_opt = build_optimizer(OptimConfig(name="sgd", lr=lr, momentum=0.9, weight_decay=5e-4), ours2)
    for step in range(3):
        ref_forward(drop_mean_token=True)
        ref_opt.step()
        ours2.zero_grad(set_to_none=True)
        ours_loss(ours2(x).logits, targets, known).backward()
        our_opt.step()
    report.close("parity: positive contexts after 3 SGD steps (update rule; mean-token-free reference)",
                 ref_net.prompt_learner.ctx_pos, ours2.prompts.positive.ctx, atol=1e-6, rtol=1e-4)
    report.close("parity: negative contexts after 3 SGD steps", ref_net.prompt_learner.ctx_neg,
                 ours2.prompts.negative.ctx, atol=1e-6, rtol=1e-4)

    # ---------------------------------------------------------------- LR schedule (optional Dassl)
    if args.dassl:
        dassl = Path(args.dassl)
        if not (dassl / "dassl" / "optim" / "lr_scheduler.py").is_file():
            dassl = pc.materialize_ref(args.dassl, ["Dassl.pytorch-master/dassl/optim/lr_scheduler.py"],
                                       work / "dassl") / "Dassl.pytorch-master"
        lr_sched = pc.load_dassl_lr_scheduler(dassl / "dassl" / "optim" / "lr_scheduler.py")
        epochs, steps = 50, 10
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([p], lr=lr)
        sched = lr_sched.build_lr_scheduler(opt, pc.ns(LR_SCHEDULER="cosine", STEPSIZE=(-1,), GAMMA=0.1,
                                                        MAX_EPOCH=epochs, WARMUP_EPOCH=1, WARMUP_RECOUNT=True,
                                                        WARMUP_TYPE="constant", WARMUP_CONS_LR=1e-5,
                                                        WARMUP_MIN_LR=1e-5))
        ref_lrs = []
        for epoch in range(epochs):  # DualCoOp: sched.step() once, at the end of train_coop
            ref_lrs.append(opt.param_groups[0]["lr"])
            sched.step()
        p2 = torch.nn.Parameter(torch.zeros(1))
        opt2 = torch.optim.SGD([p2], lr=lr)
        ours_sched = cosine_with_warmup(opt2, int(round(1.0 * steps)), epochs * steps)
        our_lrs = []
        for epoch in range(epochs):  # clipml: per step; record the epoch's mean rate
            rates = []
            for _ in range(steps):
                rates.append(opt2.param_groups[0]["lr"])
                ours_sched.step()
            our_lrs.append(float(np.mean(rates)))
        report.close("parity: per-epoch learning rate, 50 epochs, warm-up 1 (Dassl constant 1e-5 warm-up + "
                     "per-epoch cosine vs clipml linear per-step warm-up + per-step cosine)",
                     np.array(ref_lrs), np.array(our_lrs), atol=2e-5, rtol=0,
                     note="epochs 1,2,3,26,50: ref " + ", ".join(f"{ref_lrs[i]:.2e}" for i in (0, 1, 2, 25, 49))
                     + "; clipml " + ", ".join(f"{our_lrs[i]:.2e}" for i in (0, 1, 2, 25, 49)))

    # ---------------------------------------------------------------- evaluation metrics
    rng = np.random.RandomState(args.seed + 4)
    n_img, n_cls = 300, 12
    truth = (rng.rand(n_img, n_cls) < 0.2).astype(np.int64)
    truth[:, -1] = 0  # a class without any positive in the split
    truth[0, :-1] = 1
    logits = rng.randn(n_img, n_cls) * 2 + truth * 1.5
    probs = 1 / (1 + np.exp(-logits))
    ref_map = ref_helper.mAP(truth, probs)
    report.close("parity: mAP, classes with a positive (DualCoOp utils/helper.mAP vs clipml eval.ap=raw)",
                 ref_helper.mAP(truth[:, :-1], probs[:, :-1]) / 100,
                 M.mean_average_precision(logits[:, :-1], truth[:, :-1], "raw"), atol=1e-9, rtol=1e-9)
    report.close("parity: mAP with a positive-free class in the split (reference averages its AP = 0 in)",
                 ref_map / 100, M.mean_average_precision(logits, truth, "raw"), atol=1e-9, rtol=1e-9)
    tied = np.round(probs, 1)  # heavy ties
    report.close("parity: raw mAP with tied scores (reference: numpy argsort order; clipml: ties grouped)",
                 ref_helper.mAP(truth[:, :-1], tied[:, :-1]) / 100,
                 M.mean_average_precision(tied[:, :-1], truth[:, :-1], "raw"), atol=1e-6, rtol=0)

    # DualCoOp validate(): per-class P/R/F1 at prob > thre, CF1 = mean of per-class F1s.
    pred = torch.from_numpy(probs).gt(0.5).long()
    target = torch.from_numpy(truth)
    tp = (pred + target).eq(2).sum(dim=0)
    fp = (pred - target).eq(1).sum(dim=0)
    fn = (pred - target).eq(-1).sum(dim=0)
    p_c = [float(tp[i].float() / (tp[i] + fp[i]).float()) * 100.0 if tp[i] > 0 else 0.0 for i in range(len(tp))]
    r_c = [float(tp[i].float() / (tp[i] + fn[i]).float()) * 100.0 if tp[i] > 0 else 0.0 for i in range(len(tp))]
    f_c = [2 * p_c[i] * r_c[i] / (p_c[i] + r_c[i]) if tp[i] > 0 else 0.0 for i in range(len(tp))]
    p_o = float(tp.sum().float() / (tp + fp).sum().float() * 100.0)
    r_o = float(tp.sum().float() / (tp + fn).sum().float() * 100.0)
    f_o = 2 * p_o * r_o / (p_o + r_o)
    ours_f1 = M.threshold_metrics(probs[:, :-1], truth[:, :-1])
    pred_h = torch.from_numpy(probs[:, :-1]).gt(0.5).long()
    tgt_h = torch.from_numpy(truth[:, :-1])
    tp_h = (pred_h + tgt_h).eq(2).sum(dim=0).double()
    fp_h = (pred_h - tgt_h).eq(1).sum(dim=0).double()
    fn_h = (pred_h - tgt_h).eq(-1).sum(dim=0).double()
    pc_h = torch.where(tp_h > 0, tp_h / (tp_h + fp_h), torch.zeros_like(tp_h))
    rc_h = torch.where(tp_h > 0, tp_h / (tp_h + fn_h), torch.zeros_like(tp_h))
    fc_h = torch.where(tp_h > 0, 2 * pc_h * rc_h / (pc_h + rc_h), torch.zeros_like(tp_h))
    report.close("parity: OF1 at 0.5 (DualCoOp validate vs clipml threshold_metrics)",
                 float(2 * tp_h.sum() / (2 * tp_h.sum() + fp_h.sum() + fn_h.sum())), ours_f1["OF1"],
                 atol=1e-9, rtol=1e-9)
    report.close("parity: CF1 at 0.5 (DualCoOp: mean of per-class F1; clipml: 2*CP*CR/(CP+CR), ML-GCN)",
                 float(fc_h.mean()), ours_f1["CF1"], atol=1e-9, rtol=1e-9,
                 note=f"reference F_C {float(fc_h.mean()) * 100:.2f} vs clipml CF1 {ours_f1['CF1'] * 100:.2f}")
    report.check(f"info: DualCoOp validate() on the 12-class matrix (positive-free class averaged in): "
                 f"F_C {sum(f_c) / len(f_c):.2f}, F_O {f_o:.2f}", True)

    # ---------------------------------------------------------------- masks and label rules
    mask_checks(report, ref, work, args)
    mean_token_effect(report, args)
    return report.summary()


def mean_token_effect(report, args) -> None:
    """How much DualCoOp's mean token matters with a *trained* tower: clipml's shipped toy-rn CLIP on
    the lab's COCO-like scenes, hand-crafted prompts as t+, DualCoOp's aggregation S+ over the HW
    locations (clipml) and over HW+1 with the mean token (reference formula). Info only."""
    from clipml.backbones import load_backbone
    from clipml.lab.world import SceneGenerator
    from clipml.prompts import handcrafted_text_features
    from clipml.data.transforms import eval_transform
    from clipml import metrics as M

    backbone = load_backbone("toy-rn")
    gen = SceneGenerator(seed=0, preset="coco_like", stream="test")
    n = 48
    scenes = [gen.render(i) for i in range(n)]
    tf = eval_transform(backbone.image_size, backbone.mean, backbone.std)
    x = torch.stack([tf(img) for img, _, _ in scenes])
    labels = np.stack([lab for _, lab, _ in scenes])
    text = handcrafted_text_features(backbone, gen.classes)
    pool = backbone.model.visual.attnpool
    with torch.no_grad():
        fmap = backbone.resnet_feature_map(x).flatten(2).transpose(1, 2)
        seq = torch.cat([fmap.mean(dim=1, keepdim=True), fmap], dim=1) + pool.positional_embedding
        all_tokens = pool.c_proj(pool.v_proj(seq))  # [B, HW+1, D]: token 0 = the mean token
        dense = backbone.encode_dense(x).tokens
        cos = torch.einsum("bnd,cd->bcn", F.normalize(all_tokens, dim=-1), F.normalize(text, dim=-1))
        with_mean = 20 * cos
        a1 = with_mean.softmax(-1)
        s_ref = 5 * (a1 * with_mean).sum(-1)
        a0 = with_mean[..., 1:].softmax(-1)
        s_ours = 5 * (a0 * with_mean[..., 1:]).sum(-1)
    report.close("info: toy-rn dense tokens 1..HW equal clipml encode_dense", all_tokens[:, 1:], dense,
                 atol=1e-4, rtol=1e-5)
    mass = a1[..., 0]
    top = (with_mean.argmax(-1) == 0).float().mean()
    map_ref = M.mean_average_precision(s_ref.numpy(), labels, "raw")
    map_ours = M.mean_average_precision(s_ours.numpy(), labels, "raw")
    report.check(f"info: trained toy-rn, {n} COCO-like scenes, hand-crafted t+: attention mass on the mean token "
                 f"mean {float(mass.mean()):.3f} (uniform {1 / a1.shape[-1]:.3f}), it is the peak location for "
                 f"{100 * float(top):.1f}% of (image, class); |S+ with - without| mean {float((s_ref - s_ours).abs().mean()):.3f}"
                 f" max {float((s_ref - s_ours).abs().max()):.3f}; S+ raw mAP with {100 * map_ref:.2f} vs without "
                 f"{100 * map_ours:.2f}", True)


FAKE_COCO_CODE = r"""
import sys, json, types, contextlib, io
import torch
sys.path.insert(0, sys.argv[1])
sys.modules['randaugment'] = types.SimpleNamespace(RandAugment=lambda *a, **k: (lambda x: x))  # import only
from dataloaders.coco_detection import CocoDetection
seed = torch.initial_seed()
with contextlib.redirect_stdout(io.StringIO()):
    ds = CocoDetection(sys.argv[2], 'train2014', img_size=32, partial=float(sys.argv[3]))
from dataloaders.pascal_voc import voc2007
with contextlib.redirect_stdout(io.StringIO()):
    voc = voc2007(sys.argv[4], 'trainval', img_size=32)
voc_targets = [voc[i][1][0].tolist() for i in range(len(voc))]
print(json.dumps({'ids': [int(i) for i in ds.ids], 'mask': ds.mask[:, 0].tolist(), 'initial_seed': seed,
                  'voc_classes': voc.classnames, 'voc_targets': voc_targets}))
"""


def mask_checks(report, ref: Path, work: Path, args) -> None:
    """DualCoOp's own data classes on a tiny fake COCO / VOC: which images, which order, which masks."""
    from clipml.data.coco import load_coco2014
    from clipml.data.voc import load_voc2007
    from clipml.data.partial import simulate_known

    coco_cats = [{"id": i + 1, "name": n} for i, n in enumerate(
        ["person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
         "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
         "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
         "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
         "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
         "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
         "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
         "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
         "teddy bear", "hair drier", "toothbrush"])]
    rng = np.random.RandomState(args.seed)
    n_img = 12
    images = [{"id": 100 + i, "file_name": f"img{i}.jpg", "width": 64, "height": 64} for i in range(n_img)]
    anns, aid = [], 1
    # annotations in an order that is not the images' order; image 105 has none
    for img in rng.permutation([im["id"] for im in images if im["id"] != 105]):
        for _ in range(rng.randint(1, 4)):
            anns.append({"id": aid, "image_id": int(img), "category_id": int(rng.randint(1, 81)), "iscrowd": 0,
                         "area": 100.0, "bbox": [0, 0, 10, 10], "segmentation": [[0, 0, 10, 0, 10, 10]]})
            aid += 1
    coco_root = work / "coco"
    (coco_root / "annotations").mkdir(parents=True)
    (coco_root / "train2014").mkdir()
    (coco_root / "annotations" / "instances_train2014.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": coco_cats}))
    voc_root = work / "voc"
    (voc_root / "ImageSets" / "Main").mkdir(parents=True)
    (voc_root / "Annotations").mkdir()
    voc_names = [f"{i:06d}" for i in range(8)]
    (voc_root / "ImageSets" / "Main" / "trainval.txt").write_text("\n".join(voc_names) + "\n")
    for i, n in enumerate(voc_names):
        objs = [("dog", "0"), ("cat", "1" if i % 2 else "0")]  # odd images: the cat is 'difficult'
        xml = "<annotation>" + "".join(f"<object><name>{o}</name><difficult>{d}</difficult></object>"
                                       for o, d in objs) + "</annotation>"
        (voc_root / "Annotations" / f"{n}.xml").write_text(xml)
        (voc_root / "JPEGImages").mkdir(exist_ok=True)
        Image.new("RGB", (8, 8)).save(voc_root / "JPEGImages" / f"{n}.jpg")
    p = 0.5
    out = subprocess.run([sys.executable, "-c", FAKE_COCO_CODE, str(ref), str(coco_root), str(p), str(voc_root)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        report.check("reference dataset classes ran", False, note=out.stderr.strip().splitlines()[-1])
        return
    res = json.loads(out.stdout.strip().splitlines()[-1])
    ours = load_coco2014(coco_root, "train", check_images=False)
    ours_ids = [ours.image_ids[item] for item in ours.items]
    report.check(f"parity: COCO training images and order (DualCoOp: coco.imgToAnns keys = annotated images in "
                 f"first-annotation order; clipml: JSON images order, unannotated kept) -- reference "
                 f"{len(res['ids'])} images {res['ids'][:5]}..., clipml {len(ours_ids)} {ours_ids[:5]}...",
                 res["ids"] == ours_ids)
    ref_mask = np.array(res["mask"], dtype=bool)
    known0 = simulate_known(np.zeros((len(res["ids"]), 80)), p, seed=0)
    report.check("parity: DualCoOp's COCO mask (torch.rand in a fresh, unseeded process; initial_seed "
                 f"{res['initial_seed']}) vs clipml mask_seed=0 (np.random.RandomState(0)) on the same shape",
                 bool((ref_mask == known0).all()),
                 note=f"agreement {float((ref_mask == known0).mean()):.3f} (chance ~0.5)")
    ours_voc = load_voc2007(voc_root, "trainval", difficult="ignore", check_images=False)
    ours_voc_neg = load_voc2007(voc_root, "trainval", difficult="negative", check_images=False)
    cat = ours_voc.classes.index("cat")
    ref_cat = res["voc_classes"].index("cat")
    ref_codes = sorted({int(t[ref_cat]) for t in res["voc_targets"][1::2]})
    report.check("parity: VOC difficult-only label, reference rule vs configs/_base/voc2007.yaml (difficult=ignore): "
                 f"DualCoOp voc2007 target for the odd images' difficult cat = {ref_codes} (0 = negative, "
                 f"scored as a negative in training and test); clipml ignore -> "
                 f"{sorted(set(ours_voc.labels[1::2, cat].tolist()))} (-1 = left out), negative -> "
                 f"{sorted(set(ours_voc_neg.labels[1::2, cat].tolist()))}",
                 ref_codes == sorted(set(ours_voc.labels[1::2, cat].tolist())))
    report.check("diagnostic: clipml difficult=negative reproduces DualCoOp's VOC labels",
                 ref_codes == sorted(set(ours_voc_neg.labels[1::2, cat].tolist())))


if __name__ == "__main__":
    sys.exit(main())
