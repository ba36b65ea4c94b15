"""Loading models: builtin names, HF folders and hub ids, PEFT adapters, GGUF conversion (models/builtin.py)."""

import warnings

# PEFT (<= 0.21) reads `model.is_gradient_checkpointing`, which transformers 5.24 deprecated; the warning is
# about PEFT's code, not the user's, and would print on every run that wraps a model in an adapter.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
