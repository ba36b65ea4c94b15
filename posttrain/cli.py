"""The ``posttrain`` command.

Every training command takes an optional YAML config followed by dotted overrides::

    posttrain dpo examples/dpo.yaml loss.beta=0.2 optim.lr=1e-5
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from posttrain.errors import fail

from posttrain.commands import TRAINING_COMMANDS, TrainingCommand, data_stats
from posttrain.commands import command as training_command
from posttrain.config import COMMANDS, ConfigError, dump_config, load_config

# Commands import what they run inside their functions (a measured start-up reason): `posttrain --help` loads torch
# (config -> losses) and takes about 2.1 s on 2 cores; importing every posttrain module here makes it 3.1-3.5 s
# (transformers comes with them), and with the model stack (transformers' modeling code, peft) 5.7-6.2 s, before
# any help or one-line config error is printed (measured in session 17).
HELP = {"help_option_names": ["-h", "--help"]}
app = typer.Typer(add_completion=False, no_args_is_help=True, context_settings=HELP,
                  help="Post-training for language models, end to end.")
# Example data for `config show COMMAND --doc`, by what data.train holds (paths in a clone of the repository)
DOC_DATA = {"sft": "examples/data/sft_demos.jsonl", "preference": "examples/data/pairs_train.jsonl",
            "unpaired": "examples/data/kto.jsonl", "prompts": "examples/data/prompts_train.jsonl"}


def _version(value: bool) -> None:
    if value:
        from posttrain import __version__

        typer.echo(f"posttrain {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Post-training for language models, end to end."""
config_app = typer.Typer(no_args_is_help=True, context_settings=HELP, help="Inspect and validate configs.")
models_app = typer.Typer(no_args_is_help=True, context_settings=HELP, help="Builtin models.")
app.add_typer(config_app, name="config")
app.add_typer(models_app, name="models")


def _mount_stage_apps() -> None:
    from posttrain.feedback.cli import feedback_app
    from posttrain.eval.cli import eval_command, gate_command
    from posttrain.generation.cli import generate_command
    from posttrain.hygiene.cli import data_app
    from posttrain.judges.cli import critique_command, judge
    from posttrain.labeling.cli import label_app
    from posttrain.pipeline.cli import promote_command, run_command, status_command
    from posttrain.report.cli import report_command
    from posttrain.serving.cli import serve_command

    app.add_typer(data_app, name="data", help="Data hygiene: exact and MinHash dedup, eval decontamination, PII "
                                              "redaction, preference-data diagnostics.")
    app.add_typer(feedback_app, name="feedback", help="Production feedback (thumbs, edits, side-by-side, rankings, "
                                                      "Likert) to preference pairs and KTO rows.")
    app.add_typer(label_app, name="label", help="Label side-by-side comparisons and audit a judge in a browser "
                                                "(a web app over a feedback store).")
    app.command("judge", help="Score candidates with judges (verifiers, LLM, local model, reward model) and "
                              "build preference pairs.")(judge)
    app.command("critique", help="Constitutional critique-and-revise: a critic model critiques each response "
                                 "against a drawn principle and rewrites it (SFT rows and preference pairs).")(
        critique_command)
    app.command("generate", help="Sample N candidates per prompt (resumable; --dry-run prints the cost model).")(
        generate_command)
    app.command("serve", help="OpenAI-compatible /v1/chat/completions server for any model posttrain loads.")(
        serve_command)
    app.command("eval", help="Run eval suites (constraints, capability, refusal, length, win rate) on a model, "
                             "optionally against a baseline.")(eval_command)
    app.command("gate", help="Check eval metrics against gates; exits 1 if any gate fails.")(gate_command)
    app.command("run", help="Run a pipeline YAML in dependency order; finished stages are skipped (content-hash "
                            "keys), a killed run resumes.")(run_command)
    app.command("status", help="Show a pipeline run: stage, status, key, wall time, main metric.")(status_command)
    app.command("promote", help="Copy a run stage's model into a serving folder once its gates passed (then "
                                "SIGHUP the server).")(promote_command)
    app.command("report", help="Write RUN_DIR/report.html (self-contained) and print the run summary.")(
        report_command)


def _user_errors() -> tuple[type[BaseException], ...]:
    from posttrain.data.schema import DataError, DataErrors
    from posttrain.generation.types import BackendError
    from posttrain.judges.llm import JudgeError
    from posttrain.models.reference import ReferenceError_
    from posttrain.models.resolve import ModelError

    # JudgeError: an LLM judge endpoint that stays unreachable or answers errors (online DPO, rejection-SFT)
    return ConfigError, DataError, DataErrors, ModelError, ReferenceError_, BackendError, JudgeError


def _split_args(args: list[str] | None) -> tuple[str | None, list[str]]:
    args = list(args or [])
    if args and "=" not in args[0]:
        return args[0], args[1:]
    return None, args


