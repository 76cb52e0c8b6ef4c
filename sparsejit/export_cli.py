"""``sparsejit export CHECKPOINT_DIR OUT.onnx``: a Hugging Face checkpoint as a standard ONNX file.

Cheap to import: the builder (onnx, safetensors) is loaded only when the command runs.
"""

from __future__ import annotations

import click

_HEADS = ("base", "sequence_classification", "token_classification", "question_answering")


@click.command("export")
@click.argument("checkpoint", type=click.Path(exists=True, file_okay=False))
@click.argument("output", type=click.Path(dir_okay=False))
@click.option("--head", type=click.Choice(_HEADS), default=None,
              help="head to build [default: the one config.json's `architectures` names, else base]")
def export_command(checkpoint: str, output: str, head: str | None) -> None:
    """Write CHECKPOINT (config.json + *.safetensors) as the ONNX model sparsejit compiles from it.

    The file runs in onnxruntime and OpenVINO too; inputs and outputs are named as transformers names
    them (input_ids, attention_mask[, token_type_ids] -> logits / start_logits, end_logits /
    last_hidden_state). The checkpoint directory is only read.
    """
    from pathlib import Path

    from sparsejit.checkpoints import CheckpointSource, export_checkpoint
    from sparsejit.errors import SparsejitError

    if Path(output).resolve().parent == Path(checkpoint).resolve():
        raise click.ClickException("write the ONNX file outside the checkpoint directory (it is never written "
                                   "into, and a model.onnx there would hide the checkpoint)")
    try:
        path = export_checkpoint(CheckpointSource(Path(checkpoint), head), output)
    except SparsejitError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote {path}")
