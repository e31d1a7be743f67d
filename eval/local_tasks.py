"""lmms-eval task files for local exports of the benchmark datasets (offline clusters).

Each generated task (``OUT/<task>/<task>_local.yaml``) ``include``s a copy of lmms-eval's own task file, made by
:func:`vendor_task`, so prompts, post-processing and metrics stay exactly lmms-eval's and no path of the virtual
environment is written down; only the data source changes. A local task is named ``<task>_local`` (lmms-eval's
built-in tasks win name clashes, so the same name cannot be reused); ``genlip_local_tasks.json`` maps the names
back, and ``genlip-eval run --tasks-dir`` / a sweep's ``eval.tasks_dir`` use it.

Three export layouts are recognised per task, looked up under ``EXPORTS``:

* ``EXPORTS/<task>/`` holding parquet files: ``<split>*.parquet`` if present, else every ``*.parquet`` in it
  (``datasets.load_dataset(repo, name, split=split).to_parquet(...)``);
* ``EXPORTS/<task>/`` written by ``DatasetDict.save_to_disk`` (has ``dataset_dict.json``);
* a snapshot of the dataset's hub repository (``hf download <repo> --repo-type dataset --local-dir
  EXPORTS/<repo>``) at ``EXPORTS/<org>/<name>`` or ``EXPORTS/<name>``, read with the task's own config name.

Some tasks load a second hub dataset inside ``process_docs`` (GQA reads its images from another config). For those
the export also needs that dataset (``EXPORTS/<task>/images/`` as parquet or ``save_to_disk``; a repo snapshot
already holds it) and the generated task joins it locally.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import datasets
import yaml

MANIFEST = "genlip_local_tasks.json"
SUFFIX = "_local"


@dataclass(frozen=True)
class ImageJoin:
    """``process_docs`` that attaches images from a second dataset: ``doc[ref] == image_row[key]``."""

    config: str
    split: str
    key: str
    ref: str
    image_field: str = "image"


JOINS = {"gqa": ImageJoin(config="testdev_balanced_images", split="testdev", key="id", ref="imageId")}


def _tasks_root() -> Path:
    import lmms_eval  # optional: the eval extra; importing it takes ~20 s

    return Path(lmms_eval.__file__).parent / "tasks"


def _index() -> dict[str, tuple[str, Path]]:
    """``{name: ("task" | "group", yaml path)}`` of the installed lmms-eval tasks (read as text, no imports)."""
    out: dict[str, tuple[str, Path]] = {}
    pat = re.compile(r"^(task|group)\s*:\s*[\"']?([\w.\-]+)[\"']?\s*$", re.M)
    for f in sorted(_tasks_root().rglob("*.yaml")):
        try:
            text = f.read_text(errors="replace")
        except OSError:
            continue
        kinds = dict((k, v) for k, v in pat.findall(text))
        if "task" in kinds:  # a task file (its ``group:`` line, if any, is membership, not a definition)
            out.setdefault(kinds["task"], ("task", f))
        elif "group" in kinds:
            out.setdefault(kinds["group"], ("group", f))
    return out


def _config(path: Path) -> dict:
    from lmms_eval.utils import load_yaml_config  # optional: the eval extra; importing it takes ~20 s

    return load_yaml_config(str(path), mode="simple")


def _snapshot_dir(exports: Path, repo: str) -> Path | None:
    name = repo.split("/")[-1]
    orgs = {repo.split("/")[0]} if "/" in repo else set()
    orgs |= {"lmms-lab", "lmms-lab-encoder"} if orgs & {"lmms-lab", "lmms-lab-encoder"} else set()
    for cand in [exports / o / name for o in sorted(orgs)] + [exports / name]:
        if cand.is_dir():
            return cand
    return None


def _parquet_files(d: Path, split: str) -> list[str]:
    files = sorted(p for p in d.glob("*.parquet"))
    mine = [p for p in files if p.name.startswith(split)]
    return [str(p.resolve()) for p in (mine or files)]


def _source(exports: Path, task: str, cfg: dict) -> dict | None:
    """How ``task``'s data is found in ``exports`` (None: not there)."""
    split = cfg.get("test_split")
    d = exports / task
    if (d / "dataset_dict.json").exists():
        return {"format": "save_to_disk", "path": str(d.resolve())}
    if d.is_dir() and _parquet_files(d, split):
        return {"format": "parquet", "files": _parquet_files(d, split), "split": split}
    if cfg.get("dataset_path"):
        snap = _snapshot_dir(exports, cfg["dataset_path"])
        if snap is not None:
            return {"format": "snapshot", "path": str(snap.resolve()), "name": cfg.get("dataset_name")}
    return None


