"""The lab: research tooling around the library, never imported by it.

- :mod:`ggro.lab.bench`: speed and memory, GGRO against greedy and the release's structure, side by side;
- :mod:`ggro.lab.baseline`: the authors' release structure (re-prefill per refinement), for the benchmark;
- :mod:`ggro.lab.reference`: reproduce the authors'-code fixture cases (``ggro reference-check``);
- :mod:`ggro.lab.compare`: greedy vs GGRO under the guidance and gold rewards (``ggro compare``, ``ggro demo``);
- :mod:`ggro.lab.prompts`: prompt sets (HarmBench, Do-Not-Answer, benign, RealToxicityPrompts, the demo's);
- :mod:`ggro.lab.eval`: the evaluation (greedy, Best-of-N, ARGS, GGRO; ``ggro eval``);
- :mod:`ggro.lab.gold`: the held-out gold judge (a MiniLM harm probe; it never steers);
- :mod:`ggro.lab.harm_data` and :mod:`ggro.lab.train_head`: the human harm scores and the training of the
  embedded reward head and the gold probe (``python -m ggro.lab.train_head``).

Heavy optional dependencies (matplotlib, vaderSentiment) come with the ``eval`` extra.
"""
