"""Figures on the source tree's layout: files and lines per package, the largest modules, imports that run
up the layers, function-local imports, long lines and citations of the unpublished spec.

    python3 bench/layout_report.py [--repo DIR] [--width 120]

The layer order is the one docs/DESIGN.md draws (top first); a module's layer is the longest prefix of its
name in LAYERS. Imports inside a layer, or down it, are fine; an import of a higher layer is "upward".
Reads files as text (ast); imports nothing from the repository, so it measures any checkout.
"""

import argparse
import ast
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

# top first; names in one row are one layer (siblings that must not import each other are listed apart)
LAYERS = [
    ["launch"],
    ["pipeline.demo"],
    ["pipeline.search"],
    ["pipeline.train"],
    ["pipeline.data"],
    ["models", "shard_tools"],
    ["foundation"],
]
# before the layout of issue 16, pipeline/ was one flat package between launch and models/shard_tools
FLAT_LAYERS = [["launch"], ["pipeline"], ["models", "shard_tools"]]
SOURCE_PACKAGES = ("launch", "pipeline", "models", "shard_tools", "foundation")
SPEC_CITATION = re.compile(r"\bspec(?:\.md)? ?(?:§|section )?\d+(?:\.\d+)*", re.I)


def module_name(repo: Path, path: Path) -> str:
    parts = list(path.relative_to(repo).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def layer_of(name: str, layers: list[list[str]]) -> tuple[int, str] | None:
    best = None
    for depth, row in enumerate(layers):
        for prefix in row:
            if name == prefix or name.startswith(prefix + "."):
                if best is None or len(prefix) > len(best[1]):
                    best = (depth, prefix)
    return best


def imported_names(tree: ast.Module, module: str, is_package: bool) -> list[tuple[str, int, bool]]:
    """(imported module, line, function-local) for every import of the file."""
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(package + ([base] if base else []))
            names = [f"{base}.{alias.name}" for alias in node.names] if base else []
            names = names or [base]
        else:
            continue
        for name in names:
            found.append((name, node.lineno, id(node) not in top_level))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--width", type=int, default=120, help="count lines longer than this")
    args = parser.parse_args()
    repo = args.repo.resolve()
    layers = LAYERS if (repo / "foundation").is_dir() else FLAT_LAYERS

    files = sorted(p for pkg in SOURCE_PACKAGES if (repo / pkg).is_dir() for p in (repo / pkg).rglob("*.py"))
    per_package: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    sizes, upward, cycles_edges, local_imports = [], [], set(), Counter()
    long_lines = {100: 0, args.width: 0}
    spec_citations = 0
    for path in files:
        text = path.read_text()
        lines = text.splitlines()
        module = module_name(repo, path)
        in_subpackage = module.startswith("pipeline.") and path.parent != repo / "pipeline"
        package = ".".join(module.split(".")[:2]) if in_subpackage else module.split(".")[0]
        per_package[package][0] += 1
        per_package[package][1] += len(lines)
        sizes.append((len(lines), str(path.relative_to(repo))))
        for width in long_lines:
            long_lines[width] += sum(len(line) > width for line in lines)
        spec_citations += len(SPEC_CITATION.findall(text))
        tree = ast.parse(text)
        own = layer_of(module, layers)
        statements = defaultdict(list)
        for name, line, local in imported_names(tree, module, path.name == "__init__.py"):
            statements[(line, local)].append(name)
        for (line, local), names in statements.items():
            ours = [name for name in names if name.split(".")[0] in SOURCE_PACKAGES]
            if local:
                local_imports["own packages" if ours else "third-party or stdlib"] += 1
            higher = []
            for name in ours:
                target = layer_of(name, layers)
                if own and target and own[1] != target[1]:
                    cycles_edges.add((own[1], target[1]))
                    if target[0] < own[0]:
                        higher.append(name)
            if higher:
                upward.append(f"{path.relative_to(repo)}:{line} imports {', '.join(higher)}")
    print(f"layers: {' > '.join(' | '.join(row) for row in layers)}")
    print("files and lines per package:")
    for package, (count, total) in sorted(per_package.items()):
        print(f"  {package:18s} {count:3d} files {total:6d} lines")
    print("largest modules: " + ", ".join(f"{name} ({n})" for n, name in sorted(sizes, reverse=True)[:3]))
    print(f"import statements that run upward: {len(upward)}")
    for entry in upward:
        print(f"  {entry}")
    loops = sorted({tuple(sorted(edge)) for edge in cycles_edges if edge[::-1] in cycles_edges})
    print(f"layer pairs importing each other: {len(loops)} {loops if loops else ''}")
    print(f"function-local import statements: {sum(local_imports.values())} ({dict(local_imports)})")
    print(f"lines over 100 characters: {long_lines[100]}; over {args.width}: {long_lines[args.width]}")
    print(f"citations of the spec by section number: {spec_citations}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
