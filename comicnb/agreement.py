"""Neighbour agreement in the embedding store: how often a panel's nearest panels on other pages share its label
(book, character, scene), and whether the fused vectors keep what each modality's own vectors know.

Notebook 03 reads a store with these; they search with ``comicnb.search.exact_topk``, so they sit beside search.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from comicnb.search import exact_topk


def neighbour_agreement(vectors: np.ndarray, page: np.ndarray, labels: pd.DataFrame, k: int = 5) -> pd.DataFrame:
    """How often a panel's k nearest panels on *other* pages share its label, per label column, against chance.

    Chance is the probability that a random panel of another page shares the label (from the label frequencies).
    """
    extra = int(np.bincount(page).max())  # enough hits to still have k after dropping the panel's own page
    _, ids = exact_topk(vectors, vectors, k + extra)
    other = page[ids] != page[:, None]  # (M, k + extra)
    ranks = np.cumsum(other, axis=1) <= k
    keep = other & ranks  # the first k hits on other pages
    rows = []
    for column in labels.columns:
        values = labels[column].to_numpy()
        agree = (values[ids] == values[:, None]) & keep
        share = labels[column].value_counts(normalize=True)
        rows.append(dict(label=column, agreement=agree.sum() / keep.sum(), chance=float((share**2).sum())))
    return pd.DataFrame(rows).set_index("label")


def fusion_against_modalities(
    fused: np.ndarray,
    modalities: np.ndarray,
    modality_mask: np.ndarray,
    page: np.ndarray,
    labels: pd.DataFrame,
    names: tuple[str, ...],
    k: int = 5,
) -> pd.DataFrame:
    """Neighbour agreement of the fused vectors against each single modality's, on the panels that have it.

    fused (M, D), modalities (M, len(names), D), modality_mask (M, len(names)), page (M,), labels (M rows). One row
    per (modality, label): `modality` is that modality's own vectors, `fused` the fused vectors of the same panels,
    `chance` as in neighbour_agreement; `fused_loses` where fusion scores below the modality alone.
    """
    rows = []
    for i, name in enumerate(names):
        rows_with = np.flatnonzero(modality_mask[:, i])
        if len(np.unique(page[rows_with])) < 2:  # no other page to find neighbours on
            continue
        subset = labels.iloc[rows_with].reset_index(drop=True)
        alone = neighbour_agreement(modalities[rows_with, i], page[rows_with], subset, k)
        together = neighbour_agreement(fused[rows_with], page[rows_with], subset, k)
        for label in subset.columns:
            rows.append(
                dict(
                    input=name,
                    label=label,
                    panels=len(rows_with),
                    modality=alone.loc[label, "agreement"],
                    fused=together.loc[label, "agreement"],
                    chance=alone.loc[label, "chance"],
                )
            )
    table = pd.DataFrame(rows, columns=["input", "label", "panels", "modality", "fused", "chance"])
    table["fused_loses"] = table.fused < table.modality
    return table.set_index(["label", "input"]).sort_index()


def fusion_losses(table: pd.DataFrame, label: str, margin: float = 0.0) -> pd.DataFrame:
    """Rows of a fusion_against_modalities table where, for ``label``, the fused vectors score below the best
    single modality by more than ``margin`` (empty when fusion matches or beats its best input)."""
    if label not in table.index.get_level_values("label"):
        return table.iloc[:0]
    rows = table.loc[label]
    best = rows.modality.max()
    return rows[(rows.modality == best) & (rows.fused < best - margin)]


def fusion_loss_warnings(table: pd.DataFrame, label: str, margin: float = 0.0) -> list[str]:
    """One message per input that beats the fused vectors on ``label`` by more than ``margin`` (see fusion_losses)."""
    return [
        f"fusion loses to its best input on {label}: fused {row.fused:.3f} against {name} alone {row.modality:.3f} "
        f"(chance {row.chance:.3f}); see notebook 02's gate weights and docs/modality-collapse.md"
        for name, row in fusion_losses(table, label, margin).iterrows()
    ]


def best_input_lines(table: pd.DataFrame, names: dict[str, str] | None = None) -> list[str]:
    """One plain sentence per label of a fusion_against_modalities table: which vectors find that label best.

    The fused vectors are compared with each modality on that modality's own panels; the sentence names the best
    single modality, the fused vectors' figure on the same panels, every other input and chance.
    """
    names = names or {}
    lines = []
    for label in table.index.get_level_values("label").unique():
        rows = table.loc[label]
        best = rows.modality.idxmax()
        row = rows.loc[best]
        others = ", ".join(
            f"{names.get(name, name)} {value:.3f}" for name, value in rows.modality.items() if name != best
        )
        verdict = (
            "the fused vectors are best"
            if row.fused >= row.modality
            else f"{names.get(best, best)} alone is best, by {row.modality - row.fused:.3f}"
        )
        lines.append(
            f"{label}: fused {row.fused:.3f} against {names.get(best, best)} alone {row.modality:.3f} "
            f"(others: {others}; chance {row.chance:.3f}): {verdict}"
        )
    return lines


def mean_gates(weights: np.ndarray, mask: np.ndarray, names: tuple[str, ...]) -> pd.Series:
    """Mean fusion weight of each modality over the panels that have it (weights and mask (M, len(names)))."""
    return pd.Series(
        {name: float(weights[mask[:, i], i].mean()) if mask[:, i].any() else np.nan for i, name in enumerate(names)},
        name="mean gate weight",
    )


def held_out_fusion(search, labels: pd.DataFrame, encoder, names: tuple[str, ...], k: int = 5):
    """Notebook 03's check on the books training never saw: (fusion_against_modalities table, mean gates, panels,
    whether a held-out split existed).

    search: a ``comicnb.search.PanelSearch`` over the store; labels: one row per stored panel (store order); encoder:
    the store's own Stage 3 model, whose gate is read on the stored per-modality vectors. Panels of validation and test
    pages are used; a corpus without them uses every panel.
    """
    import torch  # only this function needs it

    vectors = search.vectors(search.panel_ids)
    modality_vectors, modality_mask = search.modality_vectors()  # (panels, M, D), (panels, M)
    page = search.panel_ids // search.max_panels
    held_out = search.pages.split.isin(["val", "test"]).to_numpy()[page]
    on = held_out if held_out.any() else np.ones(len(held_out), dtype=bool)
    table = fusion_against_modalities(
        vectors[on], modality_vectors[on], modality_mask[on], page[on], labels[on].reset_index(drop=True), names, k
    )
    with torch.no_grad():
        fused = encoder.fusion(torch.from_numpy(modality_vectors[on]), torch.from_numpy(modality_mask[on]))
    return table, mean_gates(fused.weights.numpy(), modality_mask[on], names), int(on.sum()), bool(held_out.any())
