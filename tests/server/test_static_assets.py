"""The demo page's files: the served JS client is the one in clients/js, every file the
page loads exists, and the package ships all of them (pyproject package-data)."""

import fnmatch
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STATIC = ROOT / "adserve" / "server" / "static"


def test_served_client_is_the_one_in_clients_js():
    served = (STATIC / "adserve.js").read_text(encoding="utf-8")
    assert served == (ROOT / "clients" / "js" / "adserve.js").read_text(encoding="utf-8"), \
        "run scripts/vendor-js.sh --client-only after editing clients/js/adserve.js"


def test_every_file_the_page_loads_exists():
    html = (STATIC / "index.html").read_text(encoding="utf-8")
    refs = re.findall(r'(?:src|href)="static/([^"]+)"', html)
    assert "demo/main.js" in refs and "vendor/plotly-cartesian.min.js" in refs
    modules = [p for p in STATIC.rglob("*.js") if "vendor" not in p.parts]
    for module in modules:  # relative ES-module imports between the page's own files
        for spec in re.findall(r'from "(\.{1,2}/[^"]+)"', module.read_text(encoding="utf-8")):
            refs.append(str((module.parent / spec).resolve().relative_to(STATIC)))
    missing = [r for r in refs if not (STATIC / r).is_file()]
    assert not missing


def test_the_package_ships_every_static_file():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    globs = pyproject["tool"]["setuptools"]["package-data"]["adserve.server"]
    files = [str(p.relative_to(STATIC.parent)) for p in STATIC.rglob("*") if p.is_file()]
    unshipped = [f for f in files if not any(fnmatch.fnmatch(f, g) and f.count("/") == g.count("/") for g in globs)]
    assert not unshipped, f"add these to [tool.setuptools.package-data]: {unshipped}"
