"""clipml's ASL and raw-AP code against the ASL repository (Alibaba-MIIL/ASL).

Run from the clipml checkout root:
    python <this folder>/asl.py --ref <ASL checkout or fetched git dir> \
        [--config configs/coco2014/sdm_csp_dsrb.yaml] [--write-golden tests/golden/asl.npz]

clipml's ASL runs under the loss settings of --config (the published DSRB config by default: the
one that trains soft targets with ASL); --write-golden stores the reference's values and
gradients on the fixed inputs (read by tests/test_parity_asl.py, which needs no reference code).

Reference side (imported from --ref): src/loss_functions/losses.py (`AsymmetricLoss`,
`AsymmetricLossOptimized`), src/helper_functions/helper_functions.py's `average_precision` / `mAP`
(extracted by source: the module's other imports, e.g. randaugment/COCO helpers, are not needed),
train.py's criterion settings (read from the file). The ASL repository has no partial-label mask
generator (checked: no 'partial' in its Python files).
"""
from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as pc  # noqa: E402

NEEDED = ["src/loss_functions/losses.py", "src/helper_functions/helper_functions.py", "train.py", "src/"]


def extract(path: Path, names):
    source = path.read_text()
    namespace = {"np": np, "torch": torch}
    import ast
    tree = ast.parse(source)
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name in names:
            exec(compile(ast.Module([node], []), str(path), "exec"), namespace)
    return namespace


