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
    parser.add_argument("--config", default="configs/coco2014/dualcoop.yaml",
                        help="the published-setting config whose options clipml runs under (model.dualcoop, loss, "
                             "optim, data.options, n_ctx excepted: --n-ctx)")
    parser.add_argument("--voc-config", default="configs/voc2007/dualcoop.yaml",
                        help="the VOC config whose data.options the VOC label check reads")
    parser.add_argument("--write-golden", metavar="PATH",
                        help="also write the reference's outputs on the fixed inputs to PATH (.npz) for "
                             "tests/test_parity_dualcoop.py")
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

    import dataclasses
    from clipml.losses import build_loss
    from clipml.model import MultiLabelCLIP
    from clipml.experiment import load_experiment
    from clipml.engine.train import build_optimizer, build_scheduler, build_training_loss
    from clipml import metrics as M

    exp = load_experiment(args.config)
    if exp.model.method != "dualcoop":
        raise SystemExit(f"--config {args.config}: model.method is {exp.model.method!r}, not dualcoop")
    model_cfg = dataclasses.replace(exp.model, n_ctx=args.n_ctx)
    golden = {}
    size, n_ctx, C = 448, args.n_ctx, len(CLASSES)
    print(f"info: clipml runs under {args.config}: model.dualcoop={dataclasses.asdict(exp.model.method_options)}, "
          f"loss={dataclasses.asdict(exp.loss)}, optim.schedule={exp.optim.schedule}, data.options={exp.data.options}")
    oc_model = pc.tiny_openclip(work, args.seed)
    state = pc.openai_state_dict(oc_model)

    # ---------------------------------------------------------------- both models
    def ref_cfg(csc: bool):
        return pc.ns(INPUT={"SIZE": (size, size)}, USE_CUDA=False, MODEL={"BACKBONE": {"NAME": "RN101"}},
                     TRAINER={"FINETUNE_BACKBONE": False, "FINETUNE_ATTN": False,
                              "COOP_MLC": {"N_CTX_POS": n_ctx, "N_CTX_NEG": n_ctx, "CSC": csc, "LS": 100.0,
                                           "POSITIVE_PROMPT_INIT": "", "NEGATIVE_PROMPT_INIT": "",
                                           "ASL_GAMMA_NEG": 2, "ASL_GAMMA_POS": 1}})

    cfg = ref_cfg(model_cfg.method_options.class_specific)
    import contextlib, io

    def build_ref(cfg):
        with contextlib.redirect_stdout(io.StringIO()):
            ref_clip_model = ref_model.build_model_conv_proj(copy.deepcopy(state), cfg).float()
            net = ref_dc.DualCoop(cfg, CLASSES, ref_clip_model)
        for name, p in net.named_parameters():
            p.requires_grad_("prompt_learner" in name)
        return net.eval()

    ref_net = build_ref(cfg)
    backbone = pc.clipml_backbone(oc_model, size)
    torch.manual_seed(args.seed + 5)
    ours = MultiLabelCLIP(backbone, CLASSES, model_cfg)
    with torch.no_grad():
        ref_net.prompt_learner.ctx_pos.copy_(ours.prompts.positive.ctx)
        ref_net.prompt_learner.ctx_neg.copy_(ours.prompts.negative.ctx)
    golden.update(ctx_pos=ours.prompts.positive.ctx.detach().numpy().copy(),
                  ctx_neg=ours.prompts.negative.ctx.detach().numpy().copy())

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

    golden.update(labels=labels.numpy(), unknown=unknown.numpy())
    loss_w = exp.loss.weight  # DualCoOp's --loss_w, the value the config reproduces
    ref_asl_crit = ref_asl.AsymmetricLoss(cfg.TRAINER.COOP_MLC.ASL_GAMMA_NEG, cfg.TRAINER.COOP_MLC.ASL_GAMMA_POS)

    def ref_crit(out, y):  # utils/trainers.py train_coop: loss = args.loss_w * criterion(output, target)
        return loss_w * ref_asl_crit(out, y)

    loss_fn = build_training_loss(exp.loss)

    def ours_loss(logits, targets, known):  # what clipml's training loop minimises
        return exp.loss.weight * loss_fn(logits, targets, known)

    def ref_forward(drop_mean_token: bool, ref_net=ref_net):
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
    golden.update(ref_margin=r_margin.numpy(), ref_loss=r_loss.numpy(), ref_grad_pos=r_gpos.numpy(),
                  ref_grad_neg=r_gneg.numpy())
    with torch.no_grad():
        r_prob = torch.softmax(r_out, dim=1)[:, 1]
    report.close("parity: logits S+ - S- (DualCoop.forward as shipped vs MultiLabelCLIP.forward, "
                 f"model.dualcoop.mean_token={model_cfg.method_options.mean_token})",
                 r_margin, out.logits.detach(), atol=1e-4, rtol=1e-5)
    report.close("parity: probabilities (reference softmax over (S-, S+) vs sigmoid of clipml logits)",
                 r_prob, torch.sigmoid(out.logits.detach()), atol=1e-5, rtol=1e-5)
    report.close(f"parity: loss value, full pipeline (loss_w {loss_w:g} x DualCoOp AsymmetricLoss vs clipml "
                 f"loss.weight x {exp.loss.name} {exp.loss.reduction})", r_loss, loss.detach(), atol=1e-5, rtol=1e-5)
    report.close("parity: d loss / d positive contexts, full pipeline", r_gpos, ours_grads[0], atol=1e-7, rtol=1e-4)
    report.close("parity: d loss / d negative contexts, full pipeline", r_gneg, ours_grads[1], atol=1e-7, rtol=1e-4)

    # clipml's library default (mean_token=false) is the reference with its mean token removed.
    plain = MultiLabelCLIP(backbone, CLASSES, dataclasses.replace(
        model_cfg, method_options=dataclasses.replace(model_cfg.method_options, mean_token=False)))
    plain.load_state_dict(ours.state_dict())
    plain_out = plain(x)
    plain_loss = ours_loss(plain_out.logits, targets, known)
    plain_loss.backward()
    d_out, d_loss, d_gpos, d_gneg = ref_forward(drop_mean_token=True)
    report.close("diagnostic: model.dualcoop.mean_token=false equals the reference with its mean token dropped "
                 "(logits)", d_out[:, 1] - d_out[:, 0], plain_out.logits.detach(), atol=1e-4, rtol=1e-5)
    report.close("diagnostic: ... (d loss / d positive contexts)", d_gpos, plain.prompts.positive.ctx.grad,
                 atol=1e-7, rtol=1e-4)
    report.close("deviation (documented: model.dualcoop.mean_token=false, clipml's default): logits without vs "
                 "with the mean token", plain_out.logits.detach(), r_margin, atol=1e-4, rtol=1e-5, expect=False)

    # Shared contexts (the reference without --csc) vs model.dualcoop.class_specific=false.
    shared_cfg = dataclasses.replace(model_cfg, method_options=dataclasses.replace(model_cfg.method_options, class_specific=False))
    torch.manual_seed(args.seed + 6)
    shared = MultiLabelCLIP(backbone, CLASSES, shared_cfg)
    ref_shared = build_ref(ref_cfg(False))  # no --csc
    with torch.no_grad():
        ref_shared.prompt_learner.ctx_pos.copy_(shared.prompts.positive.ctx)
        ref_shared.prompt_learner.ctx_neg.copy_(shared.prompts.negative.ctx)
    s_out = shared(x)
    s_loss = ours_loss(s_out.logits, targets, known)
    s_loss.backward()
    rs_out, rs_loss, rs_gpos, rs_gneg = ref_forward(drop_mean_token=not shared_cfg.method_options.mean_token,
                                                    ref_net=ref_shared)
    golden.update(shared_ctx_pos=shared.prompts.positive.ctx.detach().numpy().copy(),
                  shared_ctx_neg=shared.prompts.negative.ctx.detach().numpy().copy(),
                  shared_ref_margin=(rs_out[:, 1] - rs_out[:, 0]).numpy(), shared_ref_grad_pos=rs_gpos.numpy(),
                  shared_ref_grad_neg=rs_gneg.numpy())
    report.check(f"parity: shared contexts have the reference's shape without --csc "
                 f"({tuple(ref_shared.prompt_learner.ctx_pos.shape)})",
                 ref_shared.prompt_learner.ctx_pos.shape == shared.prompts.positive.ctx.shape)
    report.close("parity: logits, class-agnostic prompts (reference without --csc vs model.dualcoop.class_specific="
                 "false)", rs_out[:, 1] - rs_out[:, 0], s_out.logits.detach(), atol=1e-4, rtol=1e-5)
    report.close("parity: d loss / d shared positive context", rs_gpos, shared.prompts.positive.ctx.grad,
                 atol=1e-7, rtol=1e-4)
    report.close("parity: d loss / d shared negative context", rs_gneg, shared.prompts.negative.ctx.grad,
                 atol=1e-7, rtol=1e-4)

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
    # A known positive far below zero: DualCoOp clamps p at eps = 1e-6 (its AsymmetricLoss default).
    far = torch.tensor([[-16.0, -10.0, 3.0]])
    fy = torch.tensor([[1, 1, 0]])
    a = far.clone().requires_grad_(True)
    b = far.clone().requires_grad_(True)
    la = ref_crit(torch.stack([torch.zeros_like(a), a], dim=1), fy.clone())
    la.backward()
    lb = ours_loss(b, fy.float(), torch.ones_like(fy, dtype=torch.bool))
    lb.backward()
    golden.update(far_logits=far.numpy(), far_labels=fy.numpy(), ref_far_loss=la.detach().numpy(),
                  ref_far_grad=a.grad.numpy())
    report.close(f"parity: ASL for a known positive at logit -16 (eps 1e-6 in DualCoOp, loss.eps {exp.loss.eps:g})",
                 la, lb, atol=1e-6, rtol=1e-6,
                 note=f"reference {float(la.detach()):.4f} / grad {float(a.grad[0, 0]):.3e}; clipml {float(lb.detach()):.4f} / "
                      f"grad {float(b.grad[0, 0]):.3e}")
    report.close("parity: ASL gradient there", a.grad, b.grad, atol=1e-9, rtol=1e-6)

    # ---------------------------------------------------------------- three SGD steps
    # Same contexts on both sides; the update rule (SGD momentum 0.9, wd 5e-4, dampening 0, no
    # Nesterov: DualCoOp train.py, lr of configs/models/rn101_ep50.yaml) against the config's optim.
    ours2 = MultiLabelCLIP(backbone, CLASSES, model_cfg)
    with torch.no_grad():
        ours2.prompts.positive.ctx.copy_(ours.prompts.positive.ctx)
        ours2.prompts.negative.ctx.copy_(ours.prompts.negative.ctx)
    lr = 0.002
    ref_opt = torch.optim.SGD([{"params": ref_net.prompt_learner.parameters()}], lr=lr, momentum=0.9,
                              weight_decay=5e-4, dampening=0, nesterov=False)
    our_opt = build_optimizer(exp.optim, ours2)
    for step in range(3):
        ref_forward(drop_mean_token=not model_cfg.method_options.mean_token)
        ref_opt.step()
        ours2.zero_grad(set_to_none=True)
        ours_loss(ours2(x).logits, targets, known).backward()
        our_opt.step()
    report.close("parity: positive contexts after 3 SGD steps (update rule, loss weight included)",
                 ref_net.prompt_learner.ctx_pos, ours2.prompts.positive.ctx, atol=1e-7, rtol=1e-5)
    report.close("parity: negative contexts after 3 SGD steps", ref_net.prompt_learner.ctx_neg,
                 ours2.prompts.negative.ctx, atol=1e-7, rtol=1e-5)

    # ---------------------------------------------------------------- LR schedule (optional Dassl)
    if args.dassl:
        dassl = Path(args.dassl)
        if not (dassl / "dassl" / "optim" / "lr_scheduler.py").is_file():
            dassl = pc.materialize_ref(args.dassl, ["Dassl.pytorch-master/dassl/optim/lr_scheduler.py"],
                                       work / "dassl") / "Dassl.pytorch-master"
        lr_sched = pc.load_dassl_lr_scheduler(dassl / "dassl" / "optim" / "lr_scheduler.py")
        epochs, steps = 50, 10  # configs/models/rn101_ep50.yaml: MAX_EPOCH 50, WARMUP_EPOCH 1, constant 1e-5
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([p], lr=lr)
        sched = lr_sched.build_lr_scheduler(opt, pc.ns(LR_SCHEDULER="cosine", STEPSIZE=(-1,), GAMMA=0.1,
                                                        MAX_EPOCH=epochs, WARMUP_EPOCH=1, WARMUP_RECOUNT=True,
                                                        WARMUP_TYPE="constant", WARMUP_CONS_LR=1e-5,
                                                        WARMUP_MIN_LR=1e-5))
        ref_lrs = []
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "lr_scheduler.step() before optimizer.step()"
            for epoch in range(epochs):  # DualCoOp: sched.step() once, at the end of train_coop
                ref_lrs.append(opt.param_groups[0]["lr"])
                sched.step()
            p2 = torch.nn.Parameter(torch.zeros(1))
            opt2 = torch.optim.SGD([p2], lr=exp.optim.lr)
            ours_sched = build_scheduler(dataclasses.replace(exp.optim, epochs=epochs), opt2, steps)
            our_steps = []
            for _ in range(epochs * steps):  # clipml steps every batch
                our_steps.append(opt2.param_groups[0]["lr"])
                ours_sched.step()
        golden["ref_epoch_lr"] = np.array(ref_lrs)
        our_steps = np.array(our_steps).reshape(epochs, steps)
        report.close(f"parity: learning rate of every step, 50 epochs x {steps} steps (Dassl build_lr_scheduler "
                     f"stepped per epoch vs clipml optim.schedule={exp.optim.schedule})",
                     np.repeat(np.array(ref_lrs)[:, None], steps, axis=1), our_steps, atol=1e-12, rtol=1e-9,
                     note="epochs 1,2,3,26,50: ref " + ", ".join(f"{ref_lrs[i]:.3e}" for i in (0, 1, 2, 25, 49))
                     + "; clipml " + ", ".join(f"{our_steps[i, 0]:.3e}" for i in (0, 1, 2, 25, 49)))

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
    report.close("deviation (documented: mAP averages classes with a positive): a positive-free class in the "
                 "split (reference averages its AP = 0 in)",
                 ref_map / 100, M.mean_average_precision(logits, truth, "raw"), atol=1e-9, rtol=1e-9, expect=False)
    tied = np.round(probs, 1)  # heavy ties
    report.close("deviation (documented: tied scores form one threshold): raw mAP with tied scores (reference: "
                 "numpy argsort order)", ref_helper.mAP(truth[:, :-1], tied[:, :-1]) / 100,
                 M.mean_average_precision(tied[:, :-1], truth[:, :-1], "raw"), atol=1e-6, rtol=0, expect=False)

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
    report.close("parity: CF1 at 0.5 (DualCoOp validate: mean of per-class F1 vs clipml CF1_mean)",
                 float(fc_h.mean()), ours_f1["CF1_mean"], atol=1e-12, rtol=1e-12)
    report.close("deviation (documented: CF1 is ML-GCN's 2*CP*CR/(CP+CR), CF1_mean is DualCoOp's): DualCoOp F_C vs "
                 "clipml CF1", float(fc_h.mean()), ours_f1["CF1"], atol=1e-9, rtol=1e-9, expect=False,
                 note=f"reference F_C {float(fc_h.mean()) * 100:.2f} vs clipml CF1 {ours_f1['CF1'] * 100:.2f}")
    golden.update(metric_probs=probs[:, :-1], metric_truth=truth[:, :-1], ref_cf1_mean=np.array(float(fc_h.mean())),
                  ref_of1=np.array(float(2 * tp_h.sum() / (2 * tp_h.sum() + fp_h.sum() + fn_h.sum()))))
    report.check(f"info: DualCoOp validate() on the 12-class matrix (positive-free class averaged in): "
                 f"F_C {sum(f_c) / len(f_c):.2f}, F_O {f_o:.2f}", True)

    # ---------------------------------------------------------------- masks and label rules
    mask_checks(report, ref, work, args, exp, golden)
    mean_token_effect(report, args)
    if args.write_golden:
        Path(args.write_golden).parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(args.write_golden, **{k: np.asarray(v) for k, v in golden.items()})
        print(f"info: wrote {len(golden)} reference arrays to {args.write_golden}")
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
    report.close("parity: toy-rn mean token, clipml attention_pool_mean_token (from the dense tokens) vs "
                 "c_proj(v_proj(mean + pos_0))", backbone.attention_pool_mean_token(dense), all_tokens[:, 0],
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


def mask_checks(report, ref: Path, work: Path, args, exp, golden) -> None:
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
    from clipml.experiment import load_experiment

    ours = load_coco2014(coco_root, "train", check_images=False, **exp.data.options)
    ours_ids = [ours.image_ids[item] for item in ours.items]
    golden.update(coco_instances=np.array(json.dumps({"images": images, "annotations": anns})),
                  ref_coco_ids=np.array(res["ids"]))
    report.check(f"parity: COCO training images and order (DualCoOp: coco.imgToAnns keys = annotated images in "
                 f"first-annotation order; clipml data.options {exp.data.options}) -- reference "
                 f"{len(res['ids'])} images {res['ids'][:5]}..., clipml {len(ours_ids)} {ours_ids[:5]}...",
                 res["ids"] == ours_ids)
    ref_mask = np.array(res["mask"], dtype=bool)
    known0 = simulate_known(np.zeros((len(res["ids"]), 80)), p, seed=0)
    report.check("deviation (documented: DualCoOp's masks cannot be reproduced): its COCO mask (torch.rand in a "
                 f"fresh, unseeded process; initial_seed {res['initial_seed']}) vs clipml mask_seed=0 "
                 "(np.random.RandomState(0)) on the same shape", bool((ref_mask == known0).all()), expect=False,
                 note=f"agreement {float((ref_mask == known0).mean()):.3f} (chance ~0.5)")
    voc_options = load_experiment(args.voc_config).data.options
    ours_voc = load_voc2007(voc_root, "trainval", check_images=False, **voc_options)
    cat = ours_voc.classes.index("cat")
    ref_cat = res["voc_classes"].index("cat")
    ref_codes = sorted({int(t[ref_cat]) for t in res["voc_targets"][1::2]})
    golden["ref_voc_difficult_only"] = np.array(ref_codes)
    report.check(f"parity: VOC difficult-only label, reference rule vs {args.voc_config} (data.options "
                 f"{voc_options}): DualCoOp voc2007 target for the odd images' difficult cat = {ref_codes} "
                 f"(0 = negative, in training and test); clipml -> {sorted(set(ours_voc.labels[1::2, cat].tolist()))}",
                 ref_codes == sorted(set(ours_voc.labels[1::2, cat].tolist())))


if __name__ == "__main__":
    sys.exit(main())
