"""Build a toy CLIP of the lab: render the pretraining pool, train, write clipml/assets/, evaluate."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shlex
import sys
from pathlib import Path

from tqdm import tqdm

from clipml.lab.toyclip import RECIPES, ToyClipTrainConfig, build_toy_clip, toy_spec


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--tower", choices=["vit", "rn"], default="vit")
    defaults = ToyClipTrainConfig()
    for field in dataclasses.fields(ToyClipTrainConfig):
        if field.name != "tower":
            parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(getattr(defaults, field.name)),
                                default=None, help=f"default {getattr(defaults, field.name)} (vit), see RECIPES (rn)")
    parser.add_argument("--pool-dir", type=Path, default=Path("runs/toy_build/pool"),
                        help="where the rendered pretraining scenes are kept (shared by builds)")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="resumable training state (default runs/toy_build/<tower>)")
    parser.add_argument("--render-workers", type=int, default=2)
    parser.add_argument("--skip-evaluation", action="store_true", help="only train and write the weights")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    settings = {**RECIPES[args.tower], "tower": args.tower}
    settings.update({f.name: getattr(args, f.name) for f in dataclasses.fields(ToyClipTrainConfig)
                     if f.name != "tower" and getattr(args, f.name) is not None})
    cfg = ToyClipTrainConfig(**settings)
    command = "python tools/build_toy_clip.py " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    bar = tqdm(total=cfg.steps, desc=f"toy CLIP ({cfg.tower})", unit="step", mininterval=10)

    def progress(step: int, loss: float) -> None:
        bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
        bar.update(step + 1 - bar.n)

    work_dir = args.work_dir or Path("runs/toy_build") / cfg.tower
    metadata = build_toy_clip(cfg, args.pool_dir, work_dir, args.render_workers, command, progress)
    bar.close()
    spec = toy_spec(cfg.tower)
    print(f"wrote {spec.weights_path} ({metadata['weights_bytes']} bytes) after {metadata['train_seconds']:.0f} s "
          f"of training; final loss {metadata['final_loss']:.3f}")
    if not args.skip_evaluation:
        from clipml.lab.toyeval import evaluate_toy

        report = evaluate_toy(cfg.tower)
        print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
