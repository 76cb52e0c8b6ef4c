"""README accuracy table: the sentiment model dense, and pruned 50/70/90 % by magnitude vs OBS.

    python -m bench.sparsify_accuracy [--sparsities 0.5,0.7,0.9] [--structure unstructured]
                                      [--calibration-rows 256] [--int8] [--markdown]

Model: ../shared/models/minilm-sentiment (exported to ONNX by tests/zoo.py). Its eval.csv is split:
the last `--calibration-rows` rows calibrate OBS (and static int8), the rest are the held-out rows
every accuracy is measured on (with onnxruntime, so any runtime gives the same numbers). `--int8`
adds a column of each model quantised with onnxruntime's dynamic int8 after pruning.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sparsities", default="0.5,0.7,0.9")
    parser.add_argument("--structure", default="unstructured")
    parser.add_argument("--calibration-rows", type=int, default=256)
    parser.add_argument("--int8", action="store_true", help="also quantise each model (dynamic int8)")
    args = parser.parse_args(argv)

    from sparsejit.sparsify import encode_texts, evaluate_accuracy, read_labelled_csv, sparsify
    from tests import zoo

    model = zoo.shared_model("minilm-sentiment")
    texts, labels = read_labelled_csv(zoo.SHARED_DIR / "models" / "minilm-sentiment" / "eval.csv")
    n_cal = args.calibration_rows
    calib, eval_texts, eval_labels = texts[-n_cal:], texts[:-n_cal], labels[:-n_cal]
    work = Path(tempfile.mkdtemp(prefix="sparsify-acc-"))
    eval_csv = work / "eval.csv"
    with eval_csv.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        writer.writerows(zip(eval_texts, eval_labels, strict=True))

    import json

    from sparsejit.tasks.base import load_tokenizer

    config = json.loads((model / "config.json").read_text())
    id2label = {int(k): v for k, v in config["id2label"].items()}
    tok = load_tokenizer(model)
    import onnx

    names = [i.name for i in onnx.load(str(model / "model.onnx")).graph.input]
    data = encode_texts(eval_texts, tok, names)
    dense_acc = evaluate_accuracy(model / "model.onnx", data, eval_labels, id2label)
    rows = [("dense fp32", "-", dense_acc, None)]
    if args.int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(model / "model.onnx"), str(work / "dense-int8.onnx"), weight_type=QuantType.QInt8)
        rows[0] = ("dense fp32", "-", dense_acc, evaluate_accuracy(work / "dense-int8.onnx", data, eval_labels,
                                                                   id2label))
    for s in (float(v) for v in args.sparsities.split(",")):
        for method in ("magnitude", "obs"):
            t0 = time.perf_counter()
            out = work / f"{method}-{s}.onnx"
            rep = sparsify(model, out, sparsity=s, method=method, structure=args.structure,
                           calibration_texts=calib, num_calibration=n_cal)
            acc = evaluate_accuracy(out, data, eval_labels, id2label)
            acc8 = None
            if args.int8:
                from onnxruntime.quantization import QuantType, quantize_dynamic

                quantize_dynamic(str(out), str(work / f"{method}-{s}-int8.onnx"), weight_type=QuantType.QInt8)
                acc8 = evaluate_accuracy(work / f"{method}-{s}-int8.onnx", data, eval_labels, id2label)
            rows.append((f"pruned {s:.0%} ({args.structure})", method, acc, acc8))
            print(f"{method} {s}: {acc:.4f} (overall sparsity {rep.overall_sparsity:.3f}, "
                  f"{time.perf_counter() - t0:.0f}s)", file=sys.stderr)

    print(f"\nminilm-sentiment, {len(eval_texts)} held-out rows of eval.csv "
          f"(OBS calibrated on the other {n_cal})\n")
    head = "| model | method | accuracy fp32 |" + (" accuracy int8 (dynamic) |" if args.int8 else "")
    print(head)
    print("|---|---|---|" + ("---|" if args.int8 else ""))
    for name, method, acc, acc8 in rows:
        tail = f" {acc8:.4f} |" if args.int8 and acc8 is not None else (" - |" if args.int8 else "")
        print(f"| {name} | {method} | {acc:.4f} |{tail}")


if __name__ == "__main__":
    main()
