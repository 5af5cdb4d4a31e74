"""The layering rules of docs/architecture.md, read from every module's imports: no service imports
another; the shared package imports no service outside its composition root (bundlerec/commands,
and `python -m bundlerec`); no test module imports another (shared code lives in tests/harness)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERVICES = {
    "gateway": "gateway",
    "profile": "services/profile",
    "candidate": "services/candidate",
    "ranker": "services/ranker",
}
COMPOSITION_ROOT = ("bundlerec/commands/", "bundlerec/__main__.py")


def imported_modules(path: Path, module: str = "") -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import in `path` (the module `module`, by default
    the one its place in the tree names), relative ones resolved."""
    module = module or _module_of(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            yield node.lineno, base
            yield from ((node.lineno, f"{base}.{alias.name}") for alias in node.names)


def _module_of(path: Path) -> str:
    relative = path.relative_to(ROOT).with_suffix("").as_posix()
    for service, folder in SERVICES.items():
        if relative.startswith(folder + "/"):
            relative = f"bundlerec/{service}/" + relative[len(folder) + 1 :]
    return relative.replace("/", ".")


def service_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "bundlerec" and parts[1] in SERVICES else None


def python_files(*folders: str) -> list[Path]:
    return [p for folder in folders for p in sorted((ROOT / folder).rglob("*.py")) if "/v1/" not in p.as_posix()]


def test_no_service_imports_another() -> None:
    crossings = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for service, folder in SERVICES.items()
        for path in python_files(folder)
        for line, module in imported_modules(path)
        if service_of(module) not in (None, service)
    ]
    assert not crossings


def test_the_shared_package_imports_services_only_in_its_composition_root() -> None:
    shared = [p for p in python_files("bundlerec") if not p.relative_to(ROOT).as_posix().startswith(COMPOSITION_ROOT)]
    assert len(shared) > 30  # the walk sees the package
    crossings = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in shared
        for line, module in imported_modules(path)
        if service_of(module)
    ]
    assert not crossings


def test_no_test_module_imports_another() -> None:
    crossings = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in python_files("tests")
        if "harness" not in path.parts
        for line, module in imported_modules(path)
        if module.startswith("tests.") and not module.startswith("tests.harness")
    ]
    assert not crossings


def test_the_walk_finds_a_crossing_where_there_is_one(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("from bundlerec.candidate import model\nfrom . import settings\n")
    found = list(imported_modules(probe, "bundlerec.ranker.probe"))
    assert found == [
        (1, "bundlerec.candidate"),
        (1, "bundlerec.candidate.model"),
        (2, "bundlerec.ranker"),
        (2, "bundlerec.ranker.settings"),
    ]
    assert [service_of(m) for _, m in found] == ["candidate", "candidate", "ranker", "ranker"]
