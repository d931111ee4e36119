"""gsv-tts-lite 0.4.7 (PyPI, "A high-performance inference engine for GPT-SoVITS"), measured on the shared workload.

    python bench/adapters/gsv_tts_lite.py --workload DIR [--threads 2] [--tokens 250] [--repeats 2]

Needs a virtual environment with gsv-tts-lite==0.4.7 and torch (bench/peers.sh makes one). Its `gsv_tts.TTS`
constructor downloads pretrained models (HuBERT, speaker verification, default voices) from a hub, so it is not
used: the adapter calls what `TTS.load_gpt_model` / `TTS.load_sovits_model` and `TTS.infer` call, on a CPU in
float32 (its CPU choice), without flash attention (CUDA only):
  * loading: `gsv_tts.Loader.get_gpt_weights` and `get_sovits_weights` on the official .ckpt/.pth files, with a
    `gsv_tts.Config.Config` set to cpu/float32/no flash attention/no SoVITS graph cache (what `TTS(device="cpu")`
    sets);
  * GPT: `Text2SemanticDecoder.infer(phones, prompt, bert)` with top_k 15, top_p 1, temperature 1, repetition
    penalty 1.35 (its defaults; it also bans tokens 280, 486 and EOS for the first 10 steps, as it always does);
  * SoVITS: `SynthesizerTrn.get_ge(refer)` (the reference encoder; `TTS.infer` caches it per speaker, here it runs
    on every decode as in the other adapters) then `SynthesizerTrn.decode(codes, text, ge, noise_scale=0.5)`.

Differences from the shared workload, each forced by the engine's interface:
  * Token count: `infer` has no early-stop or max-length argument; it decodes until EOS or until the largest
    key/value cache bucket it was initialised with (`initialize_runtime(dtype, device, gpt_cache)`) is full, and
    returns the last `bucket size - context` tokens. So for each context length the adapter builds a cache of
    exactly context + n_tokens positions (B = 1) and swaps it in before the call; the run of the whole sentence
    has its cache built before timing, those of the warm-up and step timings are built on first use (outside the
    step gaps that are timed) and dropped after. It samples one token more than it returns (the first, which
    `infer` drops), so it decodes n_tokens + 1 tokens for n_tokens returned.
  * Its per-call BERT input is (1, Lx, 1024) (it transposes nothing), so the workload's (1, 1024, Lx) is transposed.
  * `infer` shows a tqdm progress bar on stderr per call, as it does in use.
  * torchaudio: see `_stand_in_for_torchaudio` (not installed by bench/peers.sh; not on the measured path).
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _stand_in_for_torchaudio() -> None:
    """`gsv_tts` imports torchaudio at module level (for reading reference audio: Resample, Spectrogram, Kaldi
    fbank), which the measured path never calls. The only torchaudio wheels on PyPI that accept torch 2.13 are CUDA
    builds that fail to load without CUDA libraries, and the CPU index has none for 2.13, so where torchaudio does
    not import, empty modules stand in for it."""
    import importlib.machinery
    import types

    try:
        import torchaudio
        import torchaudio.compliance.kaldi  # noqa: F401
    except (ImportError, OSError):
        for name in ("torchaudio", "torchaudio.transforms", "torchaudio.compliance", "torchaudio.compliance.kaldi"):
            sys.modules[name] = types.ModuleType(name)
            sys.modules[name].__spec__ = importlib.machinery.ModuleSpec(name, None)  # transformers looks it up
        sys.modules["torchaudio"].transforms = sys.modules["torchaudio.transforms"]
        sys.modules["torchaudio"].compliance = sys.modules["torchaudio.compliance"]
        sys.modules["torchaudio.compliance"].kaldi = sys.modules["torchaudio.compliance.kaldi"]


def main() -> None:
    sys.path.insert(0, str(REPO))
    from bench.adapters._args import adapter_parser

    parser = adapter_parser(__doc__)
    args = parser.parse_args()

    import torch

    _stand_in_for_torchaudio()
    from gsv_tts.Config import Config
    from gsv_tts.Loader import get_gpt_weights, get_sovits_weights

    from bench._probe import Engine, emit, measure

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    work = Path(args.workload)
    config = Config()
    config.device, config.dtype, config.use_flash_attn = torch.device("cpu"), torch.float32, False
    config.gpt_cache, config.sovits_cache = [(1, 64)], []  # replaced per context length below
    gpt = get_gpt_weights(str(work / "gpt.ckpt"), config).t2s_model
    sovits = get_sovits_weights(str(work / "sovits.pth"), config).vq_model
    inputs = torch.load(work / "inputs.pt", weights_only=True)

    def cache_for(positions: int) -> dict:
        gpt.cuda_graph_buckets = {}
        gpt.initialize_runtime(config.dtype, config.device, [(1, positions)])
        return gpt.cuda_graph_buckets

    n_main = inputs["phones"].shape[1] + inputs["prompt"].shape[1] + args.tokens
    kept = {n_main: cache_for(n_main)}  # the timed sentence's cache; one other at a time besides

    def generate(phones, bert, prompt, n_tokens):
        positions = phones.shape[1] + prompt.shape[1] + n_tokens
        if positions not in kept:
            for other in [p for p in kept if p != n_main]:
                del kept[other]
            kept[positions] = cache_for(positions)
        gpt.cuda_graph_buckets = kept[positions]
        codes = gpt.infer(phones, prompt, bert.transpose(1, 2).contiguous(), top_k=15, top_p=1.0, temperature=1.0,
                          repetition_penalty=1.35)
        return codes[0]

    def decode(codes, text, refer):
        with torch.inference_mode():
            ge = sovits.get_ge(refer)
            audio, _ = sovits.decode(codes[None], text, ge, noise_scale=0.5)
        return audio

    emit(measure(Engine("gsv-tts-lite", generate, decode, gpt.ar_predict_layer), inputs, args.tokens, args.repeats))


if __name__ == "__main__":
    main()
