"""clipml's ASL and raw-AP code against the ASL repository (Alibaba-MIIL/ASL).

Run from the clipml checkout root:
    python <this folder>/asl.py --ref <ASL checkout or fetched git dir>

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
    args = parser.parse_args()
    work = pc.setup(args)
    ref = pc.materialize_ref(args.ref, NEEDED, work)
    report = pc.Report("ASL (Alibaba-MIIL/ASL) vs clipml partial_asl / raw AP")
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

    for gpos, gneg in ((1.0, 4.0), (0.0, 4.0), (1.0, 2.0)):
        a = x.clone().requires_grad_(True)
        b = x.clone().requires_grad_(True)
        la = losses.AsymmetricLoss(gamma_neg=gneg, gamma_pos=gpos, clip=0.05, eps=1e-8,
                                   disable_torch_grad_focal_loss=True)(a, y)
        la.backward()
        lb = partial_asl(b, y, known, gamma_pos=gpos, gamma_neg=gneg, clip=0.05, eps=1e-8, reduction="sum")
        lb.backward()
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
    ys = y.clone()
    ys[:, :5] = 0.5
    a = x.clone().requires_grad_(True)
    b = x.clone().requires_grad_(True)
    la = losses.AsymmetricLoss(gamma_neg=2, gamma_pos=1, clip=0.05)(a, ys)
    la.backward()
    lb = partial_asl(b, ys, known, gamma_pos=1.0, gamma_neg=2.0, clip=0.05, reduction="sum")
    lb.backward()
    report.close("parity: ASL with soft targets 0.5 (reference: one weight (1-pt)^(g+ y + g- (1-y)) on the mixed term; "
                 "clipml: each term its own weight)", la, lb, atol=1e-3, rtol=1e-5)

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
    return report.summary()


if __name__ == "__main__":
    sys.exit(main())
