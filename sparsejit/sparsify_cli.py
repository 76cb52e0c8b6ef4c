"""``sparsejit sparsify MODEL OUTPUT``: the click command around `sparsejit.sparsify.sparsify`.

Cheap to import: numpy, onnx and onnxruntime are loaded only when the command runs.
"""

from __future__ import annotations

import csv
from pathlib import Path

import click

__all__ = ["sparsify_command"]


def _read_texts(path: str, limit: int) -> list[str]:
    """Calibration texts: the `text` column of a CSV with a header, else one text per line."""
    p = Path(path)
    with p.open(newline="", encoding="utf-8") as fh:
        first = fh.readline()
        fh.seek(0)
        if p.suffix.lower() == ".csv" and "text" in next(csv.reader([first]), []):
            texts = [row["text"] for row in csv.DictReader(fh)]
        else:
            texts = [line.rstrip("\n") for line in fh if line.strip()]
    return texts[:limit]


@click.command("sparsify")
@click.argument("model", type=click.Path(exists=True))
@click.argument("output", type=click.Path())
@click.option("--sparsity", type=click.FloatRange(0.0, 1.0, max_open=True), default=0.9, show_default=True,
              help="fraction of each pruned weight set to zero")
@click.option("--method", type=click.Choice(["magnitude", "obs"]), default="magnitude", show_default=True,
              help="magnitude, or obs: one-shot OBS / SparseGPT reconstruction on calibration text")
@click.option("--structure", default="unstructured", show_default=True,
              help="unstructured, or a block RxC on the [K, N] weight: 1x16, 1x32 (fp32 block kernels), 4x1 "
                   "(int8)")
@click.option("--scope", type=click.Choice(["per_layer", "global"]), default="per_layer", show_default=True)
@click.option("--calibration", "calibration", type=click.Path(exists=True, dir_okay=False), default=None,
              help="calibration texts: a CSV with a 'text' column, or one text per line (for --method obs "
                   "and static int8)")
@click.option("--num-calibration", type=click.IntRange(min=1), default=256, show_default=True,
              help="calibration texts used at most")
@click.option("--eval-csv", type=click.Path(exists=True, dir_okay=False), default=None,
              help="labelled CSV (text,label): print the accuracy before and after")
@click.option("--eval-limit", type=click.IntRange(min=1), default=None, help="rows of --eval-csv used at most")
@click.option("--tokenizer", type=click.Path(exists=True), default=None,
              help="tokenizer.json (default: the one next to the model)")
@click.option("--skip", "skip", multiple=True,
              help="keep dense: 'embeddings', 'heads', or a regex on weight / node names (repeatable; "
                   "giving any replaces the default 'embeddings' + 'heads')")
@click.option("--no-skip", is_flag=True, default=False, help="prune embeddings-side and head weights too")
@click.option("--quantize", type=click.Choice(["none", "dynamic", "static"]), default="none", show_default=True,
              help="int8 quantisation afterwards with onnxruntime.quantization")
@click.option("--max-length", type=click.IntRange(min=8), default=128, show_default=True,
              help="tokens per calibration / evaluation text")
def sparsify_command(model: str, output: str, sparsity: float, method: str, structure: str, scope: str,
                     calibration: str | None, num_calibration: int, eval_csv: str | None,
                     eval_limit: int | None, tokenizer: str | None, skip: tuple[str, ...], no_skip: bool,
                     quantize: str, max_length: int) -> None:
    """Prune MODEL (.onnx or a model directory) to OUTPUT (.onnx, or a directory) and print per-layer sparsity."""
    from sparsejit.sparsify import sparsify

    texts = _read_texts(calibration, num_calibration) if calibration else None
    skip_list: list[str] | None = [] if no_skip else (list(skip) if skip else None)
    try:
        report = sparsify(model, output, sparsity=sparsity, method=method, structure=structure, scope=scope,
                          calibration_texts=texts, tokenizer=tokenizer, skip=skip_list,
                          quantize=False if quantize == "none" else quantize, eval_csv=eval_csv,
                          eval_limit=eval_limit, num_calibration=num_calibration, max_length=max_length,
                          progress=lambda msg: click.echo(msg, err=True))
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(report.format())
