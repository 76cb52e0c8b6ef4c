"""sparsejit on a CPU this machine is not: the portable subset run under Debian's `qemu-user`.

`qemu-x86_64 -cpu Haswell-noTSX` runs this machine's own Python with the CPUID of an AVX2-only CPU (no
AVX-512, no AMX), so sparsejit picks its kernels as it would there, and any instruction outside AVX2
would kill the process. `--arch aarch64` runs an aarch64 CPython (Debian's `python3.11:arm64` and its
libraries, unpacked into a sysroot, not installed) with aarch64 wheels of the runtime dependencies
(`pip install --platform manylinux2014_aarch64 --target ...`) under `qemu-aarch64`; the sysroot is built
on first use under `$SPARSEJIT_CACHE_DIR/aarch64` (needs root, `dpkg --add-architecture arm64`, apt and
PyPI). What runs emulated (one child process for the compiler, one for the server):

1. the README's one-liner, `Pipeline.create("embeddings")` on its default model (all-MiniLM-L6-v2,
   int8 weights), on two texts;
2. an fp32 BERT-family model (the test zoo's 3-layer DistilBERT) and an int8 one (the embeddings
   pipeline's own file, `DynamicQuantizeLinear` + `MatMulInteger`), compiled at batch 1 x seq 16;
3. `sparsejit serve --task embeddings` answering one request on a loopback port.

The references are computed natively, outside the emulator: onnxruntime on the same files and feeds
(bounds as in the native suites: fp32 1e-4 x max |output| as tests/test_parity_onnxruntime.py, int8
2e-3 x max |output| as tests/test_quantized.py) and the native embeddings pipeline for steps 1 and 3.

    python -m bench.emulated_cpu [--cpu Haswell-noTSX] [--workdir DIR]
    python -m bench.emulated_cpu --arch aarch64

Emulation is slow (minutes: the kernels' LLVM compile itself runs emulated); kernels are cached in
`$SPARSEJIT_CACHE_DIR` under a key naming the CPU, so a second run is faster. Needs `qemu-x86_64`
(`apt-get install qemu-user`) and the test extras (onnxruntime, torch for the zoo model).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

TEXTS = ["hello world", "sparsejit runs on CPUs without AVX-512"]
FP32_BOUND, INT8_BOUND = 1e-4, 2e-3  # x max |reference output|, as the native suites
_BUCKET = (1, 16)

_COMPILER_SCRIPT = """
import json, sys
import numpy as np
import sparsejit
from sparsejit.kernels.target import host_target
work = sys.argv[1]
jobs = json.load(open(work + "/jobs.json"))
pipe = sparsejit.Pipeline.create("embeddings")
np.save(work + "/pipeline.npy", np.asarray(pipe(jobs["texts"]), dtype=np.float32))
for name, job in jobs["models"].items():
    engine = sparsejit.compile(job["path"], batch_size=job["batch"], sequence_length=job["sequence"])
    np.savez(work + "/" + name + ".out.npz", **engine.run(dict(np.load(job["feed"]))))
print(json.dumps({"cpu": host_target().cpu, "kernels": host_target().kernel_family}))
"""


@dataclass(frozen=True)
class Emulator:
    """How to start this repository's sparsejit under emulation: the command prefix and environment."""

    label: str
    prefix: list[str]
    env: dict[str, str]


def qemu_command(cpu: str) -> list[str]:
    """The emulator prefix for this machine's Python, or `FileNotFoundError` naming what to install."""
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        raise FileNotFoundError("qemu-x86_64 not found: install Debian's qemu-user (apt-get install qemu-user)")
    return [qemu, "-cpu", cpu, sys.executable]


def _repo() -> str:
    return str(Path(__file__).resolve().parents[1])


def x86_emulator(cpu: str = "Haswell-noTSX") -> Emulator:
    env = dict(os.environ)
    env.pop("SPARSEJIT_TARGET", None)  # the emulated CPU's own features decide
    env["PYTHONPATH"] = os.pathsep.join([_repo(), env.get("PYTHONPATH", "")])
    return Emulator(f"x86-64 {cpu}", qemu_command(cpu), env)


