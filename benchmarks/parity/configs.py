"""Published-setting configs of clipml (configs/{coco2014,voc2007}/*.yaml, resolved by clipml's own
loader) side by side with the settings in the reference repositories' configs and scripts.

Run from the clipml checkout root:
    python <this folder>/configs.py --dualcoop <DualCoOp ref> --taidpt <TaI-DPT ref> --hcp <HCP-MLR-PL ref>

Each reference may be a folder or a fetched git directory. Reference values are read from the files
named in the output (yaml configs, argparse defaults, shell scripts, README commands); values that a
file does not set come from the named default (e.g. Dassl's config defaults). One PASS/FAIL line per
compared key, then the table.
"""
from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as pc  # noqa: E402


def sh_vars(text: str):
    return dict(re.findall(r"^(\w+)=['\"]?([^'\"\s]+)['\"]?", text, flags=re.M))


def argparse_defaults(text: str):
    out = {}
    for m in re.finditer(r"add_argument\('--(\w+)'.*?default=([^,)]+)", text):
        out[m.group(1)] = m.group(2).strip("'\"")
    return out


def main() -> int:
    parser = pc.base_parser(__doc__)
    parser.add_argument("--dualcoop", required=True)
    parser.add_argument("--taidpt", required=True)
    parser.add_argument("--hcp", required=True)
    args = parser.parse_args()
    args.ref = args.dualcoop
    work = pc.setup(args)
    dc = pc.materialize_ref(args.dualcoop, ["configs/models/rn101_ep50.yaml", "README.md", "opts.py",
                                            "utils/build_cfg.py", "utils/asymmetric_loss.py", "dataloaders/"],
                            work / "dc")
    ti = pc.materialize_ref(args.taidpt, ["configs/trainers/Caption_distill_double/rn50_coco2014.yaml",
                                          "configs/trainers/", "scripts/", "train_caption.py",
                                          "Dassl.pytorch-master/dassl/config/defaults.py"], work / "ti")
    hc = pc.materialize_ref(args.hcp, ["scripts/DSRB.sh", "config.py", "DSRB.py"], work / "hc")
    from clipml.experiment import load_experiment

    report = pc.Report("published-setting configs vs reference configs/scripts")
    dc_yaml = yaml.safe_load((dc / "configs/models/rn101_ep50.yaml").read_text())
    dc_readme = (dc / "README.md").read_text()
    dc_opts = argparse_defaults((dc / "opts.py").read_text())
    dc_cfg = (dc / "utils/build_cfg.py").read_text()
    ti_def = (ti / "Dassl.pytorch-master/dassl/config/defaults.py").read_text()
    dassl_wd = float(re.search(r"_C.OPTIM.WEIGHT_DECAY = ([\d.e-]+)", ti_def).group(1))
    dassl_mom = float(re.search(r"_C.OPTIM.MOMENTUM = ([\d.e-]+)", ti_def).group(1))
    lr_coco = re.search(r"`lr`: `([\d.]+)` for VOC2007 and `([\d.]+)` for MS-COCO", dc_readme)
    loss_w_example = re.search(r"--lr 0\.002\s+--loss_w ([\d.]+)\s+-pp ([\d.]+)", dc_readme)
    example_csc = "--csc" in dc_readme.split("For Example:")[1].split("```")[1]
    n_pos = re.search(r"N_CTX_POS = (\d+)", dc_cfg).group(1)
    n_neg = re.search(r"N_CTX_NEG = (\d+)", dc_cfg).group(1)
    ref_dualcoop = {
        "backbone": f"{dc_yaml['MODEL']['BACKBONE']['NAME']} (OpenAI CLIP)",
        "image_size": "448 (README command --input_size 448)",
        "batch": dc_yaml["DATALOADER"]["TRAIN_X"]["BATCH_SIZE"],
        "optimizer": f"{dc_yaml['OPTIM']['NAME']} (momentum {dassl_mom}, wd {dassl_wd}: Dassl defaults)",
        "lr_coco": float(lr_coco.group(2)), "lr_voc": float(lr_coco.group(1)),
        "epochs": dc_yaml["OPTIM"]["MAX_EPOCH"],
        "schedule": f"{dc_yaml['OPTIM']['LR_SCHEDULER']} per epoch, warm-up {dc_yaml['OPTIM']['WARMUP_EPOCH']} epoch "
                    f"{dc_yaml['OPTIM']['WARMUP_TYPE']} {dc_yaml['OPTIM']['WARMUP_CONS_LR']}",
        "n_ctx": f"{n_pos} pos + {n_neg} neg, CSC with --csc (README example at pp {loss_w_example.group(2)}: "
                 f"csc={example_csc})",
        "loss": f"ASL gamma- {dc_opts.get('gamma_neg')}, gamma+ {dc_opts.get('gamma_pos')}, clip 0.05, eps 1e-6, sum, "
                f"x loss_w (default {dc_opts.get('loss_w')}; README example {loss_w_example.group(1)} at pp "
                f"{loss_w_example.group(2)})",
        "masks": "torch.rand(N, C) < pp, unseeded global generator; COCO order = coco.imgToAnns keys",
        "augment": "Resize(448) + CutoutPIL(0.5) + RandAugment; test Resize(448) (PIL bilinear)",
        "selection": "best epoch on VAL_SPLIT = the test split (val2014 / VOC test)",
        "ap": "raw (utils/helper.mAP), all classes averaged",
        "voc_difficult": "negative (difficult objects skipped)",
        "precision": "torch.cuda.amp.autocast (fp16), no GradScaler",
    }
    ti_coco = yaml.safe_load((ti / "configs/trainers/Caption_distill_double/rn50_coco2014.yaml").read_text())
    ti_voc = yaml.safe_load((ti / "configs/trainers/Caption_distill_double/rn50_voc2007.yaml").read_text())
    main_sh = (ti / "scripts/main.sh").read_text()
    ref_taidpt = {
        "backbone": f"{ti_coco['MODEL']['BACKBONE']['NAME']} (OpenAI CLIP)",
        "image_size": f"{ti_coco['INPUT']['SIZE']} (test: {ti_coco['INPUT']['TRANSFORMS_TEST']})",
        "batch": ti_coco["DATALOADER"]["TRAIN_X"]["BATCH_SIZE"],
        "optimizer": f"{ti_coco['OPTIM']['NAME']} (momentum {dassl_mom}, wd {dassl_wd}: Dassl defaults)",
        "lr_coco": float(ti_coco["OPTIM"]["LR"]), "lr_voc": float(ti_voc["OPTIM"]["LR"]),
        "epochs": ti_coco["OPTIM"]["MAX_EPOCH"],
        "schedule": f"{ti_coco['OPTIM']['LR_SCHEDULER']} per epoch, warm-up {ti_coco['OPTIM']['WARMUP_EPOCH']} epoch "
                    f"{ti_coco['OPTIM']['WARMUP_TYPE']} {ti_coco['OPTIM']['WARMUP_CONS_LR']}",
        "n_ctx": "16 shared (scripts/main.sh usage lines: '... end 16 False ...')"
                 if "end 16 False" in main_sh else "?",
        "loss": f"{ti_coco['TRAIN']['LOSSFUNC']} (ranking_loss scale 1, margin 1, mean over captions), both branches",
        "scales": f"logit 4, spatial text {ti_coco['TRAIN']['spatial_SCALE_text']}, image "
                  f"{ti_coco['TRAIN']['spatial_SCALE_image']} (VOC {ti_voc['TRAIN']['spatial_SCALE_image']}), merge 0.5",
        "masks": "n/a (no image labels)",
        "selection": f"TEST.FINAL_MODEL={ti_coco['TEST']['FINAL_MODEL']}: val = test[0::10]",
        "ap": "raw (Dassl MLClassification -> mAP)",
        "captions": "COCO captions_train2017 (sampled ids), NLTK-lemmatised word match + synonyms; "
                    "+ per class 9 x 'a photo of a {}.' + 80 ImageNet templates",
    }
    hsh = sh_vars((hc / "scripts/DSRB.sh").read_text())
    ref_dsrb = {
        "backbone": "ResNet-101 (ImageNet), layer4 fine-tuned",
        "image_size": f"{hsh['cropSize']} (scale {hsh['scaleSize']} + random crop list)",
        "batch": int(hsh["batchSize"]),
        "optimizer": f"Adam (DSRB.py), wd {hsh['weightDecay']}",
        "lr_coco": float(hsh["lr"]), "lr_voc": float(hsh["lr"]),
        "epochs": int(hsh["epochs"]),
        "schedule": f"StepLR step {hsh['stepEpoch']} x0.1",
        "loss": "partial BCE (mean over known)",
        "blending": f"mixupEpoch {hsh['mixupEpoch']}, recompute every {hsh.get('recomputePrototypeInterval')}, "
                    f"topK {hsh['topK']}, contrastive {hsh['contrastiveLossWeight']} (from epoch 0)",
        "masks": "np.random.seed(0); random(labels.shape) < p; COCO order = coco.imgs keys",
        "selection": "best epoch on the test loader",
        "ap": "envelope (Compute_mAP_VOC2012)",
        "voc_difficult": "negative (difficult objects skipped)",
    }

    rows = []
    for dataset in ("coco2014", "voc2007"):
        for method, refv in (("dualcoop", ref_dualcoop), ("taidpt", ref_taidpt), ("sdm_csp_dsrb", ref_dsrb)):
            path = Path("configs") / dataset / f"{method}.yaml"
            cfg = load_experiment(str(path))
            lr_ref = refv["lr_coco"] if dataset == "coco2014" else refv["lr_voc"]
            ours = {
                "backbone": cfg.backbone.spec, "image_size": cfg.backbone.image_size, "batch": cfg.data.batch_size,
                "optimizer": f"{cfg.optim.name} (momentum {cfg.optim.momentum}, wd {cfg.optim.weight_decay})",
                "lr": cfg.optim.lr, "epochs": cfg.optim.epochs,
                "schedule": f"cosine per epoch, warm-up {cfg.optim.warmup_epochs:g} epoch constant {cfg.optim.warmup_lr:g}"
                            if cfg.optim.schedule == "dassl" else
                            f"cosine per step, linear warm-up {cfg.optim.warmup_epochs} epoch",
                "n_ctx": cfg.model.n_ctx,
                "loss": f"{cfg.loss.name} gamma+ {cfg.loss.gamma_pos} gamma- {cfg.loss.gamma_neg} clip {cfg.loss.clip} "
                        f"{cfg.loss.reduction} (eps {cfg.loss.eps:g}), x loss.weight {cfg.loss.weight:g}"
                        if cfg.loss.name == "asl" else
                        f"{cfg.loss.name} margin {cfg.loss.margin} {cfg.loss.reduction}",
                "masks": f"mask_seed {cfg.data.mask_seed} (np RandomState), p={cfg.data.known_ratio}",
                "augment": cfg.data.augment, "ap": cfg.eval.ap,
                "voc_difficult": (cfg.data.options or {}).get("difficult", "-"),
                "precision": cfg.backbone.precision,
                "blending": f"instance {cfg.model.blending.instance} prototype {cfg.model.blending.prototype} start "
                            f"{cfg.model.blending.start_epoch} every {cfg.model.blending.prototype_every} topk "
                            f"{cfg.model.blending.topk} contrastive {cfg.model.blending.contrastive_weight} "
                            f"({cfg.model.blending.contrastive_form}, {cfg.model.blending.contrastive_schedule}) "
                            f"peak {cfg.model.blending.peak} empty_cells {cfg.model.blending.empty_cells} "
                            f"zero_row {cfg.model.blending.prototype_zero_row} "
                            f"target_grad {cfg.model.blending.target_grad}",
                "scales": (lambda o: f"scale {o.scale}, text {o.text_spatial_scale}, image {o.image_spatial_scale}, "
                                     f"w {o.global_weight}")(cfg.model.method_options) if method == "taidpt" else "-",
                "selection": f"carved val ({cfg.data.val_fraction} of train)",
                "captions": f"{cfg.data.captions.source} class_prompts={cfg.data.captions.class_prompts}",
            }
            keys = ["backbone", "image_size", "batch", "optimizer", "lr", "epochs", "schedule", "n_ctx", "loss",
                    "masks", "ap", "selection"]
            if method == "dualcoop":
                keys += ["augment", "precision"] + (["voc_difficult"] if dataset == "voc2007" else [])
            if method == "taidpt":
                keys += ["scales", "captions"]
            if method == "sdm_csp_dsrb":
                keys += ["blending"] + (["voc_difficult"] if dataset == "voc2007" else [])
            for key in keys:
                r = lr_ref if key == "lr" else refv.get(key, "-")
                rows.append((dataset, method, key, ours.get(key, "-"), r))
            if method == "dualcoop":
                report.check(f"{path}: lr {cfg.optim.lr} = reference {lr_ref}", cfg.optim.lr == lr_ref)
                report.check(f"{path}: epochs {cfg.optim.epochs} = {refv['epochs']}", cfg.optim.epochs == refv["epochs"])
                report.check(f"{path}: batch {cfg.data.batch_size} = {refv['batch']}", cfg.data.batch_size == refv["batch"])
                report.check(f"{path}: ASL gammas ({cfg.loss.gamma_pos}, {cfg.loss.gamma_neg}) = (1, 2), sum",
                             (cfg.loss.gamma_pos, cfg.loss.gamma_neg, cfg.loss.reduction) == (1.0, 2.0, "sum"))
                report.check(f"{path}: loss.weight {cfg.loss.weight:g} = reference loss_w (README example "
                             f"{loss_w_example.group(1)} at pp {loss_w_example.group(2)}; 'larger loss_w for smaller pp', "
                             f"other values unpublished)", cfg.loss.weight == float(loss_w_example.group(1)))
                report.check(f"{path}: ASL eps {cfg.loss.eps:g} = 1e-6, optim.schedule {cfg.optim.schedule} = dassl",
                             (cfg.loss.eps, cfg.optim.schedule) == (1e-6, "dassl"))
                report.check(f"{path}: eval.ap {cfg.eval.ap} = raw", cfg.eval.ap == "raw")
                if dataset == "voc2007":
                    report.check(f"{path}: difficult rule {cfg.data.options.get('difficult')} = reference (negative)",
                                 cfg.data.options.get("difficult") == "negative")
            if method == "taidpt":
                report.check(f"{path}: lr {cfg.optim.lr} = reference {lr_ref}", cfg.optim.lr == lr_ref)
                report.check(f"{path}: epochs/batch {cfg.optim.epochs}/{cfg.data.batch_size} = "
                             f"{refv['epochs']}/{refv['batch']}", (cfg.optim.epochs, cfg.data.batch_size) ==
                             (refv["epochs"], refv["batch"]))
                report.check(f"{path}: backbone {cfg.backbone.spec} at {cfg.backbone.image_size} = RN50 at 224",
                             cfg.backbone.spec.startswith("open_clip:RN50@") and cfg.backbone.image_size == 224)
                report.check(f"{path}: eval.ap {cfg.eval.ap} = raw (TaI-DPT evaluator)", cfg.eval.ap == "raw")
            if method == "sdm_csp_dsrb":
                report.check(f"{path}: blending start/every/topk ({cfg.model.blending.start_epoch}, "
                             f"{cfg.model.blending.prototype_every}, {cfg.model.blending.topk}) = DSRB.sh "
                             f"({hsh['mixupEpoch']}, 5, {hsh['topK']})",
                             (cfg.model.blending.start_epoch, cfg.model.blending.prototype_every, cfg.model.blending.topk)
                             == (int(hsh["mixupEpoch"]), 5, int(hsh["topK"])))
                report.check(f"{path}: contrastive weight {cfg.model.blending.contrastive_weight} = DSRB.sh "
                             f"{hsh['contrastiveLossWeight']}", cfg.model.blending.contrastive_weight ==
                             float(hsh["contrastiveLossWeight"]))
                report.check(f"{path}: contrastive term = DSRB's (form {cfg.model.blending.contrastive_form}, schedule "
                             f"{cfg.model.blending.contrastive_schedule}: ContrastiveLoss from epoch 0, ramped over it)",
                             (cfg.model.blending.contrastive_form, cfg.model.blending.contrastive_schedule)
                             == ("mined", "from_start"))
                report.check(f"{path}: PPRB rules = DSRB's (peak {cfg.model.blending.peak}, empty cells "
                             f"{cfg.model.blending.empty_cells})",
                             (cfg.model.blending.peak, cfg.model.blending.empty_cells) == ("feature", "class_mean"))
                report.check(f"deviation (documented in {path}: the loss is the seed method's, so sdm_csp -> "
                             f"sdm_csp_dsrb changes only the blending): loss {cfg.loss.name} "
                             f"(soft_focusing {cfg.loss.soft_focusing}) vs DSRB's BCE", cfg.loss.name == "bce",
                             expect=False)
                report.check(f"{path}: eval.ap {cfg.eval.ap} = envelope", cfg.eval.ap == "envelope")
                if dataset == "voc2007":
                    report.check(f"{path}: difficult rule {cfg.data.options.get('difficult')} = reference (negative)",
                                 cfg.data.options.get("difficult") == "negative")

    print("\n| dataset | config | key | clipml (resolved) | reference |\n|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(str(v).replace("|", "/") for v in row) + " |")
    return report.summary()


if __name__ == "__main__":
    sys.exit(main())
