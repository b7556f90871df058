"""clipml's `taidpt` method against TaI-DPT's own code (guozix/TaI-DPT).

Run from the clipml checkout root:
    python <this folder>/taidpt.py --ref <TaI-DPT checkout or fetched git dir> \
        [--config configs/coco2014/taidpt.yaml] [--write-golden tests/golden/taidpt.json]

clipml runs under the published-setting config's options (--config): its image features
(backbone.attnpool_positional), AP (eval.ap) and class prompts (data.captions.class_prompt_templates).
--write-golden writes the reference's outputs on the small fixed inputs below (regenerated from
the seed by tests/test_parity_taidpt.py, which compares clipml with them without the reference).

Reference side (imported from --ref): clip/model.py (`build_model`, its `AttentionPool2d` with
`if_pos`), trainers/Caption_distill_double.py (`PromptLearner`, `TextEncoder`, `DenseCLIP`: the
caption (training) and image (test) paths), trainers/utils.py (`ranking_loss`), the bundled
Dassl.pytorch-master (`build_optimizer`, `build_lr_scheduler`, the evaluator's `mAP`), the shipped
partial-label files partial/VOC2007/ (published masks) and datasets/data_helpers.py (class prompts,
synonyms). Dassl's trainer/registry modules and `pickle5` are replaced by import stubs (they are
not used by the code compared); numpy 2 lacks `numpy.deprecate`, which trainers/utils.py imports as
a decorator, so an identity stand-in is set.
"""
from __future__ import annotations

import contextlib
import copy
import importlib
import io
import json
import os
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as pc  # noqa: E402

NEEDED = ["trainers/Caption_distill_double.py", "trainers/utils.py", "clip/", "Dassl.pytorch-master/dassl/",
          "partial/", "datasets/data_helpers.py", "configs/"]
CLASSES = ["person", "bicycle", "car", "dog", "traffic light", "pizza"]
CAPTIONS = [
    "a man riding a bicycle down a street next to a car.",
    "a dog sitting on the grass.",
    "two people waiting at a traffic light with their dogs",
    "a pizza with cheese and tomatoes on a wooden table",
    "a red car parked near a bicycle rack and a traffic light",
    "a photo of a person.",
]


def import_reference(ref: Path, dassl_root: Path):
    if not hasattr(np, "deprecate"):
        np.deprecate = lambda *a, **k: (a[0] if a and callable(a[0]) else (lambda f: f))
    pc.purge_modules("clip", "dassl", "trainers")
    sys.modules.setdefault("pickle5", pickle)
    sys.path.insert(0, str(dassl_root))
    sys.path.insert(0, str(ref))
    import dassl  # noqa: F401  (its __init__ only sets metadata)
    pc.stub_module("dassl.engine", TRAINER_REGISTRY=types.SimpleNamespace(register=lambda *a, **k: (lambda c: c)),
                   TrainerX=object)
    pc.stub_module("dassl.metrics", compute_accuracy=None)
    pc.stub_module("dassl.utils", load_pretrained_weights=None, load_checkpoint=None)
    sys.modules["dassl.optim.lr_scheduler"] = pc.load_dassl_lr_scheduler(dassl_root / "dassl" / "optim" / "lr_scheduler.py")
    import dassl.optim as d_optim
    pkg = types.ModuleType("trainers")
    pkg.__path__ = [str(ref / "trainers")]
    sys.modules["trainers"] = pkg
    cdd = importlib.import_module("trainers.Caption_distill_double")
    utils = importlib.import_module("trainers.utils")
    from clip import clip as ref_clip
    import clip.model as ref_model
    return cdd, utils, ref_clip, ref_model, d_optim


