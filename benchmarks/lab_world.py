"""Statistics of the lab's worlds next to the real datasets they imitate (benchmarks/results/lab.md).

Run: PYTHONPATH=. python benchmarks/lab_world.py --scenes 2000
"""

from __future__ import annotations

import argparse
import re

import numpy as np

from clipml.lab.world import PRESETS, SYNONYMS, SceneGenerator, plural

REFERENCE = {
    "coco_like": "COCO train2014: 2.9 labels and 7.3 objects per image; 41 % of objects small (< 32² px)",
    "voc_like": "VOC 2007 trainval: 1.4-1.5 labels and 2.5 objects per image; mostly large objects",
    "classic": "(the first lab)",
}


def statistics(preset: str, scenes: int, seed: int = 0) -> dict:
    generator = SceneGenerator(seed, stream="train", preset=preset)
    labels, objects, areas, named = [], [], [], []
    for index in range(scenes):
        scene = generator.scene(index)
        labels.append(int(scene.labels.sum()))
        objects.append(len(scene.objects))
        areas.extend(instance.area_fraction for instance in scene.instances())
        for name in {placed.name for placed in scene.objects}:
            words = (name, plural(name), *SYNONYMS.get(name, ()), *map(plural, SYNONYMS.get(name, ())))
            named.append(any(re.search(rf"\b{re.escape(w)}\b", scene.caption) for w in words))
    labels, areas = np.array(labels), np.array(areas)
    return {
        "preset": preset,
        "size": generator.config.image_size,
        "classes": len(generator.classes),
        "labels per image": f"{labels.mean():.2f}",
        "labels 1 / 2-3 / 4+": " / ".join(f"{share:.0%}" for share in (
            (labels == 1).mean(), ((labels >= 2) & (labels <= 3)).mean(), (labels >= 4).mean())),
        "objects per image": f"{np.mean(objects):.2f}",
        "objects < 2 % / 2-10 % / >= 10 % of the area": " / ".join(f"{share:.0%}" for share in (
            (areas < 0.02).mean(), ((areas >= 0.02) & (areas < 0.1)).mean(), (areas >= 0.1).mean())),
        "objects < 5 %": f"{(areas < 0.05).mean():.0%}",
        "labels named by the caption": f"{np.mean(named):.0%}",
        "real dataset": REFERENCE.get(preset, ""),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=2000)
    args = parser.parse_args()
    rows = [statistics(preset, args.scenes) for preset in PRESETS]
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(str(row[key]) for key in keys) + " |")


if __name__ == "__main__":
    main()