def _join_source(exports: Path, task: str, join: ImageJoin, main: dict) -> dict | None:
    if main["format"] == "snapshot":
        return {"format": "snapshot", "path": main["path"], "name": join.config, "split": join.split}
    d = exports / task / "images"
    if (d / "dataset_dict.json").exists():
        return {"format": "save_to_disk", "path": str(d.resolve()), "split": join.split}
    if d.is_dir() and _parquet_files(d, join.split):
        return {"format": "parquet", "files": _parquet_files(d, join.split), "split": join.split}
    return None


def load_source(src: dict):
    """The ``datasets.Dataset`` a source (as stored in the manifest) describes, for one split."""
    if src["format"] == "parquet":
        return datasets.load_dataset("parquet", data_files={src["split"]: src["files"]}, split=src["split"])
    if src["format"] == "save_to_disk":
        return datasets.load_from_disk(src["path"])[src["split"]]
    return datasets.load_dataset(src["path"], src.get("name"), split=src["split"])


def join_images(dataset, src: dict, join: dict):
    """Attach ``image`` to every doc from the local copy of the second dataset (GQA's ``process_docs``, offline)."""
    images = load_source(src)
    by_id = {row[join["key"]]: row[join["image_field"]] for row in images}
    missing = sorted({d for d in dataset[join["ref"]] if d not in by_id})
    if missing:
        raise KeyError(f"{len(missing)} docs refer to images missing from the local export {src}: {missing[:5]}")
    return dataset.map(lambda doc: {"image": by_id[doc[join["ref"]]].convert("RGB")})


def vendor_task(src: Path, dest: Path) -> str:
    """Copy the lmms-eval task file ``src`` and every file it includes into ``dest`` (under names without ``.yaml``,
    so lmms-eval does not index the copies as tasks of their own), with a ``utils.py`` that re-exports the task's
    functions from the installed package by module name. Returns the name to ``include:``. The task files then
    name no path of the environment lmms-eval was installed in: they survive a moved or rebuilt virtual environment,
    and prompts, post-processing and metrics stay lmms-eval's own."""
    dest.mkdir(parents=True, exist_ok=True)
    tasks_root = next(p for p in src.parents if p.name == "tasks" and p.parent.name == "lmms_eval")
    if (src.parent / "utils.py").exists():
        module = ".".join(("lmms_eval", "tasks", *src.parent.relative_to(tasks_root).parts, "utils"))
        (dest / "utils.py").write_text(f"from {module} import *  # noqa: F401,F403\n")
    return _copy_chain(src, dest)


def _copy_chain(src: Path, dest: Path) -> str:
    name = "_lmms_" + src.name.removesuffix(".yaml").lstrip("_")

    def include(m: re.Match) -> str:
        return m.group(1) + _copy_chain(src.parent / m.group(2).strip().strip("\"'"), dest)

    text = re.sub(r"^(include:\s*)(\S.*)$", include, src.read_text(), flags=re.M)
    (dest / name).write_text(text)
    return name


def _task_yaml(include: str, name: str, src: dict, split: str, cfg: dict, process_docs: str | None) -> str:
    out: dict = {"include": include, "task": name}
    if src["format"] == "parquet":
        out |= {"dataset_path": "parquet", "dataset_name": None,
                "dataset_kwargs": {"data_files": {split: src["files"]}}}
    elif src["format"] == "save_to_disk":
        out |= {"dataset_path": src["path"], "dataset_name": None, "dataset_kwargs": {"load_from_disk": True}}
    else:
        out |= {"dataset_path": src["path"], "dataset_name": src.get("name"), "dataset_kwargs": {}}
    # the local task is not a member of lmms-eval's hub-backed groups/tags
    if "group" in cfg:
        out["group"] = []
    if "tag" in cfg:
        out["tag"] = []
    text = yaml.safe_dump(out, sort_keys=False)
    if process_docs:
        text += f"process_docs: !function genlip_local_utils.{process_docs}\n"
    return text


