"""Data: one schema, readers for the layouts people have, chat-template rendering with assistant-only loss
masks, and collation."""

from posttrain.data.collate import collate_pairs, collate_sequences
from posttrain.data.layouts import load_examples, to_preference, to_prompt, to_sft, to_unpaired
from posttrain.data.readers import read_records
from posttrain.data.render import (
    Rendered,
    RenderStats,
    render_dataset,
    render_messages,
    render_pair,
    render_prompt,
    render_sft,
    render_unpaired,
)
from posttrain.data.schema import (
    KINDS,
    DataError,
    DataErrors,
    Example,
    Message,
    PreferencePair,
    PromptExample,
    SFTExample,
    UnpairedExample,
)
from posttrain.data.validate import validate_example, validate_examples

__all__ = [
    "KINDS", "DataError", "DataErrors", "Example", "Message", "PreferencePair", "PromptExample", "RenderStats",
    "Rendered", "SFTExample", "UnpairedExample", "collate_pairs", "collate_sequences",
    "load_examples", "read_records", "render_dataset", "render_messages", "render_pair", "render_prompt",
    "render_sft", "render_unpaired", "to_preference", "to_prompt", "to_sft", "to_unpaired", "validate_example",
    "validate_examples",
]
