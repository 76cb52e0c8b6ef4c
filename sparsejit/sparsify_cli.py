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
              help="tokens per calibration / evaluation / training text")
@click.option("--finetune", "train_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="prune while fine-tuning MODEL (a Hugging Face checkpoint directory) on this file: CSV "
                   "text,label / CoNLL token<TAB>tag / SQuAD JSON (needs pip install 'sparsejit[train]')")
@click.option("--task", type=click.Choice(["text_classification", "token_classification", "question_answering"]),
              default=None, help="[--finetune] task [default: the one MODEL's head was trained for]")
@click.option("--eval-file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="[--finetune] held-out data in the training file's format [default: --eval-split of it]")
@click.option("--eval-split", type=click.FloatRange(0.0, 1.0, max_open=True), default=None,
              help="[--finetune] fraction of the training file held out when no --eval-file [0.1]")
@click.option("--recipe", "recipe_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="[--finetune] recipe YAML (as written beside a previous output); flags given override it")
@click.option("--epochs", type=click.FloatRange(min=0.0, min_open=True), default=None, help="[--finetune] [10]")
@click.option("--prune-end-epoch", type=click.FloatRange(min=0.0), default=None,
              help="[--finetune] epoch at which the final sparsity is reached; the rest fine-tunes the final mask [6]")
@click.option("--learning-rate", type=click.FloatRange(min=0.0, min_open=True), default=None,
              help="[--finetune] peak AdamW learning rate [1e-4]")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="[--finetune] [32]")
@click.option("--seed", type=int, default=None, help="[--finetune] [42]")
@click.option("--teacher", type=click.Path(exists=True, file_okay=False), default=None,
              help="[--finetune] dense checkpoint to distil from [default: MODEL when its head fits the task]")
@click.option("--distill-weight", type=click.FloatRange(0.0, 1.0), default=None,
              help="[--finetune] weight of the teacher's soft targets; 1 - it weighs the labels [0.5]")
@click.option("--temperature", type=click.FloatRange(min=0.0, min_open=True), default=None,
              help="[--finetune] distillation temperature [2]")
@click.option("--no-baseline", is_flag=True, default=False,
              help="[--finetune] skip scoring one-shot pruning at the same settings")
@click.option("--no-speed", is_flag=True, default=False, help="[--finetune] skip timing dense vs sparse")
@click.option("--keep-checkpoint", is_flag=True, default=False,
              help="[--finetune] keep the last epoch's resumable checkpoint after success")
@click.pass_context
def sparsify_command(ctx: click.Context, model: str, output: str, sparsity: float, method: str, structure: str,
                     scope: str, calibration: str | None, num_calibration: int, eval_csv: str | None,
                     eval_limit: int | None, tokenizer: str | None, skip: tuple[str, ...], no_skip: bool,
                     quantize: str, max_length: int, train_file: str | None, **finetune: object) -> None:
    """Prune MODEL (.onnx or a model directory) to OUTPUT (.onnx, or a directory) and print per-layer sparsity.

    With --finetune, MODEL is a Hugging Face checkpoint directory pruned gradually while it is fine-tuned on
    the file, distilling from the dense model; a recipe YAML and a JSON report are written beside OUTPUT.
    """
    if train_file is not None:
        from sparsejit.finetune_cli import run_finetune

        run_finetune(ctx, model, output, train_file)
        return
    given = [name for name, value in finetune.items() if value not in (None, False)]
    if given:
        raise click.UsageError(f"--{given[0].replace('_', '-')} applies only with --finetune")
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
