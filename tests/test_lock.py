"""The lock (requirements/lock.txt + requirements/torch.txt) and pyproject.toml agree: every dependency of the
project and of each extra is pinned, once, to a version that its range in pyproject.toml admits. (That the running
environment is the locked one is checked by ``make check-env`` before the suite runs.)"""

import importlib.util
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("lock", ROOT / "requirements" / "lock.py")
lock = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lock)


def _requirements() -> list[tuple[str, Requirement]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    out = [("dependencies", Requirement(r)) for r in project["dependencies"]]
    for extra, reqs in project["optional-dependencies"].items():
        out += [(extra, Requirement(r)) for r in reqs]
    return out


def test_every_requirement_is_pinned_within_its_range():
    pins = lock.parse(lock.LOCK) | lock.parse(lock.TORCH_LOCK)
    problems = []
    for where, req in _requirements():
        name = lock.norm(req.name)
        if name not in pins:
            problems.append(f"{where}: {req} is not in the lock")
        elif not req.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{where}: {req} does not admit the locked {name}=={pins[name]}")
    assert not problems, "run `make lock`: " + "; ".join(problems)


def test_the_two_lock_files_split_the_torch_stack_and_pin_each_package_once():
    main, torch = lock.parse(lock.LOCK), lock.parse(lock.TORCH_LOCK)
    assert {"torch", "torchvision"} <= set(torch)
    assert not set(main) & set(torch)
    assert all(lock.TORCH_STACK.match(k) for k in torch) and not any(lock.TORCH_STACK.match(k) for k in main)
    for f in (lock.LOCK, lock.TORCH_LOCK):
        names = [lock.norm(line.split("==")[0]) for line in f.read_text().splitlines()
                 if line.strip() and not line.startswith("#")]
        assert len(names) == len(set(names)), f"{f.name} pins a package twice"


def test_known_breaks_are_excluded_by_the_ranges():
    reqs = {lock.norm(r.name): r for _, r in _requirements()}
    # lmms-eval 0.7.3 imports filelock._api, which filelock 4.3 removed (every evaluation failed)
    assert not reqs["filelock"].specifier.contains("4.3.1") and reqs["filelock"].specifier.contains("4.2.12")


def test_a_bad_pin_line_is_refused(tmp_path):
    f = tmp_path / "lock.txt"
    f.write_text("torch>=2\n")
    with pytest.raises(ValueError, match="not a `name==version` pin"):
        lock.parse(f)


def test_other_pytorch_wheels_decide_only_the_versions_they_refuse_from_the_lock():
    # torch 2.11.0's own requirements (markers already evaluated) against a lock made with torch 2.14
    reqs = {lock.norm(r.name): [r] for r in map(Requirement, (
        "setuptools<82", "sympy>=1.13.3", "filelock", "cuda-bindings<14,>=13.0.3", "newdep>=1"))}
    pins = {"setuptools": "84.2.1", "sympy": "1.14.0", "filelock": "4.2.12", "requests": "2.33.0"}
    freed = lock.left_to_torch(pins, reqs)
    # setuptools: the lock's version is refused; newdep: the lock has none; the stack itself is never listed
    assert set(freed) == {"setuptools", "newdep"} and "<82" in freed["setuptools"]

    installed = [("setuptools", "81.0.0"), ("sympy", "1.14.0"), ("filelock", "4.2.12"), ("requests", "2.33.0"),
                 ("newdep", "1.2"), ("torch", "2.11.0"), ("cuda-bindings", "13.0.3"), ("pip", "25.0")]
    assert lock.compare(installed, pins, torch_locked=False, freed=freed) == ([], [])
    # what the wheels do not decide still has to match (every installed copy of it), and a locked PyTorch stack
    # lets nothing through
    bad, _ = lock.compare(installed + [("filelock", "4.3.1")], pins, torch_locked=False, freed=freed)
    assert bad == ["filelock 4.3.1 (lock: 4.2.12)"]
    bad, unlocked = lock.compare(installed, pins, torch_locked=True, freed={})
    assert bad == ["setuptools 81.0.0 (lock: 84.2.1)"]
    assert unlocked == ["cuda-bindings==13.0.3", "newdep==1.2", "torch==2.11.0"]


def test_constraints_keep_every_pin_when_the_pytorch_stack_is_locked(tmp_path):
    out = tmp_path / "constraints.txt"
    assert lock.constraints(out) == 0
    assert lock.parse(out) == lock.parse(lock.LOCK)


def test_a_misspelt_option_is_refused_not_ignored(tmp_path, capsys):
    assert lock.main(["constraints", str(tmp_path / "c.txt"), "--torch-unlockd"]) == 2
    assert lock.main(["check", "--torch"]) == 2
    assert not (tmp_path / "c.txt").exists()
