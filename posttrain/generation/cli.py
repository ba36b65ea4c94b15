"""``posttrain generate``: N candidates per prompt (mounted by ``posttrain/cli.py``)."""

from __future__ import annotations

from pathlib import Path

import typer

from posttrain.errors import fail


def _numbers(values: list[str], name: str, low: float, high: float | None) -> list[float]:
    """Repeated options and comma lists, flattened: ``--temperature 0.7,1.0 --temperature 1.2``."""
    out = []
    for value in values:
        for part in str(value).split(","):
            try:
                x = float(part)
            except ValueError:
                raise typer.BadParameter(f"not a number: {part!r}", param_hint=name) from None
            if x < low or (high is not None and x > high) or (name == "--top-p" and x == 0):
                raise typer.BadParameter(f"{x:g} is out of range", param_hint=name)
            out.append(x)
    return out


def generate_command(
    prompts: Path = typer.Option(..., "--prompts", help="prompt file (JSONL/JSON/Parquet/CSV, docs/CANDIDATES.md)"),
    model: str = typer.Option(None, "--model", help="builtin name, HF folder, hub id, or a trained run's model "
                              "folder; with --backend openai:URL:MODEL only the rows' model label (default MODEL)"),
    output: Path = typer.Option(..., "--output", "-o", help="candidate JSONL (resumed if it exists)"),
    adapter: str = typer.Option(None, "--adapter", help="an extra adapter folder to merge on top of --model"),
    n: int = typer.Option(4, "-n", "--n", min=1, help="candidates per prompt"),
    temperature: list[str] = typer.Option(["0.7"], "--temperature", help="repeatable or comma list; candidate i "
                                          "uses the (i mod count)-th value; 0 = greedy"),
    top_p: list[str] = typer.Option(["1.0"], "--top-p", help="nucleus mass in (0, 1]; a list cycles like "
                                    "--temperature"),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", min=1),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="sequences per forward pass (prompt x "
                                   "candidate); batch_size // n prompts are written per flush"),
    seed: int = typer.Option(0, "--seed"),
    system_prompt: str = typer.Option(None, "--system-prompt", help="a system message put first in every prompt "
                                      "that has none (written to the candidate rows as part of the prompt)"),
    backend: str = typer.Option("hf", "--backend", help="hf | vllm | openai:URL:MODEL (an OpenAI-compatible "
                                "endpoint, e.g. openai:http://127.0.0.1:8000/v1:my-model)"),
    api_key_env: str = typer.Option("OPENAI_API_KEY", "--api-key-env", help="openai backend: the environment "
                                    "variable holding the API key (sent as a Bearer token when set)"),
    max_concurrency: int = typer.Option(8, "--max-concurrency", min=1, help="openai backend: requests in flight"),
    max_retries: int = typer.Option(5, "--max-retries", min=0, help="openai backend: retries of a request on "
                                    "429, 5xx, timeouts and connection errors (exponential backoff + jitter)"),
    max_tokens_field: str = typer.Option("max_tokens", "--max-tokens-field", help="openai backend: the request "
                                         "field capping the answer: max_tokens | max_completion_tokens (OpenAI's "
                                         "reasoning models)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print token counts and cost, generate nothing"),
    price_input: float = typer.Option(None, "--price-input", min=0, help="USD per 1M input tokens (for the estimate)"),
    price_output: float = typer.Option(None, "--price-output", min=0, help="USD per 1M output tokens"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    dtype: str = typer.Option("auto", "--dtype", help="hf backend: weights dtype, auto | float32 | bfloat16 | "
                              "float16 (auto: bfloat16 on a GPU that has it, else float32; bfloat16 on a CPU with "
                              "AMX decodes ~1.6x faster but samples differently; recorded in each row)"),
) -> None:
    """Sample N candidates per prompt into a JSONL file; rerun the same command to resume after a kill."""
    from posttrain.data.schema import DataError, DataErrors
    from posttrain.data.writers import OutputPathError, check_output_path
    from posttrain.generation.backends import check_backend, check_dtype
    from posttrain.generation.types import BackendError
    from posttrain.models.resolve import ModelError

    temps = _numbers(temperature, "--temperature", 0.0, None)
    top_ps = _numbers(top_p, "--top-p", 0.0, 1.0)
    try:
        remote = check_backend(backend)  # (base_url, model) for openai:URL:MODEL
        check_dtype(dtype, backend)
        if remote is None and not model:
            raise BackendError(f"--model: required with the {backend} backend")
        if dry_run:
            from posttrain.generation.cost import cost_model, format_cost
            from posttrain.models.policy import model_tokenizer

            prices = None
            if price_input is not None or price_output is not None:
                prices = {"input": price_input or 0.0, "output": price_output or 0.0}
            cost = cost_model(prompts, model_tokenizer(model) if remote is None else None, n=n,
                              max_new_tokens=max_new_tokens, candidates_path=output if output.exists() else None,
                              prices=prices, prompt_per_candidate=remote is not None, system_prompt=system_prompt)
            typer.echo(format_cost(cost))
            return
        from posttrain.generation.candidates import generate_candidates

        check_output_path(output, "--output", folder=False)  # before the model loads
        summary = generate_candidates(prompts, output, model, n=n, temperatures=temps, top_p=top_ps,
                                      max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed,
                                      backend=backend, adapter=adapter, progress=progress, api_key_env=api_key_env,
                                      max_concurrency=max_concurrency, max_retries=max_retries,
                                      max_tokens_field=max_tokens_field, system_prompt=system_prompt, dtype=dtype)
    except (DataError, DataErrors, ModelError, BackendError, OutputPathError) as e:
        fail(e)
    typer.echo(f"{summary['candidates_written']} candidates for {summary['prompts_generated']} prompts "
               f"({summary['prompts_skipped']} already done) -> {summary['output']} in {summary['wall_time_s']:.1f} s"
               f" ({summary['candidates_per_s']:.2f} cand/s, {summary['tokens_per_s']:.0f} tok/s)"
               + (f"; {summary['requests']} requests, {summary['cache_hits']} answers from the cache"
                  if "requests" in summary else ""))


# A one-command app, for running ``generate`` on its own: ``python -m posttrain.generation.cli --prompts ...``
# (with a single command, Typer takes the options directly, no command name).
generate_app = typer.Typer(add_completion=False)
generate_app.command("generate")(generate_command)

if __name__ == "__main__":
    generate_app()
