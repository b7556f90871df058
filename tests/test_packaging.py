"""An installed wheel (`pip install .`, not editable) works away from the clone: the demo config
and the other assets are package data. And the clone's own folders never pass for the package."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # about 25 s on 2 busy cores: a wheel build, an install and a tool start
def test_a_wheel_installed_elsewhere_finds_the_demo_config(tmp_path):
    source = tmp_path / "src"  # built from a copy: the build leaves nothing in the clone
    source.mkdir()
    for name in ("pyproject.toml", "setup.cfg", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "clipml", source / "clipml", ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(tmp_path / "dist"),
                    str(source)], check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("clipml-*.whl"))
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True, capture_output=True)
    # Every module and asset is in the wheel (a folder without __init__.py, as clipml/engine was, is left out).
    files = lambda root: {p.relative_to(root) for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts}  # noqa: E731
    assert files(REPO / "clipml") <= files(site / "clipml"), sorted(files(REPO / "clipml") - files(site / "clipml"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = dict(os.environ, PYTHONPATH=str(site))
    done = subprocess.run([str(site / "bin" / "clipml-train-prompts"), "--print-config"], cwd=elsewhere, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("# the demo config (clipml/assets/demo.yaml)")
    assert 'name = "demo"' in done.stdout and 'backbone.spec = "toy"' in done.stdout
    where = subprocess.run([sys.executable, "-c", "import clipml.engine.train as m; print(m.__file__)"], cwd=elsewhere,
                           env=env, capture_output=True, text=True, check=True)
    assert Path(where.stdout.strip()).is_relative_to(site)  # the wheel's copy ran, not an editable install's


def test_the_folder_above_a_clone_named_clipml_imports_the_real_package(tmp_path):
    """From there `clipml` was the clone itself as a namespace package (no __file__), whose
    `clipml.prompts` was the clone's top-level prompts/ folder."""
    (tmp_path / "clipml").symlink_to(REPO, target_is_directory=True)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    code = ("import clipml, clipml.prompts, clipml.data.vocab as vocab; "
            "print(clipml.__file__); print(clipml.prompts.__file__); print(vocab.templates('single'))")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    package = tmp_path / "clipml" / "clipml"
    assert done.stdout.splitlines() == [str(package / "__init__.py"), str(package / "prompts.py"),
                                        "['a photo of a {}.']"]
    at_root = subprocess.run([sys.executable, "-c", "import prompts"], cwd=REPO, env=env, capture_output=True, text=True)
    assert "No module named 'prompts'" in at_root.stderr  # the clone's root holds no stray importable folder
