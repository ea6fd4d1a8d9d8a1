"""The sdist and the wheel: what they hold, their metadata, and that the wheel runs.

Both are built once for the module, the way a release builds them: ``python -m
build`` (an isolated build: setuptools as ``[build-system]`` asks, fetched from
PyPI) on a copy of this checkout without what ``.gitignore`` ignores, so the
checkout is left as it was. Then the archives are read, ``twine check --strict``
judges their metadata as PyPI would, and the wheel is installed in a folder of
its own and run.
"""

from __future__ import annotations

import email.parser
import email.policy
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from email.message import Message
from pathlib import Path

import pytest
import trove_classifiers

import onceonly

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "onceonly"
VERSION = onceonly.__version__
EXTRAS = {"redis", "dynamodb", "pydantic", "asgi", "flask", "django", "otel"}
URL_LABELS = {"Homepage", "Documentation", "Source", "Issues", "Changelog"}
# What the sdist's top level may hold: what builds the wheel, the license and the
# changelog, and what setuptools writes (PKG-INFO, setup.cfg). Not tests/ (see
# MANIFEST.in), benchmarks/, scripts/, examples/, docs/ or .ci/.
SDIST_NEEDS = {"LICENSE", "README.md", "CHANGELOG.md", "pyproject.toml", "PKG-INFO", "src"}
SDIST_MAY = SDIST_NEEDS | {"setup.cfg", "MANIFEST.in"}


@dataclass(frozen=True)
class Dists:
    sdist: Path
    wheel: Path
    build_output: str


def _env() -> dict[str, str]:
    """This environment without PYTHONPATH: the tools import what is installed, not src/."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def _ignored() -> list[str]:
    """The patterns of .gitignore, as shutil.ignore_patterns takes them."""
    lines = (ROOT / ".gitignore").read_text().splitlines()
    return [line.strip().rstrip("/") for line in lines if line.strip() and line[0] != "#"]


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Dists:
    """The sdist and the wheel of this checkout, built once for the module."""
    base = tmp_path_factory.mktemp("dist")
    tree = base / "tree"
    shutil.copytree(ROOT, tree, ignore=shutil.ignore_patterns(".git", *_ignored()))
    out = base / "out"
    done = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(tree)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    sdists = sorted(out.glob("*.tar.gz"))
    wheels = sorted(out.glob("*.whl"))
    assert len(sdists) == 1, sorted(p.name for p in out.iterdir())
    assert len(wheels) == 1, sorted(p.name for p in out.iterdir())
    return Dists(sdists[0], wheels[0], output)


def package_files() -> set[str]:
    """What the wheel must carry of src/onceonly: modules, Lua scripts, py.typed."""
    found = {
        path.relative_to(PACKAGE.parent).as_posix()
        for pattern in ("*.py", "*.lua", "py.typed")
        for path in PACKAGE.rglob(pattern)
    }
    assert "onceonly/py.typed" in found
    assert any(name.endswith(".lua") for name in found)
    return found


def wheel_names(dists: Dists) -> set[str]:
    with zipfile.ZipFile(dists.wheel) as archive:
        return set(archive.namelist())


def sdist_names(dists: Dists) -> set[str]:
    """The sdist's files, without its ``onceonly-VERSION/`` top folder."""
    with tarfile.open(dists.sdist) as archive:
        members = archive.getmembers()
    top = f"onceonly-{VERSION}"
    assert all(m.name == top or m.name.startswith(top + "/") for m in members), members
    return {m.name[len(top) + 1 :] for m in members if m.isfile()}


def read_metadata(dists: Dists, which: str) -> Message:
    """The wheel's METADATA or the sdist's PKG-INFO, parsed."""
    if which == "wheel":
        with zipfile.ZipFile(dists.wheel) as archive:
            raw = archive.read(f"onceonly-{VERSION}.dist-info/METADATA")
    else:
        with tarfile.open(dists.sdist) as archive:
            member = archive.extractfile(f"onceonly-{VERSION}/PKG-INFO")
            assert member is not None
            raw = member.read()
    return email.parser.Parser(policy=email.policy.compat32).parsestr(raw.decode())


def test_the_build_is_clean(dists: Dists) -> None:
    # A deprecated setting in pyproject.toml is a warning in setuptools' output
    # today and an error in a later setuptools.
    assert "Deprecat" not in dists.build_output, dists.build_output[-4000:]
    assert dists.wheel.name == f"onceonly-{VERSION}-py3-none-any.whl"
    assert dists.sdist.name == f"onceonly-{VERSION}.tar.gz"


def test_the_wheel_holds_the_package_and_nothing_else(dists: Dists) -> None:
    names = wheel_names(dists)
    info = f"onceonly-{VERSION}.dist-info/"
    # Every module and every Lua script of src/onceonly, py.typed, and no more
    # (a new script is in the wheel or this fails; no tests, no bytecode).
    assert {n for n in names if n.startswith("onceonly/")} == package_files()
    assert {n.split("/")[0] + "/" for n in names} == {"onceonly/", info}
    assert not [n for n in names if "tests/" in n or n.endswith(".pyc")]
    assert f"{info}licenses/LICENSE" in names
    assert f"{info}entry_points.txt" in names


def test_the_wheel_declares_the_command(dists: Dists) -> None:
    with zipfile.ZipFile(dists.wheel) as archive:
        entry_points = archive.read(f"onceonly-{VERSION}.dist-info/entry_points.txt").decode()
    assert re.search(r"^\[console_scripts\]\nonceonly = onceonly\.cli:main$", entry_points, re.M)


