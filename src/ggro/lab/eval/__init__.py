"""Evaluation: the baselines GGRO is measured against (greedy, Best-of-N, ARGS), on the same policy and
guidance reward, with the same cost counters; the runner that takes them over prompt sets (resumable JSONL),
the standard suite (``evaluate``, what ``ggro eval`` runs) and its report and plots."""

from .gold import vader_sentiment
from .methods import MethodOutput, args_decode, best_of_n, best_of_n_batch, greedy, greedy_batch
from .runner import run_eval
from .suite import evaluate

__all__ = [
    "MethodOutput",
    "args_decode",
    "best_of_n",
    "best_of_n_batch",
    "evaluate",
    "greedy",
    "greedy_batch",
    "run_eval",
    "vader_sentiment",
]
