"""The import layers of README.md's layout: arrows only point down, and no module needs another first.

    models (modeling_finetune, modeling_pretrain and their kernels, objective_kernels: torch, timm and
            each other)
      <- weights (hf_weights: formats and export; weights: reading files into the models)
      <- engines, datasets, evaluations, run infrastructure
      <- drivers

No driver (a module with `if __name__ == "__main__":`, run as `python X.py` or `python -m X`) imports
another driver: what two drivers share lives in a library module below both (evals.common,
pretrain_flags, datasets.generated, weights).

The graph is built from the source (every import statement, inside functions too) of every module
at the repository root and in its packages (any folder with an __init__.py, found here, not listed),
leaving out tests/, bench/ and scripts/.
"""
import ast
import os
import subprocess
import sys
import textwrap
from typing import Dict, List, Optional, Set

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOT_PROJECT = {"tests", "bench", "scripts"}  # folders of scripts run as files, not imported modules
# The bottom layer: imports no other project module. objective_kernels holds the model's fused scores
# (ScoresInto) beside the objective's kernels, and imports only the backbone's MaskIndex.
MODEL_FILES = {"modeling_finetune", "modeling_pretrain", "objective_kernels"}


def project_modules(root: str) -> Dict[str, str]:
    """{dotted module name: path} of the root's .py files and of every package below it (recursively)."""
    modules = {}

    def walk(folder: str, prefix: str) -> None:
        for name in sorted(os.listdir(folder)):
            path = os.path.join(folder, name)
            if name.endswith(".py"):
                stem = name[:-3]
                modules[prefix.rstrip(".") if stem == "__init__" else prefix + stem] = path
            elif (os.path.isdir(path) and not name.startswith((".", "_")) and name not in NOT_PROJECT
                  and os.path.isfile(os.path.join(path, "__init__.py"))):
                walk(path, prefix + name + ".")

    walk(root, "")
    return modules


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> Set[str]:
    """Dotted names each import statement of `tree` may load (relative imports resolved)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # from . import x / from ..a import b
                parts = module.split(".") if is_package else module.split(".")[:-1]
                parts = parts[:len(parts) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" if base else alias.name for alias in node.names)
    return names


def import_graph(root: str) -> Dict[str, Set[str]]:
    """{module: project modules it imports}. `import a.b` loads the package `a` too, so both count."""
    modules = project_modules(root)
    graph = {}
    for module, path in modules.items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), filename=path)
        edges = set()
        for name in _imported_names(tree, module, path.endswith("__init__.py")):
            parts = name.split(".")
            edges.update(".".join(parts[:i]) for i in range(1, len(parts) + 1) if ".".join(parts[:i]) in modules)
        # A package's own submodules import it first: that edge is no cycle, it is how packages load.
        edges.discard(module)
        if not path.endswith("__init__.py"):
            edges -= {p for p in edges if module.startswith(p + ".")}
        graph[module] = edges
    return graph


def find_cycle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
    """One import cycle as [a, b, ..., a], or None (depth-first search, colouring modules)."""
    state: Dict[str, int] = {}  # 1: on the current path, 2: finished
    path: List[str] = []

    def visit(module: str) -> Optional[List[str]]:
        state[module] = 1
        path.append(module)
        for other in sorted(graph.get(module, ())):
            if state.get(other) == 1:
                return path[path.index(other):] + [other]
            if other not in state:
                found = visit(other)
                if found:
                    return found
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state:
            found = visit(module)
            if found:
                return found
    return None


def layer_violations(graph: Dict[str, Set[str]]) -> List[str]:
    """'modeling_x imports y' for every project import of a bottom-layer file of another layer."""
    return [f"{m} imports {o}" for m in sorted(MODEL_FILES & set(graph)) for o in sorted(graph[m] - MODEL_FILES)]


def is_driver(path: str) -> bool:
    """Whether a module runs as a program: a top-level `if __name__ == "__main__":` block."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=path)
    for node in tree.body:
        test = node.test if isinstance(node, ast.If) else None
        if (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == "__name__"
                and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in test.comparators)):
            return True
    return False


def driver_imports(root: str, graph: Dict[str, Set[str]]) -> List[str]:
    """'driver a imports driver b' for every project import of one driver by another."""
    drivers = {m for m, path in project_modules(root).items() if is_driver(path)}
    return [f"driver {m} imports driver {o}" for m in sorted(drivers & set(graph)) for o in sorted(graph[m] & drivers)]


