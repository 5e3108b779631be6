"""The source root `platform/` must never shadow the standard library's `platform` module."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_platform_is_the_standard_library_module_from_repo_root():
    assert not (ROOT / "platform" / "__init__.py").exists()
    code = "import platform, sysconfig; print(platform.__file__); print(sysconfig.get_paths()['stdlib'])"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    module_file, stdlib = out.stdout.split("\n")[:2]
    assert Path(module_file).resolve().parent == Path(stdlib).resolve()
    assert hasattr(__import__("platform"), "python_version")


def test_models_package_does_not_import_ray():
    code = "import sys, modelfoundry.models; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
