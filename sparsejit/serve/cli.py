"""The ``sparsejit`` command: ``serve``, ``benchmark``, ``sparsify`` and ``export``.

Importing this module is cheap and needs neither torch nor onnxruntime: the server, the compiler and
onnxruntime are imported only by the command that uses them.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

from sparsejit.cli_options import parse_sequence_lengths, parse_task_kwargs

__all__ = ["main"]


def _options_error(exc: ValueError) -> str:
    """One line per invalid option of a pydantic ValidationError (no pydantic URLs or type tags)."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc)
    lines = []
    for err in errors():
        where = ".".join(str(part) for part in err.get("loc", ())) or "options"
        message = str(err.get("msg", "")).removeprefix("Value error, ")
        lines.append(f"invalid {where}: {message} (got {err.get('input')!r})")
    return "\n".join(lines) or str(exc)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sparsejit", prog_name="sparsejit")
def main() -> None:
    """sparsejit: transformer ONNX models compiled into CPU kernels — serve them or benchmark them."""


# ------------------------------------------------------------------------------------------------ serve


@main.command()
@click.option("--task", help="task of a single endpoint (text-classification, qa, ner, embeddings, ...)")
@click.option("--model-path", "--model_path", "model_path",
              help="model directory (model.onnx + tokenizer.json + config.json), .onnx file, or Hugging Face "
                   "checkpoint directory (config.json + *.safetensors + tokenizer.json)")
@click.option("--config-file", "--config_file", "config_file", type=click.Path(exists=True, dir_okay=False),
              help="YAML file with 'endpoints: [{name, task, model, batch_size, sequence_length, kwargs}]'")
@click.option("--name", default=None, help="endpoint name of a single-endpoint server (default: the task)")
@click.option("-b", "--batch-size", "--batch_size", "batch_size", type=click.IntRange(min=1), default=None,
              help="engine batch size (dynamic batching fills it) [default: 1]")
@click.option("-s", "--sequence-length", "--sequence_length", "sequence_length", default=None,
              help="sequence bucket(s): 128 or 64,128 [default: 128]")
@click.option("--num-threads", "--num_threads", "num_threads", type=click.IntRange(min=1), default=None,
              help="kernel threads [default: all cores]")
@click.option("--host", default=None, help="bind address [default: 127.0.0.1]")
@click.option("--port", type=click.IntRange(0, 65535), default=None, help="port [default: 5543]")
@click.option("--api-key", envvar="SPARSEJIT_API_KEY", default=None,
              help="require this key (X-API-Key header or Bearer token); env SPARSEJIT_API_KEY")
@click.option("--max-wait-ms", type=click.FloatRange(min=0), default=None,
              help="longest wait for a dynamic batch to fill [default: 5]")
@click.option("--no-dynamic-batching", "no_batching", is_flag=True, default=False,
              help="run every request on its own")
@click.option("--max-queue", type=click.IntRange(min=1), default=None,
              help="queued requests per endpoint before 503 [default: 256]")
@click.option("--max-concurrent-requests", type=click.IntRange(min=1), default=None,
              help="requests in flight across all endpoints before 429 (OpenAI, TEI routes) / 503, with "
                   "Retry-After [default: 512]")
@click.option("--max-client-batch-size", type=click.IntRange(min=1), default=None,
              help="inputs accepted in one request (more: 413) [default: 1024]")
@click.option("--auto-truncate", is_flag=True, default=False,
              help="cut inputs longer than the largest sequence length when a request does not say truncate "
                   "[default: refuse them with 413, naming their token count and the limit]")
@click.option("--max-batch-tokens", type=click.IntRange(min=2), default=None,
              help="batch by a token budget instead of --batch-size: each engine batch holds as many rows as fit "
                   "this many padded positions (e.g. 8192: 512 texts of 16 tokens or 32 of 256) [default: off]")
