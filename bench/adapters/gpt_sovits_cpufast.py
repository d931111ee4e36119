"""gpt-sovits-cpufast 0.1.0 (PyPI, "CPU-focused inference fork of GPT-SoVITS"), measured on the shared workload.

    python bench/adapters/gpt_sovits_cpufast.py --workload DIR [--threads 2] [--tokens 250] [--repeats 2]

Needs a virtual environment with gpt-sovits-cpufast==0.1.0 and torch (bench/peers.sh makes one). The package
installs the fork's source tree as a top-level `GPT_SoVITS` folder whose modules import each other as top-level
names (`AR`, `module`, `text`, `utils`), so that folder goes on sys.path, as its own launcher
(`gpt_sovits_cpufast.runtime.configure_runtime`) does.

Code path measured: the one its `TTS_infer_pack.TTS.TTS.run` takes with the API defaults (`parallel_infer` and
`vits_parallel_infer` on, float32 on a CPU), called directly below the text front end:
  * loading as `TTS.init_t2s_weights` / `TTS.init_vits_weights` do: `Text2SemanticLightningModule(config, "****",
    is_train=False, build_t2s_transformer=False, build_h_module=False)`, `load_inference_only_state_dict`,
    `release_inference_only_unused_modules`; `SynthesizerTrn(...)`, `load_state_dict(strict=False)`,
    `dec.remove_weight_norm()`;
  * GPT: `Text2SemanticDecoder.infer_panel_batch_infer` with one sentence, top_k 15, top_p 1, temperature 1,
    repetition penalty 1.35, under `torch.no_grad()` as `TTS.run` is;
  * SoVITS: `SynthesizerTrn.decode(codes, text, [refer], noise_scale=0.5)` (the reference encoder runs on every
    call, as in the other adapters; `TTS.run` caches its output per reference voice between sentences).

Differences from the shared workload: its decoder returns the tokens before the step that stopped it (the EOS
convention), so it is run with early_stop_num = n_tokens and decodes n_tokens + 1 steps to return n_tokens tokens
(one extra step: 0.4% at 250 tokens). Everything else (phones, BERT features, prompt tokens, the reference
spectrogram) is the workload's own.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def main() -> None:
    sys.path.insert(0, str(REPO))
    from bench.adapters._args import adapter_parser

    parser = adapter_parser(__doc__)
    args = parser.parse_args()

    import importlib.util

    spec = importlib.util.find_spec("GPT_SoVITS")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("GPT_SoVITS (from gpt-sovits-cpufast) is not installed in this interpreter")
    sys.path.insert(0, next(iter(spec.submodule_search_locations)))

    import torch
    from AR.models.t2s_lightning_module import Text2SemanticLightningModule
    from module.models import SynthesizerTrn
    from process_ckpt import load_sovits_new

    from bench._probe import Engine, emit, measure

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    work = Path(args.workload)

    s1 = torch.load(work / "gpt.ckpt", map_location="cpu", weights_only=False)
    t2s = Text2SemanticLightningModule(s1["config"], "****", is_train=False, build_t2s_transformer=False,
                                       build_h_module=False)
    t2s.load_inference_only_state_dict(s1["weight"])
    del s1
    t2s.model.release_inference_only_unused_modules()
    gpt = t2s.eval().model

    s2 = load_sovits_new(str(work / "sovits.pth"))
    hps = s2["config"]
    hps["model"]["semantic_frame_rate"] = "25hz"
    hps["model"]["version"] = "v2"
    sovits = SynthesizerTrn(hps["data"]["filter_length"] // 2 + 1,
                            hps["train"]["segment_size"] // hps["data"]["hop_length"],
                            n_speakers=hps["data"]["n_speakers"], **hps["model"])
    sovits.load_state_dict(s2["weight"], strict=False)
    sovits.dec.remove_weight_norm()
    sovits = sovits.eval()
    del s2
    inputs = torch.load(work / "inputs.pt", weights_only=True)

    def generate(phones, bert, prompt, n_tokens):
        with torch.no_grad():
            y_list, idx_list = gpt.infer_panel_batch_infer(
                [phones[0]], torch.tensor([phones.shape[1]]), prompt, [bert[0]], top_k=15, top_p=1.0,
                temperature=1.0, early_stop_num=n_tokens, repetition_penalty=1.35, max_len=phones.shape[1])
        return y_list[0][-idx_list[0]:][None]

    def decode(codes, text, refer):
        with torch.no_grad():
            return sovits.decode(codes[None], text, [refer], noise_scale=0.5)

    emit(measure(Engine("gpt-sovits-cpufast", generate, decode, gpt.ar_predict_layer), inputs, args.tokens,
                 args.repeats))


if __name__ == "__main__":
    main()