_ARM64_DEBS = ("libc6", "libgcc-s1", "libstdc++6", "python3.11-minimal", "libpython3.11-minimal",
               "libpython3.11-stdlib", "zlib1g", "libexpat1", "libffi8", "libssl3", "libbz2-1.0", "liblzma5",
               "libsqlite3-0", "libncursesw6", "libtinfo6", "libreadline8", "libuuid1", "libcrypt1", "libnsl2",
               "libtirpc3", "libgssapi-krb5-2", "libkrb5-3", "libk5crypto3", "libkrb5support0", "libcom-err2",
               "libkeyutils1", "libdb5.3", "libgdbm6")
_ARM64_WHEELS = ("onnx", "safetensors", "ml_dtypes", "tokenizers", "fastapi", "uvicorn", "click", "pydantic",
                 "pyyaml", "psutil", "prometheus-client")


def aarch64_emulator(base: Path | None = None) -> Emulator:
    """An aarch64 CPython with sparsejit's runtime dependencies under qemu-aarch64 (built on first use)."""
    qemu = shutil.which("qemu-aarch64")
    if qemu is None:
        raise FileNotFoundError("qemu-aarch64 not found: install Debian's qemu-user (apt-get install qemu-user)")
    if base is None:
        from sparsejit.model_wheels import cache_dir

        base = cache_dir().parent / "aarch64"
    root, site = base / "root", base / "site"
    python = root / "usr" / "bin" / "python3.11"
    if not python.is_file():
        debs = base / "debs"
        debs.mkdir(parents=True, exist_ok=True)
        subprocess.run(["dpkg", "--add-architecture", "arm64"], check=True)
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "download", "-qq", *(f"{p}:arm64" for p in _ARM64_DEBS)], cwd=debs, check=True)
        for deb in debs.glob("*.deb"):
            subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
    import llvmlite
    import numba

    pins = [f"numba=={numba.__version__}", f"llvmlite=={llvmlite.__version__}", f"numpy=={np.__version__}"]
    installed = site / ".sparsejit-wheels"  # what the site holds: reinstalled when the list changes
    wanted = " ".join([*pins, *_ARM64_WHEELS])
    if not installed.is_file() or installed.read_text() != wanted:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--target", str(site), "--python-version",
                        "3.11", "--implementation", "cp", "--only-binary=:all:", "--platform", "manylinux2014_aarch64",
                        "--platform", "manylinux_2_17_aarch64", "--platform", "manylinux_2_28_aarch64",
                        "--upgrade", *pins, *_ARM64_WHEELS], check=True)
        installed.write_text(wanted)
    env = dict(os.environ)
    env.pop("SPARSEJIT_TARGET", None)
    env["PYTHONPATH"] = os.pathsep.join([str(site), _repo()])
    return Emulator("aarch64", [qemu, "-L", str(root), str(python)], env)


def _reference_models(work: Path) -> dict[str, dict[str, Any]]:
    """Models, feeds and onnxruntime's outputs for step 2, all made natively."""
    import onnxruntime as ort

    from sparsejit.model_wheels import minilm_int8_onnx
    from tests import zoo

    distilbert = zoo.random_encoder("distilbert")
    models = {"fp32": (distilbert / "model.onnx", zoo.make_inputs(distilbert, *_BUCKET, seed=3)),
              "int8": (minilm_int8_onnx(), _minilm_feed(minilm_int8_onnx()))}
    jobs = {}
    for name, (path, feed) in models.items():
        np.savez(work / f"{name}.feed.npz", **feed)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        reference = dict(zip([o.name for o in session.get_outputs()], session.run(None, feed), strict=True))
        np.savez(work / f"{name}.ref.npz", **reference)
        jobs[name] = {"path": str(path), "feed": str(work / f"{name}.feed.npz"), "batch": _BUCKET[0],
                      "sequence": _BUCKET[1]}
    return jobs


def _minilm_feed(path: Path) -> dict[str, np.ndarray]:
    import onnx

    rng = np.random.default_rng(7)
    batch, seq = _BUCKET
    ids = rng.integers(1000, 30000, (batch, seq), dtype=np.int64)
    ids[:, 0], ids[:, -1] = 101, 102
    feed = {"input_ids": ids, "attention_mask": np.ones((batch, seq), np.int64),
            "token_type_ids": np.zeros((batch, seq), np.int64)}
    names = {i.name for i in onnx.load(str(path), load_external_data=False).graph.input}
    return {k: v for k, v in feed.items() if k in names}