def main() -> int:
    parser = pc.base_parser(__doc__)
    parser.add_argument("--n-ctx", type=int, default=4)
    parser.add_argument("--config", default="configs/coco2014/taidpt.yaml",
                        help="the published-setting config whose options clipml runs under")
    parser.add_argument("--write-golden", metavar="PATH", help="write the reference's outputs here (JSON)")
    args = parser.parse_args()
    work = pc.setup(args)
    from clipml.experiment import load_experiment
    exp = load_experiment(args.config)
    golden = {"seed": args.seed, "n_ctx": args.n_ctx, "classes": CLASSES}
    ref = pc.materialize_ref(args.ref, NEEDED, work)
    report = pc.Report("TaI-DPT (guozix/TaI-DPT) vs clipml taidpt")
    cdd, ref_utils, ref_clip, ref_model, d_optim = import_reference(ref, ref / "Dassl.pytorch-master")

    from clipml.losses import build_loss
    from clipml.model import ModelConfig, MultiLabelCLIP
    from clipml.experiment import OptimConfig
    from clipml.engine.train import build_optimizer
    from clipml.backbones import BackboneConfig, Dense
    from clipml.backbones.open_clip import OpenCLIPBackbone

    n_ctx, C = args.n_ctx, len(CLASSES)
    oc_model = pc.tiny_openclip(work, args.seed)
    state = pc.openai_state_dict(oc_model)
    cfg = pc.ns(INPUT={"SIZE": (224, 224)}, MODEL={"BACKBONE": {"NAME": "RN50"}},
                TRAINER={"Caption": {"N_CTX": n_ctx, "CSC": False, "CTX_INIT": "", "PREC": "fp32",
                                     "CLASS_TOKEN_POSITION": "end", "GL_merge_rate": 0.5}},
                TRAIN={"IF_LEARN_SCALE": False, "IF_LEARN_spatial_SCALE": False, "spatial_SCALE_text": 50,
                       "spatial_SCALE_image": 40, "LOSSFUNC": "double_ranking"},
                OPTIM={"NAME": "sgd", "LR": 1e-4, "WEIGHT_DECAY": 5e-4, "MOMENTUM": 0.9, "SGD_DAMPNING": 0,
                       "SGD_NESTEROV": False, "RMSPROP_ALPHA": 0.99, "ADAM_BETA1": 0.9, "ADAM_BETA2": 0.999,
                       "STAGED_LR": False, "NEW_LAYERS": (), "BASE_LR_MULT": 0.1})
    with contextlib.redirect_stdout(io.StringIO()):
        clip_model = ref_model.build_model(copy.deepcopy(state)).float()
        ref_net = cdd.DenseCLIP(cfg, CLASSES, clip_model)
    for name, p in ref_net.named_parameters():
        if "prompt_learner" not in name:
            p.requires_grad_(False)
    ref_net.eval()

    backbone = OpenCLIPBackbone(copy.deepcopy(oc_model), pc.TINY_NAME, "random",
                                BackboneConfig(image_size=224, attnpool_positional=exp.backbone.attnpool_positional))
    ours = MultiLabelCLIP(backbone, CLASSES, ModelConfig.of(method="taidpt", n_ctx=n_ctx))
    with torch.no_grad():
        ref_net.prompt_learner.ctx.copy_(ours.prompts.global_context.ctx)
        ref_net.prompt_learner.ctx_double.copy_(ours.prompts.local_context.ctx)

    # ------------------------------------------------------------ prompts
    with torch.no_grad():
        prompts, prompts_double, *_ = ref_net.prompt_learner()
        ref_g = ref_net.text_encoder(prompts, ref_net.tokenized_prompts)
        ref_l = ref_net.text_encoder(prompts_double, ref_net.tokenized_prompts)
        our_g, our_l = ours.text_features()
    report.close("parity: global prompt features (ctx + class)", ref_g, our_g, atol=2e-5, rtol=2e-5)
    report.close("parity: local prompt features (ctx_double + class)", ref_l, our_l, atol=2e-5, rtol=2e-5)

    # ------------------------------------------------------------ text (training) path
    cap_ids = ref_clip.tokenize(CAPTIONS)
    with torch.no_grad():
        ref_seq = ref_net.text_encoder(cap_ids, None, if_embedding=False, if_sequence=True)  # [N, 77, D]
        td = backbone.encode_text_dense(CAPTIONS)
    L = td.tokens.shape[1]
    report.check("parity: caption token ids (clip.tokenize vs clipml tokenizer, up to the last end token)",
                 torch.equal(cap_ids[:, :L], backbone.tokenize(CAPTIONS)[:, :L]))
    report.close("parity: caption per-token features, real tokens (if_sequence=True vs encode_text_dense)",
                 ref_seq[:, :L][td.mask], td.tokens[td.mask], atol=2e-5, rtol=2e-5)
    report.close("parity: caption global feature (end-token feature)",
                 ref_seq[torch.arange(len(CAPTIONS)), cap_ids.argmax(-1)], td.pooled, atol=2e-5, rtol=2e-5)
    report.check("parity: caption token mask (reference: ids != 0, i.e. start..end token; clipml: <= end token)",
                 torch.equal((cap_ids[:, :L] != 0), td.mask))

    labels = torch.tensor([[1 if any(w in c for w in (n, n + "s")) else 0 for n in CLASSES] for c in CAPTIONS])
    labels[2, CLASSES.index("person")] = 1  # 'people'

    ref_net.zero_grad(set_to_none=True)
    r_glob, r_loc, _, _ = ref_net(None, cap_ids)
    r_loss = ref_utils.ranking_loss(r_glob.clone(), labels, scale_=1.0, margin_=1) + \
        ref_utils.ranking_loss(r_loc.clone(), labels, scale_=1.0, margin_=1)
    r_loss.backward()
    r_grad_g = ref_net.prompt_learner.ctx.grad.clone()
    r_grad_l = ref_net.prompt_learner.ctx_double.grad.clone()

    loss_fn = build_loss("ranking", margin=1.0, reduction="mean")  # configs/*/taidpt.yaml
    ours.zero_grad(set_to_none=True)
    out = ours.forward_dense(td)
    known = torch.ones_like(labels, dtype=torch.bool)
    o_loss = sum(loss_fn(part, labels.float(), known) for part in out.parts)
    o_loss.backward()
    report.close("parity: caption global logits (4 * cos)", r_glob.detach(), out.parts[0].detach(), atol=2e-5, rtol=1e-5)
    report.close("parity: caption local logits (softmax(50 cos) over real tokens)", r_loc.detach(),
                 out.parts[1].detach(), atol=2e-5, rtol=1e-5)
    report.close("parity: double ranking loss (ranking_loss(global) + ranking_loss(local))", r_loss.detach(),
                 o_loss.detach(), atol=1e-5, rtol=1e-5)
    report.close("parity: d loss / d global context", r_grad_g, ours.prompts.global_context.ctx.grad, atol=1e-6,
                 rtol=1e-4)
    report.close("parity: d loss / d local context", r_grad_l, ours.prompts.local_context.ctx.grad, atol=1e-6,
                 rtol=1e-4)

    # one and three SGD steps (Dassl build_optimizer over the prompt learner, as the trainer)
    ref_opt = d_optim.build_optimizer(ref_net.prompt_learner, cfg.OPTIM)
    ours2 = MultiLabelCLIP(backbone, CLASSES, ModelConfig.of(method="taidpt", n_ctx=n_ctx))
    with torch.no_grad():
        ours2.prompts.global_context.ctx.copy_(ours.prompts.global_context.ctx)
        ours2.prompts.local_context.ctx.copy_(ours.prompts.local_context.ctx)
    our_opt = build_optimizer(OptimConfig(name="sgd", lr=1e-4, momentum=0.9, weight_decay=5e-4), ours2)
    for _ in range(3):
        ref_opt.zero_grad()
        g_, l_, _, _ = ref_net(None, cap_ids)
        (ref_utils.ranking_loss(g_, labels, scale_=1.0, margin_=1)
         + ref_utils.ranking_loss(l_, labels, scale_=1.0, margin_=1)).backward()
        ref_opt.step()
        our_opt.zero_grad()
        o = ours2.forward_dense(td)
        sum(loss_fn(part, labels.float(), known) for part in o.parts).backward()
        our_opt.step()
    report.close("parity: global context after 3 SGD steps (lr 1e-4, momentum 0.9, wd 5e-4)",
                 ref_net.prompt_learner.ctx, ours2.prompts.global_context.ctx, atol=1e-7, rtol=1e-5)
    report.close("parity: local context after 3 SGD steps", ref_net.prompt_learner.ctx_double,
                 ours2.prompts.local_context.ctx, atol=1e-7, rtol=1e-5)

    # ------------------------------------------------------------ image (test) path
    # (both sides now hold the same contexts: the reference's and ours2's after the 3 steps)
    ours = ours2
    x = pc.images(2, 224, seed=args.seed + 1)
    with torch.no_grad():
        i_glob, i_loc, _, _ = ref_net(x, if_test=True)
        img = ours(x)
    where = f"{args.config} backbone.attnpool_positional={exp.backbone.attnpool_positional}"
    report.close(f"parity: image global logits (reference: attnpool(if_pos=False); clipml: {where})",
                 i_glob, img.parts[0], atol=1e-4, rtol=1e-4)
    report.close(f"parity: image local logits (reference: v/c projections of the raw layer-4 map; clipml: {where})",
                 i_loc, img.parts[1], atol=1e-4, rtol=1e-4)
    ref_merge = 0.5 * i_glob + 0.5 * i_loc  # evaluator 'default_merge_aux', GL_merge_rate 0.5
    report.close("parity: image score = 0.5 global + 0.5 local", ref_merge, img.logits, atol=1e-4, rtol=1e-4)
    golden["global_ctx"] = ref_net.prompt_learner.ctx.detach().tolist()
    golden["local_ctx"] = ref_net.prompt_learner.ctx_double.detach().tolist()
    golden["image_global"], golden["image_local"] = i_glob.tolist(), i_loc.tolist()
    golden["image_score"] = ref_merge.tolist()
    # Diagnostic: clipml's head fed the reference's own (position-free) features reproduces it.
    with torch.no_grad():
        fmap = ref_net.encode_image(x)
        b, c, h, w = fmap.shape
        seq = fmap.reshape(b, c, h * w).permute(0, 2, 1)
        pool = ref_net.model.visual.attnpool
        tokens = F.linear(F.linear(seq, pool.v_proj.weight, pool.v_proj.bias), pool.c_proj.weight, pool.c_proj.bias)
        g_nopos, _ = pool(fmap, if_pos=False)
        diag = ours.forward_dense(Dense(tokens=tokens, pooled=g_nopos, grid=(h, w)))
        g_pos, _ = pool(fmap, if_pos=True)
        dense = pc.clipml_backbone(oc_model, 224).encode_dense(x)  # clipml's default: CLIP's own pool
    report.close("diagnostic: clipml head on the reference's position-free features = reference global logits",
                 i_glob, diag.parts[0], atol=1e-5, rtol=1e-5)
    report.close("diagnostic: ... = reference local logits", i_loc, diag.parts[1], atol=1e-5, rtol=1e-5)
    report.close("diagnostic: reference attnpool(if_pos=True) = clipml pooled (same weights)", g_pos, dense.pooled,
                 atol=1e-4, rtol=1e-5)
    cos = F.cosine_similarity(g_nopos, dense.pooled, dim=-1)
    report.check(f"info: cos(reference position-free global feature, clipml pooled) = "
                 f"{', '.join(f'{float(v):.4f}' for v in cos)} on the random tiny tower", True)

    # ------------------------------------------------------------ evaluator mAP and configs
    evaluator = load_evaluator_map(ref / "Dassl.pytorch-master" / "dassl" / "evaluation" / "evaluator.py")
    from clipml import metrics as M
    rng = np.random.RandomState(args.seed + 4)
    truth = (rng.rand(300, 10) < 0.2).astype(np.int64)
    truth[0] = 1
    scores = rng.randn(300, 10) * 2 + truth * 1.5
    report.close(f"parity: mAP (TaI-DPT's Dassl evaluator mAP vs clipml {args.config} eval.ap={exp.eval.ap})",
                 evaluator(truth, scores) / 100, M.mean_average_precision(scores, truth, exp.eval.ap),
                 atol=1e-9, rtol=1e-9)
    golden["map"] = {"images": 300, "classes": 10, "seed": args.seed + 4, "reference": evaluator(truth, scores) / 100}
    for dataset in ("coco2014", "voc2007"):
        path = Path("configs") / dataset / "taidpt.yaml"
        if not path.is_file():
            report.check(f"config {path} present (run from the clipml checkout root)", False)
            continue
        published = load_experiment(str(path))
        env = M.mean_average_precision(scores, truth, published.eval.ap)
        report.check(f"parity: {path} reports the reference's AP (TaI-DPT evaluator: raw); config eval.ap="
                     f"{published.eval.ap} (on the test matrix: raw {100 * M.mean_average_precision(scores, truth, 'raw'):.2f}"
                     f" vs {published.eval.ap} {100 * env:.2f})", published.eval.ap == "raw")
        ref_cfg = (ref / "configs" / "trainers" / "Caption_distill_double" / f"rn50_{dataset}.yaml").read_text()
        image_scale = float(ref_cfg.split("spatial_SCALE_image:")[1].split()[0])
        report.check(f"parity: {path} model.taidpt.image_spatial_scale {published.model.method_options.image_spatial_scale} = "
                     f"reference spatial_SCALE_image {image_scale}", published.model.method_options.image_spatial_scale == image_scale)

    # ------------------------------------------------------------ class prompts added to the captions
    sys.path.insert(0, str(ref))
    helpers = importlib.import_module("datasets.data_helpers")
    ref_prompts = class_prompts_of_reference(helpers, CLASSES)
    our_prompts = class_prompts_of_clipml(exp, CLASSES, work)
    golden["class_prompts"] = {name: ref_prompts[name] for name in CLASSES[:2]}
    for name in CLASSES[:2]:
        ours_n = our_prompts[name]
        report.check(f"parity: class prompts of '{name}' (reference: 9 x '{helpers.prompt_template}' + "
                     f"{len(helpers.IMAGENET_TEMPLATES)} ImageNet templates = {len(ref_prompts[name])} training prompts; "
                     f"clipml {args.config} data.captions.class_prompt_templates="
                     f"{exp.data.captions.class_prompt_templates}: {len(ours_n)}, "
                     f"{ours_n.count(helpers.prompt_template.format(name))} x '{helpers.prompt_template.format(name)}')",
                     sorted(ref_prompts[name]) == sorted(ours_n))
    synonyms_check(report, helpers)

    # ------------------------------------------------------------ LR schedule (Dassl, as the trainer builds it)
    epochs, steps = 20, 10
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1e-4)
    sched = d_optim.build_lr_scheduler(opt, pc.ns(LR_SCHEDULER="cosine", STEPSIZE=(-1,), GAMMA=0.1, MAX_EPOCH=epochs,
                                                  WARMUP_EPOCH=1, WARMUP_RECOUNT=True, WARMUP_TYPE="constant",
                                                  WARMUP_CONS_LR=1e-5, WARMUP_MIN_LR=1e-5))
    ref_lrs = []
    for _ in range(epochs):  # Dassl TrainerX: update_lr() after the last batch of each epoch
        ref_lrs.append(opt.param_groups[0]["lr"])
        sched.step()
    import dataclasses
    from clipml.engine.train import build_scheduler
    p2 = torch.nn.Parameter(torch.zeros(1))
    opt2 = torch.optim.SGD([p2], lr=exp.optim.lr)
    ours_sched = build_scheduler(dataclasses.replace(exp.optim, epochs=epochs), opt2, steps)
    our_lrs = []
    for _ in range(epochs):
        rates = []
        for _ in range(steps):
            rates.append(opt2.param_groups[0]["lr"])
            ours_sched.step()
        our_lrs.append(float(np.mean(rates)))
    golden["ref_epoch_lr"] = ref_lrs
    report.close(f"parity: per-epoch learning rate, 20 epochs (Dassl constant 1e-5 warm-up epoch + per-epoch cosine vs "
                 f"clipml {args.config} optim.schedule={exp.optim.schedule})", np.array(ref_lrs), np.array(our_lrs),
                 atol=2e-6, rtol=0,
                 note="epochs 1,2,3,11,20: ref " + ", ".join(f"{ref_lrs[i]:.2e}" for i in (0, 1, 2, 10, 19))
                 + "; clipml " + ", ".join(f"{our_lrs[i]:.2e}" for i in (0, 1, 2, 10, 19)))

    # ------------------------------------------------------------ published masks (VOC 2007, SARB protocol)
    published_masks(report, ref, work)
    positional_effect(report)
    if args.write_golden:
        Path(args.write_golden).parent.mkdir(parents=True, exist_ok=True)
        Path(args.write_golden).write_text(json.dumps(golden, indent=1) + "\n")
        print(f"wrote {args.write_golden}")
    return report.summary()