@click.option("--timeout", "request_timeout_s", type=click.FloatRange(min=0, min_open=True), default=None,
              help="per-request timeout in seconds (504) [default: 30]")
@click.option("--max-body-bytes", type=click.IntRange(min=1), default=None,
              help="largest accepted request body (413) [default: 1048576]")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info")
@click.option("--kwargs", "task_kwargs", default=None, help="task options as JSON, e.g. '{\"top_k\": 2}'")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "auto"]), default=None,
              help="weight precision of a single endpoint's matrix products [default: fp32]")
@click.option("--allow-partial", is_flag=True, default=False,
              help="with several endpoints, keep serving those that load when others fail "
                   "[default: any failure stops the server with exit code 1]")
def serve(task: str | None, model_path: str | None, config_file: str | None, name: str | None,
          batch_size: int | None, sequence_length: str | None, num_threads: int | None, host: str | None,
          port: int | None, api_key: str | None, max_wait_ms: float | None, no_batching: bool,
          max_queue: int | None, max_concurrent_requests: int | None, max_client_batch_size: int | None,
          auto_truncate: bool, max_batch_tokens: int | None, request_timeout_s: float | None,
          max_body_bytes: int | None, log_level: str, task_kwargs: str | None,
          precision: str | None, allow_partial: bool) -> None:
    """Serve models over HTTP (FastAPI + uvicorn).

    One endpoint from --task / --model-path, several from --config-file; with neither, the default
    embedding model. Routes: POST /predict (single endpoint), POST /v2/models/{name}/infer,
    GET /health, /v2/health/live, /v2/health/ready, /v2/models, /metrics, /docs.
    """
    import logging

    import uvicorn

    from sparsejit.errors import SparsejitError
    from sparsejit.serve.app import create_app
    from sparsejit.serve.config import DEFAULT_TASK, EndpointConfig, ServerConfig, load_config

    server_opts: dict[str, Any] = {
        "host": host, "port": port, "api_key": api_key, "num_threads": num_threads,
        "max_wait_ms": max_wait_ms, "max_queue": max_queue, "request_timeout_s": request_timeout_s,
        "max_concurrent_requests": max_concurrent_requests, "max_client_batch_size": max_client_batch_size,
        "max_batch_tokens": max_batch_tokens, "max_body_bytes": max_body_bytes,
        "dynamic_batching": False if no_batching else None, "auto_truncate": True if auto_truncate else None,
        "allow_partial": True if allow_partial else None,
    }
    try:
        if config_file:
            if task or model_path or task_kwargs or precision:
                raise click.UsageError("give either --config-file or --task/--model-path, not both")
            config = load_config(config_file, **server_opts)
        else:
            endpoint: dict[str, Any] = {"task": task or DEFAULT_TASK, "model": model_path}
            if model_path and not task:
                raise click.UsageError("--model-path needs --task (e.g. --task text-classification)")
            endpoint["name"] = name or endpoint["task"].replace("_", "-")
            if batch_size is not None:
                endpoint["batch_size"] = batch_size
            if sequence_length is not None:
                endpoint["sequence_length"] = parse_sequence_lengths(sequence_length)
            if precision is not None:
                endpoint["precision"] = precision
            if task_kwargs:
                endpoint["kwargs"] = parse_task_kwargs(task_kwargs)
            config = ServerConfig(**{k: v for k, v in server_opts.items() if v is not None},
                                  endpoints=[EndpointConfig(**endpoint)])
        app = create_app(config)
    except SparsejitError as exc:
        raise click.ClickException(str(exc)) from None
    except ValueError as exc:  # pydantic validation of the options
        raise click.ClickException(_options_error(exc)) from None

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    click.echo(f"sparsejit: serving {', '.join(e.name for e in config.with_default_endpoint().endpoints)} "
               f"on http://{config.host}:{config.port} (docs at /docs)", err=True)
    server = uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.port, log_level=log_level,
                                           timeout_graceful_shutdown=int(config.graceful_timeout_s) or None))
    state = app.state.sparsejit
    state.on_fatal = lambda reason: setattr(server, "should_exit", True)
    server.run()
    if state.fatal:
        raise click.ClickException(state.fatal)


