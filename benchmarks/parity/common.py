"""Shared helpers of the reference-parity scripts (benchmarks/parity/*.py).

Nothing here hard-codes a path of this machine: the reference checkout comes from --ref (an
extracted folder or a fetched git directory, which is read with `git`), and temporary files go
to a fresh temporary directory. Run from the clipml checkout root with clipml importable.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
import tempfile
import types
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np
import torch

# The tiny CLIP the golden values were computed with lives in the lab, where the tests find it too.
from clipml.lab.tiny import TINY_NAME, TINY_RN, clipml_backbone, images, tiny_openclip  # noqa: F401


# ----------------------------------------------------------------------------- reference files
def _is_git_dir(path: Path) -> bool:
    return (path / "HEAD").is_file() and (path / "objects").is_dir()


def materialize_ref(ref: str, needed: Sequence[str], workdir: Path) -> Path:
    """A folder holding the reference files `needed` (paths or folder prefixes).

    `ref` may be an extracted checkout (used as is when the first needed entry exists there) or
    a git directory (bare or a mirror's `repo`): then the needed files of HEAD are written under
    `workdir` with `git cat-file` (files missing from the snapshot, e.g. large ones, are skipped).
    """
    path = Path(ref).expanduser().resolve()
    if not path.exists():
        raise SystemExit(f"--ref {ref}: no such file or folder")
    if (path / needed[0]).exists() and not _is_git_dir(path):
        return path
    gitdir = path if _is_git_dir(path) else path / ".git"
    if not _is_git_dir(gitdir):
        raise SystemExit(f"--ref {ref}: neither holds {needed[0]} nor is a git directory")
    listing = subprocess.run(["git", f"--git-dir={gitdir}", "ls-tree", "-r", "HEAD"], check=True,
                             capture_output=True, text=True).stdout.splitlines()
    out = workdir / "ref"
    for line in listing:
        meta, name = line.split("\t", 1)
        _, kind, sha = meta.split()
        if kind != "blob" or not any(name == n or name.startswith(n.rstrip("/") + "/") for n in needed):
            continue
        target = out / name
        target.parent.mkdir(parents=True, exist_ok=True)
        blob = subprocess.run(["git", f"--git-dir={gitdir}", "cat-file", "blob", sha], capture_output=True)
        if blob.returncode == 0:
            target.write_bytes(blob.stdout)
    if not (out / needed[0]).exists():
        raise SystemExit(f"--ref {ref}: HEAD has no {needed[0]}")
    return out


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--ref", default=os.environ.get("PARITY_REF"),
                        help="reference checkout (folder) or its fetched git directory; env PARITY_REF")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("PARITY_THREADS", "1")))
    return parser


def setup(args) -> Path:
    if not args.ref:
        raise SystemExit("--ref (or PARITY_REF) is required")
    torch.set_num_threads(max(1, args.threads))
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    work = Path(tempfile.mkdtemp(prefix="clipml-parity-"))
    if not os.environ.get("PARITY_KEEP"):
        import atexit
        import shutil
        atexit.register(shutil.rmtree, work, True)
    return work


@contextlib.contextmanager
def on_path(folder: Path):
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        sys.path.remove(str(folder))


def purge_modules(*prefixes: str) -> None:
    """Forget imported reference packages (two references both ship a top-level `clip`)."""
    for name in list(sys.modules):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            del sys.modules[name]


def stub_module(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module
    return module


def load_dassl_lr_scheduler(path: Path):
    """Dassl's dassl/optim/lr_scheduler.py, loaded with a shim for newer torch: its warm-up
    schedulers call `_LRScheduler.__init__(optimizer, last_epoch, verbose)`, and torch >= 2.7
    no longer takes `verbose`. Nothing else of the file changes."""
    import importlib.util
    import torch.optim.lr_scheduler as sched

    class _Compat(sched.LRScheduler):
        def __init__(self, optimizer, last_epoch=-1, verbose=False):
            super().__init__(optimizer, last_epoch)

    original = sched._LRScheduler
    sched._LRScheduler = _Compat
    try:
        spec = importlib.util.spec_from_file_location("ref_dassl_lr_scheduler", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sched._LRScheduler = original
    return module


def ns(**kwargs) -> types.SimpleNamespace:
    """A nested attribute namespace standing in for a yacs CfgNode."""
    return types.SimpleNamespace(**{k: ns(**v) if isinstance(v, dict) else v for k, v in kwargs.items()})


# ----------------------------------------------------------------------------- reporting
class Report:
    def __init__(self, title: str) -> None:
        self.title = title
        self.rows: List[tuple] = []

    @staticmethod
    def diff(a, b):
        a = torch.as_tensor(np.asarray(a.detach().cpu() if torch.is_tensor(a) else a, dtype=np.float64))
        b = torch.as_tensor(np.asarray(b.detach().cpu() if torch.is_tensor(b) else b, dtype=np.float64))
        if a.shape != b.shape:
            raise ValueError(f"shape mismatch {tuple(a.shape)} vs {tuple(b.shape)}")
        abs_diff = (a - b).abs()
        max_abs = float(abs_diff.max()) if abs_diff.numel() else 0.0
        scale = float(torch.maximum(a.abs(), b.abs()).max()) if a.numel() else 0.0
        rel = max_abs / scale if scale > 0 else 0.0
        return max_abs, rel

    def close(self, name: str, a, b, atol: float = 1e-5, rtol: float = 1e-5, expect: bool = True, note: str = ""):
        """PASS when (max|a-b| <= atol + rtol*max|.|) == expect; `expect=False` asserts a difference."""
        max_abs, rel = self.diff(a, b)
        scale = max_abs / rel if rel > 0 else 0.0
        same = max_abs <= atol + rtol * scale
        ok = same == expect
        self.rows.append((name, ok, max_abs, rel, note, expect))
        tag = "PASS" if ok else "FAIL"
        want = "" if expect else " (a difference was expected: deviation confirmed)"
        print(f"{tag} {name}: max_abs={max_abs:.3e} max_rel={rel:.3e}{want}{(' -- ' + note) if note else ''}",
              flush=True)
        return ok

    def check(self, name: str, ok: bool, note: str = "", expect: bool = True):
        passed = bool(ok) == expect
        self.rows.append((name, passed, float("nan"), float("nan"), note, expect))
        print(f"{'PASS' if passed else 'FAIL'} {name}{(' -- ' + note) if note else ''}", flush=True)
        return passed

    def summary(self) -> int:
        failed = [r for r in self.rows if not r[1]]
        deviations = [r for r in self.rows if r[1] and not r[5]]
        print(f"SUMMARY {self.title}: {len(self.rows) - len(failed)}/{len(self.rows)} checks passed, "
              f"{len(failed)} failed, {len(deviations)} of the passes confirm a known deviation "
              f"(checks written with expect=False)", flush=True)
        return 1 if failed else 0


def openai_state_dict(model) -> Dict[str, torch.Tensor]:
    """The open_clip CLIP's weights under OpenAI's key names (the same names for this layout)."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    state.pop("attn_mask", None)
    return state


