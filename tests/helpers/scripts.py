"""Importing the project's scripts (``tools/``, ``demo/`` are script folders run by path, not packages)."""
import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Union


def import_script(path: Union[str, Path], name: str) -> ModuleType:
    """Execute the script at ``path`` as a module called ``name`` (its ``if __name__ == "__main__"`` part does
    not run) and return it."""
    spec = importlib.util.spec_from_file_location(name, str(path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