def write_local_tasks(exports: str | Path, out: str | Path, tasks: list[str]) -> dict:
    """Write ``out/<task>_local.yaml`` for every task (or group) of ``tasks`` found in ``exports``.

    Returns the manifest (also written to ``out/genlip_local_tasks.json``): ``tasks`` maps each written task or
    group to its local name; ``missing`` lists the tasks without an export and why.
    """
    exports, out = Path(exports), Path(out)
    if not exports.is_dir():
        raise FileNotFoundError(f"no exports directory {exports}")
    out.mkdir(parents=True, exist_ok=True)
    index = _index()
    names: dict[str, str] = {}
    missing: dict[str, str] = {}
    sources: dict[str, dict] = {}
    joins: dict[str, dict] = {}

    def one(task: str) -> bool:
        if task not in index:
            missing[task] = "not an installed lmms-eval task"
            return False
        kind, path = index[task]
        cfg = _config(path)
        if kind == "group":
            subs = cfg.get("task") or []
            if not all(isinstance(s, str) for s in subs):
                missing[task] = "group with inline task definitions (not supported)"
                return False
            ok = [s for s in subs if one(s)]
            if len(ok) != len(subs):
                missing[task] = f"subtasks without exports: {sorted(set(subs) - set(ok))}"
                return False
            group = {k: v for k, v in cfg.items() if k not in ("group", "task")}
            body = {"group": task + SUFFIX, "task": [s + SUFFIX for s in subs], **group}
            (out / f"{task}{SUFFIX}.yaml").write_text(yaml.safe_dump(body, sort_keys=False))
            names[task] = task + SUFFIX
            return True
        src = _source(exports, task, cfg)
        if src is None:
            missing[task] = (f"no {exports / task}/ (parquet or save_to_disk) and no snapshot of "
                             f"{cfg.get('dataset_path')!r} under {exports}")
            return False
        process_docs = None
        if task in JOINS:
            join = JOINS[task]
            jsrc = _join_source(exports, task, join, src)
            if jsrc is None:
                missing[task] = (f"its images ({join.config}/{join.split}) are a second dataset: export them to "
                                 f"{exports / task / 'images'}/")
                return False
            joins[task] = {"source": jsrc, "join": {"key": join.key, "ref": join.ref, "image_field": join.image_field}}
            process_docs = f"process_docs_{task}"
        split = cfg.get("test_split")
        task_dir = out / task
        include = vendor_task(path, task_dir)
        (task_dir / f"{task}{SUFFIX}.yaml").write_text(_task_yaml(include, task + SUFFIX, src, split, cfg,
                                                                   process_docs))
        (out / f"{task}{SUFFIX}.yaml").unlink(missing_ok=True)  # the layout before vendoring: one file per task
        if process_docs:
            (task_dir / "genlip_local_utils.py").write_text(_local_utils(task))
        names[task], sources[task] = task + SUFFIX, src
        return True

    for t in dict.fromkeys(tasks):
        one(t)
    manifest = {"exports": str(exports.resolve()), "tasks": names, "missing": missing, "sources": sources,
                "joins": joins}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


def _local_utils(task: str) -> str:
    """``process_docs`` of a task that joins a second local dataset (it reads the join from the manifest)."""
    return "\n".join([
        '"""Generated by genlip-eval local-tasks: process_docs for a task that joins a second local dataset."""',
        "import json", "from pathlib import Path", "", "from eval.local_tasks import join_images", "",
        f"_JOIN = json.loads((Path(__file__).parent.parent / {MANIFEST!r}).read_text())['joins'][{task!r}]", "", "",
        f"def process_docs_{task}(dataset):", "    return join_images(dataset, _JOIN['source'], _JOIN['join'])", ""])


def read_manifest(tasks_dir: str | Path) -> dict:
    p = Path(tasks_dir) / MANIFEST
    if not p.exists():
        raise FileNotFoundError(f"{tasks_dir} has no {MANIFEST}; write it with `genlip-eval local-tasks`")
    return json.loads(p.read_text())
