"""Judge specs: the ``--judge`` strings (``verifier``, ``llm:URL:MODEL``, ``local:MODEL``, ``rm:MODEL``) and the
``--judges FILE`` YAML, turned into judge config dicts, and the error every judge config check raises.

Its own module so that the CLI, the judge stage, the pipeline and the win-rate eval read specs without importing
each other.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml


class JudgeConfigError(ValueError):
    """A judge or pair config is wrong; ``str()`` is one line naming the entry and the key."""


_LLM_SPEC = re.compile(r"^llm:(https?://[^/\s]+(?:/[^:\s]*)?):(.+)$")


def parse_judge_spec(spec: str) -> dict[str, Any]:
    """``verifier`` | ``llm:URL:MODEL`` (the URL's path holds no ':'; the model may) | ``local:MODEL`` |
    ``reward_model:MODEL`` (or ``rm:MODEL``) | ``rubric:FILE`` -> a judge config dict."""
    if spec == "verifier":
        return {"type": "verifier"}
    m = _LLM_SPEC.match(spec)
    if m:
        return {"type": "llm", "base_url": m.group(1), "model": m.group(2)}
    kind, _, model = spec.partition(":")
    if kind in ("local", "reward_model", "rm") and model:
        return {"type": "reward_model" if kind == "rm" else kind, "model": model}
    if kind == "rubric" and model:  # a rubric file; LLM-graded rules need a grader: use a --config file for those
        return {"type": "rubric", "rubric": model}
    raise JudgeConfigError(f"--judge '{spec}': expected verifier, llm:URL:MODEL, local:MODEL, reward_model:MODEL or "
                           "rubric:FILE")


def load_judges_file(path: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A YAML file holding a list of judge configs, or ``{judges: [...], pairs: {...}}``."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise JudgeConfigError(f"{path}: cannot read it ({str(e).splitlines()[0]})") from None
    if isinstance(data, list):
        return data, {}
    if isinstance(data, dict) and isinstance(data.get("judges"), list):
        unknown = sorted(set(data) - {"judges", "pairs"})
        if unknown:
            raise JudgeConfigError(f"{path}: unknown key '{unknown[0]}'; expected judges, pairs")
        pairs = data.get("pairs") or {}
        if not isinstance(pairs, dict):
            raise JudgeConfigError(f"{path}: 'pairs' must be a mapping")
        return data["judges"], pairs
    raise JudgeConfigError(f"{path}: expected a list of judges or a mapping with a 'judges' list")
