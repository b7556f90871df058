"""Cost of the CT alignment loss (forward + backward) relative to a decoupler-like head.

The reference is what every training step pays anyway: class-wise spatial attention
``softmax_n(20 cos(z_n, t_c))`` as an einsum [B, C, N] over the dense map, the pooled
category features, a cosine head ``100 cos(f_c, t_c)`` and BCE. Both get the same frozen dense
features and learnable text features (prompt stand-ins). Labels are COCO-like: 3 positives of
80 classes on average, half the entries known. Examples:
    PYTHONPATH=. python benchmarks/bench_transport.py
    PYTHONPATH=. python benchmarks/bench_transport.py --device cuda --locations 196 784 1764
"""

from __future__ import annotations

import argparse
from typing import Callable

import torch
from timing import interleaved_medians
import torch.nn.functional as F

from clipml.transport import ConditionalTransport


def decoupler_like(dense: torch.Tensor, text: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Einsum attention over locations, pooled features, cosine head, BCE: the baseline step."""
    z, t = F.normalize(dense, dim=-1), F.normalize(text, dim=-1)
    attn = torch.softmax(20.0 * torch.einsum("bnd,cd->bcn", z, t), dim=-1)
    feats = torch.einsum("bcn,bnd->bcd", attn, dense)
    logits = 100.0 * (F.normalize(feats, dim=-1) * t).sum(dim=-1)
    return F.binary_cross_entropy_with_logits(logits, targets)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--locations", type=int, nargs="+", default=[196, 784])
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"device={args.device} B={args.batch} C={args.classes} D={args.dim} "
          f"threads={torch.get_num_threads()} repeats={args.repeats}")
    print(f"{'N':>5} {'decoupler ms':>13} {'CT ms':>8} {'CT+bg ms':>9} {'CT/dec':>7} {'CT+bg/dec':>10}")
    gen = torch.Generator().manual_seed(0)
    b, c, d = args.batch, args.classes, args.dim
    targets = (torch.rand(b, c, generator=gen) < 3 / c).float().to(args.device)
    known = (torch.rand(b, c, generator=gen) < 0.5).to(args.device)
    for n in args.locations:
        dense = torch.randn(b, n, d, generator=gen).to(args.device)  # frozen CLIP output
        text = torch.randn(c, d, generator=gen).to(args.device).requires_grad_(True)
        ct = ConditionalTransport(d).to(args.device)
        ct_bg = ConditionalTransport(d, background=True).to(args.device)

        def step(loss_fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
            def run() -> None:
                text.grad = None
                loss_fn().backward()
            return run

        medians = interleaved_medians({
            "decoupler": step(lambda: decoupler_like(dense, text, targets)),
            "ct": step(lambda: ct(dense, text, targets, known)),
            "ct_bg": step(lambda: ct_bg(dense, text, targets, known)),
        }, args.repeats, args.device)
        t_dec, t_ct, t_bg = medians["decoupler"], medians["ct"], medians["ct_bg"]
        print(f"{n:>5} {t_dec * 1e3:>13.1f} {t_ct * 1e3:>8.1f} {t_bg * 1e3:>9.1f} "
              f"{t_ct / t_dec:>7.2f} {t_bg / t_dec:>10.2f}")


if __name__ == "__main__":
    main()
