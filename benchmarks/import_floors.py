"""The import graph in numbers: imports that run up a floor (tests/test_layers.py's floors), module
cycles, function-local internal imports, and what `import mmcompress` / `import
mmcompress.quant.primitives` load and cost (`python -X importtime`, beyond `import torch`).

Run: .venv/bin/python benchmarks/import_floors.py [--src OTHER_CHECKOUT/src] [--write]
(`--src` of an older checkout gives the "before" column; `--write` updates docs/architecture.md's
`import-floors` section with this tree's and the given before numbers).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import test_layers  # noqa: E402  (the floors and the import scanner live with the test)

CODE = """
import sys, time
t0 = time.perf_counter(); import torch; t1 = time.perf_counter()
import {module}
t2 = time.perf_counter()
mods = [m for m in sys.modules if m.startswith('mmcompress')]
heavy = [m for m in ('onnxruntime', 'matplotlib', 'transformers', 'optuna', 'sklearn', 'scipy') if m in sys.modules]
print({{"seconds": t2 - t1, "modules": len(mods), "heavy": heavy}})
"""


def scan(src: Path) -> dict:
    test_layers.SRC = src
    imports = test_layers.internal_imports()
    total = len({p for p in (src / "mmcompress").rglob("*.py")})
    upward = 0
    for a, b, _ in imports:
        try:
            (fa, ga), (fb, gb) = test_layers.place(a), test_layers.place(b)
        except ValueError:  # a module the floors do not know (older layout)
            continue
        upward += ga != gb and (fb > fa or fb == fa == test_layers.TECHNIQUES)
    graph = defaultdict(set)
    for a, b, _ in imports:
        graph[a].add(b)
    cycles = sum(1 for a in graph for b in graph[a] if a < b and a in graph.get(b, ()))
    out = {"modules": total, "imports": len(imports), "function_local": sum(local for *_, local in imports),
           "upward": upward, "two_module_cycles": cycles}  # fmt: skip
    for module in ("mmcompress", "mmcompress.quant.primitives"):
        proc = subprocess.run([sys.executable, "-c", CODE.format(module=module)], capture_output=True, text=True,
                              env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"}, check=True)  # fmt: skip
        out[module] = eval(proc.stdout.strip().splitlines()[-1])  # noqa: S307  (our own print)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--src", type=Path, default=None, help="the src/ folder of an older checkout (before)")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    after = scan(Path(__file__).resolve().parents[1] / "src")
    before = scan(args.src.resolve()) if args.src else None
    print(json.dumps({"before": before, "after": after}, indent=1))
    if args.write:
        from _results import update_section

        rows = [("internal imports", "imports"), ("of them inside functions", "function_local"),
                ("imports up a floor / across sibling techniques", "upward"),
                ("pairs of modules importing each other", "two_module_cycles")]  # fmt: skip
        lines = ["| | before | after |", "|---|---|---|"]
        for label, key in rows:
            lines.append(f"| {label} | {before[key] if before else ''} | {after[key]} |")
        for module in ("mmcompress", "mmcompress.quant.primitives"):
            b, a = (before or {}).get(module), after[module]
            fmt = lambda r: f"{r['modules']} modules, {r['seconds']:.2f} s, heavy: {', '.join(r['heavy']) or 'none'}"  # noqa: E501,E731
            lines.append(f"| `import {module}` (beyond torch) | {fmt(b) if b else ''} | {fmt(a)} |")
        update_section(
            "import-floors", "\n".join(lines), path=Path(__file__).resolve().parents[1] / "docs" / "architecture.md"
        )


if __name__ == "__main__":
    main()
