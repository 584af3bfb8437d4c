"""Evaluation: the baselines GGRO is measured against (greedy, Best-of-N, ARGS), on the same policy and
guidance reward, with the same cost counters. (The harness that runs them over prompt sets builds on this.)"""

from .gold import vader_sentiment
from .methods import MethodOutput, args_decode, best_of_n, greedy

__all__ = ["MethodOutput", "args_decode", "best_of_n", "greedy", "vader_sentiment"]