def test_the_project_has_no_import_cycle():
    graph = import_graph(ROOT)
    assert {"modeling_finetune", "weights", "hf_weights", "datasets", "datasets.decoding"} <= set(graph)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_model_files_import_no_project_module_above_them():
    graph = import_graph(ROOT)
    assert MODEL_FILES <= set(graph)
    assert layer_violations(graph) == []
    assert graph["modeling_finetune"] == set()
    assert graph["modeling_pretrain"] == {"modeling_finetune", "objective_kernels"}
    assert graph["objective_kernels"] == {"modeling_finetune"}


def test_no_driver_imports_another_driver():
    graph = import_graph(ROOT)
    drivers = {m for m, path in project_modules(ROOT).items() if is_driver(path)}
    # The drivers README.md names (python X.py / python -m X), so the discovery cannot silently find none.
    assert {"run_sigma_pretraining", "run_class_finetuning", "run_sigma_vis", "extract_features", "hf_weights",
            "evals.knn", "evals.probe", "evals.segmentation", "datasets.synthetic"} <= drivers
    assert not {"weights", "evals.common", "pretrain_flags", "datasets.generated", "finetune_build"} & drivers
    assert driver_imports(ROOT, graph) == []


def _write(folder, files: Dict[str, str]) -> str:
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return str(folder)


def test_the_graph_finds_planted_cycles_and_upward_arrows(tmp_path):
    root = _write(tmp_path, {
        "weights.py": "import modeling_finetune\n",
        "modeling_finetune.py": "import torch\n\ndef load():\n    from weights import read  # inside a function\n",
        "modeling_pretrain.py": "from modeling_finetune import Block\n",
        "pkg/__init__.py": "",
        "pkg/a.py": "from .b import x\n",
        "pkg/b.py": "from pkg import a\n",
        "pkg/c.py": "from . import b\nimport pkg\n",  # a submodule importing its own package: no cycle
        "tests/test_x.py": "import weights\n",  # tests are left out
        "bench/b.py": "import modeling_pretrain\n",
    })
    graph = import_graph(root)
    assert set(graph) == {"weights", "modeling_finetune", "modeling_pretrain", "pkg", "pkg.a", "pkg.b", "pkg.c"}
    assert graph["modeling_finetune"] == {"weights"} and graph["pkg.a"] == {"pkg.b"}
    assert graph["pkg.b"] == {"pkg.a"} and graph["pkg.c"] == {"pkg.b"}
    assert find_cycle(graph) == ["modeling_finetune", "weights", "modeling_finetune"]
    assert layer_violations(graph) == ["modeling_finetune imports weights"]
    del graph["modeling_finetune"]
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.a"]
    graph["pkg.b"] = set()
    assert find_cycle(graph) is None


def test_a_driver_importing_a_driver_is_found(tmp_path):
    main = 'if __name__ == "__main__":\n    main()\n'
    root = _write(tmp_path, {
        "run_a.py": "from run_b import build_parser\n\ndef main():\n    pass\n\n" + main,
        "run_b.py": "import lib\n\ndef build_parser():\n    pass\n\n" + main,
        "lib.py": "import run_b\n\ndef f():\n    if __name__ == 'lib':\n        pass\n",  # a library may import a driver
        "pkg/__init__.py": "",
        "pkg/tool.py": "from .. import lib\nfrom run_a import main\n" + main,
    })
    graph = import_graph(root)
    assert [m for m, p in sorted(project_modules(root).items()) if is_driver(p)] == ["pkg.tool", "run_a", "run_b"]
    assert driver_imports(root, graph) == ["driver pkg.tool imports driver run_a", "driver run_a imports driver run_b"]


# One fresh interpreter preloads the third-party libraries (torch's import alone costs seconds), then
# imports each project module in a forked child where no project module has been imported yet.
_IMPORT_EACH = """
import os, sys, traceback
import numpy, timm, torch
failed = []
for name in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:
        try:
            assert not [m for m in sys.modules if m in set(sys.argv[1:])], "a project module is loaded already"
            __import__(name)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    if os.waitpid(pid, 0)[1] != 0:
        failed.append(name)
print("FAILED", " ".join(failed))
sys.exit(1 if failed else 0)
"""


@pytest.mark.slow  # 18 s on 2 cores: one forked child per module
@pytest.mark.skipif(not hasattr(os, "fork"), reason="forks one child per module")
def test_every_module_imports_on_its_own_in_a_fresh_interpreter():
    modules = sorted(project_modules(ROOT))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    result = subprocess.run([sys.executable, "-c", _IMPORT_EACH, *modules], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert result.stdout.strip() == "FAILED"