def class_prompts_of_reference(helpers, classes):
    """The class prompts the reference's caption datasets add per class (datasets/*_distill.py:
    the default template default_prompt_num - 1 = 9 times, then every ImageNet template)."""
    return {name: [helpers.prompt_template.format(name)] * 9 + [t.format(name) for t in helpers.IMAGENET_TEMPLATES]
            for name in classes}


def class_prompts_of_clipml(exp, classes, work: Path):
    """The class prompts clipml's caption loader adds under the config's caption options, per class
    (a one-caption file as the source; the prompts follow it, each labelled with its class alone)."""
    import dataclasses
    from clipml.data.captions import load_captions

    source = work / "one_caption.txt"
    source.write_text(CAPTIONS[0] + "\n")
    config = dataclasses.replace(exp.data.captions, source=str(source), synonyms=None)
    captions = load_captions(config, "parity", classes, classes)
    prompts = {name: [] for name in classes}
    for text, row in list(zip(captions.captions, captions.labels))[1:]:
        (index,) = np.flatnonzero(row)
        prompts[classes[index]].append(text)
    return prompts


def positional_effect(report) -> None:
    """How much the positional embedding matters for TaI-DPT's image scoring with a *trained* tower:
    clipml's toy-rn CLIP, lab COCO-like scenes, hand-crafted prompts as both the global and the
    local prompt; CLIP's features (with the attention pool's positional embedding, clipml's
    default) against the reference's (without: open_clip's own pool with the embedding zeroed)
    and clipml's backbone.attnpool_positional=false, which must equal the latter."""
    from clipml.backbones import BackboneConfig, load_backbone
    from clipml.lab.world import SceneGenerator
    from clipml.prompts import handcrafted_text_features
    from clipml.data.transforms import eval_transform
    from clipml.decoupler import double_grained_scores
    from clipml import metrics as M

    backbone = load_backbone("toy-rn")
    unpositioned = load_backbone(BackboneConfig(spec="toy-rn", attnpool_positional=False))
    gen = SceneGenerator(seed=0, preset="coco_like", stream="test")
    scenes = [gen.render(i) for i in range(48)]
    tf = eval_transform(backbone.image_size, backbone.mean, backbone.std)
    x = torch.stack([tf(img) for img, _, _ in scenes])
    labels = np.stack([lab for _, lab, _ in scenes])
    text = handcrafted_text_features(backbone, gen.classes)
    pool = backbone.model.visual.attnpool
    with torch.no_grad():
        dense = backbone.encode_dense(x)
        option = unpositioned.encode_dense(x)
        fmap = backbone.resnet_feature_map(x)
        seq = fmap.flatten(2).transpose(1, 2)
        tokens_nopos = pool.c_proj(pool.v_proj(seq))
        # open_clip's pool without the positional embedding (what TaI-DPT's attnpool(if_pos=False) computes)
        saved = pool.positional_embedding.data.clone()
        pool.positional_embedding.data.zero_()
        pooled_nopos = pool(fmap)
        pool.positional_embedding.data.copy_(saved)
        rows, merged = {}, {}
        for name, (tok, pooled) in {"CLIP's pool (clipml default)": (dense.tokens, dense.pooled),
                                    "reference (no pos)": (tokens_nopos, pooled_nopos),
                                    "clipml attnpool_positional=false": (option.tokens, option.pooled)}.items():
            g, l, _ = double_grained_scores(pooled, tok, text, text, 4.0, 40.0)
            merged[name] = 0.5 * g + 0.5 * l
            rows[name] = [100 * M.mean_average_precision(v.numpy(), labels, "raw") for v in (g, l, merged[name])]
    report.close("parity: trained toy-rn, TaI-DPT image scores: clipml attnpool_positional=false = the reference's "
                 "position-free features", merged["reference (no pos)"], merged["clipml attnpool_positional=false"],
                 atol=1e-4, rtol=1e-5)
    report.check("info: trained toy-rn, 48 COCO-like scenes, hand-crafted global=local prompts, raw mAP "
                 "(global / local / merged): " + "; ".join(f"{k} {v[0]:.2f} / {v[1]:.2f} / {v[2]:.2f}"
                                                            for k, v in rows.items()), True)


