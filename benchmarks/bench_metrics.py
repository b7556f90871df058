"""Metric speed: clipml's column-wise AP vs scikit-learn's per-class loop on COCO-val-sized data.

Prints both times, the ratio, and the largest AP difference (must be ~0 for the
non-interpolated variant, which equals sklearn's average_precision_score).
"""

import time

import numpy as np
from sklearn.metrics import average_precision_score

from clipml.metrics import average_precision, evaluate_scores

N, C = 40504, 80


def best_of(fn, repeats=3):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return min(times), value


def main() -> None:
    rng = np.random.RandomState(0)
    labels = (rng.random_sample((N, C)) < 0.036).astype(np.int8)  # ~2.9 labels per image, as COCO
    scores = np.clip(rng.normal(labels * 1.5, 1.0), -5, 5).astype(np.float32)
    scores = np.round(scores, 3)  # some ties, as float16/float32 outputs have

    t_sklearn, ref = best_of(lambda: np.array([average_precision_score(labels[:, c], scores[:, c]) for c in range(C)]))
    t_ours, ours = best_of(lambda: average_precision(scores, labels, kind="raw"))
    t_interp, _ = best_of(lambda: average_precision(scores, labels, kind="envelope"))
    probs = 1 / (1 + np.exp(-scores))
    t_all, _ = best_of(lambda: evaluate_scores(probs, labels))
    print(f"data: {N} x {C} scores, {int(labels.sum())} positives")
    print(f"sklearn per-class loop (non-interpolated AP): {t_sklearn * 1e3:8.1f} ms")
    print(f"clipml average_precision (non-interpolated):  {t_ours * 1e3:8.1f} ms  speed-up x{t_sklearn / t_ours:.1f}")
    print(f"clipml average_precision (interpolated):      {t_interp * 1e3:8.1f} ms  speed-up x{t_sklearn / t_interp:.1f}")
    print(f"clipml evaluate_scores (mAP + F1 + top-3):    {t_all * 1e3:8.1f} ms")
    print(f"max |AP clipml - AP sklearn| = {np.abs(ours - ref).max():.2e}")


if __name__ == "__main__":
    main()