def _worst(outputs: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> float:
    """Largest |difference| over the outputs, relative to each output's max |reference|."""
    if outputs.keys() != reference.keys():
        raise AssertionError(f"outputs {sorted(outputs)} != reference outputs {sorted(reference)}")
    return max(float(np.abs(outputs[n] - r).max()) / max(float(np.abs(r).max()), 1e-30) for n, r in reference.items())


def _serve_one_request(prefix: list[str], env: dict[str, str], texts: list[str], timeout_s: float) -> np.ndarray:
    """Start `sparsejit serve --task embeddings` emulated and post one request to it."""
    import httpx

    from sparsejit.serve.testing import free_loopback_socket

    with free_loopback_socket() as sock:
        port = sock.getsockname()[1]
    server = subprocess.Popen(prefix + ["-m", "sparsejit.serve.cli", "serve", "--task", "embeddings",
                                        "--port", str(port)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"the emulated server exited ({server.returncode}):\n{server.stdout.read()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the emulated server was not ready within {timeout_s:.0f} s")
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(2)
        r = httpx.post(f"{url}/v2/models/embeddings/infer", json={"inputs": texts}, timeout=timeout_s)
        r.raise_for_status()
        return np.asarray(r.json(), dtype=np.float32)
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()


def run_subset(emulator: Emulator | None = None, work: Path | None = None, timeout_s: float = 1500.0) -> dict[str, Any]:
    """Run the portable subset under `emulator` (default: an AVX2-only x86-64 CPU); returns what was
    measured (raises `AssertionError` when an output is outside its bound)."""
    import sparsejit

    emulator = emulator or x86_emulator()
    prefix, env = emulator.prefix, emulator.env
    work = Path(tempfile.mkdtemp(prefix="sparsejit-emulated-")) if work is None else work
    work.mkdir(parents=True, exist_ok=True)
    jobs = {"texts": TEXTS, "models": _reference_models(work)}
    (work / "jobs.json").write_text(json.dumps(jobs))
    native = np.asarray(sparsejit.Pipeline.create("embeddings")(TEXTS), dtype=np.float32)

    t0 = time.perf_counter()
    out = subprocess.run(prefix + ["-c", _COMPILER_SCRIPT, str(work)], env=env, capture_output=True, text=True,
                         timeout=timeout_s)
    if out.returncode:
        raise RuntimeError(f"emulated compiler run failed ({out.returncode}):\n{out.stderr[-4000:]}")
    report: dict[str, Any] = {"emulated_cpu": emulator.label, **json.loads(out.stdout.strip().splitlines()[-1]),
                              "compile_and_run_s": time.perf_counter() - t0}
    emulated = np.load(work / "pipeline.npy")
    report["pipeline_vs_native"] = _worst({"e": emulated}, {"e": native})
    for name in jobs["models"]:
        report[f"{name}_vs_onnxruntime"] = _worst(dict(np.load(work / f"{name}.out.npz")),
                                                  dict(np.load(work / f"{name}.ref.npz")))
    t0 = time.perf_counter()
    served = _serve_one_request(prefix, env, TEXTS, timeout_s)
    report["server_s"] = time.perf_counter() - t0
    report["server_vs_native"] = _worst({"e": served}, {"e": native})

    bounds = {"pipeline_vs_native": INT8_BOUND, "int8_vs_onnxruntime": INT8_BOUND,
              "fp32_vs_onnxruntime": FP32_BOUND, "server_vs_native": INT8_BOUND}
    failed = {k: (report[k], b) for k, b in bounds.items() if not report[k] <= b}
    if failed:
        raise AssertionError(f"outside the bounds (measured, bound): {failed}; report {report}")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", choices=("x86_64", "aarch64"), default="x86_64")
    parser.add_argument("--cpu", default="Haswell-noTSX", help="qemu CPU model for x86_64 (qemu-x86_64 -cpu help)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep feeds and outputs here")
    args = parser.parse_args()
    emulator = aarch64_emulator() if args.arch == "aarch64" else x86_emulator(args.cpu)
    report = run_subset(emulator, args.workdir, timeout_s=3000.0)
    for key, value in report.items():
        print(f"{key:<24} {value:.3g}" if isinstance(value, float) else f"{key:<24} {value}")


if __name__ == "__main__":
    main()