def _train(command: str, args: list[str] | None) -> None:
    """``posttrain COMMAND [CONFIG.yaml] [section.key=value ...]`` for a row of the command table."""
    from posttrain.training.run import print_summary

    if not args:
        fail(f"posttrain {command} needs a config: posttrain {command} CONFIG.yaml [section.key=value ...] "
             f"(e.g. examples/{command.replace('-', '_')}.yaml; `posttrain config show {command} --doc > "
             f"{command}.yaml` writes one with every key)")
    path, overrides = _split_args(args)
    try:
        cfg = load_config(command, path, overrides)
        _check_data_paths(cfg)
        summary = training_command(command).trainer()(cfg)
    except _user_errors() as e:
        fail(e)
    if int(os.environ.get("RANK", "0")) == 0:
        print_summary(command, summary, cfg.train.output_dir)


def _rows_only(command: str, cfg) -> dict:
    """Row counts of ``cfg``'s data read and validated as ``command``'s kind, without a tokenizer."""
    from posttrain.data.layouts import load_examples

    kind = {"prompts": "prompt"}.get(training_command(command).data_kind, training_command(command).data_kind)
    stats = {"train/rows": len(load_examples(cfg.data.train, kind, getattr(cfg.data, "split", None)))}
    if getattr(cfg.data, "eval", None):
        stats["eval/rows"] = len(load_examples(cfg.data.eval, kind))
    return stats


def _check_data_paths(cfg) -> None:
    """The config's local data files exist (before any model is loaded or converted)."""
    from posttrain.data.schema import DataError
    from posttrain.data.sources import missing_local

    for key in ("train", "eval"):
        source = getattr(cfg.data, key, None)
        missing = missing_local(source) if source else None
        if missing:
            raise DataError(missing, None, None, f"no such file or folder (data.{key})")


_ARGS = typer.Argument(None, metavar="[CONFIG.yaml] [SECTION.KEY=VALUE]...",
                       help="a YAML config, then dotted overrides such as optim.lr=1e-5 loss.beta=0.2 (every key: "
                       "`posttrain config show COMMAND --doc`)")


def _training_command(row: TrainingCommand):
    def run(args: list[str] = _ARGS) -> None:
        _train(row.name, args)

    run.__doc__ = row.help
    run.__name__ = row.name.replace("-", "_")
    return run


for _row in TRAINING_COMMANDS:
    app.command(_row.name, help=_row.help, epilog=f"Example: posttrain {_row.name} examples/"
                f"{_row.name.replace('-', '_')}.yaml optim.max_steps=20 train.output_dir=runs/{_row.name}. Every key "
                f"with its default and meaning: posttrain config show {_row.name} --doc.")(_training_command(_row))


@config_app.command("validate")
def config_validate(
    path: Path = typer.Argument(..., help="YAML config"),
    overrides: list[str] = typer.Argument(None),
    command: str = typer.Option(None, help="sft | dpo | kto (default: the file's `command:` key)"),
    data: bool = typer.Option(True, help="also read and validate the data files"),
) -> None:
    """Check a config (and its data) without training; prints the resolved config."""
    import yaml

    try:
        if command is None:
            from posttrain.config import yaml_error_line

            try:
                command = (yaml.safe_load(path.read_text()) or {}).get("command")
            except yaml.YAMLError as e:
                raise ConfigError(yaml_error_line(path, e)) from None
            except (OSError, AttributeError):
                command = None
        if command not in COMMANDS:
            raise ConfigError(f"{path}: say which command it configures: a `command:` key or --command "
                              f"({' | '.join(COMMANDS)})")
        cfg = load_config(command, path, overrides or [])
        if data:
            _check_data_paths(cfg)
            from posttrain.models.resolve import ModelError

            try:
                stats = data_stats(command, cfg)
            except ModelError as e:
                # the model is made by an earlier step (runs/sft/model before `posttrain sft`): check the rows
                # without its tokenizer, and say what was not checked
                stats = _rows_only(command, cfg)
                typer.echo(f"warning: {e}; the data rows were checked, their token lengths were not (they need "
                           "the model's tokenizer)", err=True)
            typer.echo(" ".join(f"{k}={v}" for k, v in stats.items()), err=True)
    except _user_errors() as e:
        fail(e)
    typer.echo(dump_config(cfg), nl=False)
    typer.echo(f"ok: {path} is a valid `{command}` config", err=True)


