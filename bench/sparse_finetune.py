"""Sparse fine-tuning rows of README: train, score, and time the result against the dense model.

    python -m bench.sparse_finetune sentiment [--sparsity 0.8] [--structure 4x16] [--quantize dynamic]
    python -m bench.sparse_finetune ner       # all-MiniLM-L6-v2 fine-tuned dense on WNUT-16, then sparse
    python -m bench.sparse_finetune qa        # minilm-squad as teacher, 4 articles train, the 5th held out
    python -m bench.sparse_finetune speed OUT.onnx DENSE_FP32.onnx [--seq 64]
    python -m bench.sparse_finetune quant OUT.fp32.onnx   # sentiment: dynamic vs static int8 of one model

`sentiment` runs what `sparsejit sparsify ../shared/models/minilm-sentiment OUT --finetune
../shared/data/sentiment-train.csv ...` runs, scored on the model's eval.csv (1,000 held-out tweets),
then `speed`: the sparse int8 model in sparsejit vs onnxruntime running the dense fp32 model and vs
sparsejit running the dense int8 model, batch 1 and 32 at seq 64, engines alternating, medians.
NER holds out a seeded 20 % of the WNUT-16 sentences (seed 42: `sparsejit.training.data.split_examples`).
Outputs go to --work (default /tmp/sparse-finetune). CPU named in every table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHARED = Path(__file__).resolve().parents[2] / "shared"


def _print_report(report: object, seconds: float) -> None:
    print(report.format())  # type: ignore[attr-defined]
    print(f"whole run (training, export, int8, scoring, one-shot baseline, timing): {seconds / 60:.1f} min")


def sentiment(args: argparse.Namespace) -> Path:
    from sparsejit.training import Recipe, finetune_sparse

    model = SHARED / "models" / "minilm-sentiment"
    out = Path(args.work) / f"sentiment-{args.sparsity}-{args.structure}-{args.quantize}.onnx"
    recipe = Recipe(task="text_classification", sparsity=args.sparsity, structure=args.structure,
                    quantize=args.quantize, epochs=args.epochs, prune_end_epoch=args.prune_end_epoch)
    t0 = time.perf_counter()
    report = finetune_sparse(model, out, SHARED / "data" / "sentiment-train.csv", recipe,
                             eval_file=model / "eval.csv", measure_speed=False)
    _print_report(report, time.perf_counter() - t0)
    return out


def ner(args: argparse.Namespace) -> Path:
    from sparsejit.model_wheels import minilm_dir
    from sparsejit.training import Recipe, finetune_sparse

    data = SHARED / "data" / "wnut16-train.conll"
    work = Path(args.work)
    dense = work / "ner-dense"
    common = dict(task="token_classification", max_length=args.max_length, eval_split=0.2, epochs=args.epochs,
                  learning_rate=args.dense_learning_rate)
    if not (dense / "model.safetensors").is_file():
        t0 = time.perf_counter()
        report = finetune_sparse(minilm_dir(), dense, data, Recipe(**common, sparsity=0.0, quantize="none",
                                                                   prune_end_epoch=0.0),
                                 measure_speed=False, oneshot_baseline=False)
        _print_report(report, time.perf_counter() - t0)
    out = work / f"ner-{args.sparsity}-{args.structure}-{args.quantize}.onnx"
    recipe = Recipe(**{**common, "learning_rate": 1e-4}, sparsity=args.sparsity, structure=args.structure,
                    quantize=args.quantize, prune_end_epoch=args.prune_end_epoch)
    t0 = time.perf_counter()
    report = finetune_sparse(dense, out, data, recipe, measure_speed=False)
    _print_report(report, time.perf_counter() - t0)
    return out


def qa(args: argparse.Namespace) -> Path:
    from sparsejit.training import Recipe, finetune_sparse

    model = SHARED / "models" / "minilm-squad"
    held_title = json.loads((model / "eval.json").read_text())["data"][0]["title"]
    squad = json.loads((SHARED / "data" / "squad-v2-dev-subset.json").read_text())
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    train, held = work / "squad-train.json", work / "squad-heldout.json"
    train.write_text(json.dumps({"version": "v2.0", "data": [a for a in squad["data"] if a["title"] != held_title]}))
    held.write_text(json.dumps({"version": "v2.0", "data": [a for a in squad["data"] if a["title"] == held_title]}))
    out = work / f"qa-{args.sparsity}-{args.structure}-{args.quantize}.onnx"
    recipe = Recipe(task="question_answering", sparsity=args.sparsity, structure=args.structure, quantize=args.quantize,
                    max_length=256, doc_stride=128, answerable_only=True, epochs=args.epochs, batch_size=16,
                    prune_end_epoch=args.prune_end_epoch)
    t0 = time.perf_counter()
    report = finetune_sparse(model, out, train, recipe, eval_file=held, measure_speed=False)
    _print_report(report, time.perf_counter() - t0)
    return out


def speed(sparse: Path, dense_fp32: Path, seq: int, batches: tuple[int, ...], seconds: float, threads: int) -> None:
    """sparsejit sparse (as written) vs onnxruntime dense fp32 vs sparsejit dense int8 (dynamic)."""
    import tempfile

    from onnxruntime.quantization import QuantType, quantize_dynamic

    import sparsejit
    from bench.compare import alternate_blocks
    from bench.peers import ort_session
    from sparsejit.kernels.target import host_target

    dense_int8 = Path(tempfile.mkdtemp()) / "dense.int8.onnx"
    quantize_dynamic(str(dense_fp32), str(dense_int8), weight_type=QuantType.QInt8)
    print(f"\n{host_target().cpu}, {threads} threads, seq {seq}, median ms per batch, engines alternating "
          f"in ~1 s blocks, the first run of each block discarded (~{seconds:.0f} s each)")
    print("| batch | onnxruntime dense fp32 | sparsejit dense int8 | sparsejit sparse | vs ort fp32 "
          "| vs sparsejit int8 |")
    print("|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for b in batches:
        feed = {"input_ids": rng.integers(1000, 20000, (b, seq)).astype(np.int64),
                "attention_mask": np.ones((b, seq), np.int64), "token_type_ids": np.zeros((b, seq), np.int64)}
        session = ort_session(dense_fp32, threads)
        ort_feed = {i.name: feed[i.name] for i in session.get_inputs()}
        runners = {"ort": lambda s=session, f=ort_feed: s.run(None, f)}
        for key, path in (("dense8", dense_int8), ("sparse", sparse)):
            e = sparsejit.compile(str(path), batch_size=b, sequence_length=seq, num_threads=threads)
            runners[key] = lambda e=e, f={k: feed[k] for k in e.input_names}: e.run(f)
        for r in runners.values():
            r()
        times = alternate_blocks(runners, seconds * len(runners))
        m = {k: statistics.median(v) * 1000 for k, v in times.items()}
        print(f"| {b} | {m['ort']:.2f} | {m['dense8']:.2f} | {m['sparse']:.2f} | {m['ort'] / m['sparse']:.2f}x | "
              f"{m['dense8'] / m['sparse']:.2f}x |")


def quant(fp32: Path, seconds: float, threads: int) -> None:
    """Accuracy and speed of one fine-tuned sparse fp32 sentiment model quantised dynamically and statically
    (QDQ per-channel, calibrated on 256 training texts), all run by sparsejit."""
    import tempfile

    import onnx

    from sparsejit.sparsify import encode_texts, quantize_onnx
    from sparsejit.tasks.base import load_tokenizer
    from sparsejit.training.data import build_features, read_examples
    from sparsejit.training.evaluate import EvalSet, score_onnx, time_engines

    model = SHARED / "models" / "minilm-sentiment"
    tok = load_tokenizer(model)
    train = read_examples(SHARED / "data" / "sentiment-train.csv", "text_classification")
    held = read_examples(model / "eval.csv", "text_classification")
    label2id = {"NEGATIVE": 0, "POSITIVE": 1}
    data = EvalSet("text_classification", held, build_features(held, "text_classification", tok, label2id, 128),
                   {0: "NEGATIVE", 1: "POSITIVE"}, 0, 128, model)
    work = Path(tempfile.mkdtemp())
    names = [i.name for i in onnx.load(str(fp32), load_external_data=False).graph.input]
    calib = encode_texts([e.text for e in train[:256]], tok, names, 128, batch_size=1)
    paths = {"fp32": fp32}
    for mode in ("dynamic", "static"):
        paths[mode] = work / f"{mode}.onnx"
        quantize_onnx(fp32, paths[mode], mode, calib if mode == "static" else None)
    scores = {k: score_onnx(p, data, work, threads) for k, p in paths.items()}
    speed_ms = time_engines(paths, ((1, 64), (32, 64)), seconds, threads, tok.get_vocab_size())
    print("| form | accuracy (eval.csv) | b1 s64 ms | b32 s64 ms |\n|---|---|---|---|")
    for k in paths:
        print(f"| {k} | {scores[k]:.4f} | {speed_ms[(1, 64)][k]:.2f} | {speed_ms[(32, 64)][k]:.2f} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["sentiment", "ner", "qa", "speed", "quant"])
    parser.add_argument("paths", nargs="*", help="speed: SPARSE.onnx DENSE_FP32.onnx")
    parser.add_argument("--sparsity", type=float, default=0.8)
    parser.add_argument("--structure", default="4x16")
    parser.add_argument("--quantize", default="dynamic")
    parser.add_argument("--epochs", type=float, default=10.0)
    parser.add_argument("--prune-end-epoch", type=float, default=6.0)
    parser.add_argument("--dense-learning-rate", type=float, default=1e-4)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", default="/tmp/sparse-finetune")
    args = parser.parse_args(argv)
    batches = tuple(int(b) for b in args.batches.split(","))
    if args.what == "quant":
        quant(Path(args.paths[0]), args.seconds, args.threads)
        return
    if args.what == "speed":
        speed(Path(args.paths[0]), Path(args.paths[1]), args.seq, batches, args.seconds, args.threads)
        return
    out = {"sentiment": sentiment, "ner": ner, "qa": qa}[args.what](args)
    dense = Path(str(out.with_suffix("")) + ".work") / "dense.fp32.onnx"
    if args.quantize != "none" and dense.is_file():
        speed(out, dense, args.seq, batches, args.seconds, args.threads)


if __name__ == "__main__":
    main()