def test_the_sdist_holds_the_sources_license_and_changelog_not_the_tests(dists: Dists) -> None:
    names = sdist_names(dists)
    top = {name.split("/")[0] for name in names}
    assert SDIST_NEEDS <= top <= SDIST_MAY, sorted(top)
    package = {n[len("src/") :] for n in names if n.startswith("src/onceonly/")}
    assert package == package_files()
    for name in ("LICENSE", "README.md", "CHANGELOG.md", "pyproject.toml"):
        assert (ROOT / name).read_bytes() == _sdist_member(dists, name), name


def _sdist_member(dists: Dists, name: str) -> bytes:
    with tarfile.open(dists.sdist) as archive:
        member = archive.extractfile(f"onceonly-{VERSION}/{name}")
        assert member is not None
        return member.read()


@pytest.mark.parametrize("which", ["wheel", "sdist"])
def test_metadata(dists: Dists, which: str) -> None:
    meta = read_metadata(dists, which)
    assert meta["Name"] == "onceonly"
    assert meta["Version"] == VERSION
    assert meta["License-Expression"] == "MIT"
    assert meta.get_all("License-File") == ["LICENSE"]
    assert meta["Requires-Python"] == ">=3.10"
    assert meta["Author"] == "The onceonly authors"
    # The core needs jmespath only; everything else is an extra, and the
    # development tools (a dependency group) are not one.
    requires = meta.get_all("Requires-Dist") or []
    assert [r for r in requires if "extra ==" not in r] == ["jmespath>=1.0"]
    extras = meta.get_all("Provides-Extra") or []
    assert "dev" not in extras
    assert set(extras) == EXTRAS
    assert not [r for r in requires if r.endswith('extra == "dev"')]
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL") or [])
    assert set(urls) == URL_LABELS
    assert all(url.startswith("https://") for url in urls.values()), urls
    keywords = (meta["Keywords"] or "").split(",")
    assert {"idempotency", "retry", "redis", "dynamodb", "aws-lambda"} <= set(keywords)
    # The long description is the README, as PyPI will show it.
    assert meta["Description-Content-Type"] == "text/markdown"
    readme = (ROOT / "README.md").read_text()
    assert str(meta.get_payload()).strip() == readme.strip()


def test_classifiers_are_known_and_agree_with_the_metadata(dists: Dists) -> None:
    classifiers = read_metadata(dists, "wheel").get_all("Classifier") or []
    assert len(classifiers) == len(set(classifiers))
    unknown = [c for c in classifiers if c not in trove_classifiers.classifiers]
    assert not unknown, unknown
    deprecated = [c for c in classifiers if c in trove_classifiers.deprecated_classifiers]
    assert not deprecated, deprecated
    # License-Expression says the license; PEP 639 forbids a license classifier beside it.
    assert not [c for c in classifiers if c.startswith("License ::")]
    assert "Typing :: Typed" in classifiers
    assert "Programming Language :: Python :: 3 :: Only" in classifiers
    versions = [
        tuple(int(part) for part in c.rsplit(" ", 1)[1].split("."))
        for c in classifiers
        if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
    ]
    # Every Python from Requires-Python's 3.10 up to the newest one listed.
    assert versions, classifiers
    assert sorted(versions) == [(3, minor) for minor in range(10, max(versions)[1] + 1)]


def test_twine_check_strict_passes(dists: Dists) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", str(dists.sdist), str(dists.wheel)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert output.count("PASSED") == 2, output


def test_the_installed_wheel_runs(dists: Dists, tmp_path: Path) -> None:
    # Installed in a folder of its own (its one dependency, jmespath, comes from
    # this environment), then run from there: the command, ``python -m onceonly``
    # and the imports that read every Lua script from the installed package.
    target = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps"]
    subprocess.run(
        [*pip, "--target", str(target), str(dists.wheel)],
        env=_env(),
        check=True,
        timeout=300,
    )
    env = {**_env(), "PYTHONPATH": str(target)}

    def run(*args: str) -> str:
        done = subprocess.run(
            args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout.strip()

    code = (
        "import onceonly, onceonly.stores.redis.scripts, onceonly.streams.scripts;"
        "print(onceonly.__file__)"
    )
    assert Path(run(sys.executable, "-c", code)).parent == target / "onceonly"
    assert run(sys.executable, "-m", "onceonly", "--version") == f"onceonly {VERSION}"
    assert run(str(target / "bin" / "onceonly"), "--version") == f"onceonly {VERSION}"


def test_the_changelog_has_a_section_for_this_version_first() -> None:
    sections = re.findall(r"^## (\S+)", (ROOT / "CHANGELOG.md").read_text(), re.M)
    assert sections, "CHANGELOG.md has no version sections"
    assert sections[0] == VERSION, f"the newest section is {sections[0]}, the version {VERSION}"
    assert len(set(sections)) == len(sections), "a version with two sections"


def test_the_readmes_links_work_outside_the_repository() -> None:
    # PyPI shows the README: a relative link there leads nowhere. The links into the
    # repository must name files that exist.
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)\s]+)", readme) + re.findall(r'src="([^"]+)"', readme)
    assert len(links) >= 10, "the README's links were not found"
    relative = [link for link in links if not link.startswith(("https://", "http://", "#"))]
    assert relative == []
    into = "https://github.com/onceonly/onceonly/blob/main/"
    missing = [
        link
        for link in links
        if link.startswith(into) and not (ROOT / link[len(into) :].split("#")[0]).exists()
    ]
    assert missing == []
