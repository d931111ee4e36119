"""Our implementation (models/), in one inference mode, measured on the shared workload.

    python bench/adapters/narrator.py --mode exact|fast --workload DIR [--threads 2] [--tokens 250]

Loads the official-format files with `models.checkpoints` and prepares them with
`models.inference.prepare_for_inference`, exactly as `models.tts.Synthesizer.prepare` does for a voice.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def main() -> None:
    sys.path.insert(0, str(REPO))
    from bench.adapters._args import adapter_parser

    parser = adapter_parser(__doc__)
    parser.add_argument("--mode", choices=("exact", "fast"), required=True)
    args = parser.parse_args()
    from narrator.threads import configure_waiting

    configure_waiting()  # as the narrator command and the service do, before torch loads

    import torch

    from bench._probe import Engine, emit, measure
    from models.checkpoints import load_gpt, load_sovits
    from models.inference import prepare_for_inference

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    work = Path(args.workload)
    gpt = load_gpt(work / "gpt.ckpt")
    sovits = load_sovits(work / "sovits.pth")
    prepare_for_inference(sovits, gpt, args.mode)
    gpt_dtype = next(gpt.parameters()).dtype
    sovits_dtype = next(sovits.parameters()).dtype
    inputs = torch.load(work / "inputs.pt", weights_only=True)

    def generate(phones, bert, prompt, n_tokens):
        return gpt.generate(phones, bert.to(gpt_dtype), prompt, top_k=15, top_p=1.0, temperature=1.0,
                            early_stop_num=n_tokens - 1)

    def decode(codes, text, refer):
        with torch.inference_mode():
            return sovits.decode(codes[None], text, [refer.to(sovits_dtype)], noise_scale=0.5)

    emit(measure(Engine(args.mode, generate, decode, gpt.ar_predict_layer), inputs, args.tokens, args.repeats))


if __name__ == "__main__":
    main()
