"""``sparsejit sparsify MODEL OUT --finetune TRAIN_FILE``: the fine-tuning half of the sparsify command.

Reads the recipe (file, then explicitly given flags), runs `sparsejit.training.finetune_sparse` and prints
its report. torch is imported only here, when the command runs, and its absence is a clear error.
"""

from __future__ import annotations

from pathlib import Path

import click

__all__ = ["run_finetune"]

_RECIPE_FLAGS = {"sparsity": "sparsity", "structure": "structure", "scope": "scope", "quantize": "quantize",
                 "max_length": "max_length", "num_calibration": "num_calibration", "epochs": "epochs",
                 "prune_end_epoch": "prune_end_epoch", "learning_rate": "learning_rate", "batch_size": "batch_size",
                 "seed": "seed", "eval_split": "eval_split", "task": "task"}
_ONE_SHOT_ONLY = ("method", "calibration", "eval_csv", "eval_limit", "tokenizer", "skip", "no_skip")


def _explicit(ctx: click.Context, name: str) -> bool:
    return ctx.get_parameter_source(name) not in (click.core.ParameterSource.DEFAULT, None)


def run_finetune(ctx: click.Context, model: str, output: str, train_file: str) -> None:
    """Build the recipe from --recipe and the flags the user gave, run, print the report."""
    from sparsejit.errors import SparsejitError
    from sparsejit.training import Distillation, Recipe, finetune_sparse, require_training
    from sparsejit.training.recipe import task_of

    p = ctx.params
    for name in _ONE_SHOT_ONLY:
        if _explicit(ctx, name):
            raise click.UsageError(f"--{name.replace('_', '-')} is for one-shot pruning; it does not apply with "
                                   "--finetune (see --eval-file, --eval-split)")
    model_dir = Path(model)
    if not (model_dir.is_dir() and (model_dir / "config.json").is_file()):
        raise click.UsageError(f"--finetune needs MODEL to be a Hugging Face checkpoint directory (config.json, "
                               f"*.safetensors, tokenizer.json); got {model}")
    out = Path(output)
    if out.resolve() == model_dir.resolve() or model_dir.resolve() in out.resolve().parents:
        raise click.UsageError("write OUTPUT outside the model directory (it is never written into)")
    try:
        require_training()
        recipe = Recipe.load(p["recipe_file"]) if p["recipe_file"] else None
        changes = {field: p[flag] for flag, field in _RECIPE_FLAGS.items()
                   if p.get(flag) is not None and (_explicit(ctx, flag) or recipe is None and flag in
                                                   ("sparsity", "structure", "quantize", "max_length"))}
        if recipe is None:
            changes.setdefault("task", task_of(model_dir))
            if changes["task"] is None:
                raise click.UsageError(f"{model}'s config.json names no task head: give --task")
            changes.setdefault("eval_split", 0.0 if p["eval_file"] else 0.1)
            recipe = Recipe(**changes)
        else:
            recipe = recipe.replace(**changes)
        if p["distill_weight"] is not None or p["temperature"] is not None:
            d = recipe.distillation
            soft = d.soft_weight if p["distill_weight"] is None else p["distill_weight"]
            recipe = recipe.replace(distillation=Distillation(1.0 - soft, soft, p["temperature"] or d.temperature))
        recipe.validate()
        eval_file = p["eval_file"] or (recipe.eval_file or None)  # a recipe remembers its held-out file
        report = finetune_sparse(model_dir, out, train_file, recipe, eval_file=eval_file, teacher=p["teacher"],
                                 oneshot_baseline=not p["no_baseline"], measure_speed=not p["no_speed"],
                                 keep_checkpoint=p["keep_checkpoint"], say=lambda m: click.echo(m, err=True))
    except (SparsejitError, ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(report.format())
