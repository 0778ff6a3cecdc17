"""The house's shape, read from the code's own imports (every import statement, function-level ones too):
no import cycles, leaves that import nothing of rl, and Hydra known to the command line alone."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "rl"
LEAVES = ("rl.logger", "rl.distributions", "rl.cg", "rl.normalize", "rl.files", "rl.results", "rl.run_folder",
          "rl.spaces", "rl.distributed", "rl.networks", "rl.guards", "rl.observations")


def module_name(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports():
    """{module: set of the modules it imports (rl's own by module name, `from rl.x import y` as rl.x.y when y is
    a module; others by top-level package)}."""
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(path) for path in paths}
    graph = {}
    for path in paths:
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name if alias.name.startswith("rl.") else alias.name.split(".")[0]
                          for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{path}: a relative import; the house imports absolutely"
                if node.module.split(".")[0] != "rl":
                    found.add(node.module.split(".")[0])
                    continue
                for alias in node.names:
                    submodule = f"{node.module}.{alias.name}"
                    found.add(submodule if submodule in modules else node.module)
        graph[module_name(path)] = found - {module_name(path)}
    return graph


def test_there_are_no_import_cycles():
    graph = imports()
    own = {name: {d for d in deps if d in graph} for name, deps in graph.items()}
    done, active = set(), []

    def visit(name):
        assert name not in active, " -> ".join(active[active.index(name):] + [name])
        if name in done:
            return
        active.append(name)
        for dependency in sorted(own[name]):
            visit(dependency)
        active.pop()
        done.add(name)

    for name in sorted(own):
        visit(name)
    assert len(done) > 20  # the walk did see the package


def test_leaves_import_nothing_of_rl():
    graph = imports()
    for leaf in LEAVES:
        assert not {d for d in graph[leaf] if d.startswith("rl")}, (leaf, graph[leaf])


def test_only_the_command_line_knows_hydra():
    graph = imports()
    assert {name for name, deps in graph.items() if "hydra" in deps} == {"rl.cli"}
