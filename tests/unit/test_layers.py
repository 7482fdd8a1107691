"""The package's shape: one-way layers and no import circles (architecture.md, issue 15).

Every import counts, top-level or inside a function, because a lazy import is still a dependency:
commands -> pipeline (and bench_pipeline) -> stages -> backends / quant / training / data / core.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

PACKAGE = Path(__file__).resolve().parents[2] / "edgexfer"


def _module_name(path: Path, package: Path) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package_dir: Path = PACKAGE) -> Dict[str, Set[str]]:
    """module -> the package's modules it imports (``from a import b`` is a.b where that is a module)."""
    files = {_module_name(p, package_dir): p for p in package_dir.rglob("*.py")}
    graph: Dict[str, Set[str]] = {name: set() for name in files}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: List[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                targets = [f"{base}.{alias.name}" for alias in node.names] or [base]
            for target in targets:
                while target and target not in files:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def circles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Every back edge of a depth-first walk, as the circle it closes."""
    state: Dict[str, int] = {}
    found: List[List[str]] = []

    def visit(node: str, path: List[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                found.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return found


# lower number = higher layer (deploy orchestrates like the pipeline); the rest is the core (backends, quant ...)
LAYERS = {"cli": 0, "__main__": 0, "commands": 0, "pipeline": 1, "bench_pipeline": 1, "deploy": 1, "stages": 2}


def wrong_way(graph: Dict[str, Set[str]]) -> List[str]:
    """Imports of a higher layer, and a stage importing another stage (stages/<x>*.py and stages/<x>/ are x)."""
    def layer(module: str) -> int:
        parts = module.split(".")
        return LAYERS.get(parts[1], 3) if len(parts) > 1 else 3

    def stage(module: str) -> str:
        return module.split(".")[2].split("_")[0]

    wrong = []
    for module, targets in graph.items():
        for target in targets:
            if layer(target) < layer(module):
                wrong.append(f"{module} imports {target}")
            elif layer(module) == layer(target) == 2 and "." in module[len("edgexfer.stages"):]:
                if len(target.split(".")) > 2 and stage(target) != stage(module):
                    wrong.append(f"{module} imports another stage, {target}")
    return sorted(wrong)


def test_no_import_circles():
    found = circles(import_graph())
    assert not found, "import circles: " + "; ".join(" -> ".join(c) for c in found)


def test_layers_import_one_way():
    wrong = wrong_way(import_graph())
    assert not wrong, "\n".join(wrong)


def test_the_checks_find_a_planted_circle_and_wrong_way_imports(tmp_path):
    pkg = tmp_path / "edgexfer"
    for folder in (pkg / "stages", pkg / "core"):
        folder.mkdir(parents=True)
    for init in (pkg, pkg / "stages", pkg / "core"):
        (init / "__init__.py").write_text("")
    (pkg / "stages" / "build.py").write_text("from edgexfer.stages import verify\n")
    (pkg / "stages" / "verify.py").write_text("def f():\n    from ..core import util\n")
    (pkg / "stages" / "verify_data.py").write_text("from edgexfer.stages.verify import f\n")
    (pkg / "core" / "util.py").write_text("import edgexfer.stages.build\n")
    graph = import_graph(pkg)
    assert graph["edgexfer.stages.verify"] == {"edgexfer.core.util"}  # relative, inside a function
    assert circles(graph) == [["edgexfer.core.util", "edgexfer.stages.build", "edgexfer.stages.verify",
                               "edgexfer.core.util"]]
    assert wrong_way(graph) == [
        "edgexfer.core.util imports edgexfer.stages.build",
        "edgexfer.stages.build imports another stage, edgexfer.stages.verify",
    ]
