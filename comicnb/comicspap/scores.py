"""``comicspap eval`` and ``comicspap predict``: accuracy per skill and pooled, beside chance, the no-learning
baselines and the published table; the test split's predictions in the form ComicsPAP's own evaluation writes them.

The pooled accuracy is computed as ComicsPAP's ``evaluate.py`` does (llabres/ComicsPAP): per skill the share of its
samples answered right, then the skills weighted by their sample counts, which is the mean over all samples; chance is
the mean of one over the options, per skill and pooled. Intervals resample samples (a sample's panels come from one
strip; ComicsPAP gives no book to resample by). A model's answer is its arg-max option; a baseline's ties count as a
uniform pick among the tied options (``comicnb.metrics.expected_hit``), so a baseline that cannot tell the options
apart scores chance exactly.

The test split's labels are hidden: ``score_split`` refuses it, and ``predict`` writes its answers for the
competition server.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from comicnb.comicspap.encode import FOLDER, open_split, read_manifest, read_split_sets
from comicnb.comicspap.format import HIDDEN, SKILL_OF, SKILLS
from comicnb.metrics import clustered_interval
from comicnb.stage4.results import Result

CITATION = (
    "Vivoli, Llabrés, Souibgui, Bertini, Valveny, Karatzas: ComicsPAP: understanding comic strips by picking the "
    "correct panel, arXiv 2503.08561 (ICDAR 2025); validation split, single-image protocol"
)
# Published validation accuracies (%), single-image protocol (arXiv 2503.08561); per skill where the paper gives it.
PUBLISHED = (
    {"method": "Qwen2.5-VL-7B zero-shot", "total": 34.91},
    {"method": "Qwen2.5-VL-72B zero-shot", "total": 41.27},
    {"method": "Qwen2.5-VL-3B fine-tuned", "total": 55.55},
    {
        "method": "Qwen2.5-VL-7B fine-tuned",
        "total": 62.31,
        "sequence_filling": 69.08,
        "char_coherence": 93.01,
        "visual_closure": 42.00,
        "text_closure": 74.90,
        "caption_relevance": 49.62,
    },
)
PUBLISHED_CHANCE = 24.30  # ComicsPAP's random baseline on its validation split (%)
BASELINES = ("chance", "option_shape", "stage3_cosine", "colour_histogram", "text_similarity")
MODEL_DIR = "model"
MODEL_FILE = "best_model.pt"
PREDICTIONS = "predictions"


class HiddenLabelsError(ValueError):
    """Scoring was asked of a split whose labels are hidden (ComicsPAP's test split)."""


def model_path(run_dir: str | Path) -> Path:
    """Where ``comicspap fit`` writes its model: ``<run>/comicspap/model/best_model.pt``."""
    return Path(run_dir) / FOLDER / MODEL_DIR / MODEL_FILE


def _model(run_dir: str | Path, model: str | Path | None) -> tuple[Path, Any, dict[str, Any]]:
    from comicnb.stage4.scoring import load_stage4_model

    path = Path(model) if model else model_path(run_dir)
    if not path.is_file():
        raise FileNotFoundError(
            f"no ComicsPAP model at {path}: run `python -m comicnb comicspap fit --run-dir {run_dir}` (add "
            f"--zero-shot to use the run's own Stage 4 model as it is)"
        )
    loaded, config = load_stage4_model(path)
    return path, loaded, config


def model_label(run_dir: str | Path, path: Path) -> str:
    """How a model is named in a table: from its fit record (``stage4 zero-shot`` or ``stage4 fine-tuned``)."""
    record = path.parent / "fit.json"
    if record.is_file():
        fitted = json.loads(record.read_text(encoding="utf-8"))
        return "stage4 zero-shot" if fitted.get("zero_shot") else "stage4 fine-tuned"
    return f"stage4 ({path.name})"


def model_results(run_dir: str | Path, split: str, model: str | Path | None = None, view=None, sets=None):
    """The model's per-sample results on every task of an encoded split, named as ``model_label``."""
    from comicnb.stage4.scoring import builder_for, predict_sets

    path, loaded, config = _model(run_dir, model)
    view = view or open_split(run_dir, split)
    sets = sets or read_split_sets(run_dir, split)
    if int(loaded.cfg.input_dim) != int(view.feature_dim):
        raise ValueError(
            f"the model {path} reads {loaded.cfg.input_dim}-wide panels, the {split} store holds "
            f"{view.feature_dim}-wide ones: encode with the Stage 3 checkpoint the model was trained on"
        )
    return predict_sets(loaded, sets, builder_for(view, config), name=model_label(run_dir, path))


def score_split(
    run_dir: str | Path,
    split: str = "val",
    model: str | Path | None = None,
    baselines: Sequence[str] = BASELINES,
    with_model: bool = True,
    level: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Every method's accuracy per skill and pooled on an encoded split, with intervals, chance and the published
    table (see the module); the test split is refused."""
    from comicnb.stage4.baselines import run_baselines

    if split == "test":
        raise HiddenLabelsError(
            "ComicsPAP's test labels are hidden: only the competition server scores the test split; "
            "`comicnb comicspap predict --split test` writes the answers it takes"
        )
    manifest = read_manifest(run_dir, split)
    view = open_split(run_dir, split)
    sets = read_split_sets(run_dir, split)
    hidden = [t for t, s in sets.items() if any(x.answer == HIDDEN for x in s.samples)]
    if hidden:
        raise HiddenLabelsError(f"the {split} split has samples without labels ({', '.join(hidden)}): nothing to score")
    ours = [b for b in baselines if b not in ("chance", "option_shape")]
    results = run_baselines(sets, view, ["chance"]) if "chance" in baselines else []
    if "option_shape" in baselines:
        results += [option_shape_baseline(task_set, view) for task_set in sets.values()]
    results += run_baselines(sets, view, ours) if ours else []
    if with_model:
        results += model_results(run_dir, split, model, view, sets)
    methods: dict[str, list[Result]] = {}
    for result in results:
        methods.setdefault(result.method, []).append(result)
    skills = [s for s in SKILLS if manifest["samples"].get(s)]
    table = [method_row(name, parts, level, n_resamples, seed, skills) for name, parts in methods.items()]
    return dict(
        split=split,
        samples=manifest["samples"],
        bad_rows=manifest["bad_rows"],
        revisions=manifest["revisions"],
        text=manifest["settings"]["text"],
        interval=f"{int(level * 100)} % bootstrap over samples",
        table=table,
        chance=manifest["chance"],
        published=list(PUBLISHED),
        published_chance=PUBLISHED_CHANCE,
        citation=CITATION,
    )


def option_shape_baseline(task_set, view) -> Result:
    """The option whose picture is closest in shape and size to the context's panels: the distance of its log aspect
    ratio and log area (pixels) to the context's means, summed. It reads nothing of the story: where it beats chance,
    the options' shapes give the answer away (caption relevance, with no context, and options of one panel tie: chance
    exactly)."""
    from comicnb.stage4.results import picking_result

    sizes = view.pages["sizes"]

    def shape(panel: int) -> np.ndarray:
        page, slot = view.locate(panel)
        width, height = sizes.iat[int(page)][int(slot)]
        return np.array([np.log(width / height), np.log(width * height)])

    scores = []
    for sample in task_set.samples:
        if not sample.context:
            scores.append(np.zeros(len(sample.candidates)))
            continue
        reference = np.mean([shape(p) for p in sample.context], axis=0)
        scores.append(np.array([-np.abs(shape(c.panel_id) - reference).sum() for c in sample.candidates]))
    return picking_result("option_shape", task_set, scores)


def method_row(
    method: str,
    results: Sequence[Result],
    level: float,
    n_resamples: int,
    seed: int,
    skills: Sequence[str] | None = None,
) -> dict[str, Any]:
    """One method's accuracy (%) per skill and pooled over every sample, each with its interval and n; the pooled
    figure is None where the method answers only some of ``skills``."""
    row: dict[str, Any] = {"method": method}
    every, groups = [], []
    for result in sorted(results, key=lambda r: SKILLS.index(SKILL_OF[r.task])):
        skill = SKILL_OF[result.task]
        ids = [f"{skill}/{s}" for s in result.sample_ids]
        accuracy, low, high, _ = clustered_interval(result.correct, ids, level, n_resamples, seed)
        row[skill] = dict(n=len(ids), accuracy=100 * accuracy, low=100 * low, high=100 * high)
        every.append(result.correct)
        groups += ids
    if skills is not None and set(skills) - set(row):
        row["total"] = None  # a method that does not answer every skill has no pooled figure to set beside others
        return row
    correct = np.concatenate(every) if every else np.zeros(0)
    accuracy, low, high, _ = clustered_interval(correct, groups, level, n_resamples, seed)
    row["total"] = dict(n=len(correct), accuracy=100 * accuracy, low=100 * low, high=100 * high)
    return row


def table_lines(report: dict[str, Any]) -> list[str]:
    """The report as a text table: methods by skill (accuracy %, and n), chance, then the published rows."""
    skills = [s for s in SKILLS if s in report["samples"]]
    head = f"{'method':<28}" + "".join(f"{s:>19}" for s in skills) + f"{'total':>19}"
    lines = [f"ComicsPAP {report['split']} ({report['interval']}; text: {report['text']})", head]
    for row in report["table"]:
        cells = []
        for key in (*skills, "total"):
            cell = row.get(key)
            cells.append(f"{cell['accuracy']:6.2f} [{cell['low']:5.1f},{cell['high']:5.1f}]" if cell else f"{'-':>18}")
        lines.append(f"{row['method']:<28}" + "".join(f"{c:>19}" for c in cells))
    counts = "".join(f"{report['samples'][s]:>19}" for s in skills) + f"{sum(report['samples'].values()):>19}"
    lines.append(f"{'samples':<28}" + counts)
    lines.append(f"published ({report['citation']}):")
    for row in report["published"]:
        cells = "".join(f"{row[s]:>19.2f}" if s in row else f"{'-':>19}" for s in skills)
        lines.append(f"{row['method']:<28}" + cells + f"{row['total']:>19.2f}")
    lines.append(f"{'chance (published)':<28}" + f"{'':>{19 * len(skills)}}" + f"{report['published_chance']:>19.2f}")
    return lines


def predict(run_dir: str | Path, split: str = "test", model: str | Path | None = None) -> dict[str, Any]:
    """The model's answer to every sample of an encoded split, written under ``<run>/comicspap/predictions/<split>/``
    as ComicsPAP's ``evaluate.py`` writes its results: ``results_<skill>.json``, a list of ``sample_id``,
    ``prediction`` (the option's index), ``full_prediction`` and ``skill`` per sample; and ``predictions.json``,
    skill -> sample_id -> prediction, all skills in one file."""
    results = model_results(run_dir, split, model)
    folder = Path(run_dir) / FOLDER / PREDICTIONS / split
    folder.mkdir(parents=True, exist_ok=True)
    every: dict[str, dict[str, int]] = {}
    for result in results:
        skill = SKILL_OF[result.task]
        rows = [
            dict(sample_id=sample, prediction=int(pick), full_prediction=f"answer: {int(pick)}", skill=skill)
            for sample, pick in zip(result.sample_ids, result.predictions)
        ]
        (folder / f"results_{skill}.json").write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
        every[skill] = {r["sample_id"]: r["prediction"] for r in rows}
    (folder / "predictions.json").write_text(json.dumps(every, indent=1) + "\n", encoding="utf-8")
    return dict(split=split, folder=str(folder), samples={s: len(p) for s, p in every.items()})


def report_frame(report: dict[str, Any]):
    """The report as one table (accuracy %, methods by skill and total): this run's methods, then the published rows
    and the published chance, a ``source`` column telling them apart; NaN where a figure is not given."""
    import pandas as pd

    skills = [s for s in SKILLS if s in report["samples"]]
    rows = {}
    for row in report["table"]:
        cells = {k: (row[k]["accuracy"] if row.get(k) else np.nan) for k in (*skills, "total")}
        rows[row["method"]] = {**cells, "source": f"this run ({report['split']}, n={sum(report['samples'].values())})"}
    for row in report["published"]:
        rows[row["method"]] = {**{k: row.get(k, np.nan) for k in (*skills, "total")}, "source": "published"}
    rows["chance (published)"] = {**{k: np.nan for k in skills}, "total": report["published_chance"]}
    rows["chance (published)"]["source"] = "published"
    return pd.DataFrame.from_dict(rows, orient="index")[[*skills, "total", "source"]]
