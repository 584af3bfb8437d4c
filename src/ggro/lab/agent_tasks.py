"""Tool-use tasks for measuring agents on GGRO chat models: two tools (``multiply`` and ``lookup``), one- and
two-step questions with known answers, and how a run is scored.

A run is scored on four things: the model called the right tool first, with arguments that validate; the
tool's result went back to the model; the final answer holds the expected value; and the loop ended by
itself (an answer in plain words) rather than at the framework's step limit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

__all__ = ["FACTS", "TASKS", "ToolTask", "lookup", "multiply", "score_run"]

FACTS: dict[str, str] = {
    "capital of australia": "Canberra",
    "author of pride and prejudice": "Jane Austen",
    "boiling point of water in fahrenheit": "212",
    "legs of a spider": "8",
    "days in a leap year": "366",
    "players on a soccer team": "11",
    "year the eiffel tower was completed": "1889",
    "largest planet": "Jupiter",
    "chemical symbol for gold": "Au",
    "moons of mars": "2",
}
"""What ``lookup`` knows: a query matches the fact whose key shares the most words with it."""

_WORD = re.compile(r"[a-z0-9]+")
_STOP = frozenset({"the", "of", "a", "an", "in", "is", "what", "how", "many", "for", "on", "does", "has", "who"})


def multiply(a: int, b: int) -> int:
    """Multiply two integers and return the product."""
    return a * b


def lookup(query: str) -> str:
    """Look up a fact (a capital, an author, a count, a date, a symbol) and return it."""
    words = {w for w in _WORD.findall(query.lower()) if w not in _STOP}
    best, overlap = None, 0
    for key, value in FACTS.items():
        shared = len(words & set(_WORD.findall(key)))
        if shared > overlap:
            best, overlap = value, shared
    return best if best is not None else "no fact found"


@dataclass(frozen=True)
class ToolTask:
    question: str
    tools: tuple[str, ...]
    """The tools a correct run calls, in order."""
    answer: str
    """A value the final answer must contain."""

    @property
    def steps(self) -> int:
        return len(self.tools)


TASKS: tuple[ToolTask, ...] = (
    ToolTask("What is 17 times 23?", ("multiply",), "391"),
    ToolTask("What is 48 multiplied by 12?", ("multiply",), "576"),
    ToolTask("Compute 125 times 8.", ("multiply",), "1000"),
    ToolTask("What is the capital of Australia?", ("lookup",), "Canberra"),
    ToolTask("Who is the author of Pride and Prejudice?", ("lookup",), "Austen"),
    ToolTask("What is the chemical symbol for gold?", ("lookup",), "Au"),
    ToolTask("How many legs does a spider have? Multiply that number by 6.", ("lookup", "multiply"), "48"),
    ToolTask("Look up how many days are in a leap year, then multiply it by 2.", ("lookup", "multiply"), "732"),
    ToolTask("In what year was the Eiffel Tower completed? Multiply that year by 3.", ("lookup", "multiply"), "5667"),
    ToolTask("How many players are on a soccer team? Multiply that by 7.", ("lookup", "multiply"), "77"),
    ToolTask("How many moons does Mars have? Multiply that by 21.", ("lookup", "multiply"), "42"),
    ToolTask("What is 19 times 19?", ("multiply",), "361"),
)


def score_run(
    task: ToolTask, calls: list[tuple[str, dict[str, Any], bool]], results: int, final: str, ended: bool
) -> dict[str, Any]:
    """Score one run: ``calls`` are (tool name, arguments, valid) in order, ``results`` the tool results fed
    back, ``final`` the last assistant text, ``ended`` whether the loop ended with an answer by itself."""
    first_right = bool(calls) and calls[0][0] == task.tools[0] and calls[0][2]
    right_tools = [name for name, _, valid in calls if valid][: task.steps] == list(task.tools)
    return {
        "question": task.question,
        "first_call_right": first_right,
        "right_tools_in_order": right_tools,
        "calls": len(calls),
        "results_fed_back": results,
        "correct_answer": task.answer.lower() in final.lower(),
        "ended_by_itself": ended,
        "final": final,
    }