@config_app.command("show")
def config_show(command: str, args: list[str] = _ARGS,
                doc: bool = typer.Option(False, "--doc", help="a commented YAML: `command:` first, every key with "
                                         "its default, type and meaning (`config validate` accepts it)")) -> None:
    """Print the resolved config of COMMAND (defaults < YAML < overrides)."""
    from posttrain.config import config_doc, did_you_mean

    path, overrides = _split_args(args)
    try:
        if command not in COMMANDS:
            raise ConfigError(f"unknown command '{command}'{did_you_mean(command, COMMANDS)}; choose one of: "
                              f"{', '.join(COMMANDS)}")
        if path is None:
            example = DOC_DATA[training_command(command).data_kind] if doc else "<required>"
            overrides = [f"data.train={example}", *overrides]
        cfg = load_config(command, path, overrides)
        if doc:
            note = {"data.train": "your training data; this is the shipped example (a path in a clone of the "
                                  "repository)"} if path is None else {}
            typer.echo(config_doc(command, cfg.model_dump(mode="json"), note), nl=False)
        else:
            typer.echo(dump_config(cfg), nl=False)
    except _user_errors() as e:
        fail(e)


@app.command()
def merge(
    models: list[str] = typer.Argument(..., help="one trained adapter folder (e.g. runs/dpo/model) to fold into "
                                       "its base (a plain model folder is linked or copied as it is); or, "
                                       "with --method, two or more models to merge (task_arithmetic: one is "
                                       "enough; with --base its SFT model and --lambda above 1 that is ExPO)"),
    output: Path = typer.Option(..., "--output", "-o", help="where to write the merged HF folder"),
    method: str = typer.Option(None, "--method", help="merge several models: linear | task_arithmetic | ties | "
                               "dare_ties | slerp (ops/merging.py)"),
    weights: str = typer.Option(None, "--weights", help="comma-separated, one per model (default: equal; "
                                "linear normalises them)"),
    base: str = typer.Option(None, "--base", help="task_arithmetic / ties / dare_ties: the model the task vectors "
                             "are measured from"),
    density: float = typer.Option(1.0, "--density", help="ties: fraction of each task vector kept; dare_ties: "
                                  "keep probability"),
    lam: float = typer.Option(1.0, "--lambda", help="scale of the merged task vector"),
    lambda_for: list[str] = typer.Option(None, "--lambda-for", help="PATTERN=VALUE (repeatable): the scale of the "
                                         "weights whose names contain PATTERN, e.g. self_attn=1.5 (the first "
                                         "pattern that matches wins; the rest keep --lambda)"),
    t: float = typer.Option(0.5, "--t", help="slerp: 0 = the first model, 1 = the second"),
    seed: int = typer.Option(0, "--seed", help="dare_ties: seeds the drop masks"),
    cache_dir: str = typer.Option(None, help="builtin model cache"),
    dtype: str = typer.Option("float32", "--dtype", help="weights dtype of the export: float32 | bfloat16 | float16 "
                              "(bfloat16 rounds much of a LoRA update away: docs/PERFORMANCE.md)"),
) -> None:
    """Merge an adapter (and its lineage) into its base and write a plain Hugging Face folder; with --method,
    merge several models (model soup, task arithmetic, TIES, DARE, SLERP)."""
    from posttrain.models.policy import merge_to_folder

    try:
        try:
            if method is None:
                if len(models) != 1:
                    raise ValueError(f"{len(models)} models given: merging several needs --method "
                                     "(linear | task_arithmetic | ties | dare_ties | slerp)")
                merge_to_folder(models[0], output, dtype=dtype, cache_dir=cache_dir)
            else:
                from posttrain.models.merge import check_merge_args, merge_models

                parsed = None
                if weights is not None:
                    try:
                        parsed = [float(w) for w in weights.split(",")]
                    except ValueError:
                        raise ValueError(f"--weights must be comma-separated numbers, got {weights!r}") from None
                scales = {}
                for item in lambda_for or []:
                    pattern, _, value = item.rpartition("=")
                    try:
                        scales[pattern] = float(value)
                    except ValueError:
                        raise ValueError(f"--lambda-for must be PATTERN=NUMBER (e.g. self_attn=1.5), "
                                         f"got {item!r}") from None
                check_merge_args(models, method, parsed, base, density, t, scales)  # before any model loads
                merge_models(models, output, method=method, weights=parsed, base=base, density=density, lam=lam,
                             t=t, seed=seed, dtype=dtype, cache_dir=cache_dir, lambda_for=scales)
        except ValueError as e:  # not an adapter folder, unknown dtype or method: checked before any model loads
            raise ConfigError(str(e)) from None
    except _user_errors() as e:
        fail(e)
    typer.echo(f"merged {' + '.join(models)} -> {output}" + (f" ({method})" if method else ""))


@models_app.command("prepare")
def models_prepare(name: str = typer.Argument("smollm2-135m-instruct")) -> None:
    """Convert a builtin model into the cache (done automatically on first use)."""
    from posttrain.models.resolve import resolve_model_path

    try:
        typer.echo(resolve_model_path(name))
    except _user_errors() as e:
        fail(e)


@models_app.command("list")
def models_list() -> None:
    """The builtin model names."""
    from posttrain.models.builtin import BUILTIN_NAMES

    for name in BUILTIN_NAMES:
        typer.echo(name)


_mount_stage_apps()


def main() -> None:
    app(prog_name="posttrain")


if __name__ == "__main__":
    sys.exit(main())
