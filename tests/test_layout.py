"""Imports flow one way: the package and subpackage rules of the product design hold.

A newcomer finds code by its package; an import against the flow (the pipeline reaching for the
job store, ``processing`` for the network) is a design change and must show up here first.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Top-level packages and what each may import of the others.
TOP_LEVEL_ALLOWED: dict[str, set[str]] = {
    "processing": set(),
    "dicom_node": set(),
    "reports": {"processing"},
    "service": {"processing", "dicom_node", "reports"},
}

#: service subpackages and which other parts of service each may import (top-level modules by
#: name, subpackages by name).
SHARED_SERVICE_MODULES = {"settings", "logs", "pseudonym", "__init__"}
SERVICE_ALLOWED: dict[str, set[str]] = {
    "inputs": set(),
    "pipeline": {"inputs"},
    "exports": {"inputs", "pipeline"},
    "jobs": {"inputs", "pipeline", "exports"},
    "api": {"jobs"},
    "phantom": {"inputs", "pipeline"},
}
#: Modules allowed beyond their package's rule, with the reason.
EXCEPTIONS: dict[str, set[str]] = {
    # the demo starts the whole service and reads the job store to show progress
    "service/phantom/demo.py": {"jobs"},
}


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names.extend(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
    return names


def _python_files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(TOP_LEVEL_ALLOWED))
def test_top_level_packages_import_one_way(package: str) -> None:
    forbidden = set(TOP_LEVEL_ALLOWED) - TOP_LEVEL_ALLOWED[package] - {package}
    offenders = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in _python_files(package)
        for name in _imports(path)
        if name.split(".")[0] in forbidden
    ]
    assert not offenders, "\n".join(offenders)


def test_processing_has_no_celery_network_or_database() -> None:
    banned = {"celery", "kombu", "sqlalchemy", "pynetdicom", "socket", "requests", "httpx"}
    offenders = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in _python_files("processing")
        for name in _imports(path)
        if name.split(".")[0] in banned
    ]
    assert not offenders, "\n".join(offenders)


def test_service_subpackages_import_one_way() -> None:
    offenders: list[str] = []
    for path in _python_files("service"):
        rel = path.relative_to(ROOT / "service").parts
        if len(rel) == 1:
            continue  # top-level modules (cli, server, settings, ...) sit on top
        own = rel[0]
        allowed = (
            SERVICE_ALLOWED[own]
            | SHARED_SERVICE_MODULES
            | {own}
            | EXCEPTIONS.get(str(path.relative_to(ROOT)), set())
        )
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] != "service" or len(parts) < 2:
                continue
            if parts[1] not in allowed and parts[1] != "__version__":
                offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not offenders, "\n".join(offenders)


def test_every_service_subpackage_has_a_rule() -> None:
    subpackages = {p.parent.name for p in (ROOT / "service").glob("*/__init__.py")}
    assert subpackages == set(SERVICE_ALLOWED)
    for name in subpackages:
        doc = ast.get_docstring(ast.parse((ROOT / "service" / name / "__init__.py").read_text()))
        assert doc, f"service/{name}/__init__.py has no docstring"