def load_evaluator_map(path: Path):
    """The evaluator module's module-level `mAP` (no Dassl imports needed for it)."""
    source = path.read_text()
    start = source.index("def average_precision(output, target):")
    end = source.index("@EVALUATOR_REGISTRY.register()", start)
    namespace = {"np": np}
    exec(compile(source[start:end], str(path), "exec"), namespace)
    return namespace["mAP"]


def synonyms_check(report, helpers) -> None:
    import yaml
    asset = Path(__import__("clipml").__file__).parent / "assets" / "prompts" / "coco2014.yaml"
    data = yaml.safe_load(asset.read_text())
    ours = {k: set(v) for k, v in (data.get("synonyms") or {}).items()}
    ref = {syn[0]: set(syn[1:]) for syn in helpers.coco_classname_synonyms}
    only_ref = sum(len(ref[k] - ours.get(k, set())) for k in ref)
    only_ours = sum(len(ours.get(k, set()) - ref[k]) for k in ref)
    report.check(f"info: COCO synonyms: reference (data_helpers.coco_classname_synonyms, matched after NLTK "
                 f"lemmatisation) {sum(len(v) for v in ref.values())} extra names, clipml (assets/prompts/coco2014.yaml, "
                 f"matched with generated plurals) {sum(len(v) for v in ours.values())}; {only_ref} reference names "
                 f"not in clipml's list, {only_ours} clipml names not in the reference's", True)


