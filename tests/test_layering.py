"""The package's layers: no module imports from a layer above it (README "Project layout").

``modeling`` is the bottom (models only), ``data`` loads data, ``uda`` is the method, ``engine`` the workflow
around it, ``benchmark`` the top (nothing in the package imports it). Imports are read from the source with ``ast``
(also those inside functions).
"""
import ast
from typing import Dict, List, Set

import pytest

from tests.helpers.paths import REPO_ROOT

PACKAGE = REPO_ROOT / "hrda_d2"

# layer -> the layers it must not import
FORBIDDEN: Dict[str, Set[str]] = {
    "modeling": {"engine", "uda", "data", "evaluation", "checkpoint", "solver", "utils"},
    "data": {"engine", "uda", "evaluation", "checkpoint", "solver"},
    "uda": {"engine", "evaluation", "checkpoint"},
    "utils": {"engine", "uda"},
    "evaluation": {"engine", "uda"},
    "solver": {"engine", "uda", "data", "evaluation"},
}


def imported_layers(source: str, module: str) -> Set[str]:
    """The top-level ``hrda_d2`` subpackages that ``source`` (the text of module ``module``, e.g.
    ``hrda_d2.data.build``) imports, by absolute or relative imports."""
    module_parts = tuple(module.split("."))
    layers = set()
    for node in ast.walk(ast.parse(source)):
        names: List[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module_parts[: len(module_parts) - node.level]
                names = [".".join(base + ((node.module,) if node.module else ()))]
            else:
                names = [node.module or ""]
        for name in names:
            parts = name.split(".")
            if parts[0] == "hrda_d2" and len(parts) > 1:
                layers.add(parts[1])
    return layers


def test_imported_layers_reads_relative_imports():
    source = "from ...data.build import a\nfrom ..heads import b\nimport hrda_d2.uda.dacs_step\nimport os\n"
    assert imported_layers(source, "hrda_d2.modeling.meta_arch.x") == {"data", "modeling", "uda"}


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_no_layer_imports_from_a_layer_above_it(layer):
    violations = []
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        module = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts)
        for bad in sorted(imported_layers(path.read_text(), module) & FORBIDDEN[layer]):
            violations.append(f"{path.relative_to(REPO_ROOT)} imports hrda_d2.{bad}")
    assert not violations, "\n".join(violations)


def test_nothing_in_the_package_imports_the_benchmark_layer():
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.relative_to(PACKAGE).parts[0] == "benchmark":
            continue
        module = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts)
        if "benchmark" in imported_layers(path.read_text(), module):
            violations.append(f"{path.relative_to(REPO_ROOT)} imports hrda_d2.benchmark")
    assert not violations, "\n".join(violations)
