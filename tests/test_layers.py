"""The library apart from the lab: clipml.data never imports clipml.lab; the lab is a plugin that
registers its dataset, caption source and toy backbones through the registries any user's uses."""

import ast
import subprocess
import sys
from pathlib import Path

import clipml

PACKAGE = Path(clipml.__file__).resolve().parent


def imported_modules(path: Path):
    """Every module an `import` or `from ... import` of `path` names, at any depth (lazy ones too)."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def test_no_data_module_imports_the_lab():
    offenders = sorted(f"{path.relative_to(PACKAGE.parent)}: {name}"
                       for path in (PACKAGE / "data").rglob("*.py")
                       for name in imported_modules(path)
                       if name == "clipml.lab" or name.startswith("clipml.lab."))
    assert not offenders, offenders


def test_the_checker_sees_lazy_imports(tmp_path):
    """The check above would catch the imports the data layer had (inside functions)."""
    path = tmp_path / "old.py"
    path.write_text("def f():\n    from clipml.lab.world import SYNONYMS\n\ndef g():\n    from clipml import lab\n")
    assert {"clipml.lab.world", "clipml.lab"} <= set(imported_modules(path))


def test_the_lab_registers_itself_on_the_first_lookup():
    """Importing the data and backbone layers loads no lab; looking a name up does, and then the
    world, its captions and the toy CLIPs are there under their names."""
    code = (
        "import sys\n"
        "import clipml.data, clipml.backbones, clipml.experiment\n"
        "assert 'clipml.lab' not in sys.modules, 'the lab was imported by the library'\n"
        "from clipml.data import available_datasets\n"
        "from clipml.data.captions import caption_sources\n"
        "from clipml.backbones.registry import resolve\n"
        "assert 'synthetic' in available_datasets() and caption_sources() == ['synthetic']\n"
        "family, source = resolve('toy-rn')\n"
        "assert family.name == 'open_clip' and source.startswith('clipml-lab-rn@'), source\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent)
    assert result.returncode == 0, result.stderr
