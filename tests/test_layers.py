"""The package's floors: the library (adapters, core, techniques, storage and export, metrics)
imports nothing from the lab (built-in zoo and data, recipes, auto, bench, report, CLI); imports
only run downwards (sibling techniques share helpers through core, never through each other);
`import mmcompress` stays light until a feature is used."""

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# floor -> groups of packages/modules (prefix match on the dotted name; longest prefix wins). On the
# techniques' floor each group is one technique; a module's group is its matching prefix's group.
FLOORS = {
    0: ["mmcompress.errors"],
    1: ["mmcompress.core"],
    2: [
        "mmcompress.models.adapter",
        "mmcompress.models.attention_specs",
        "mmcompress.models.feed_forward_specs",
        "mmcompress.models.attention",
        "mmcompress.models.split_attention",
        "mmcompress.models.traceable_transformer",
        "mmcompress.evaluate.metrics",
    ],  # fmt: skip
    3: ["mmcompress.train"],
    4: [  # techniques: siblings never import each other
        "mmcompress.quant",
        "mmcompress.prune",
        "mmcompress.distill",
        "mmcompress.graph.folding",
        "mmcompress.graph.lowrank",
        "deep compression: mmcompress.graph.sharing mmcompress.graph.deep_compression "
        "mmcompress.graph.deep_file mmcompress.graph.huffman",
    ],  # fmt: skip
    5: ["mmcompress.graph", "mmcompress.evaluate.measure"],  # storage, packing, ONNX export and runtime
    6: ["mmcompress.models.hf", "mmcompress.models.minilm", "mmcompress.models.mobilenet_v2", "mmcompress.audio"],
    # the lab
    7: ["mmcompress.data", "mmcompress.models"],
    8: ["mmcompress.recipe", "mmcompress.report", "mmcompress.evaluate"],
    9: ["mmcompress.auto"],
    10: [
        "mmcompress.cli",
        "mmcompress.cli_auto",
        "mmcompress.cli_bench",
        "mmcompress.cli_compress",
        "mmcompress.cli_distill",
        "mmcompress.__main__",
        "mmcompress",
    ],  # fmt: skip
}
LAB = 7
TECHNIQUES = 4


def place(module: str) -> tuple[int, str]:
    """(floor, group) of a module: the group of its longest matching prefix."""
    matches = [
        (len(prefix), floor, group)
        for floor, groups in FLOORS.items()
        for group in groups
        for prefix in group.split(": ")[-1].split()
        if module == prefix or module.startswith(prefix + ".")
    ]
    _, floor, group = max(matches)
    return floor, group


def internal_imports() -> list[tuple[str, str, bool]]:
    """(importer, imported, inside a function) for every import of an mmcompress module."""
    found = []
    for path in (SRC / "mmcompress").rglob("*.py"):
        module = ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        tree = ast.parse(path.read_text())
        local = {id(n) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) for n in ast.walk(f)}
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mmcompress"):
                folder = SRC / node.module.replace(".", "/")
                submodules = [a.name for a in node.names if (folder / f"{a.name}.py").exists()]
                names = [f"{node.module}.{name}" for name in submodules] or [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("mmcompress")]
            found += [(module, name, id(node) in local) for name in names]
    return found


def test_imports_run_downwards_only():
    upward = []
    for importer, imported, _ in internal_imports():
        (low_floor, low_group), (high_floor, high_group) = place(importer), place(imported)
        if low_group == high_group:
            continue
        if high_floor > low_floor or (high_floor == low_floor == TECHNIQUES):
            upward.append(f"{importer} -> {imported}")
    assert upward == [], "imports that run up a floor or across sibling techniques:\n" + "\n".join(upward)


def test_library_imports_nothing_from_the_lab():
    crossing = [f"{a} -> {b}" for a, b, _ in internal_imports() if place(a)[0] < LAB <= place(b)[0]]
    assert crossing == []


def test_no_import_cycles_between_modules():
    graph = defaultdict(set)
    for importer, imported, _ in internal_imports():
        graph[importer].add(imported)
    state: dict[str, int] = {}
    cycles: list[str] = []

    def visit(node, trail):
        state[node] = 1
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*trail[trail.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for node in list(graph):
        if node not in state:
            visit(node, [node])
    assert len(state) > 150  # every module was visited
    assert cycles == [], "import cycles:\n" + "\n".join(cycles)


def test_import_mmcompress_is_lazy():
    code = (
        "import sys, mmcompress\n"
        "heavy = [m for m in ('onnxruntime', 'matplotlib', 'transformers', 'optuna', 'sklearn', 'scipy',"
        " 'mmcompress.quant.gptq', 'mmcompress.recipe.runner') if m in sys.modules]\n"
        "print(len([m for m in sys.modules if m.startswith('mmcompress')]), heavy)\n"
        "mmcompress.QuantConfig(weight_bits=4)\n"
        "print('mmcompress.quant.config' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    count, heavy = out[0].split(" ", 1)
    assert heavy == "[]" and int(count) <= 3, out
    assert out[1] == "True"  # a public name loads its module on first use


def test_subpackages_and_their_modules_are_attributes_after_import_mmcompress():
    code = (
        "import sys, mmcompress\n"
        "print(mmcompress.graph.export.export_onnx.__name__, mmcompress.quant.kernels.__name__)\n"
        "print(callable(mmcompress.prune), callable(mmcompress.distill))\n"  # the verbs keep their names
        "for path in ('mmcompress.graph.no_such_module', 'mmcompress.no_such_name'):\n"
        "    try:\n"
        "        eval(path)\n"
        "    except AttributeError as err:\n"
        "        print(type(err).__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[:4] == ["export_onnx mmcompress.quant.kernels", "True True", "AttributeError", "AttributeError"], out
