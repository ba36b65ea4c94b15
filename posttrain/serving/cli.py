"""``posttrain serve MODEL``: an OpenAI-compatible chat endpoint (mounted by ``posttrain/cli.py``)."""

from __future__ import annotations

import os
import signal
import sys
import threading

import typer

from posttrain.errors import fail


def serve_command(
    model: str = typer.Argument(..., help="builtin name, HF folder, hub id, or a trained run's model folder"),
    adapter: str = typer.Option(None, "--adapter", help="an extra adapter folder to merge on top of MODEL"),
    host: str = typer.Option("127.0.0.1", "--host", help="interface to bind (0.0.0.0 exposes it to the network)"),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="0 = pick a free port"),
    api_key: str = typer.Option(None, "--api-key", envvar="POSTTRAIN_API_KEY",
                                help="require 'Authorization: Bearer KEY'. Prefer setting $POSTTRAIN_API_KEY: a "
                                "key given as --api-key is visible to every user of the machine in `ps`"),
    max_batch_size: int = typer.Option(8, "--max-batch-size", min=1, help="sequences per batched generate"),
    batch_wait_ms: float = typer.Option(10.0, "--batch-wait-ms", min=0, help="how long a request waits for others "
                                        "to batch with"),
    max_tokens: int = typer.Option(256, "--max-tokens", min=1, help="default max_tokens of a request"),
    served_name: str = typer.Option(None, "--served-name", help="model id clients see (default: MODEL)"),
    context_length: int = typer.Option(None, "--context-length", min=2, help="tokens of prompt + completion a "
                                       "request may use (default: the model config's max_position_embeddings)"),
    max_body_bytes: int = typer.Option(None, "--max-body-bytes", min=1024, help="largest request body (default: 32 "
                                       "bytes per context token + 64 KiB)"),
    request_timeout: float = typer.Option(600.0, "--request-timeout", min=0.1, help="seconds a request may take, "
                                          "queue included; then its generation stops (finish_reason 'timeout')"),
    drain_timeout: float = typer.Option(30.0, "--drain-timeout", min=0, help="on SIGTERM/Ctrl-C, seconds the "
                                        "requests in flight get to finish before they are cut"),
    stall_timeout: float = typer.Option(120.0, "--stall-timeout", min=0.1, help="/health answers 503 when the "
                                        "generation worker makes no progress for this many seconds"),
    max_connections: int = typer.Option(512, "--max-connections", min=1, help="requests handled at once; more get "
                                        "503"),
    verbose: bool = typer.Option(False, "--verbose", help="log every request"),
    store: str = typer.Option(None, "--store", help="a feedback store (SQLite file, sqlite:///PATH or "
                              "postgresql://USER@HOST/DB): every completion is recorded (a request with \"store\": "
                              "false is not) and POST /v1/feedback takes events about them"),
    admin_key: str = typer.Option(None, "--admin-key", envvar="POSTTRAIN_ADMIN_KEY",
                                  help="enables POST /admin/reload with header 'X-Admin-Key: KEY' (prefer "
                                  "$POSTTRAIN_ADMIN_KEY); SIGHUP reloads too"),
) -> None:
    """Serve MODEL over HTTP: /v1/models, /v1/chat/completions (stream too), /v1/stats, /health, and with --store
    POST /v1/feedback. SIGTERM or Ctrl-C drains and stops it. SIGHUP (or POST /admin/reload with --admin-key)
    loads MODEL again, e.g. a serving folder's `current` link after `posttrain promote`, and switches to it between
    two batches without dropping a request."""
    from posttrain.data.schema import DataError
    from posttrain.feedback.store import StoreError
    from posttrain.generation.types import BackendError
    from posttrain.models.resolve import ModelError
    from posttrain.serving.server import start_server

    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        typer.echo(f"warning: serving on {host} without --api-key: anyone who can reach it can use it", err=True)
    try:
        server, thread, url = start_server(model, host, port, adapter=adapter, api_key=api_key,
                                           max_batch_size=max_batch_size, batch_wait_ms=batch_wait_ms,
                                           default_max_tokens=max_tokens, served_name=served_name, verbose=verbose,
                                           context_length=context_length, max_body_bytes=max_body_bytes,
                                           request_timeout_s=request_timeout, drain_timeout_s=drain_timeout,
                                           stall_timeout_s=stall_timeout, max_connections=max_connections,
                                           store=store, admin_key=admin_key)
    except (ModelError, BackendError, StoreError, DataError) as e:
        fail(e)
    except OSError as e:  # the port is taken, the host is not ours
        fail(f"cannot listen on {host}:{port}: {e.strerror or e}")
    typer.echo(f"serving {server.model_name} at {url}/v1 (OpenAI-compatible; context {server.context_length} "
               f"tokens, request body up to {server.max_body_bytes} bytes; Ctrl-C to stop)", err=True)
    typer.echo(url, err=False)  # the URL alone on stdout, for scripts (port 0)
    stop = threading.Event()

    def on_signal(*_) -> None:
        if stop.is_set():  # a second signal: stop draining
            server.hurry()
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    hup = threading.Event()
    signal.signal(signal.SIGHUP, lambda *_: hup.set())

    def reload() -> None:
        from posttrain.serving.batcher import ReloadError

        typer.echo(f"SIGHUP: loading {model} again (the current model keeps answering meanwhile)", err=True)
        try:
            typer.echo(f"reloaded: now serving {server.reload()} (from the next batch on)", err=True)
        except ReloadError as e:
            typer.echo(f"reload failed, still serving {server.model_id}: {e}", err=True)

    while not stop.is_set() and thread.is_alive():
        if hup.is_set():
            hup.clear()
            threading.Thread(target=reload, name="posttrain-reload", daemon=True).start()
        stop.wait(0.5)
    typer.echo(f"shutting down: no new connections; requests in flight get up to {drain_timeout:g} s to finish "
               f"(--drain-timeout; signal again to stop now)", err=True)
    if not server.close(drain_timeout):
        typer.echo("drain timeout: the requests still running were answered 503", err=True)
    if server.batcher.thread.is_alive():
        # The worker is stuck inside one kernel call and ignores the stop; do not let it hold up the exit.
        typer.echo("the generation worker did not stop; exiting without it", err=True)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


serve_app = typer.Typer(add_completion=False)
serve_app.command("serve")(serve_command)

if __name__ == "__main__":
    serve_app()
