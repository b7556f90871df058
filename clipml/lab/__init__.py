"""The offline lab: a procedural multi-label world and the toy CLIPs trained on it.

No real CLIP weights or COCO/VOC images can be had offline, so method quality is measured
here: `world` renders scenes with exact object masks, `shapes` draws the object classes,
`toyclip` trains and loads the small CLIP towers that see only this world.

The lab is a plugin of the library (clipml.plugins): importing it registers the dataset and
caption source "synthetic", the world's synonyms and the backbone names ``toy`` (= ``toy-vit``) and
``toy-rn``, through the same registries as any user's dataset or backbone.
"""

import functools

from clipml.backbones.registry import register_alias
from clipml.backbones.shipped import TOY_MODELS, toy_spec
from clipml.data.captions import register_caption_source
from clipml.data.registry import register_dataset
from clipml.data.vocab import register_synonyms
from clipml.lab.captions import world_captions
from clipml.lab.world import DATASET, SYNONYMS, load_synthetic_split


def _load_synthetic(root, split: str, *, num_images=None, seed: int = 0, image_size=None, preset: str = "classic"):
    """The synthetic world's split (rendered in memory; `root` is unused)."""
    return load_synthetic_split(root, split, num_images, seed, image_size, preset)


register_dataset(DATASET, _load_synthetic)
register_caption_source(DATASET, world_captions)
register_synonyms(DATASET, SYNONYMS)
for _alias, _model_name in TOY_MODELS.items():
    register_alias(_alias, functools.partial(toy_spec, _model_name))
