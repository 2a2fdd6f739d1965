"""The wheel built from the repository ships what a polished package ships: py.typed, the license, static files."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _setuptools_is_new_enough() -> bool:
    try:
        major = int(version("setuptools").split(".")[0])
    except (PackageNotFoundError, ValueError):
        return False
    return major >= 77  # PEP 639 license expression and license-files (as pyproject's build-system requires)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[zipfile.ZipFile, list[str]]:
    """Build the wheel from a copy of the source tree (the shared tree gets no build/ or egg-info litter).

    The copy gets one extra file under menglong_magic/ui/static/ so the package-data rule for static files is tested
    even before the panel ships any.
    """
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "menglong_magic", src / "menglong_magic",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    static = src / "menglong_magic" / "ui" / "static"
    static.mkdir(exist_ok=True)
    (static / "_packaging_probe.js").write_text("export default {};\n")
    expected_static = sorted(f"menglong_magic/ui/static/{p.name}" for p in static.iterdir() if p.is_file())

    out = tmp_path_factory.mktemp("wheel")
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(out), str(src)]
    if _setuptools_is_new_enough():
        cmd.insert(4, "--no-build-isolation")  # offline and fast; otherwise pip fetches setuptools>=77
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    wheels = list(out.glob("menglong_magic-*.whl"))
    assert len(wheels) == 1, list(out.iterdir())
    return zipfile.ZipFile(wheels[0]), expected_static


def _dist_info(names: list[str]) -> str:
    (info,) = {n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info")}
    return info


def test_wheel_ships_py_typed(built: tuple[zipfile.ZipFile, list[str]]) -> None:
    wheel, _ = built
    assert "menglong_magic/py.typed" in wheel.namelist()


def test_wheel_ships_the_mit_license(built: tuple[zipfile.ZipFile, list[str]]) -> None:
    wheel, _ = built
    names = wheel.namelist()
    info = _dist_info(names)
    license_path = f"{info}/licenses/LICENSE"
    assert license_path in names, [n for n in names if n.startswith(info)]
    text = wheel.read(license_path).decode()
    assert text.startswith("MIT License")
    assert "Copyright (c) 2026 the menglong_magic authors" in text
    assert text == (ROOT / "LICENSE").read_text()
    metadata = wheel.read(f"{info}/METADATA").decode()
    assert "License-Expression: MIT" in metadata.splitlines()
    assert "License-File: LICENSE" in metadata.splitlines()


def test_wheel_ships_static_files(built: tuple[zipfile.ZipFile, list[str]]) -> None:
    wheel, expected_static = built
    shipped = sorted(n for n in wheel.namelist() if n.startswith("menglong_magic/ui/static/"))
    assert shipped == expected_static


def test_wheel_has_every_module_and_no_tests(built: tuple[zipfile.ZipFile, list[str]]) -> None:
    wheel, _ = built
    names = set(wheel.namelist())
    modules = {str(p.relative_to(ROOT)).replace("\\", "/") for p in (ROOT / "menglong_magic").rglob("*.py")
               if "__pycache__" not in p.parts}
    assert modules <= names, sorted(modules - names)
    assert not any(n.startswith(("tests/", "notebooks/", "scripts/")) for n in names)
