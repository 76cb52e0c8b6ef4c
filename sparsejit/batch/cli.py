"""``sparsejit run``: offline inference over a file. Cheap to import."""

from __future__ import annotations

import click

from sparsejit.cli_options import parse_sequence_lengths, parse_task_kwargs


@click.command("run")
@click.option("--task", required=True, help="text-classification, ner, qa, embeddings, ... (as `serve`)")
@click.option("--model-path", default=None, help="model or checkpoint directory [default: the task's model]")
@click.option("--input", "input_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help=".jsonl, .csv or .parquet")
@click.option("--output", "output_path", required=True, type=click.Path(dir_okay=False), help=".parquet or .jsonl")
@click.option("--text-column", default="text", show_default=True)
@click.option("--text-pair-column", default=None, help="second text of a pair (text classification)")
@click.option("--question-column", default="question", show_default=True)
@click.option("--context-column", default="context", show_default=True)
@click.option("--id-column", default="id", show_default=True, help="carried to the output when present")
@click.option("-b", "--batch-size", default=16, show_default=True, type=click.IntRange(min=1))
@click.option("-s", "--sequence-length", default=None, help="bucket(s), e.g. 64,128 [default: from the data]")
@click.option("--chunk-rows", default=1024, show_default=True, type=click.IntRange(min=1),
              help="rows per chunk: the unit of sorting by length, of writing, and of resuming")
@click.option("--num-threads", default=None, type=click.IntRange(min=1),
              help="kernel threads (per worker) [default: all cores, divided among the workers]")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1),
              help="worker processes running chunks, each with its own compiled engine")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "auto"]), default="fp32", show_default=True)
@click.option("--restart", is_flag=True, help="discard an unfinished earlier run instead of resuming it")
@click.option("--kwargs", "task_kwargs", default=None, help="task options as JSON, e.g. '{\"top_k\": null}'")
@click.option("--ray", "ray_address", default=None,
              help="run on Ray Data instead: a cluster address ('auto', 'ray://host:10001') or 'local'; "
                   "--output is then a directory of Parquet files")
@click.option("--ray-actors", default=2, show_default=True, type=click.IntRange(min=1), help="actors (Ray)")
@click.option("--ray-actor-cpus", default=1.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="CPUs Ray reserves per actor (below 1 on small machines: reads and writes need CPUs too)")
@click.option("--dask", "dask_scheduler", default=None,
              help="run on Dask instead: 'processes', 'threads' (local) or a dask.distributed scheduler address; "
                   "--output is then a directory of Parquet files")
@click.option("--dask-workers", default=2, show_default=True, type=click.IntRange(min=1),
              help="local Dask workers (processes or threads)")
@click.option("-q", "--quiet", is_flag=True, help="no progress bar")
def run_command(task: str, model_path: str | None, input_path: str, output_path: str, text_column: str,
                text_pair_column: str | None, question_column: str, context_column: str, id_column: str,
                batch_size: int, sequence_length: str | None, chunk_rows: int, num_threads: int | None,
                workers: int, precision: str, restart: bool, task_kwargs: str | None, ray_address: str | None,
                ray_actors: int, ray_actor_cpus: float, dask_scheduler: str | None, dask_workers: int,
                quiet: bool) -> None:
    """Run TASK over every row of --input into --output, resuming an interrupted run.

    Rows that cannot be run go to OUTPUT.errors.jsonl with their row, id and reason.
    """
    from sparsejit.batch import Columns, run
    from sparsejit.errors import SparsejitError

    lengths = parse_sequence_lengths(sequence_length)
    options = parse_task_kwargs(task_kwargs)
    columns = Columns(text=text_column, text_pair=text_pair_column, question=question_column,
                      context=context_column, id=id_column)
    if ray_address and dask_scheduler:
        raise click.UsageError("give --ray or --dask, not both")
    kwargs = {"model_path": model_path, "text_column": text_column, "text_pair_column": text_pair_column,
              "question_column": question_column, "context_column": context_column, "batch_size": batch_size,
              "num_threads": num_threads, "precision": precision, **options}
    if lengths:
        kwargs["sequence_length"] = lengths
    if dask_scheduler:
        from sparsejit.integrations.dask import run_on_dask

        try:
            rows = run_on_dask(task, input_path, output_path, scheduler=dask_scheduler, num_workers=dask_workers,
                               predictor_kwargs=kwargs)
        except SparsejitError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"sparsejit run (Dask, {dask_scheduler}): {rows} rows -> {output_path}/")
        return
    if ray_address:
        from sparsejit.integrations.ray import run_on_ray

        try:
            rows = run_on_ray(task, input_path, output_path, address=None if ray_address == "local" else ray_address,
                              concurrency=ray_actors, actor_cpus=ray_actor_cpus, predictor_kwargs=kwargs)
        except SparsejitError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"sparsejit run (Ray, {ray_actors} actors): {rows} rows -> {output_path}/")
        return
    try:
        summary = run(task, input_path, output_path, model_path=model_path, columns=columns,
                      sequence_length=lengths, batch_size=batch_size, chunk_rows=chunk_rows,
                      num_threads=num_threads, precision=precision, restart=restart, progress=not quiet,
                      task_options=options, workers=workers)
    except SparsejitError as exc:
        raise click.ClickException(str(exc)) from None
    resumed = f", {summary.resumed_chunks} chunk(s) resumed" if summary.resumed_chunks else ""
    errors = f"; {summary.errors} bad row(s) in {summary.errors_file}" if summary.errors else ""
    click.echo(f"sparsejit run: {summary.written} of {summary.rows} rows -> {summary.output} in "
               f"{summary.seconds:.1f} s ({summary.items_per_second:.1f} rows/s, buckets "
               f"{summary.sequence_lengths}{resumed}){errors}")
