"""The package's layers form one total order (README "Project layout"), and no module import circle exists.

    utils < config < modeling < data < solver | evaluation < uda < checkpoint < export < engine < experiments

``hrda_d2_deploy`` (the runtime without Detectron2, beside the package) sits below all of them: the package may
import it (its geometry is shared), it imports nothing of ``hrda_d2``, and at module level only the standard library,
NumPy and itself (the graphs' runtime ``onnxruntime`` / ``torch`` and OpenCV inside functions only).

A module may import only from layers below its own (and from its own layer); ``solver`` and ``evaluation`` share a
rank and do not import each other. ``tools/`` (with ``tools/benchmarking``, the benchmark library) and ``demo/`` are
scripts above every layer (run by path, never imported by the package). Imports are read from the source with ``ast``, also relative ones and those inside
functions, so a circle "broken" by an in-function import still counts as a circle.
"""
import ast
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set, Tuple


from tests.helpers.paths import REPO_ROOT

PACKAGE = REPO_ROOT / "hrda_d2"
DEPLOY_PACKAGE = REPO_ROOT / "hrda_d2_deploy"

# lowest first; layers in one tuple share a rank
LAYER_ORDER: Sequence[Tuple[str, ...]] = (
    ("utils",), ("config",), ("modeling",), ("data",), ("solver", "evaluation"), ("uda",), ("checkpoint",),
    ("export",), ("engine",), ("experiments",),
)
# what the package never imports: the script folders, the tests, and tools/benchmarking (tools/benchmark.py's library)
SCRIPT_FOLDERS = ("tools", "demo", "tests", "benchmarking")
RANK: Dict[str, int] = {layer: rank for rank, layers in enumerate(LAYER_ORDER) for layer in layers}


