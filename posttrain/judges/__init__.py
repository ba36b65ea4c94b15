"""Judges (verifiers, reward models, LLM judges over any OpenAI-compatible endpoint, in-process model judges,
ensembles) and preference-pair building. The shapes every judge takes are in ``types.py``; the stage that turns a
candidates file into ``pairs.jsonl`` is ``run.judge_candidates``. Submodules are imported where used, so
importing this package loads neither torch nor transformers."""
