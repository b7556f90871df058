"""Issue #27: evaluating thousands of classes in class chunks holds neither the attention maps of
all classes nor a [B, C, C] matrix. Peak RSS is measured in a fresh interpreter (this file run as
a script), after a warm-up that already reached the text tower's and the model's own peak."""

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

CLASSES, BATCH, BATCHES, CHUNK = 2000, 16, 2, 128


def peak_rss() -> int:
    """Bytes: this process's peak resident set so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class RandomDenseSource:
    """`BATCHES` batches of random dense features, labels mostly unknown (as Open Images)."""

    def __init__(self, backbone, classnames):
        from clipml.data.base import MultiLabelSplit

        rng = np.random.RandomState(0)
        labels = np.where(rng.rand(BATCH * BATCHES, len(classnames)) < 0.01, rng.randint(0, 2, (BATCH * BATCHES,
                          len(classnames))), -1).astype(np.int8)
        labels[0, :2], labels[1, :2] = 1, 0
        self.split = MultiLabelSplit("random", "test", classnames, [f"{i}.jpg" for i in range(len(labels))], labels)
        self.backbone = backbone

    def __len__(self):
        return BATCHES

    def batches(self, seed=None, sharded=True):
        from clipml.backbones import Dense

        h, w = self.backbone.grid
        generator = torch.Generator().manual_seed(1)
        for b in range(BATCHES):
            index = torch.arange(b * BATCH, (b + 1) * BATCH)
            dense = Dense(torch.randn(BATCH, h * w, self.backbone.embed_dim, generator=generator),
                          torch.randn(BATCH, self.backbone.embed_dim, generator=generator), (h, w))
            yield dense, torch.as_tensor(self.split.labels[index.numpy()]), index


def measure(method: str) -> dict:
    """The peak RSS growth of one `evaluate(details=True)` over a warm-up, and its correlation."""
    from conftest import tiny_backbone
    from clipml.engine.classes import select_text
    from clipml.engine.evaluate import evaluate
    from clipml.experiment import EvalConfig
    from clipml.model import ModelConfig, MultiLabelCLIP

    torch.set_num_threads(1)
    backbone = tiny_backbone("open_clip_vit")
    classnames = [f"class {k}" for k in range(CLASSES)]
    model = MultiLabelCLIP(backbone, classnames, ModelConfig.of(method=method, n_ctx=3))
    source = RandomDenseSource(backbone, classnames)
    with torch.no_grad():  # warm-up: the text tower over every prompt, and one chunk of maps
        text = model.text_features()
        classes = torch.arange(CHUNK)
        model.forward_dense(next(source.batches())[0], select_text(text, classes), classes)
    before = peak_rss()
    result = evaluate(model, source, settings=EvalConfig(class_chunk=CHUNK))
    return {"growth": peak_rss() - before, "class_map_correlation": result["class_map_correlation"]}


def test_chunked_evaluation_of_2000_classes_stays_far_below_a_class_by_class_matrix():
    tests = Path(__file__).parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tests.parent), str(tests), os.environ.get("PYTHONPATH", "")]))
    run = subprocess.run([sys.executable, __file__, "dualcoop"], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    measured = json.loads(run.stdout.strip().splitlines()[-1])
    matrix = BATCH * CLASSES * CLASSES * 8  # the float64 [B, C, C] correlation matrix: 512 MB
    assert measured["growth"] < matrix / 16, measured
    assert np.isfinite(measured["class_map_correlation"])


if __name__ == "__main__":
    print(json.dumps(measure(sys.argv[1])))
