"""The LLM judge: a versioned rubric prompt, a strict parser for its ratings, and their statistics.

SoulChat had three psychology experts rate 100 responses per test set for content naturalness (Con.,
0-2), empathy (Emp., 0-2), helpfulness (Hel., 0-2) and safety (Saf., 0-1), and reported the means and
Fleiss' κ between the experts (SOULCHAT.md). The judge plays the experts: each judge run is one rater,
so means come with bootstrap confidence intervals over samples, and the runs' agreement is Fleiss' κ
(comparable with the paper's 0.489 / 0.472 / 0.532 / 1.0) and the share of identical ratings.
The calls themselves go through soulray.llm's broker, cache, re-asks and accounting (evaluate/llm.py).
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from soulray.errors import ConfigError
from soulray.rewrite.prompts import neutralise

BUILTIN = Path(__file__).parent / "rubrics"
# the judge's JSON keys (also the JUDGE_SCORE columns) → highest score, in Table 1's order
DIMENSIONS = {"content": 2, "empathy": 2, "helpfulness": 2, "safety": 1}
DIALOGUE_OPEN, DIALOGUE_CLOSE = "<<<DIALOGUE>>>", "<<<END DIALOGUE>>>"
RESPONSE_OPEN, RESPONSE_CLOSE = "<<<RESPONSE>>>", "<<<END RESPONSE>>>"
_LABELS = {"user": "求助者", "assistant": "心理咨询师"}


@dataclass(frozen=True)
class Rubric:
    version: str
    template: str

    def render(self, history: list[dict[str, str]], response: str) -> list[dict[str, str]]:
        """One user message: the rubric with the dialogue and the rated response in delimited blocks."""
        dialogue = "\n".join(f"{_LABELS.get(m['role'], m['role'])}：{neutralise(m['content'])}" for m in history)
        text = (self.template.replace("{dialogue}", f"{DIALOGUE_OPEN}\n{dialogue}\n{DIALOGUE_CLOSE}")
                .replace("{response}", f"{RESPONSE_OPEN}\n心理咨询师：{neutralise(response)}\n{RESPONSE_CLOSE}"))
        return [{"role": "user", "content": text}]


@lru_cache(maxsize=16)
def load_rubric(name_or_path: str) -> Rubric:
    """A builtin rubric version ('judge-v1') or a YAML file with `version` and `template`."""
    path = Path(name_or_path)
    if not path.suffix:
        path = BUILTIN / f"{name_or_path}.yaml"
        if not path.is_file():
            builtins = sorted(p.stem for p in BUILTIN.glob("*.yaml"))
            raise ConfigError(f"judge.rubric: unknown rubric {name_or_path!r}; builtins are {builtins}, "
                              "or give the path of a rubric file")
    if not path.is_file():
        raise ConfigError(f"judge.rubric: rubric file not found: {path}")
    import yaml

    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not {"version", "template"} <= set(data):
        raise ConfigError(f"{path}: a rubric needs `version` and `template`")
    for placeholder in ("{dialogue}", "{response}"):
        if placeholder not in data["template"]:
            raise ConfigError(f"{path}: the template must contain {placeholder}")
    return Rubric(version=str(data["version"]), template=data["template"])


@dataclass(frozen=True)
class Rating:
    scores: dict[str, int] | None
    reason: str | None = None  # why there are no scores
    detail: str | None = None

    @property
    def ok(self) -> bool:
        return self.scores is not None


_OBJECT = re.compile(r"\{[^{}]*\}", re.DOTALL)


def parse_rating(text: str, finish_reason: str = "stop") -> Rating:
    """The judge's scores from its answer: the first JSON object holding all four dimensions as integers
    in range (prose or code fences around it are tolerated); anything else is a reason to re-ask."""
    if finish_reason == "length":
        return Rating(None, "truncated", text[-80:])
    for candidate in _OBJECT.findall(text):
        try:
            data = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        if not isinstance(data, dict):
            continue
        missing = [name for name in DIMENSIONS if name not in data]
        if missing:
            return Rating(None, "missing_scores", f"no {', '.join(missing)} in {candidate[:80]}")
        scores = {}
        for name, highest in DIMENSIONS.items():
            value = data[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
                return Rating(None, "not_an_integer", f"{name}={value!r}")
            if not 0 <= value <= highest:
                return Rating(None, "out_of_range", f"{name}={value} (0-{highest})")
            scores[name] = int(value)
        return Rating(scores)
    return Rating(None, "no_json", text[:80])


def mean_with_interval(rows: list[dict[str, Any]], dimension: str, *, confidence: float, resamples: int,
                       seed: int) -> dict[str, float]:
    """Mean rating and a percentile bootstrap interval. A sample's ratings across judge runs are averaged
    first and samples are resampled, since runs on the same response are not independent."""
    per_sample: dict[str, list[int]] = defaultdict(list)
    for row in rows:
        if row[dimension] is not None:
            per_sample[row["sample_id"]].append(row[dimension])
    if not per_sample:
        return {"mean": math.nan, "low": math.nan, "high": math.nan, "samples": 0}
    means = np.array([np.mean(values) for _, values in sorted(per_sample.items())])
    rng = np.random.default_rng(seed)
    draws = means[rng.integers(0, len(means), size=(resamples, len(means)))].mean(axis=1)
    tail = (1 - confidence) / 2
    return {"mean": float(means.mean()), "low": float(np.quantile(draws, tail)),
            "high": float(np.quantile(draws, 1 - tail)), "samples": len(means)}


def agreement(rows: list[dict[str, Any]], dimension: str) -> dict[str, float]:
    """Agreement of the judge runs on `dimension` over the responses every run rated: Fleiss' κ and the
    share of responses all runs rated alike. κ is 1 when every rating is identical (the paper's Saf.)."""
    by_item: dict[tuple[str, str], dict[int, int]] = defaultdict(dict)
    runs = {row["run"] for row in rows}
    for row in rows:
        if row[dimension] is not None:
            by_item[(row["model"], row["sample_id"])][row["run"]] = row[dimension]
    complete = [list(ratings.values()) for ratings in by_item.values() if len(ratings) == len(runs)]
    if len(runs) < 2 or not complete:
        return {"fleiss_kappa": math.nan, "exact": math.nan, "items": len(complete), "runs": len(runs)}
    exact = sum(len(set(ratings)) == 1 for ratings in complete) / len(complete)
    return {"fleiss_kappa": fleiss_kappa(complete, categories=DIMENSIONS[dimension] + 1), "exact": exact,
            "items": len(complete), "runs": len(runs)}


def fleiss_kappa(items: list[list[int]], *, categories: int) -> float:
    """Fleiss' κ (1971) for items each rated by the same number of raters into 0..categories-1."""
    counts = np.zeros((len(items), categories))
    for index, ratings in enumerate(items):
        for rating in ratings:
            counts[index, rating] += 1
    raters = counts[0].sum()
    observed = ((counts ** 2).sum(axis=1) - raters) / (raters * (raters - 1))
    shares = counts.sum(axis=0) / counts.sum()
    expected = float((shares ** 2).sum())
    if expected == 1.0:  # one category only: perfect agreement, no chance correction possible
        return 1.0 if observed.mean() == 1.0 else math.nan
    return float((observed.mean() - expected) / (1 - expected))
