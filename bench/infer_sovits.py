"""SoVITS decode speed on CPU: real-time factor for N seconds of audio at full v2 size (random weights).

    python -m bench.infer_sovits                 # 10 s of audio, 2 threads, float32 + bfloat16
    python -m bench.infer_sovits --seconds 5 --repeats 2 --modes fp32-fast

Each mode runs in its own child process so that the peak-memory figure (max RSS) belongs to that mode only.
Modes:
    fp32-plain  float32, weight norm recomputed per call, (batch, channels, frames) decoder layout
    fp32-fast   float32, `models.inference.prepare_sovits`: cached weight-norm weights + channels-last decoder
    bf16-fast   bfloat16 weights and activations, same fast path
RTF = wall time of one `decode` / audio duration (lower is better); the table gives the median and the best run
(on a shared machine the best run is the better estimate of what the hardware does; GFLOP/s uses the best run).
"max|d|" compares the mode's waveform with the fp32-plain waveform for the same inputs and noise (the fp32
fast path must agree to float rounding). "vs plain" is the speed ratio against fp32-plain, which performs the
official implementation's computation (weight norm applied per call, `(batch, channels, frames)` convs) and so
stands in for it as the same-machine baseline.

A roofline closes the table: the convolution/linear GFLOP of one decode, the GFLOP/s an RTF target needs, and
this machine's measured matrix-multiply peak per dtype on the same threads (a 2048^3 GEMM; int8 where torch has
`_int_mm`), so a target that the hardware cannot reach shows as such.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

MODES = ("fp32-plain", "fp32-fast", "bf16-fast")


def _inputs(seconds: float, seed: int = 0):
    import torch

    from models.audio import spectrogram

    g = torch.Generator().manual_seed(seed)
    n_codes = int(round(seconds * 25))
    codes = torch.randint(0, 1024, (1, 1, n_codes), generator=g)
    phones = torch.randint(0, 732, (1, max(8, int(seconds * 12))), generator=g)  # ~12 phones per second
    ref_wav = (torch.rand(1, 32000 * 5, generator=g) * 2 - 1) * 0.5  # 5 s reference
    refer = spectrogram(ref_wav)
    noise = torch.randn(1, 192, 2 * n_codes, generator=g)
    return codes, phones, refer, noise


def _decoder_gflops(seconds: float) -> float:
    """Multiply-adds x 2 of every conv / linear in one decode, counted on the meta device (no compute)."""
    import torch
    from torch import nn

    from models.sovits import SoVITS, SoVITSConfig

    with torch.device("meta"):
        model = SoVITS(SoVITSConfig()).eval()
    total = [0]

    def hook(mod, args, out):
        x = args[0]
        if isinstance(mod, nn.ConvTranspose1d):
            total[0] += 2 * x.shape[0] * mod.in_channels * mod.out_channels * mod.kernel_size[0] * x.shape[-1]
        elif isinstance(mod, nn.Conv1d):
            per_frame = mod.out_channels * mod.in_channels // mod.groups * mod.kernel_size[0]
            total[0] += 2 * out.shape[0] * per_frame * out.shape[-1]
        elif isinstance(mod, nn.Linear):
            total[0] += 2 * out.numel() * mod.in_features

    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d, nn.Linear)):
            m.register_forward_hook(hook)
    codes, phones, refer, noise = (t.to("meta") for t in _inputs(seconds))
    with torch.inference_mode():
        model.decode(codes, phones, [refer], noise=noise)
    return total[0] / 1e9


def gemm_peak_gflops(threads: int, size: int = 2048, repeats: int = 5) -> dict[str, float]:
    """Measured GEMM throughput (GFLOP/s; int8: GOP/s) per dtype with `threads` torch threads: the ceiling for
    conv stacks."""
    import torch

    torch.set_num_threads(threads)
    products = {}
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
        products[name] = lambda a=a, b=b: a @ b
    if hasattr(torch, "_int_mm"):  # int8 x int8 -> int32 (VNNI on x86): the ceiling of any int8 conv path
        a, b = (torch.randint(-128, 128, (size, size), dtype=torch.int8) for _ in range(2))
        products["int8"] = lambda a=a, b=b: torch._int_mm(a, b)
    peaks = {}
    for name, product in products.items():
        product()  # warm-up
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            product()
            best = min(best, time.perf_counter() - t0)
        peaks[name] = 2 * size**3 / best / 1e9
    return peaks


def run_one(mode: str, seconds: float, repeats: int, threads: int, out_dir: Path) -> dict:
    import torch

    from models.inference import prepare_sovits
    from models.sovits import SoVITS, SoVITSConfig

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    model = SoVITS(SoVITSConfig()).eval()
    dtype = torch.bfloat16 if mode.startswith("bf16") else torch.float32
    model.to(dtype)
    if mode.endswith("fast"):
        prepare_sovits(model, channels_last=True)
    rss_model = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    codes, phones, refer, noise = _inputs(seconds)
    times = []
    with torch.inference_mode():
        wav = model.decode(codes, phones, [refer.to(dtype)], noise_scale=0.5, noise=noise.to(dtype))  # warm-up
        for _ in range(repeats):
            t0 = time.perf_counter()
            model.decode(codes, phones, [refer.to(dtype)], noise_scale=0.5, noise=noise.to(dtype))
            times.append(time.perf_counter() - t0)
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    torch.save(wav.float(), out_dir / f"{mode}.pt")
    median = statistics.median(times)
    return {
        "mode": mode, "seconds": seconds, "threads": threads, "times": times,
        "median_s": median, "best_s": min(times), "rtf": median / seconds, "rtf_best": min(times) / seconds,
        "rss_start_mb": rss0, "rss_model_mb": rss_model, "rss_peak_mb": rss_peak, "samples": int(wav.shape[-1]),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0, help="audio duration to synthesize (default 10)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per mode after one warm-up (default 3)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma list of {', '.join(MODES)}")
    ap.add_argument("--targets", type=float, nargs="*", default=[0.1, 0.07],
                    help="RTF targets the roofline checks (default 0.1 and 0.07); the official code is measured "
                         "side by side by bench.versus")
    ap.add_argument("--out", default=None, help="folder for the waveforms and results.json (default: a temp dir)")
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args._child:
        out_dir = Path(args.out)
        result = run_one(args._child, args.seconds, args.repeats, args.threads, out_dir)
        (out_dir / f"{args._child}.json").write_text(json.dumps(result))
        return 0

    import tempfile

    import torch

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        ap.error(f"unknown mode(s) {unknown}; choose from {MODES}")
    out_dir = Path(args.out or tempfile.mkdtemp(prefix="bench_sovits_"))
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for mode in modes:
        cmd = [sys.executable, "-m", "bench.infer_sovits", "--_child", mode, "--seconds", str(args.seconds), "--repeats",
               str(args.repeats), "--threads", str(args.threads), "--out", str(out_dir)]
        subprocess.run(cmd, check=True, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
        results.append(json.loads((out_dir / f"{mode}.json").read_text()))

    gflop = _decoder_gflops(args.seconds)
    reference = out_dir / "fp32-plain.pt"
    ref_wav = torch.load(reference) if reference.exists() else None
    print(f"\nSoVITS v2 full size, random weights, {args.seconds:g} s of audio at 32 kHz, "
          f"{args.threads} thread(s), CPU: {_cpu_name()}")
    print(f"compute per decode: {gflop:.0f} GFLOP (convs + linears), i.e. {gflop / args.seconds:.1f} GFLOP per second "
          "of audio")
    plain = next((r for r in results if r["mode"] == "fp32-plain"), None)
    header = (f"{'mode':<11} {'median s':>9} {'RTF':>7} {'best s':>7} {'RTF best':>8} {'GFLOP/s':>8} {'vs plain':>8} "
              f"{'model MB':>9} {'peak MB':>8} {'max|d|':>9}  runs (s)")
    print(header)
    print("-" * len(header))
    for r in results:
        diff = ""
        if ref_wav is not None:
            wav = torch.load(out_dir / f"{r['mode']}.pt")
            diff = f"{(wav - ref_wav).abs().max().item():.1e}"
        print(f"{r['mode']:<11} {r['median_s']:>9.3f} {r['rtf']:>7.3f} {r['best_s']:>7.3f} {r['rtf_best']:>8.3f} "
              f"{gflop / r['best_s']:>8.0f} "
              f"{(plain['median_s'] / r['median_s'] if plain else float('nan')):>7.2f}x "
              f"{r['rss_model_mb']:>9.0f} {r['rss_peak_mb']:>8.0f} {diff:>9}  "
              + " ".join(f"{t:.2f}" for t in r["times"]))
    peaks = gemm_peak_gflops(args.threads)
    print(f"\nroofline: {gflop:.0f} GFLOP per decode of {args.seconds:g} s; GEMM peak here with {args.threads} "
          "thread(s): " + ", ".join(f"{k} {v:.0f} G{'OP' if k == 'int8' else 'FLOP'}/s" for k, v in peaks.items()))
    for target in args.targets:
        need = gflop / (target * args.seconds)
        fits = [k for k, v in peaks.items() if v >= need]
        print(f"  RTF {target:g} needs {need:.0f} GFLOP/s in the convs: "
              + (f"within the {', '.join(fits)} peak" if fits else "above every measured peak"))
    (out_dir / "results.json").write_text(json.dumps({"gflop": gflop, "gemm_peak_gflops": peaks, "results": results},
                                                     indent=2))
    print(f"(results and waveforms in {out_dir}; peak MB = max RSS of the mode's process)")
    return 0


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"


if __name__ == "__main__":
    raise SystemExit(main())
