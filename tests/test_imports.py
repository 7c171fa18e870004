"""qwq's imports point one way: no import cycle between its modules (top-level or inside
functions), and every qwq import left inside a function says why on its line or the line
above (`# lazy: ...`, `# cycle: ...`).

The graph is read from the source with ast, nothing is imported. An edge A -> B means that
running A (at import or in one of its functions) may import B; `import qwq.a.b` and `from
qwq.a import b` also run the package qwq.a's __init__, so they are edges to qwq.a too, unless
qwq.a is a package A itself lives in (then it is already being imported). Imports under `if
TYPE_CHECKING:` never run and are no edges."""

from __future__ import annotations

import ast
import io
import tokenize
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "qwq"


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int
    local: bool  # inside a function


def module_files(root: Path = ROOT) -> dict[str, Path]:
    mods = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def _known(name: str, mods: dict[str, Path]) -> str | None:
    """The longest module name that name starts with (`qwq.a.f` -> `qwq.a`)."""
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def _package_of(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def _imported_names(node: ast.Import | ast.ImportFrom, module: str, path: Path) -> list[str]:
    """Dotted names an import statement may load: `from p import x` is p.x (a submodule) or
    p (x is an attribute), which _known settles."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:
        pkg = _package_of(module, path)
        for _ in range(node.level - 1):
            pkg = pkg.rpartition(".")[0]
        base = f"{pkg}.{base}" if base else pkg
    return [f"{base}.{a.name}" for a in node.names]


def _type_checking_only(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Under `if TYPE_CHECKING:`: never run, so no edge."""
    p = parents.get(node)
    while p is not None:
        if isinstance(p, ast.If) and "TYPE_CHECKING" in ast.unparse(p.test):
            return True
        p = parents.get(p)
    return False


def _in_function(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    p = parents.get(node)
    while p is not None:
        if isinstance(p, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return True
        p = parents.get(p)
    return False


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def import_edges(mods: dict[str, Path]) -> list[Edge]:
    edges = []
    for module, path in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        parents = {c: n for n in ast.walk(tree) for c in ast.iter_child_nodes(n)}
        own = set(_ancestors(module)) | {module}
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)) \
                    or _type_checking_only(node, parents):
                continue
            local = _in_function(node, parents)
            for name in _imported_names(node, module, path):
                if not name.startswith("qwq"):
                    continue
                target = _known(name, mods)
                if target is None:
                    continue
                for t in [*_ancestors(target), target]:
                    if t not in own and t in mods:
                        edges.append(Edge(module, t, node.lineno, local))
    return edges


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm; the components of more than one module (no self-edges here)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def a_cycle(component: list[str], edges: list[Edge]) -> str:
    """One cycle through the component's first module, with the lines that make it."""
    members = set(component)
    out: dict[str, list[Edge]] = {}
    for e in edges:
        if e.source in members and e.target in members:
            out.setdefault(e.source, []).append(e)
    start = component[0]
    came: dict[str, Edge] = {}
    frontier = [start]
    while frontier:  # breadth first, back to start
        nxt = []
        for v in frontier:
            for e in out.get(v, []):
                if e.target == start:
                    path = [e]
                    while path[0].source != start:
                        path.insert(0, came[path[0].source])
                    return " -> ".join(
                        [start] + [f"{p.target} (line {p.line} of {p.source}"
                                   f"{', in a function' if p.local else ''})" for p in path])
                if e.target not in came:
                    came[e.target] = e
                    nxt.append(e.target)
        frontier = nxt
    return " <-> ".join(component)


def comment_lines(source: str) -> tuple[set[int], set[int]]:
    """(lines with a comment, lines that are only a comment)."""
    with_comment, only_comment = set(), set()
    lines = source.splitlines()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            row = tok.start[0]
            with_comment.add(row)
            if lines[row - 1].lstrip().startswith("#"):
                only_comment.add(row)
    return with_comment, only_comment


def test_import_graph_has_no_cycles():
    mods = module_files()
    assert "qwq.models" in mods and "qwq.distributed.launch" in mods
    edges = import_edges(mods)
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for e in edges:
        graph[e.source].add(e.target)
    cycles = [a_cycle(c, edges) for c in strongly_connected(graph)]
    assert not cycles, "import cycles in qwq:\n" + "\n".join(cycles)


def bare_local_imports(mods: dict[str, Path]) -> list[str]:
    """Function-local imports of qwq modules with no comment on their lines or just above."""
    bare = []
    top = mods["qwq"].parent.parent  # the directory qwq/ lies in
    for module, path in mods.items():
        source = path.read_text()
        tree = ast.parse(source, str(path))
        parents = {c: n for n in ast.walk(tree) for c in ast.iter_child_nodes(n)}
        with_comment, only_comment = comment_lines(source)
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)) \
                    or not _in_function(node, parents):
                continue
            names = [n for n in _imported_names(node, module, path)
                     if n.startswith("qwq") and _known(n, mods)]
            if not names:
                continue
            said = any(r in with_comment for r in range(node.lineno, node.end_lineno + 1)) \
                or node.lineno - 1 in only_comment
            if not said:
                bare.append(f"{path.relative_to(top)}:{node.lineno}: {ast.unparse(node)}")
    return bare


def test_function_local_qwq_imports_say_why():
    bare = bare_local_imports(module_files())
    assert not bare, ("function-local imports of qwq modules without a comment saying why "
                      "(move them to the top, or add `# lazy: ...` / `# cycle: ...`):\n"
                      + "\n".join(bare))


def test_the_checks_see_cycles_and_bare_imports(tmp_path):
    """The checks themselves: a cycle through a function-local import and through a
    package's __init__ is found, a relative `from . import x` is resolved."""
    pkg = tmp_path / "qwq"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from qwq.sub.b import g\n")
    (pkg / "sub" / "__init__.py").write_text("from . import c\n")
    (pkg / "sub" / "b.py").write_text("g = 1\n")
    (pkg / "sub" / "c.py").write_text("import qwq.a\n")
    mods = module_files(pkg)
    edges = import_edges(mods)
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for e in edges:
        graph[e.source].add(e.target)
    assert strongly_connected(graph) == [["qwq.a", "qwq.sub", "qwq.sub.c"]]
    assert "in a function" in a_cycle(["qwq.a", "qwq.sub", "qwq.sub.c"], edges)
    assert bare_local_imports(mods) == ["qwq/a.py:2: from qwq.sub.b import g"]
    (pkg / "a.py").write_text("def f():\n    # lazy: a reason\n    from qwq.sub.b import g\n"
                              "    import json\n")
    assert bare_local_imports(mods) == []
