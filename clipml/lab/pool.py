"""The pretraining pool of a toy CLIP: scenes of a world's "pretrain" stream, rendered once.

Rendering a coco_like scene costs about 3 ms, as much as a third of a toy training step per
image, and both toy towers read the same scenes. So the stream's first N scenes are rendered
once (in parallel), stored as one uint8 array file plus their captions, and memory-mapped by
every build that asks for the same (preset, seed, N, size). Evaluation streams never enter it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from clipml.errors import DataError
from clipml.lab.world import SceneGenerator

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class PretrainPool:
    """`images` uint8 [N, S, S, 3] (often a read-only memory map) and one caption per image."""

    images: np.ndarray
    captions: List[str]

    def __len__(self) -> int:
        return len(self.captions)


def _render_chunk(args: Tuple[str, int, int, int, Optional[int], str]) -> Tuple[int, np.ndarray, List[str]]:
    preset, seed, start, stop, image_size, path = args
    generator = SceneGenerator(seed, image_size=image_size, stream="pretrain", preset=preset)
    images = np.lib.format.open_memmap(path, mode="r+")
    captions = []
    for index in range(start, stop):
        scene = generator.scene(index)
        images[index] = np.asarray(scene.image)
        captions.append(scene.caption)
    images.flush()
    return start, stop, captions


def pretrain_pool(preset: str, seed: int, count: int, directory: Union[str, Path],
                  image_size: Optional[int] = None, workers: int = 1, chunk: int = 2000) -> PretrainPool:
    """Scenes 0..count-1 of the pretrain stream, from `directory` or rendered into it first.

    The files are written under temporary names and renamed when complete, so an interrupted
    rendering is never read as a pool.
    """
    generator = SceneGenerator(seed, image_size=image_size, stream="pretrain", preset=preset)
    size = generator.config.image_size
    directory = Path(directory)
    stem = directory / f"pretrain-{preset}-{size}px-seed{seed}-{count}"
    images_path, captions_path = stem.with_suffix(".npy"), stem.with_suffix(".json")
    if not (images_path.is_file() and captions_path.is_file()):
        directory.mkdir(parents=True, exist_ok=True)
        partial = stem.with_suffix(".partial.npy")
        np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=(count, size, size, 3)).flush()
        jobs = [(preset, seed, start, min(start + chunk, count), size, str(partial)) for start in range(0, count, chunk)]
        captions: List[str] = [""] * count
        logger.info("rendering %d %s pretrain scenes into %s with %d workers", count, preset, images_path, workers)
        if workers > 1:
            with multiprocessing.get_context("spawn").Pool(workers) as processes:
                done = processes.imap_unordered(_render_chunk, jobs)
                for start, stop, texts in done:
                    captions[start:stop] = texts
        else:
            for job in jobs:
                start, stop, texts = _render_chunk(job)
                captions[start:stop] = texts
        captions_path.with_suffix(".partial.json").write_text(json.dumps(captions))
        partial.rename(images_path)
        captions_path.with_suffix(".partial.json").rename(captions_path)
    images = np.load(images_path, mmap_mode="r")
    captions = json.loads(captions_path.read_text())
    if images.shape != (count, size, size, 3) or len(captions) != count:
        raise DataError(f"pretraining pool {images_path} holds {images.shape} images and {len(captions)} captions, "
                        f"expected {count} of {size}x{size}; delete it to render it again")
    return PretrainPool(images, captions)


def caption_tokens(captions: Sequence[str]):
    """Token ids [N, L] of the captions, cut after the longest one's end token (the text tower is
    causal, so the cut changes no feature and saves most of the 77-token context)."""
    import open_clip

    tokens = open_clip.tokenize(list(captions))
    length = int((tokens != 0).sum(dim=1).max())
    if length == tokens.shape[1] and bool((tokens[:, -1] != 0).any()):
        raise DataError("a pretraining caption exceeds CLIP's 77-token context")
    return tokens[:, :length].contiguous()
