"""The release version: `adserve/__init__.py`'s `__version__` is the one place it is written; the two clients
carry copies, because each package must build on its own (the Python client's sdist cannot reach outside
clients/python, and npm reads its version from package.json only).

    python scripts/version.py            # print the version; exit 1 if a client's copy differs
    python scripts/version.py 0.2.0      # set it everywhere (the source and both copies)

Versions are plain MAJOR.MINOR.PATCH (the policy is in docs/clients.md).
"""

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "adserve" / "__init__.py"
PYTHON_CLIENT = ROOT / "clients" / "python" / "adserve_client" / "_version.py"
JS_CLIENT = ROOT / "clients" / "js" / "package.json"
ASSIGNMENT = re.compile(r'^__version__ = "([^"]*)"$', re.M)
SEMVER = re.compile(r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)")


def _read_py(path: Path) -> str:
    found = ASSIGNMENT.findall(path.read_text())
    if len(found) != 1:
        raise SystemExit(f"{path.relative_to(ROOT)}: expected one line `__version__ = \"...\"`, found {len(found)}")
    return found[0]


def _write_py(path: Path, version: str) -> None:
    path.write_text(ASSIGNMENT.sub(f'__version__ = "{version}"', path.read_text()))


def source() -> str:
    return _read_py(SOURCE)


def copies() -> dict[str, str]:
    """Each client's copy of the version, by the file it is in (relative to the checkout)."""
    return {str(PYTHON_CLIENT.relative_to(ROOT)): _read_py(PYTHON_CLIENT),
            str(JS_CLIENT.relative_to(ROOT)): json.loads(JS_CLIENT.read_text())["version"]}


def set_version(version: str) -> None:
    if not SEMVER.fullmatch(version):
        raise SystemExit(f"{version!r} is not MAJOR.MINOR.PATCH")
    _write_py(SOURCE, version)
    _write_py(PYTHON_CLIENT, version)
    # a substitution, not a json.dump: package.json keeps its layout
    text = JS_CLIENT.read_text()
    new, n = re.subn(r'^(\s*"version":\s*)"[^"]*"', rf'\g<1>"{version}"', text, count=1, flags=re.M)
    if n != 1:
        raise SystemExit(f"{JS_CLIENT.relative_to(ROOT)}: no \"version\" line")
    JS_CLIENT.write_text(new)


def main(argv: list[str]) -> int:
    if argv:
        set_version(argv[0])
    version = source()
    wrong = {path: v for path, v in copies().items() if v != version}
    for path, v in wrong.items():
        print(f"{path} has {v}, not {version} (python scripts/version.py {version} sets it)", file=sys.stderr)
    print(version)
    return 1 if wrong or not SEMVER.fullmatch(version) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
