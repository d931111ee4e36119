"""Feature extraction speed at full size (random weights): clips per second for each stage of `narrator features`.

A clip is 5 s of audio with a 40-character sentence. Rows: the text front-end (g2p), HuBERT (chinese-hubert-base
layout), BERT (chinese-roberta-wwm-ext-large layout, Chinese text), semantic tokens (v2 SoVITS ssl_proj +
quantizer), the v2Pro speaker-verification embedding (ERes2NetV2), the spectrogram. "share" is each stage's part
of the total per-clip time (the baseline is the whole chain run in the same process).

    python -m bench.features [--clips 6] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch

CLIP_S = 5.0
ZH = "今天天气很好，我们一起去公园散步吧。这个问题很重要，我们需要重新考虑一下。"
EN = "The quick brown fox jumps over the lazy dog, and the library holds ten thousand maps."


def _timed(fn, clips: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(clips):
        fn()
    return (time.perf_counter() - start) / clips


def run(clips: int = 6) -> list[dict]:
    from transformers import BertConfig, BertModel, HubertConfig, HubertModel

    from models.audio import spectrogram
    from models.sovits import SoVITS, SoVITSConfig
    from models.sv import ERes2NetV2, SVConfig, sv_embedding
    from models.text import g2p

    torch.manual_seed(0)
    wav16 = torch.randn(1, int(16000 * CLIP_S)) * 0.1
    wav32 = torch.randn(1, int(32000 * CLIP_S)) * 0.1
    hubert = HubertModel(HubertConfig()).eval()
    bert = BertModel(BertConfig(vocab_size=21128, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                intermediate_size=4096)).eval()
    sovits = SoVITS(SoVITSConfig()).eval()
    sv = ERes2NetV2(SVConfig()).eval()
    ssl = torch.randn(1, 768, int(50 * CLIP_S))
    ids = torch.randint(100, 21128, (1, len(ZH) + 2))
    stages = {
        "text front-end (zh + en g2p)": lambda: (g2p(ZH, "zh"), g2p(EN, "en")),
        "HuBERT base (768 x 12)": lambda: hubert(wav16),
        "BERT large (1024 x 24), zh": lambda: bert(input_ids=ids, output_hidden_states=True),
        "semantic tokens (extract_latent)": lambda: sovits.extract_latent(ssl),
        "spectrogram (1025 bins)": lambda: spectrogram(wav32),
        "sv embedding (ERes2NetV2, v2Pro)": lambda: sv_embedding(wav32, sv),
    }
    rows = []
    with torch.inference_mode():
        for name, fn in stages.items():
            seconds = _timed(fn, clips)
            rows.append({"stage": name, "ms_per_clip": seconds * 1000, "clips_per_s": 1 / seconds,
                         "x_realtime": CLIP_S / seconds})
    total = sum(r["ms_per_clip"] for r in rows)
    for row in rows:
        row["share"] = row["ms_per_clip"] / total
    rows.append({"stage": "whole chain (baseline)", "ms_per_clip": total, "clips_per_s": 1000 / total,
                 "x_realtime": CLIP_S * 1000 / total, "share": 1.0})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| stage | ms / clip | clips / s | x real time | share |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['stage']} | {r['ms_per_clip']:.1f} | {r['clips_per_s']:.2f} | {r['x_realtime']:.1f}x | "
                     f"{100 * r['share']:.0f}% |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"features benchmark: {CLIP_S:g} s clips, full-size random weights, float32, {args.threads} threads")
    print(table(run(args.clips)))


if __name__ == "__main__":
    main()