def main() -> int:
    parser = pc.base_parser(__doc__)
    parser.add_argument("--config", default="configs/coco2014/sdm_csp_dsrb.yaml",
                        help="clipml config whose loss settings (soft_focusing) are compared")
    parser.add_argument("--write-golden", default=None, metavar="PATH",
                        help="write the reference's outputs on the fixed inputs here (.npz)")
    args = parser.parse_args()
    from clipml.experiment import load_experiment
    cfg = load_experiment(args.config)
    golden = {}
    work = pc.setup(args)
    ref = pc.materialize_ref(args.ref, NEEDED, work)
    report = pc.Report(f"ASL (Alibaba-MIIL/ASL) vs clipml partial_asl / raw AP under {args.config}")
    spec = importlib.util.spec_from_file_location("ref_asl_losses", ref / "src" / "loss_functions" / "losses.py")
    losses = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(losses)
    helpers = extract(ref / "src" / "helper_functions" / "helper_functions.py", {"average_precision", "mAP"})

    from clipml.losses import partial_asl
    from clipml import metrics as M

    torch.manual_seed(args.seed)
    B, C = 64, 20
    x = torch.randn(B, C) * 6
    x[0, :4] = torch.tensor([-30.0, -19.0, 25.0, 40.0])  # saturated probabilities
    y = (torch.rand(B, C) < 0.3).float()
    y[0, :4] = torch.tensor([1.0, 1.0, 0.0, 0.0])
    known = torch.ones_like(y, dtype=torch.bool)

    train_src = (ref / "train.py").read_text()
    m = re.search(r"AsymmetricLoss\((.*)\)", train_src)
    report.check(f"info: ASL train.py criterion: AsymmetricLoss({m.group(1) if m else '?'})", True)
    sig = losses.AsymmetricLoss.__init__.__defaults__
    report.check(f"info: ASL AsymmetricLoss defaults (gamma_neg, gamma_pos, clip, eps, disable_torch_grad_focal_loss) = "
                 f"{sig}; AsymmetricLossOptimized = {losses.AsymmetricLossOptimized.__init__.__defaults__}", True)

    source = (ref / "src" / "loss_functions" / "losses.py").read_text()
    asl_source = source.split("class AsymmetricLoss(")[1].split("\nclass ")[0]
    active = [line.strip() for line in asl_source.splitlines() if "set_grad_enabled" in line]
    report.check(f"info: AsymmetricLoss's set_grad_enabled lines are active code, not comments: {active} -> with "
                 f"disable_torch_grad_focal_loss=True (its default and train.py's) the focusing weights carry no "
                 f"gradient, as clipml's (the gradient checks below)",
                 len(active) == 2 and not any(line.startswith("#") for line in active))
    golden["x"], golden["y"] = x, y

    for gpos, gneg in ((1.0, 4.0), (0.0, 4.0), (1.0, 2.0)):
        a = x.clone().requires_grad_(True)
        b = x.clone().requires_grad_(True)
        la = losses.AsymmetricLoss(gamma_neg=gneg, gamma_pos=gpos, clip=0.05, eps=1e-8,
                                   disable_torch_grad_focal_loss=True)(a, y)
        la.backward()
        lb = partial_asl(b, y, known, gamma_pos=gpos, gamma_neg=gneg, clip=0.05, eps=1e-8, reduction="sum")
        lb.backward()
        golden[f"hard_g{gpos:g}_{gneg:g}_value"], golden[f"hard_g{gpos:g}_{gneg:g}_grad"] = la, a.grad
        report.close(f"parity: ASL value, full labels, gamma+={gpos}, gamma-={gneg} (AsymmetricLoss vs partial_asl sum)",
                     la, lb, atol=1e-3, rtol=1e-5)
        report.close(f"parity: ASL gradient wrt logits, gamma+={gpos}, gamma-={gneg}", a.grad, b.grad, atol=1e-6,
                     rtol=1e-4)

    # Focusing weights with gradient (AsymmetricLossOptimized's default; AsymmetricLoss's default before 2021-03)
    a = x.clone().requires_grad_(True)
    b = x.clone().requires_grad_(True)
    losses.AsymmetricLossOptimized(gamma_neg=4, gamma_pos=1, clip=0.05, eps=1e-8)(a, y).backward()
    partial_asl(b, y, known, gamma_pos=1.0, gamma_neg=4.0, clip=0.05, eps=1e-8, reduction="sum").backward()
    report.close("deviation (documented: weights without gradient, as DualCoOp): gradient vs AsymmetricLossOptimized "
                 "(disable_torch_grad_focal_loss=False: weights carry gradient)", a.grad, b.grad, atol=1e-6, rtol=1e-4,
                 expect=False)

    # Unknown entries: clipml drops them; the ASL repo has no unknown -> compare on the known subset.
    unk = torch.rand(B, C) < 0.4
    a = x.clone().requires_grad_(True)
    b = x.clone().requires_grad_(True)
    la = losses.AsymmetricLoss(gamma_neg=4, gamma_pos=1, clip=0.05)(a[~unk], y[~unk])
    la.backward()
    lb = partial_asl(b, y, ~unk, gamma_pos=1.0, gamma_neg=4.0, clip=0.05, reduction="sum")
    lb.backward()
    report.close("parity: ASL over known entries = AsymmetricLoss on the known subset (value)", la, lb, atol=1e-3,
                 rtol=1e-5)
    report.close("parity: ... gradient (unknown entries get exactly 0)", a.grad, b.grad, atol=1e-6, rtol=1e-4)

    # Soft targets (DSRB's blended entries get 1-alpha / 1-beta; configs/*/sdm_csp_dsrb.yaml trains them with ASL)
    rule = cfg.loss.soft_focusing
    ys = y.clone()
    ys[:, :5] = 0.5
    ys[1:, 5] = torch.rand(B - 1)
    golden["y_soft"] = ys
    for gpos, gneg in dict.fromkeys(((1.0, 2.0), (cfg.loss.gamma_pos, cfg.loss.gamma_neg), (1.0, 4.0))):
        a = x.clone().requires_grad_(True)
        b = x.clone().requires_grad_(True)
        la = losses.AsymmetricLoss(gamma_neg=gneg, gamma_pos=gpos, clip=0.05)(a, ys)
        la.backward()
        lb = partial_asl(b, ys, known, gamma_pos=gpos, gamma_neg=gneg, clip=0.05, reduction="sum",
                         soft_focusing=rule)
        lb.backward()
        golden[f"soft_g{gpos:g}_{gneg:g}_value"], golden[f"soft_g{gpos:g}_{gneg:g}_grad"] = la, a.grad
        report.close(f"parity: ASL with soft targets, gamma+={gpos}, gamma-={gneg}, loss.soft_focusing={rule} "
                     f"(reference: one weight (1-pt)^(g+ y + g- (1-y)) on the mixed term)", la, lb, atol=1e-3,
                     rtol=1e-5)
        report.close(f"parity: ... its gradient wrt the logits (weights without gradient on both sides)", a.grad,
                     b.grad, atol=1e-6, rtol=1e-4)
        other = "per_term" if rule == "mixed" else "mixed"
        report.close(f"info: loss.soft_focusing={other} differs, gamma+={gpos}, gamma-={gneg}", la,
                     partial_asl(x, ys, known, gamma_pos=gpos, gamma_neg=gneg, clip=0.05, reduction="sum",
                                 soft_focusing=other), atol=1e-3, rtol=1e-5, expect=False)

    # raw AP / mAP
    rng = np.random.RandomState(args.seed + 1)
    truth = (rng.rand(500, 12) < 0.1).astype(np.int64)
    truth[0] = 1
    scores = rng.randn(500, 12) + truth * 1.2
    report.close("parity: mAP (ASL helper_functions.mAP vs clipml eval.ap=raw)", helpers["mAP"](truth, scores) / 100,
                 M.mean_average_precision(scores, truth, "raw"), atol=1e-9, rtol=1e-9)
    try:
        from sklearn.metrics import average_precision_score
        sk = np.mean([average_precision_score(truth[:, k], scores[:, k]) for k in range(truth.shape[1])])
        report.close("info: scikit-learn average_precision_score mean = clipml raw", sk,
                     M.mean_average_precision(scores, truth, "raw"), atol=1e-9, rtol=1e-9)
    except ImportError:
        pass
    if args.write_golden:
        arrays = {k: np.asarray(v.detach() if torch.is_tensor(v) else v) for k, v in golden.items()}
        Path(args.write_golden).parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(args.write_golden, **arrays)
        print(f"info: wrote {len(arrays)} reference arrays to {args.write_golden}")
    return report.summary()


if __name__ == "__main__":
    sys.exit(main())
