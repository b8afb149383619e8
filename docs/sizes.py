"""Measure the package's rooms: module, class and function sizes, and the imports that
run between layers. ``python docs/sizes.py`` prints the table ``docs/architecture.md``
quotes (``--write`` puts it there); ``tests/test_architecture.py`` holds the limits and
checks that the doc quotes the code as it is.

Lines are physical lines of the source (docstrings and comments included), as an editor
shows them.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "sgld_tuner"

#: the limits a maintainer must not break (docs/architecture.md, "Rules")
MAX_MODULE_LINES, MAX_CLASS_LINES, MAX_FUNCTION_LINES = 600, 400, 80
#: layer -> what it must never import (other packages, or modules of this one); the
#: layers are ordered: core < hyperparams < objective, skorch_adapter, learned_net <
#: search < net_io, tuner
_ABOVE_KINDS = ("sgld_tuner.objective", "sgld_tuner.skorch_adapter", "sgld_tuner.learned_net",
                "sgld_tuner.checks")
_ABOVE_SEARCH = ("sgld_tuner.tuner", "sgld_tuner.net_io")
FORBIDDEN = {
    "core": ("sklearn", "skorch", "sgld_tuner.hyperparams", "sgld_tuner.search",
             *_ABOVE_KINDS, *_ABOVE_SEARCH, "sgld_tuner.ensemble", "sgld_tuner.results"),
    "hyperparams": ("skorch", "sgld_tuner.search", *_ABOVE_KINDS, *_ABOVE_SEARCH),
    "objective": ("sgld_tuner.search", *_ABOVE_SEARCH),
    "skorch_adapter": ("sgld_tuner.search", "sgld_tuner.learned_net", *_ABOVE_SEARCH),
    "learned_net": ("sgld_tuner.search", *_ABOVE_SEARCH),
    "search": _ABOVE_SEARCH,
}


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py"))


def _name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _span(node) -> int:
    first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    return node.end_lineno - first + 1


def measure(path: Path) -> dict:
    """Lines of the module, of each class and of each function (methods as
    ``Class.method``), and the modules it imports (resolved to absolute names)."""
    source = path.read_text()
    tree = ast.parse(source)
    name = _name(path)
    classes, functions, imports = {}, {}, set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            classes[node.name] = _span(node)
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    functions[f"{node.name}.{item.name}"] = _span(item)
        elif isinstance(node, ast.Import):
            imports.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imports.add(_absolute(name, path, node))
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            functions[node.name] = _span(node)
    return {"module": name, "lines": len(source.splitlines()), "classes": classes,
            "functions": functions, "imports": imports}


def _absolute(name: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    base = package[:len(package) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in FORBIDDEN else None


def violations(measured: list[dict]) -> list[str]:
    """Every breach of the limits and of the layering rules, as sentences."""
    found = []
    for m in measured:
        if m["lines"] > MAX_MODULE_LINES:
            found.append(f"{m['module']}: {m['lines']} lines > {MAX_MODULE_LINES}")
        found += [f"{m['module']}.{c}: class of {n} lines > {MAX_CLASS_LINES}"
                  for c, n in m["classes"].items() if n > MAX_CLASS_LINES]
        found += [f"{m['module']}.{f}: function of {n} lines > {MAX_FUNCTION_LINES}"
                  for f, n in m["functions"].items() if n > MAX_FUNCTION_LINES]
        room = layer(m["module"])
        for imported in m["imports"]:
            if room and any(imported == bad or imported.startswith(bad + ".")
                            for bad in FORBIDDEN[room]):
                found.append(f"{m['module']} imports {imported} (layer {room!r})")
    return found


def table(measured: list[dict]) -> str:
    rows = ["| module | lines | largest class (lines) | longest function (lines) |",
            "|---|---|---|---|"]
    for m in measured:
        cls = max(m["classes"].items(), key=lambda kv: kv[1], default=("", 0))
        fn = max(m["functions"].items(), key=lambda kv: kv[1], default=("", 0))
        rows.append(f"| `{m['module']}` | {m['lines']} | "
                    f"{f'`{cls[0]}` ({cls[1]})' if cls[1] else ''} | "
                    f"{f'`{fn[0]}` ({fn[1]})' if fn[1] else ''} |")
    return "\n".join(rows)


def write_into(doc: Path, new_table: str) -> None:
    """Replace the sizes table in ``doc`` (the block of lines that starts with its
    header row) with ``new_table``."""
    lines = doc.read_text().split("\n")
    start = lines.index(new_table.split("\n")[0])
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    doc.write_text("\n".join(lines[:start] + new_table.split("\n") + lines[end:]))


def main() -> int:
    measured = [measure(p) for p in modules()]
    print(table(measured))
    if "--write" in sys.argv[1:]:
        write_into(Path(__file__).with_name("architecture.md"), table(measured))
    total = sum(m["lines"] for m in measured)
    print(f"\n{len(measured)} modules, {total} lines.")
    broken = violations(measured)
    for line in broken:
        print("VIOLATION:", line)
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
