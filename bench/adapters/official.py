"""The official GPT-SoVITS code (a checkout the user names), measured on the shared workload.

    python bench/adapters/official.py --official DIR --workload DIR [--threads 2] [--tokens 250]

A measuring stick only: it runs the checkout's own classes (`AR.models.t2s_model.Text2SemanticDecoder` and its
`infer_panel`, `module.models.SynthesizerTrn.decode`) the way its `inference_webui.py` does on a CPU in float32
(weights loaded from the fp16 files into float32 modules, `infer_panel` under `torch.no_grad()`), and the decode
under `torch.no_grad()` as well (the web UI runs it with autograd on, which only costs memory). The product never
imports it. Needs the checkout's dependencies (torch, torchmetrics, x_transformers, einops, ...) in the interpreter
that runs this file; `bench.versus --official-python` names it.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


class _Attrs(dict):
    """A nested dict readable by attribute, as the official loader turns the s2 config into (hps.data.hop_length)."""

    def __init__(self, d: dict):
        super().__init__({k: _Attrs(v) if isinstance(v, dict) else v for k, v in d.items()})

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def main() -> None:
    sys.path.insert(0, str(REPO))
    from bench.adapters._args import adapter_parser

    parser = adapter_parser(__doc__)
    parser.add_argument("--official", required=True, help="a GPT-SoVITS checkout (the folder holding GPT_SoVITS/)")
    args = parser.parse_args()
    checkout = Path(args.official).resolve()
    sys.path[:0] = [str(checkout / "GPT_SoVITS"), str(checkout), str(REPO)]

    import torch

    from bench._probe import Engine, emit, measure

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from AR.models.t2s_model import Text2SemanticDecoder
    from module.models import SynthesizerTrn

    work = Path(args.workload)
    s1 = torch.load(work / "gpt.ckpt", map_location="cpu", weights_only=False)
    gpt = Text2SemanticDecoder(config=s1["config"], top_k=3)
    gpt.load_state_dict({k[len("model."):]: v for k, v in s1["weight"].items()})
    gpt = gpt.float().eval()
    s2 = torch.load(work / "sovits.pth", map_location="cpu", weights_only=False)
    hps = _Attrs(s2["config"]) if isinstance(s2["config"], dict) else s2["config"]  # the checkout's utils.HParams
    sovits = SynthesizerTrn(hps.data.filter_length // 2 + 1, hps.train.segment_size // hps.data.hop_length,
                            n_speakers=hps.data.n_speakers, **hps.model)
    del sovits.enc_q  # as the web UI does for fine-tuned weights (the posterior encoder is training-only)
    sovits.load_state_dict(s2["weight"], strict=False)
    sovits = sovits.float().eval()
    inputs = torch.load(work / "inputs.pt", weights_only=True)

    def generate(phones, bert, prompt, n_tokens):
        with torch.no_grad():
            y, _ = gpt.infer_panel(phones, torch.tensor([phones.shape[1]]), prompt, bert, top_k=15, top_p=1.0,
                                     temperature=1.0, early_stop_num=n_tokens - 1)
        return y[:, prompt.shape[1]:]

    def decode(codes, text, refer):
        with torch.no_grad():
            return sovits.decode(codes[None], text, [refer], noise_scale=0.5)

    emit(measure(Engine("official", generate, decode, gpt.ar_predict_layer), inputs, args.tokens, args.repeats))


if __name__ == "__main__":
    main()
