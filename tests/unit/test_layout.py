"""The layout: imports run one way, and optional dependencies load only when used."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _check_imports() -> ModuleType:
    path = ROOT / "scripts" / "check_imports.py"
    spec = importlib.util.spec_from_file_location("check_imports", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _loaded_after(statement: str) -> set[str]:
    """The modules a fresh interpreter has loaded after ``statement``."""
    code = f"import sys\n{statement}\nprint('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_the_package_has_no_import_circle_and_nothing_imports_upwards(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert _check_imports().main(["check_imports", str(ROOT / "src")]) == 0
    assert "no circle, none upwards" in capsys.readouterr().out


def _plant(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in {"__init__.py": "", **files}.items():
        path = tmp_path / "onceonly" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_the_check_finds_a_circle_even_through_a_lazy_import(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _plant(
        tmp_path,
        {
            "decorators.py": "from . import batch\n",
            "batch.py": "def f():\n    from .decorators import g\n",
        },
    )
    assert _check_imports().main(["check_imports", str(src)]) == 1
    assert "import circle: onceonly.batch <-> onceonly.decorators" in capsys.readouterr().err


def test_the_check_refuses_a_driver_that_imports_an_entry_point(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _plant(tmp_path, {"_sync.py": "from .batch import x\n", "batch.py": ""})
    assert _check_imports().main(["check_imports", str(src)]) == 1
    assert "onceonly._sync (driver) imports onceonly.batch (entry point)" in capsys.readouterr().err


def test_a_driver_loads_without_the_batch_entry_point() -> None:
    loaded = _loaded_after("import onceonly._sync, onceonly._async")
    assert "onceonly.batch_engine" in loaded
    assert "onceonly.batch" not in loaded


@pytest.mark.parametrize(
    ("statement", "absent"),
    [
        ("import onceonly, onceonly.stores", {"redis", "boto3", "botocore", "pydantic"}),
        ("import onceonly.stores.redis", {"redis", "boto3"}),
        ("import onceonly.stores.dynamodb", {"boto3", "botocore", "redis"}),
        ("import onceonly.batch", {"redis", "boto3"}),
        (
            "import onceonly.streams, onceonly.streams.consumer, onceonly.streams.publish",
            {"redis", "boto3"},
        ),
        (
            "import onceonly.http.asgi, onceonly.http.routes, onceonly.http.fastapi",
            {"starlette", "fastapi", "pydantic", "flask", "django", "anyio"},
        ),
        (
            "import onceonly.http.views, onceonly.http.wsgi, "
            "onceonly.http.flask, onceonly.http.django",
            {"flask", "werkzeug", "django", "starlette", "fastapi"},
        ),
    ],
)
def test_optional_clients_are_imported_only_when_a_store_is_built(
    statement: str, absent: set[str]
) -> None:
    assert _loaded_after(statement) & absent == set()
