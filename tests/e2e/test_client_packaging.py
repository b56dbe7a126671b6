"""The clients build as the packages users install, carrying the server's version (scripts/version.py,
docs/clients.md): the Python client as an sdist and, from that sdist alone, a wheel that imports outside the
checkout; the JS client as an npm tarball. Offline: pip builds with the environment's setuptools (no build
isolation, no index), and npm packs a package without dependencies.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("adserve_version_script", ROOT / "scripts" / "version.py")
version = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(version)

PY_FILES = {"__init__.py", "_json.py", "_version.py", "errors.py", "rest.py", "retry.py", "rpc.py", "types.py",
            "py.typed", "grpc_gen/__init__.py", "grpc_gen/ad_pb2.py", "grpc_gen/ad_pb2.pyi", "grpc_gen/ad_pb2_grpc.py"}


def run(*args, cwd, **kw):
    r = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300, **kw)
    assert r.returncode == 0, f"{args}: {r.stdout[-3000:]}{r.stderr[-3000:]}"
    return r.stdout


def test_the_clients_copies_of_the_version_equal_the_servers():
    import adserve

    assert version.SEMVER.fullmatch(adserve.__version__)
    assert version.source() == adserve.__version__
    assert version.copies() == dict.fromkeys(version.copies(), adserve.__version__)
    assert run(sys.executable, "scripts/version.py", cwd=ROOT).strip() == adserve.__version__


def test_set_version_writes_the_source_and_both_copies(tmp_path, monkeypatch):
    for rel in ("adserve/__init__.py", "clients/python/adserve_client/_version.py", "clients/js/package.json"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, tmp_path / rel)
    monkeypatch.setattr(version, "ROOT", tmp_path)
    monkeypatch.setattr(version, "SOURCE", tmp_path / "adserve/__init__.py")
    monkeypatch.setattr(version, "PYTHON_CLIENT", tmp_path / "clients/python/adserve_client/_version.py")
    monkeypatch.setattr(version, "JS_CLIENT", tmp_path / "clients/js/package.json")
    assert version.main(["7.8.9"]) == 0
    assert version.source() == "7.8.9" and set(version.copies().values()) == {"7.8.9"}
    package = json.loads((tmp_path / "clients/js/package.json").read_text())
    assert package == {**json.loads((ROOT / "clients/js/package.json").read_text()), "version": "7.8.9"}
    # a copy edited by hand is caught
    (tmp_path / "clients/python/adserve_client/_version.py").write_text('__version__ = "7.8.8"\n')
    assert version.main([]) == 1
    with pytest.raises(SystemExit):
        version.main(["8.0"])


def test_the_python_client_builds_an_sdist_then_a_wheel_that_imports(tmp_path):
    import adserve

    # a copy, so the build leaves nothing (build/, *.egg-info) in the checkout
    project = tmp_path / "adserve-client"
    shutil.copytree(ROOT / "clients" / "python", project,
                    ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", "examples"))
    sdist = run(sys.executable, "-c", "import sys; from setuptools import build_meta as b; "
                "print(b.build_sdist(sys.argv[1]))", str(tmp_path / "sdist"), cwd=project).strip().splitlines()[-1]
    assert sdist == f"adserve_client-{adserve.__version__}.tar.gz"
    with tarfile.open(tmp_path / "sdist" / sdist) as t:
        t.extractall(tmp_path / "unpacked", filter="data")
    unpacked = tmp_path / "unpacked" / sdist.removesuffix(".tar.gz")

    # the wheel from the sdist alone: it needs nothing from the rest of the checkout
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
        "-w", str(tmp_path / "wheels"), str(unpacked), cwd=tmp_path)
    (wheel,) = (tmp_path / "wheels").glob("*.whl")
    assert wheel.name == f"adserve_client-{adserve.__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        info = f"adserve_client-{adserve.__version__}.dist-info"
        metadata = Parser().parsestr(z.read(f"{info}/METADATA").decode())
    assert {n.removeprefix("adserve_client/") for n in names if n.startswith("adserve_client/")} == PY_FILES
    assert metadata["Name"] == "adserve-client" and metadata["Version"] == adserve.__version__
    assert {r.split(">")[0].split(" ")[0] for r in metadata.get_all("Requires-Dist")} == \
        {"numpy", "httpx", "grpcio", "protobuf"}

    # installed (no dependencies: the test environment has them), outside the checkout
    site = tmp_path / "site"
    run(sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(site), str(wheel),
        cwd=tmp_path)
    out = run(sys.executable, "-c", "import adserve_client as a, adserve_client.grpc_gen.ad_pb2_grpc as g; "
              "print(a.__version__, a.__file__, g.DifferentiatorStub.__name__)", cwd=tmp_path,
              env={**os.environ, "PYTHONPATH": str(site)})
    found_version, found_file, _ = out.split()
    assert found_version == adserve.__version__
    assert Path(found_file).is_relative_to(site)


def test_the_js_client_packs_as_a_public_npm_tarball(tmp_path):
    import adserve

    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("no npm on PATH")
    env = {**os.environ, "npm_config_update_notifier": "false", "npm_config_fund": "false",
           "npm_config_audit": "false", "npm_config_cache": str(tmp_path / "npm-cache")}
    (packed,) = json.loads(run(npm, "pack", "--json", "--ignore-scripts", "--pack-destination", str(tmp_path),
                               cwd=ROOT / "clients" / "js", env=env))
    assert packed["name"] == "adserve-client" and packed["version"] == adserve.__version__
    assert {f["path"] for f in packed["files"]} == {"adserve.js", "README.md", "package.json"}
    with tarfile.open(tmp_path / packed["filename"]) as t:
        package = json.load(t.extractfile("package/package.json"))
        module = t.extractfile("package/adserve.js").read()
    assert "private" not in package  # npm publish refuses a private package
    assert package["version"] == adserve.__version__
    assert module == (ROOT / "clients" / "js" / "adserve.js").read_bytes()