VOC_CLASSES = ['aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat', 'chair', 'cow', 'diningtable',
               'dog', 'horse', 'motorbike', 'person', 'pottedplant', 'sheep', 'sofa', 'train', 'tvmonitor']


def published_masks(report, ref: Path, work: Path) -> None:
    """TaI-DPT ships the VOC 2007 trainval partial-label files (SST/SARB convention: 1/-1/0) used for
    its partial-label tables. clipml's seed-0 protocol, end to end through its VOC loader (a devkit
    folder rebuilt from the shipped full labels, images in file order), must reproduce them."""
    from clipml.data.voc import load_voc2007
    from clipml.data.partial import partial_split, simulate_known, import_mask
    from clipml.data.base import UNKNOWN

    folder = ref / "partial" / "VOC2007"
    full = np.loadtxt(folder / "original-labels" / "train.txt", delimiter=",").astype(int)
    voc = work / "voc_published"
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    (voc / "Annotations").mkdir()
    names = [f"{i:06d}" for i in range(len(full))]
    (voc / "ImageSets" / "Main" / "trainval.txt").write_text("\n".join(names) + "\n")
    for name, row in zip(names, full):
        objs = "".join(f"<object><name>{VOC_CLASSES[c]}</name><difficult>0</difficult></object>"
                       for c in np.flatnonzero(row == 1))
        (voc / "Annotations" / f"{name}.xml").write_text(f"<annotation>{objs}</annotation>")
    split = load_voc2007(voc, "trainval", difficult="ignore", check_images=False)
    report.check("info: rebuilt VOC trainval labels equal the shipped original-labels/train.txt",
                 bool(((split.labels == 1) == (full == 1)).all()))
    all_equal, all_import, nested = True, True, True
    previous = None
    from clipml.errors import DataError
    try:
        import_mask(folder / "partial-labels" / "train_proportion_0.5.txt", split, convention="pm1")
        as_is = "read"
    except DataError as error:
        as_is = f"refused: {str(error)[-110:]}"
    report.check(f"parity: import_mask reads a published partial-label file as shipped (comma-separated .txt): "
                 f"{as_is}", as_is == "read")
    for k in range(1, 10):
        p = round(0.1 * k, 1)
        published = np.loadtxt(folder / "partial-labels" / f"train_proportion_{p}.txt", delimiter=",").astype(int)
        known_pub = published != 0
        ours = partial_split(split, p, seed=0, mask_dir=work / "masks")
        known_ours = ours.labels != UNKNOWN
        all_equal &= bool((known_pub == known_ours).all()) and bool((simulate_known(full, p, 0) == known_pub).all())
        imported = import_mask(folder / "partial-labels" / f"train_proportion_{p}.txt", split, convention="pm1")
        all_import &= bool((imported.labels == ours.labels).all())
        if previous is not None:
            nested &= bool((previous <= known_pub).all())
        previous = known_pub
    report.check("parity: clipml partial_split(p, seed=0) through its VOC loader = TaI-DPT's published "
                 "VOC2007 train_proportion_{0.1..0.9}.txt known entries, bit for bit", all_equal)
    report.check("parity: import_mask(published train_proportion_{0.1..0.9}.txt as shipped, convention pm1) = "
                 "partial_split(p, seed=0) labels", all_import)
    report.check("info: published masks are nested across p", nested)


if __name__ == "__main__":
    sys.exit(main())
