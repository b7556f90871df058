"""Label completion: the unknown entries of a training manifest filled with a prompt checkpoint's
probabilities and its labels at the decision thresholds, written as a new JSONL manifest.

Known entries are copied as they were; each filled entry goes under the record's "predicted" key
(`clipml.data.manifest` says how it reads back), never into "positive" or "negative", so a
prediction is never mistaken for an annotation. Scoring is `predict`'s own path
(clipml.predictor.Predictor), so the probabilities and labels are those `predict` writes for the
same image.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from clipml.data.base import UNKNOWN
from clipml.data.manifest import load_manifest, read_records
from clipml.engine import Progress
from clipml.engine.checkpoint import atomic_write
from clipml.engine.inference import logit_threshold
from clipml.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

DECIMALS = 6  # probabilities written with this many decimals


@dataclasses.dataclass
class Completion:
    output: Path
    images: int  # records in the manifest
    completed_images: int  # images that had unknown entries and were scored
    filled: int  # entries filled
    predicted_positive: int  # of those, how many are predicted positive
    rule: str  # where the decision thresholds come from
    skipped: List[Tuple[Path, str]]  # undecodable images: their unknown entries stay unknown


def complete_labels(
    checkpoint: Union[str, Path],
    manifest: Union[str, Path],
    output: Union[str, Path],
    *,
    classes: Optional[Union[str, Path, Sequence[str]]] = None,
    unlisted: Optional[str] = None,
    image_root: Optional[Union[str, Path]] = None,
    threshold: Optional[float] = None,
    batch_size: int = 32,
    device: str = "cpu",
    progress: Progress = None,
) -> Completion:
    """Fill every unknown entry of `manifest` (a .jsonl or .csv file read with `classes`, `unlisted`
    and `image_root` as `load_manifest` reads them) and write the completed manifest to `output`
    (.jsonl; image paths as written, so beside `manifest` it reads with the same options). Labels
    are cut at the checkpoint's per-class thresholds, or at `threshold` (a probability) if given."""
    from clipml.predictor import Predictor

    manifest, output = Path(manifest), Path(output)
    if output.suffix.lower() != ".jsonl":
        raise ConfigError(f"output {output}: a completed manifest is written as JSON lines; name it *.jsonl")
    if not manifest.is_file():
        raise DataError(f"manifest not found: {manifest} (expected a .jsonl or .csv file)")
    if output.resolve() == manifest.resolve():
        raise ConfigError(f"output {output} is the manifest itself; write the completed manifest to a new file")
    if threshold is not None:
        logit_threshold(threshold)  # refuses a value outside [0, 1] before anything loads
    split = load_manifest(manifest, classes=classes, unlisted=unlisted, image_root=image_root)
    records = read_records(manifest)

    predictor = Predictor.from_checkpoint(checkpoint, device)
    classnames = predictor.classnames
    missing = [name for name in split.classes if name not in classnames]
    if missing:
        raise ConfigError(f"{checkpoint} has no learned prompts for classes {missing} of {manifest}; "
                          f"its classes: {classnames}")
    columns = [classnames.index(name) for name in split.classes]

    rows = np.flatnonzero(split.targets.count_per_row() < split.num_classes).tolist()  # with an unknown entry
    paths = [split.image_path(i) for i in rows]
    # All labels above threshold are wanted (no top-k): a class is predicted positive when listed.
    scored = predictor.predict(paths, threshold=threshold, batch_size=batch_size, skip_unreadable=True,
                               progress=progress)
    position = {path: k for k, path in enumerate(scored.images)}
    probabilities = scored.probabilities

    lines, filled, positive = [], 0, 0
    for i, (_, image, fields) in enumerate(records):
        record = {"image": image.strip(), "positive": fields["positive"]}
        if fields["negative"]:
            record["negative"] = fields["negative"]
        unknown = np.flatnonzero(split.targets.dense([i])[0] == UNKNOWN).tolist()
        k = position.get(split.image_path(i))
        if unknown and k is not None:
            listed, probs = set(scored.labels[k]), probabilities[k]
            above = {c: split.classes[c] in listed for c in unknown}
            record["predicted"] = {
                "positive": [split.classes[c] for c in unknown if above[c]],
                "negative": [split.classes[c] for c in unknown if not above[c]],
                "probability": {split.classes[c]: round(float(probs[columns[c]]), DECIMALS) for c in unknown},
            }
            filled += len(unknown)
            positive += sum(above.values())
        elif unknown:  # not decodable: left as it was
            record.update({key: fields[key] for key in ("unknown", "predicted") if fields.get(key)})
        lines.append(json.dumps(record))
    atomic_write(output, lambda tmp: Path(tmp).write_text("".join(line + "\n" for line in lines)))
    if output.parent.resolve() != manifest.parent.resolve():
        logger.warning("%s keeps the image paths of %s: read it with data.options.image_root=%s and classes=%s",
                       output, manifest, split.root, classes or manifest.parent / "classes.txt")
    for path, why in scored.skipped:
        logger.warning("not completed, cannot be decoded: %s (%s)", path, why)
    return Completion(output, len(records), len(rows) - len(scored.skipped), filled, positive, scored.rule,
                      scored.skipped)


__all__ = ["Completion", "complete_labels"]
