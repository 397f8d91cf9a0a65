"""Importing the project's scripts (``tools/``, ``demo/`` are script folders run by path, not packages)."""
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Union


def import_script(path: Union[str, Path], name: str) -> ModuleType:
    """Execute the script at ``path`` as a module called ``name`` (its ``if __name__ == "__main__"`` part does
    not run) and return it. While it runs, the script's folder is first on ``sys.path``, as when Python runs a
    script (``demo/demo.py`` imports ``demo/predictor.py`` as ``predictor``)."""
    spec = importlib.util.spec_from_file_location(name, str(path))
    module = importlib.util.module_from_spec(spec)
    folder = str(Path(path).resolve().parent)
    sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(folder)
    return module
