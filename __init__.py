"""The root of a clipml clone, which is not the package. From the folder above a clone named
`clipml`, `import clipml` finds this folder first (an editable install's finder comes after the
folders on sys.path), and without this file Python would import the clone as a namespace package
whose `clipml.prompts`, `clipml.tools`, ... are the clone's folders. This file loads the real
package, `clipml/` inside, in its place."""

import importlib.util as _util
import os as _os
import sys as _sys

if __name__ == "clipml":
    _inner = _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "clipml")
    _spec = _util.spec_from_file_location("clipml", _os.path.join(_inner, "__init__.py"),
                                          submodule_search_locations=[_inner])
    _module = _util.module_from_spec(_spec)
    _sys.modules["clipml"] = _module  # the import statement returns what sys.modules holds
    _spec.loader.exec_module(_module)