# -------------------------------------------------------------------------------------------- benchmark


@main.command()
@click.argument("model", type=click.Path(exists=True))
@click.option("-b", "--batch-size", "--batch_size", "batch_size", type=click.IntRange(min=1), default=1,
              show_default=True, help="batch size (overrides the first dimension of --input-shapes)")
@click.option("-i", "--input-shapes", "--input_shapes", "input_shapes", default=None,
              help='input shape(s): "[1,128]" for every input, or "[1,128],[1,128],[1,128]" in input order '
                   "[default: [batch,128] for transformer models]")
@click.option("-s", "--scenario", type=click.Choice(["sync", "async"]), default="sync", show_default=True,
              help="sync: one stream, one request at a time; async: -nstreams streams at once")
@click.option("-nstreams", "--num-streams", "--num_streams", "num_streams", type=click.IntRange(min=1),
              default=None, help="streams in the async scenario [default: cores // 2, at least 1]")
@click.option("-t", "--time", "seconds", type=click.FloatRange(min=0, min_open=True), default=10.0,
              show_default=True, help="measured seconds per engine")
@click.option("-w", "--warmup-time", "--warmup_time", "warmup", type=click.FloatRange(min=0), default=2.0,
              show_default=True, help="warm-up seconds per engine (not measured)")
@click.option("-e", "--engine", type=click.Choice(["sparsejit", "onnxruntime", "both"]), default="sparsejit",
              show_default=True, help="engine to measure; 'both' interleaves them and prints the ratio")
@click.option("-ncores", "--num-cores", "--num_cores", "num_cores", type=click.IntRange(min=1), default=None,
              help="cores (threads) per engine [default: all]")
@click.option("-x", "--export-path", "--export_path", "export_path", type=click.Path(dir_okay=False),
              default=None, help="write the results as JSON here")
@click.option("-q", "--quiet", is_flag=True, default=False, help="no progress bar or log lines")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "auto"]), default="fp32", show_default=True,
              help="sparsejit weight precision (onnxruntime runs the file as it is)")
def benchmark(model: str, batch_size: int, input_shapes: str | None, scenario: str, num_streams: int | None,
              seconds: float, warmup: float, engine: str, num_cores: int | None, export_path: str | None,
              quiet: bool, precision: str) -> None:
    """Measure throughput and latency of MODEL (an .onnx file or a directory holding model.onnx)."""
    from sparsejit.errors import SparsejitError
    from sparsejit.serve.benchmark import BenchmarkError, format_report, parse_shapes, run_benchmark

    try:
        shapes = parse_shapes(input_shapes) if input_shapes else None
        report = run_benchmark(model, batch_size=batch_size, input_shapes=shapes, scenario=scenario,
                               num_streams=num_streams, seconds=seconds, warmup=warmup, engine=engine,
                               num_cores=num_cores, progress=not quiet, precision=precision)
    except (BenchmarkError, SparsejitError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(format_report(report))
    if export_path:
        os.makedirs(os.path.dirname(os.path.abspath(export_path)), exist_ok=True)
        with open(export_path, "w") as f:
            json.dump(report, f, indent=2)
        if not quiet:
            click.echo(f"results written to {export_path}", err=True)


from sparsejit.sparsify_cli import sparsify_command  # noqa: E402  (the command lives in its own module)

main.add_command(sparsify_command)

from sparsejit.export_cli import export_command  # noqa: E402

main.add_command(export_command)

from sparsejit.models_cli import models_command  # noqa: E402

main.add_command(models_command)

from sparsejit.batch.cli import run_command  # noqa: E402

main.add_command(run_command)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
