"""genie-tts 2.0.2 (PyPI, "GPT-SoVITS ONNX Inference Engine & Model Converter"), measured on the shared workload.

    python bench/adapters/genie_tts.py --workload DIR [--threads 2] [--tokens 250] [--repeats 2]

Needs a virtual environment with genie-tts==2.0.2 and torch (bench/peers.sh makes one). Code path measured: the
engine's own v2 converter (`genie_tts.Converter.v2.Converter.convert`, official .ckpt/.pth -> its bundled ONNX
graphs + fp16 weight files; done once, in a child process, and kept in DIR/genie-tts-onnx/), loaded the way its
`ModelManager` loads a character (`load_session_with_fp16_conversion`: fp16 weights widened to float32 in memory,
ORT_ENABLE_ALL, CPU execution provider, here with `intra_op_num_threads` = --threads), then the calls its
`GENIE.t2s_cpu` and `GENIE.tts` make: the T2S encoder, the first-stage decoder, the stage decoder once per further
token, and the VITS graph. Sampling is baked into its decoder graphs: top-k 15, temperature 1, repetition penalty 1.35, no top-p
(= top_p 1), the same as the shared workload.

Differences from the shared workload, each forced by the engine's interface:
  * Prompt tokens: its encoder computes them from HuBERT features of the reference audio (`ssl_content` ->
    ssl_proj -> codebook). We run the encoder on a 4-frame dummy `ssl_content` (a negligible cost) for the phone
    and BERT embedding `x`, drop its `prompts` output and give the first-stage decoder the workload's prompt tokens.
    The phones/BERT are passed as ref = first phone, text = the rest (it concatenates them, as the official code
    does with prompt and sentence phones).
  * Token count: its loop stops on the graph's stop flag or after 500 steps; ours calls the stage decoder exactly
    n_tokens - 1 times after the first-stage decoder (the stop flag is ignored; EOS cannot win anyway).
  * Reference: its VITS graph takes the 32 kHz reference waveform and computes the spectrogram itself (STFT inside
    the graph), so it is given a fixed random waveform of frames x 640 samples (hop 640: the audio the workload's
    `refer` spectrogram stands for, give or take the STFT's edge frames). Its cost includes that STFT, which the
    other implementations are handed already done; the spectrogram values differ. Noise scale is the graph's own
    (0.5 in its export, as elsewhere).
  * No torch module runs per step (ONNX Runtime), so `predict_layer` is None and per-step timings are not taken.

Memory: its loader widens the fp16 weight files to float32 in memory and gives the first-stage and the stage
decoder sessions each their own copy of the GPT weights; about 2.8 GB is resident after loading on this machine
(peak RSS counts that, as it counts every implementation's loading).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HOP = 640


def convert_once(work: Path) -> Path:
    """The engine's converter, run once per workload, in a child process (a one-off offline step: its memory is
    not the engine's at run time, and this process's peak RSS is measured)."""
    out = work / "genie-tts-onnx"
    done = out / "converted.ok"
    if done.exists() and done.stat().st_mtime >= max((work / "gpt.ckpt").stat().st_mtime,
                                                     (work / "sovits.pth").stat().st_mtime):
        return out
    subprocess.run([sys.executable, __file__, "--convert-only", "--workload", str(work)], check=True,
                   stdout=sys.stderr)
    if not (out / "vits_fp32.onnx").exists():
        raise SystemExit(f"genie-tts conversion failed (see its log above); {out} is incomplete")
    done.touch()
    return out


def _convert(work: Path) -> None:
    import genie_tts.Converter.v2.Converter as converter

    with tempfile.TemporaryDirectory(prefix="genie-convert-") as tmp:
        converter.CACHE_DIR = tmp  # default: ./Cache, made and deleted by the converter
        converter.convert(str(work / "gpt.ckpt"), str(work / "sovits.pth"), str(work / "genie-tts-onnx"))


def main() -> None:
    sys.path.insert(0, str(REPO))
    from bench.adapters._args import adapter_parser

    parser = adapter_parser(__doc__)
    parser.add_argument("--convert-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    # This file's folder comes first on sys.path and this file is named like the package: take the folder off.
    sys.path[:] = [str(REPO)] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
    work = Path(args.workload).resolve()

    # Importing genie_tts runs its resource check, which asks on stdin to download "GenieData" (HuBERT, speaker
    # encoder, G2P dictionaries) unless GENIE_DATA_DIR exists with those entries. None of them is used here (the
    # workload brings phones, BERT features and prompt tokens), so an empty stand-in satisfies the check.
    stand_in = work / "genie-tts-data"
    (stand_in / "chinese-hubert-base").mkdir(parents=True, exist_ok=True)
    (stand_in / "speaker_encoder.onnx").touch()
    os.environ["GENIE_DATA_DIR"] = str(stand_in)
    if args.convert_only:
        return _convert(work)

    import numpy as np
    import onnxruntime
    import torch
    from genie_tts.ModelManager import GSVModelFile, load_session_with_fp16_conversion

    from bench._probe import Engine, emit, measure

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    onnx_dir = convert_once(work)

    def session(onnx_name: str, fp16_bin: str | None) -> onnxruntime.InferenceSession:
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        path = str(onnx_dir / onnx_name)
        if fp16_bin is None:
            return onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"], sess_options=options)
        return load_session_with_fp16_conversion(path, str(onnx_dir / fp16_bin), ["CPUExecutionProvider"], options)

    encoder = session(GSVModelFile.T2S_ENCODER_FP32, None)
    first = session(GSVModelFile.T2S_FIRST_STAGE_DECODER_FP32, GSVModelFile.T2S_DECODER_WEIGHT_FP16)
    stage = session(GSVModelFile.T2S_STAGE_DECODER_FP32, GSVModelFile.T2S_DECODER_WEIGHT_FP16)
    vits = session(GSVModelFile.VITS_FP32, GSVModelFile.VITS_WEIGHT_FP16)
    stage_inputs = [i.name for i in stage.get_inputs()]
    inputs = torch.load(work / "inputs.pt", weights_only=True)
    dummy_ssl = np.zeros((1, 768, 4), dtype=np.float32)

    def generate(phones, bert, prompt, n_tokens):
        seq = phones.numpy().astype(np.int64)
        feats = bert[0].T.contiguous().numpy().astype(np.float32)  # (Lx, 1024), as its encoder takes them
        x, _ = encoder.run(None, {"ref_seq": seq[:, :1], "text_seq": seq[:, 1:], "ref_bert": feats[:1],
                                  "text_bert": feats[1:], "ssl_content": dummy_ssl})
        y, y_emb, *kv = first.run(None, {"x": x, "prompts": prompt.numpy().astype(np.int64)})
        for _ in range(n_tokens - 1):
            y, y_emb, _stop, *kv = stage.run(None, dict(zip(stage_inputs, [y, y_emb, *kv])))
        return torch.from_numpy(y[:, prompt.shape[1]:].copy())

    ref_audio = {}

    def decode(codes, text, refer):
        n = refer.shape[-1] * HOP
        if n not in ref_audio:
            ref_audio[n] = 0.1 * np.random.default_rng(0).standard_normal((1, n)).astype(np.float32)
        wav = vits.run(None, {"text_seq": text.numpy().astype(np.int64),
                              "pred_semantic": codes[None].numpy().astype(np.int64), "ref_audio": ref_audio[n]})[0]
        return torch.from_numpy(wav)

    emit(measure(Engine("genie-tts", generate, decode, None), inputs, args.tokens, args.repeats))


if __name__ == "__main__":
    main()