def module_name(path: Path, root: Path = REPO_ROOT) -> str:
    """``hrda_d2/data/build.py`` -> ``hrda_d2.data.build``; a package's ``__init__.py`` -> the package."""
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_statements(source: str, module: str, is_package: bool = False) -> List[Tuple[str, Tuple[str, ...]]]:
    """``(module imported, names taken from it)`` for every import of ``source`` (the text of ``module``):
    ``import a.b`` -> ``("a.b", ())``; ``from a import b, c`` -> ``("a", ("b", "c"))``; relative imports
    resolved (in a package's ``__init__.py``, ``.`` is the package itself)."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    out: List[Tuple[str, Tuple[str, ...]]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(alias.name, ()) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.append((target, tuple(alias.name for alias in node.names)))
    return out


def imported_modules(source: str, module: str, is_package: bool = False,
                     known: Optional[Set[str]] = None) -> Set[str]:
    """The modules ``source`` imports. ``from a import b`` imports ``a.b`` when that is a module (in ``known``;
    without ``known``: always counted as a candidate) and ``a`` itself unless every name is such a module."""
    names: Set[str] = set()
    for target, taken in import_statements(source, module, is_package):
        submodules = {f"{target}.{n}" for n in taken if known is None or f"{target}.{n}" in known}
        names |= submodules
        if known is None or not taken or len(submodules) < len(taken):
            names.add(target)
    return names


def imported_layers(source: str, module: str, is_package: bool = False) -> Set[str]:
    """The top-level ``hrda_d2`` parts (subpackages, or the ``config`` module) that ``source`` imports."""
    layers = set()
    for name in imported_modules(source, module, is_package):
        parts = name.split(".")
        if parts[0] == "hrda_d2" and len(parts) > 1 and parts[1] in RANK:
            layers.add(parts[1])
    return layers


def package_sources(package: Path = PACKAGE) -> Dict[str, Tuple[Path, bool]]:
    """module name -> (file, is a package ``__init__.py``) for every module below ``package``."""
    root = package.parent
    return {module_name(p, root): (p, p.name == "__init__.py") for p in sorted(package.rglob("*.py"))}


def import_graph(sources: Dict[str, Tuple[Path, bool]]) -> Dict[str, Set[str]]:
    """module -> the modules of ``sources`` it imports."""
    known = set(sources)
    return {module: imported_modules(path.read_text(), module, is_package, known) & known - {module}
            for module, (path, is_package) in sources.items()}


def find_cycle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
    """One import circle of ``graph`` (``[a, b, ..., a]``), or None."""
    state: Dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: List[str] = []

    def visit(node: str) -> Optional[List[str]]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


def layer_of(module: str) -> Optional[str]:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in RANK else None


def layer_violations(sources: Dict[str, Tuple[Path, bool]], root: Path = REPO_ROOT) -> List[str]:
    """``"<file> (<layer>) imports hrda_d2.<layer above or beside>"`` for every import against the order."""
    out = []
    for module, (path, is_package) in sources.items():
        layer = layer_of(module)
        if layer is None:  # the package root (hrda_d2/__init__.py) registers everything
            continue
        for other in sorted(imported_layers(path.read_text(), module, is_package) - {layer}):
            if RANK[other] >= RANK[layer]:
                out.append(f"{path.relative_to(root)} ({layer}) imports hrda_d2.{other}")
    return out


# ---------------------------------------------------------------------------------------------------- tests
def test_every_layer_of_the_package_has_a_rank():
    tops = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
            if (p.is_dir() and (p / "__init__.py").exists()) or (p.suffix == ".py" and p.stem != "__init__")}
    assert tops <= set(RANK), f"new top-level parts without a rank in LAYER_ORDER: {sorted(tops - set(RANK))}"


def test_imported_modules_reads_relative_and_function_level_imports():
    source = ("from ...data.build import a\nfrom ..heads import b\nimport hrda_d2.uda.dacs_step\nimport os\n"
              "def f():\n    from ..losses import c\n")
    names = imported_modules(source, "hrda_d2.modeling.meta_arch.x")
    assert {"hrda_d2.data.build", "hrda_d2.modeling.heads", "hrda_d2.modeling.heads.b", "hrda_d2.uda.dacs_step",
            "hrda_d2.modeling.losses", "os"} <= names
    known = {"hrda_d2.modeling.heads", "hrda_d2.modeling.losses"}  # heads.b is a name, losses.c too
    assert imported_modules("from ..heads import b\n", "hrda_d2.modeling.meta_arch.x", known=known) == {"hrda_d2.modeling.heads"}
    assert imported_layers(source, "hrda_d2.modeling.meta_arch.x") == {"data", "modeling", "uda"}
    # in a package's __init__.py, "." is the package itself
    assert "hrda_d2.uda.dacs_step" in imported_modules("from .dacs_step import X\n", "hrda_d2.uda", is_package=True)


def test_find_cycle_finds_a_circle_and_only_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None  # a diamond is no circle


def test_layer_check_detects_an_upward_import(tmp_path):
    package = tmp_path / "hrda_d2"
    for layer, text in (("modeling", "from ..engine import HRDATrainer\n"), ("engine", "from ..modeling import x\n")):
        (package / layer).mkdir(parents=True)
        (package / layer / "__init__.py").write_text(text)
    found = layer_violations(package_sources(package), tmp_path)
    assert found == ["hrda_d2/modeling/__init__.py (modeling) imports hrda_d2.engine"]


def test_import_graph_finds_a_circle_through_an_in_function_import(tmp_path):
    package = tmp_path / "hrda_d2" / "checkpoint"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from .b import convert\n")
    (package / "b.py").write_text("def convert():\n    from .a import helper\n")
    (package / "c.py").write_text("from . import a, b\n")
    graph = import_graph(package_sources(tmp_path / "hrda_d2"))
    assert graph["hrda_d2.checkpoint.c"] == {"hrda_d2.checkpoint.a", "hrda_d2.checkpoint.b"}
    assert find_cycle(graph) == ["hrda_d2.checkpoint.a", "hrda_d2.checkpoint.b", "hrda_d2.checkpoint.a"]


def test_no_layer_imports_from_its_own_rank_or_above():
    violations = layer_violations(package_sources())
    assert not violations, "\n".join(violations)


def test_no_import_circle_in_the_package():
    cycle = find_cycle(import_graph(package_sources()))
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_package_never_imports_the_scripts():
    offenders = []
    for module, (path, is_package) in package_sources().items():
        names = imported_modules(path.read_text(), module, is_package)
        offenders += [f"{module} imports {n}" for n in names if n.split(".")[0] in SCRIPT_FOLDERS]
    assert not offenders, offenders


def module_level_imports(source: str) -> Set[str]:
    """The top-level names of the modules ``source`` imports outside functions and classes (relative imports as
    ``"."``)."""
    names: Set[str] = set()
    for node in ast.parse(source).body:
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add("." if node.level else (node.module or "").split(".")[0])
    return names


def test_the_deploy_runtime_imports_only_the_standard_library_and_numpy_at_module_level():
    import sys

    allowed = set(sys.stdlib_module_names) | {"numpy", "."}
    offenders = {}
    for path in sorted(DEPLOY_PACKAGE.rglob("*.py")):
        names = module_level_imports(path.read_text())
        if names - allowed:
            offenders[path.name] = sorted(names - allowed)
    assert not offenders, offenders
    anywhere = {n for p in DEPLOY_PACKAGE.rglob("*.py")
                for n in imported_modules(p.read_text(), module_name(p, REPO_ROOT), p.name == "__init__.py")}
    assert not {n for n in anywhere if n.split(".")[0] in ("hrda_d2", "detectron2")}, "the runtime imports hrda_d2"
