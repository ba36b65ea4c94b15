"""Template consistency: SFT data and preference data should reach the model through the same chat template
and the same system prompt, or DPO starts from a distribution the SFT model never saw.

A ``TemplateProfile`` accumulates over a stream of rows: how many rows have a system prompt and which ones (the
most common, by text), and which chat-template markers appear *inside* message text (data that was rendered
with a template before it was saved: ChatML ``<|im_start|>``, Llama-2 ``[INST]``, Llama-3 headers, Zephyr
``<|user|>``, Alpaca ``### Instruction:``, Anthropic HH ``Human:``/``Assistant:`` turns). ``compare`` turns two
profiles (and optionally the two models' tokenizer chat templates) into warnings.
"""

from __future__ import annotations

import re
from collections import Counter

from posttrain.data.schema import Example, PreferencePair, PromptExample, SFTExample, UnpairedExample
from posttrain.models.policy import model_tokenizer

TEMPLATE_MARKERS = {
    "chatml": re.compile(r"<\|im_start\|>|<\|im_end\|>"),
    "llama2": re.compile(r"\[INST\]|\[/INST\]|<<SYS>>"),
    "llama3": re.compile(r"<\|start_header_id\|>|<\|eot_id\|>"),
    "zephyr": re.compile(r"<\|(?:user|assistant|system)\|>"),
    "alpaca": re.compile(r"(?m)^### (?:Instruction|Response|Input):"),
    "hh": re.compile(r"\n\n(?:Human|Assistant):"),
}
_MARKER_HINTS = ("<|", "[INST]", "[/INST]", "<<SYS>>", "### ", "Human:", "Assistant:")  # every marker has one
MAX_SYSTEM_PROMPTS = 1000  # distinct system prompts counted; more are lumped as "other"


def _messages(example: Example):
    if isinstance(example, SFTExample):
        return example.messages
    if isinstance(example, PreferencePair):
        return example.prompt + example.chosen + example.rejected
    if isinstance(example, UnpairedExample):
        return example.prompt + example.completion
    if isinstance(example, PromptExample):
        return example.prompt
    raise TypeError(type(example).__name__)


class TemplateProfile:
    def __init__(self):
        self.rows = 0
        self.with_system = 0
        self.system_prompts: Counter = Counter()
        self.markers: Counter = Counter()

    def add(self, example: Example) -> None:
        self.rows += 1
        messages = _messages(example)
        system = next((m["content"] for m in messages if m["role"] == "system"), None)
        if system is not None:
            self.with_system += 1
            key = system if (system in self.system_prompts or len(self.system_prompts) < MAX_SYSTEM_PROMPTS) \
                else "<other>"
            self.system_prompts[key] += 1
        found = {name for m in messages if any(h in m["content"] for h in _MARKER_HINTS)
                 for name, p in TEMPLATE_MARKERS.items() if p.search(m["content"])}
        self.markers.update(found)

    def report(self) -> dict:
        n = max(self.rows, 1)
        return {"rows": self.rows, "system_prompt_fraction": round(self.with_system / n, 4),
                "top_system_prompts": [{"text": t[:200], "rows": c} for t, c in self.system_prompts.most_common(5)],
                "template_markers": {name: count for name, count in sorted(self.markers.items())}}


def compare(sft: TemplateProfile, pref: TemplateProfile, sft_template: str | None = None,
            pref_template: str | None = None) -> dict:
    """Warnings when the two datasets (or the two models' chat templates) would render differently."""
    warnings = []
    s, p = sft.report(), pref.report()
    if abs(s["system_prompt_fraction"] - p["system_prompt_fraction"]) >= 0.1:
        warnings.append(f"system prompts: {s['system_prompt_fraction']:.0%} of SFT rows have one, "
                        f"{p['system_prompt_fraction']:.0%} of preference rows")
    sft_top = sft.system_prompts.most_common(1)
    pref_top = pref.system_prompts.most_common(1)
    if sft_top and pref_top and sft_top[0][0] != pref_top[0][0]:
        warnings.append(f"system prompts differ: SFT mostly {sft_top[0][0][:60]!r}, preference mostly "
                        f"{pref_top[0][0][:60]!r}")
    s_markers, p_markers = set(sft.markers), set(pref.markers)
    if s_markers != p_markers:
        warnings.append(f"pre-rendered chat-template markers differ: SFT {sorted(s_markers) or 'none'}, "
                        f"preference {sorted(p_markers) or 'none'}")
    elif s_markers:
        warnings.append(f"both datasets contain pre-rendered chat-template markers ({sorted(s_markers)}); "
                        "they will be rendered a second time")
    if sft_template is not None and pref_template is not None and sft_template != pref_template:
        warnings.append("the SFT model and the preference model have different chat templates")
    return {"sft": s, "preference": p, "same_chat_template": (None if sft_template is None or pref_template is None
                                                              else sft_template == pref_template),
            "warnings": warnings}


def chat_template(model: str) -> str | None:
    """The tokenizer chat template of ``model`` (builtin name, folder or hub id), None if it has none."""
    return getattr(model_tokenizer(model, None, False), "chat_template", None)
