"""`finetune_sparse`: the whole run — data, teacher, pruning fine-tune, export, int8, checks, report."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sparsejit.errors import TrainingDataError
from sparsejit.sparsify import encode_texts, quantize_onnx, sparsify
from sparsejit.tasks.base import load_config, load_tokenizer, pad_token_id
from sparsejit.training.data import Example, build_features, label_list, read_examples, split_examples
from sparsejit.training.evaluate import METRIC_NAMES, EvalSet, score_onnx, time_engines
from sparsejit.training.export import WeightStructure, export_onnx, save_checkpoint, weight_structure
from sparsejit.training.metrics import feature_logits, task_score
from sparsejit.training.recipe import Recipe, file_sha256, task_of
from sparsejit.training.report import FinetuneReport, ScoreRow
from sparsejit.training.trainer import Trainer, model_inputs, teacher_outputs

__all__ = ["OutputLayout", "finetune_sparse"]

_AUTO_CLASS = {"text_classification": "AutoModelForSequenceClassification",
               "token_classification": "AutoModelForTokenClassification",
               "question_answering": "AutoModelForQuestionAnswering"}


class OutputLayout:
    """Where a run writes: OUT.onnx (+ OUT.fp32.onnx, OUT.recipe.yaml, OUT.report.json, OUT.work/), or a
    directory OUT/ holding model.onnx, model.fp32.onnx, config and tokenizer, recipe.yaml, report.json, work/."""

    def __init__(self, out: str | os.PathLike) -> None:
        out = Path(out)
        if out.suffix == ".onnx":
            self.model, self.directory = out, None
            stem = out.with_suffix("")
            self.fp32 = Path(f"{stem}.fp32.onnx")
            self.recipe, self.report = Path(f"{stem}.recipe.yaml"), Path(f"{stem}.report.json")
            self.work = Path(f"{stem}.work")
        else:
            self.directory = out
            self.model, self.fp32 = out / "model.onnx", out / "model.fp32.onnx"
            self.recipe, self.report, self.work = out / "recipe.yaml", out / "report.json", out / "work"


def _load_model(directory: Path, task: str, labels: list[str] | None) -> Any:
    import transformers

    auto = getattr(transformers, _AUTO_CLASS[task])
    if labels is None:
        return auto.from_pretrained(str(directory))
    return auto.from_pretrained(str(directory), num_labels=len(labels), id2label=dict(enumerate(labels)),
                                label2id={v: i for i, v in enumerate(labels)}, ignore_mismatched_sizes=True)


def _torch_metric(task: str, data: EvalSet) -> Callable[[torch.nn.Module], float] | None:
    """Per-epoch score of the torch model on the held-out set (classification and NER only)."""
    if task == "question_answering" or not data.features:
        return None

    @torch.no_grad()
    def evaluate(model: torch.nn.Module) -> float:
        model.eval()

        def run(feed: dict[str, np.ndarray]) -> np.ndarray:
            return model(**model_inputs(model, {k: torch.from_numpy(v) for k, v in feed.items()})).logits.numpy()

        return task_score(task, feature_logits(run, data.features, data.pad_id), data.features, data.examples,
                          data.id2label)

    return evaluate


def finetune_sparse(model_dir: str | os.PathLike, output: str | os.PathLike, train_file: str | os.PathLike,
                    recipe: Recipe, eval_file: str | os.PathLike | None = None, teacher: str | os.PathLike | None
                    = None, oneshot_baseline: bool = True, measure_speed: bool = True,
                    speed_configs: tuple[tuple[int, int], ...] = ((1, 64), (32, 64)), progress: bool = True,
                    say: Callable[[str], None] = print, num_threads: int | None = None,
                    keep_checkpoint: bool = False) -> FinetuneReport:
    """Fine-tune `model_dir` (a Hugging Face checkpoint) on `train_file` while pruning it to
    `recipe.sparsity` in `recipe.structure`, distilling from `teacher` (default: the model itself when its
    head is trained for the task), then export ONNX (+ int8), verify the block structure, and report."""
    t_start = time.perf_counter()
    model_dir = Path(model_dir)
    layout = OutputLayout(output)
    task = recipe.task
    trained_head = task_of(model_dir) == task  # MODEL's head is already trained for the task
    teacher_dir = Path(teacher) if teacher else (model_dir if trained_head else None)
    digest = file_sha256(train_file)
    if recipe.train_sha256 and recipe.train_sha256 != digest:
        say(f"note: {train_file} is not the training file the recipe was made with (sha256 differs)")
    recipe = recipe.replace(model=str(model_dir), train_file=str(train_file), train_sha256=digest,
                            eval_file=str(eval_file or ""), teacher=str(teacher_dir or ""))
    if teacher_dir is None and recipe.distillation.soft_weight > 0:
        say(f"no teacher: {model_dir} has no trained {task} head (give --teacher); training on labels only")
        recipe = recipe.replace(distillation=recipe.distillation.__class__(1.0, 0.0, recipe.distillation.temperature))
    torch.manual_seed(recipe.seed)

    # ---- data
    examples = read_examples(train_file, task)
    if task == "question_answering" and recipe.answerable_only:
        examples = [e for e in examples if e.label]
    if eval_file:
        held = read_examples(eval_file, task)
    elif recipe.eval_split > 0:
        examples, held = split_examples(examples, recipe.eval_split, recipe.seed)
    else:
        held = []
    tokenizer = load_tokenizer(model_dir)
    config = load_config(model_dir)
    pad_id = pad_token_id(tokenizer, config, model_dir / "tokenizer.json")
    labels = _labels(task, teacher_dir, examples)  # checked against the teacher's labels
    student = _load_model(model_dir, task, None if trained_head else labels)
    label2id = {str(k): int(v) for k, v in student.config.label2id.items()}
    id2label = {int(k): str(v) for k, v in student.config.id2label.items()}
    features = build_features(examples, task, tokenizer, label2id, recipe.max_length, recipe.doc_stride)
    eval_set = EvalSet(task, held, build_features(held, task, tokenizer, label2id, recipe.max_length,
                                                  recipe.doc_stride) if held else [],
                       id2label, pad_id, recipe.max_length, model_dir)
    say(f"{len(examples)} training examples ({len(features)} features), {len(held)} held out; "
        f"{recipe.sparsity:.0%} {recipe.structure} over {recipe.epochs:g} epochs")

    # ---- teacher logits, training
    teacher_logits = None
    if recipe.distillation.soft_weight > 0 and teacher_dir is not None:
        teacher_model = _load_model(teacher_dir, task, None)
        teacher_logits = teacher_outputs(teacher_model, features, task, pad_id)
        del teacher_model
    layout.work.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(student, recipe, features, pad_id, layout.work, teacher_logits,
                      _torch_metric(task, eval_set), METRIC_NAMES[task], progress)
    if trainer.try_resume():
        say(f"resuming from {layout.work / 'checkpoint.pt'} at step {trainer.step} of {trainer.total_steps}")
    elif (layout.work / "checkpoint.pt").is_file():
        say(f"{layout.work / 'checkpoint.pt'} was made with other settings: starting over (it will be replaced)")
    t_train = time.perf_counter()
    history = trainer.train()
    train_seconds = time.perf_counter() - t_train

    # ---- export, int8, structure check
    calibrate = None
    if recipe.quantize == "static":
        def calibrate(model: Path) -> Any:
            return _calibration(recipe, examples, tokenizer, pad_id, model)
    layers, fp32, final, calib = _export(student, model_dir, recipe, layout.work, calibrate)
    _publish(layout, fp32, final, recipe)

    # ---- report
    report = FinetuneReport(output=layout.model, recipe_path=layout.recipe, task=task,
                            metric_name=METRIC_NAMES[task], recipe=recipe, layers=layers,
                            history=[vars(h) for h in history], train_seconds=train_seconds)
    dense_dir = teacher_dir or model_dir
    dense_fp32 = dense_final = None
    if task_of(dense_dir) == task:
        dense_fp32 = dense_final = export_onnx(dense_dir, task, layout.work / "dense.fp32.onnx")
        if recipe.quantize != "none":
            dense_final = layout.work / "dense.int8.onnx"
            quantize_onnx(dense_fp32, dense_final, recipe.quantize, calib)
    if held:
        say("scoring on the held-out data with sparsejit")
        report.rows = _score_rows(recipe, layout, eval_set, dense_fp32, dense_final, report.sparsity, calib,
                                  oneshot_baseline, num_threads)
    quant = "" if recipe.quantize == "none" else f" + int8 ({recipe.quantize})"
    if measure_speed and dense_final is not None:
        say("timing the dense and the sparse model with sparsejit")
        report.speed = time_engines({"dense": dense_final, "sparse": layout.model}, speed_configs,
                                    num_threads=num_threads, vocab_size=tokenizer.get_vocab_size())
        report.speed_models = (f"dense{quant}", f"sparse{quant}")
    report.total_seconds = time.perf_counter() - t_start
    layout.report.write_text(json.dumps(report.to_json(), indent=1))
    if not keep_checkpoint:
        (layout.work / "checkpoint.pt").unlink(missing_ok=True)
    return report


def _labels(task: str, teacher_dir: Path | None, examples: list[Example]) -> list[str] | None:
    """The label list of a fresh head (the data's), checked against the teacher's labels when there is one."""
    if task == "question_answering":
        return None
    data_labels = label_list(examples, task)
    if teacher_dir is None:
        return data_labels
    known = {str(v).lower() for v in (load_config(teacher_dir).get("id2label") or {}).values()}
    unknown = [x for x in data_labels if x.lower() not in known and not x.isdigit()]
    if unknown:
        raise TrainingDataError(f"labels {unknown} of the training data are not among the trained head's labels "
                                f"{sorted(known)} ({teacher_dir / 'config.json'})")
    return data_labels


def _calibration(recipe: Recipe, examples: list[Example], tokenizer: Any, pad_id: int, model: Path) -> Any:
    """Static int8's calibration feeds for `model`'s inputs: the first training texts, one per batch
    (unpadded: the mask's -3.4e38 must not enter the calibrated ranges)."""
    import onnx

    texts = [" ".join(e.text) if recipe.task == "token_classification" else e.text for e in examples]
    names = [i.name for i in onnx.load(str(model), load_external_data=False).graph.input]
    return encode_texts(texts[: recipe.num_calibration], tokenizer, names, recipe.max_length, batch_size=1,
                        pad_id=pad_id)


def _export(student: Any, model_dir: Path, recipe: Recipe, work: Path,
            calibrate: Callable[[Path], Any] | None) -> tuple[list[WeightStructure], Path, Path, Any]:
    """Student -> checkpoint -> ONNX (-> int8); raises if a pruned block is not exactly zero in the result.
    Returns (per-weight structure of the final file, fp32 file, final file, calibration feeds) in `work`."""
    student_dir = save_checkpoint(student, model_dir, work / "student")
    fp32 = export_onnx(student_dir, recipe.task, work / "sparse.fp32.onnx")
    fp32_names = [w.name for w in weight_structure(fp32, recipe.structure)]
    calib = calibrate(fp32) if calibrate is not None else None
    final = fp32
    if recipe.quantize != "none":
        final = work / "sparse.int8.onnx"
        quantize_onnx(fp32, final, recipe.quantize, calib)
    layers = weight_structure(final, recipe.structure, fp32_names)
    bad = [w.name for w in layers if not w.meets(recipe.sparsity)]
    if bad:
        raise RuntimeError(f"exported weights are not {recipe.sparsity:.0%} sparse in {recipe.structure} blocks: {bad}")
    return layers, fp32, final, calib


def _score_rows(recipe: Recipe, layout: OutputLayout, data: EvalSet, dense_fp32: Path | None,
                dense_final: Path | None, sparsity: float, calib: Any, oneshot_baseline: bool,
                num_threads: int | None) -> list[ScoreRow]:
    """Held-out scores, run by sparsejit: dense (fp32, int8), one-shot at the same settings, the result."""
    quant = "" if recipe.quantize == "none" else f" + int8 ({recipe.quantize})"
    rows = []
    if dense_fp32 is not None and dense_final is not None:
        rows.append(ScoreRow("dense (teacher), fp32", 0.0, score_onnx(dense_fp32, data, layout.work, num_threads)))
        if dense_final != dense_fp32:
            rows.append(ScoreRow(f"dense{quant}", 0.0, score_onnx(dense_final, data, layout.work, num_threads)))
        if oneshot_baseline and recipe.sparsity > 0:
            one = one_final = layout.work / "oneshot.fp32.onnx"
            sparsify(dense_fp32, one, sparsity=recipe.sparsity, structure=recipe.structure, scope=recipe.scope)
            if recipe.quantize != "none":
                one_final = layout.work / "oneshot.int8.onnx"
                quantize_onnx(one, one_final, recipe.quantize, calib)
            rows.append(ScoreRow(f"one-shot magnitude {recipe.structure}{quant}", recipe.sparsity,
                                 score_onnx(one_final, data, layout.work, num_threads)))
    kind = f"sparse {recipe.structure}" if recipe.sparsity > 0 else "dense"
    rows.append(ScoreRow(f"fine-tuned {kind}, fp32", sparsity, score_onnx(layout.fp32, data, layout.work,
                                                                          num_threads)))
    if layout.fp32 != layout.model:
        rows.append(ScoreRow(f"fine-tuned {kind}{quant}", sparsity, score_onnx(layout.model, data, layout.work,
                                                                               num_threads)))
    return rows


def _publish(layout: OutputLayout, fp32: Path, final: Path, recipe: Recipe) -> None:
    """Move the finished files into place (rename: never a half-written output) with the recipe beside."""
    if layout.directory is not None:
        layout.directory.mkdir(parents=True, exist_ok=True)
        student = layout.work / "student"
        for name in os.listdir(student):  # a checkpoint too: transformers and `sparsejit export` load it
            shutil.copy2(student / name, layout.directory / name)
    else:
        layout.model.parent.mkdir(parents=True, exist_ok=True)
    if final != fp32:
        shutil.copy2(fp32, layout.fp32.with_suffix(".tmp"))
        os.replace(layout.fp32.with_suffix(".tmp"), layout.fp32)
    else:
        layout.fp32 = layout.model
    shutil.copy2(final, layout.model.with_suffix(".tmp"))
    os.replace(layout.model.with_suffix(".tmp"), layout.model)
    recipe.save(layout.recipe)
