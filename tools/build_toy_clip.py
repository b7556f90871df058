"""Build the shipped toy CLIP: train on synthetic scenes, evaluate zero-shot, write clipml/assets/."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shlex
import sys
from pathlib import Path

from tqdm import tqdm

from clipml.lab.toyclip import (
    TOY_METADATA_PATH,
    TOY_WEIGHTS_PATH,
    ToyClipTrainConfig,
    build_toy_clip,
)


def main(argv=None) -> int:
    defaults = ToyClipTrainConfig()
    parser = argparse.ArgumentParser(description=__doc__)
    for field in dataclasses.fields(ToyClipTrainConfig):
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(getattr(defaults, field.name)),
                            default=getattr(defaults, field.name))
    parser.add_argument("--eval-images", type=int, default=1000, help="held-out test-stream scenes for zero-shot mAP")
    parser.add_argument("--eval-seed", type=int, default=0)
    parser.add_argument("--weights", type=Path, default=TOY_WEIGHTS_PATH)
    parser.add_argument("--metadata", type=Path, default=TOY_METADATA_PATH)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    cfg = ToyClipTrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ToyClipTrainConfig)})
    command = "python tools/build_toy_clip.py " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    bar = tqdm(total=cfg.steps, desc="toy CLIP", unit="step")

    def progress(step: int, loss: float) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}")

    metadata = build_toy_clip(cfg, args.weights, args.metadata, args.eval_images, args.eval_seed, command, progress)
    bar.close()
    zero_shot = metadata["zero_shot"]
    print(
        f"wrote {args.weights} ({metadata['weights_bytes']} bytes) in {metadata['train_seconds']:.0f} s; "
        f"final loss {metadata['final_loss']:.3f}; zero-shot mAP global {zero_shot['global_map']:.3f}, "
        f"dense {zero_shot['dense_map']:.3f}, chance {zero_shot['chance']:.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
