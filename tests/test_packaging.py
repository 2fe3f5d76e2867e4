"""The package as users install it: a wheel and an sdist built from this tree, their metadata
checked by twine, and the wheel installed into a fresh virtual environment (reusing this
environment's torch) and used from outside the source tree. Also: one version, named alike in the
package, the changelog and the README; the deprecation helper."""

import importlib.util
import json
import re
import subprocess
import sys
import tarfile
import venv
import warnings
import zipfile
from pathlib import Path

import pytest
import torch

import entropymix
from entropymix import _validation

ROOT = Path(__file__).resolve().parents[1]
TOOLS = all(importlib.util.find_spec(m) for m in ("build", "twine", "wheel"))

USE = """
import json, pathlib, torch, entropymix
from entropymix import EntropyMix, SPEEDLoss
here = pathlib.Path(entropymix.__file__).parent
x, lg = torch.rand(2, 3, 16, 16), torch.randn(2, 4, 16, 16)
mixed, plan = EntropyMix(grid=4)([x, x.flip(0)], logits=[lg, lg.flip(0)])
loss = SPEEDLoss()(lg.requires_grad_(), lg.flip(0), torch.randn(2, 8, 16, 16), torch.randn(2, 8, 16, 16))
loss.backward()
print(json.dumps({"version": entropymix.__version__, "file": str(here), "typed": (here / "py.typed").is_file(),
                  "mixed": list(mixed.shape), "plan": list(plan.index.shape), "loss": float(loss)}))
"""


def run(cmd, **kw):
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert done.returncode == 0, f"{cmd}\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.mark.skipif(not TOOLS, reason="needs the test extra's build, twine and wheel")
def test_wheel_and_sdist_build_pass_twine_and_the_wheel_works_in_a_fresh_venv(tmp_path):
    dist = tmp_path / "dist"
    run([sys.executable, "-m", "build", "--no-isolation", "--sdist", "--wheel", "--outdir", dist, ROOT])
    version = entropymix.__version__
    wheel, = dist.glob(f"entropymix-{version}-py3-none-any.whl")
    sdist, = dist.glob(f"entropymix-{version}.tar.gz")
    print(run([sys.executable, "-m", "twine", "check", "--strict", wheel, sdist]))
    names = zipfile.ZipFile(wheel).namelist()
    assert "entropymix/py.typed" in names and not any(n.startswith(("tests/", "examples/", "benchmarks/")) for n in names)
    members = tarfile.open(sdist).getnames()
    assert f"entropymix-{version}/entropymix/py.typed" in members and f"entropymix-{version}/LICENSE" in members
    # no tests in the sdist: they cannot run without the repository around them (MANIFEST.in says why)
    assert not any(m.startswith(f"entropymix-{version}/tests") for m in members), members

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    site = Path(run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip())
    # torch from this environment, appended to the path (its .pth files, an editable install's among
    # them, are not read): the wheel's own copy, earlier on the path, is the one imported
    (site / "host_torch.pth").write_text(str(Path(torch.__file__).resolve().parents[1]) + "\n")
    run([py, "-m", "pip", "install", "--no-deps", "--no-index", "--disable-pip-version-check", "-q", wheel])
    used = json.loads(run([py, "-c", USE], cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}))
    print(used)
    assert used["version"] == version and used["typed"]
    assert Path(used["file"]).is_relative_to(env_dir) and not Path(used["file"]).is_relative_to(ROOT)
    assert used["mixed"] == [2, 3, 16, 16] and used["plan"] == [2, 4, 4] and used["loss"] == used["loss"]


def test_one_version_named_by_the_changelog_and_the_readme():
    version = entropymix.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+", version)
    changelog = (ROOT / "CHANGELOG.md").read_text()
    released = re.findall(r"^## \[(\d+\.\d+\.\d+)\] - \d{4}-\d{2}-\d{2}$", changelog, re.M)
    assert released and released[0] == version  # the newest release is the package's version
    assert "## [Unreleased]" in changelog.split(f"## [{version}]")[0]
    assert "### Breaking" in changelog and "tap.recording()" in changelog
    assert f"entropymix {version}" in (ROOT / "README.md").read_text()
    assert "version = attr: entropymix.__version__" in (ROOT / "setup.cfg").read_text()  # set in one place


def test_deprecation_helper_warns_once_with_a_future_warning_naming_the_version():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            _validation.deprecated("MixPlan.old()", "0.9.0", "MixPlan.new()", stacklevel=2)
        _validation.deprecated("EntropyMix(old=...)", "0.9.0", "EntropyMix(new=...)")
    assert [w.category for w in caught] == [FutureWarning, FutureWarning]
    assert str(caught[0].message) == ("MixPlan.old() is deprecated and will be removed in entropymix 0.9.0; "
                                      "use MixPlan.new() instead")
    assert caught[0].filename == __file__  # points at the caller's line
