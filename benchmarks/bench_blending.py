"""Cost of a DSRB training step relative to the plain head + loss step (both forward + backward).

Plain: s = τ·cos(f, t), partial BCE, backward. DSRB: the same plus instance_blend,
prototype_blend and their two extra head + loss branches. f stands in for the decoupler output
(a leaf with gradient), so the ratio is the overhead on the small trainable tail only; in a real
step the frozen CLIP towers and the decoupler come on top and the overall ratio is far smaller.
Examples:
    PYTHONPATH=. python benchmarks/bench_blending.py
    PYTHONPATH=. python benchmarks/bench_blending.py --device cuda --repeats 200
"""

from __future__ import annotations

import argparse

import torch
from timing import interleaved_medians
import torch.nn.functional as F

from clipml.blending import PrototypeBank, RepresentationBlending
from clipml.losses import partial_bce


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--grid", type=int, default=14, help="attention grid side (N = grid**2)")
    parser.add_argument("--p-known", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    b, c, d, grid = args.batch, args.classes, args.dim, (args.grid, args.grid)

    f = torch.randn(b, c, d, device=dev, requires_grad=True)
    text = torch.randn(c, d, device=dev, requires_grad=True)
    attention = torch.randn(b, c, grid[0] * grid[1], device=dev).softmax(-1)
    targets = (torch.rand(b, c, device=dev) < 0.05).float()
    known = torch.rand(b, c, device=dev) < args.p_known

    blend = RepresentationBlending(c, d).to(dev)
    bank = PrototypeBank(c, d)
    for _ in range(20):
        bank.update(torch.randn(b, c, d, device=dev), attention, grid, torch.ones(b, c, device=dev), known)
    stats = bank.finalize(blend)
    gen = torch.Generator(device=dev).manual_seed(0)

    def logits_of(feats):
        """Cosine head s_c = τ·cos(f_c, t_c) with τ = 100."""
        return 100.0 * (F.normalize(feats, dim=-1) * F.normalize(text, dim=-1)).sum(-1)

    def plain():
        partial_bce(logits_of(f), targets, known).backward()

    def blends_only():
        with torch.no_grad():
            blend.instance_blend(f, targets, known)
            blend.prototype_blend(f, targets, known, attention, grid, gen)

    def three_plain():
        loss = sum(partial_bce(logits_of(f), targets, known) for _ in range(3))
        loss.backward()

    def dsrb():
        fi, yi, ki = blend.instance_blend(f, targets, known)
        fp, yp, kp = blend.prototype_blend(f, targets, known, attention, grid, gen)
        loss = partial_bce(logits_of(f), targets, known)
        loss = loss + partial_bce(logits_of(fi), yi, ki) + partial_bce(logits_of(fp), yp, kp)
        loss.backward()

    t = interleaved_medians({"plain": plain, "blends": blends_only, "three": three_plain, "dsrb": dsrb}, args.repeats, args.device)
    fi, _, ki = blend.instance_blend(f, targets, known)
    _, _, kp = blend.prototype_blend(f, targets, known, attention, grid, gen)
    print(f"B={b} C={c} D={d} N={grid[0] * grid[1]} device={args.device} threads={args.threads} "
          f"valid prototype cells={stats['valid_cells']}/{4 * c}")
    print(f"entries blended per step: IPRB {int((ki & ~known).sum())}, PPRB {int((kp & ~known).sum())}")
    print(f"plain head+loss fwd+bwd          {t['plain'] * 1e3:8.3f} ms")
    print(f"instance+prototype blend only    {t['blends'] * 1e3:8.3f} ms (no grad)")
    print(f"three plain branches, no blend   {t['three'] * 1e3:8.3f} ms")
    print(f"DSRB step (3 branches + blends)  {t['dsrb'] * 1e3:8.3f} ms")
    print(f"ratio DSRB / plain               {t['dsrb'] / t['plain']:8.2f}x")
    print(f"ratio DSRB / three plain         {t['dsrb'] / t['three']:8.2f}x  (the blending itself)")


if __name__ == "__main__":
    main()
