"""Speed of the text front-end (models/text): sentences per second through `g2p`, per language.

    python -m bench.frontend            # prints a table; `bench_frontend()` returns the rows

Warm runs only: the first call (jieba dictionary, CMUdict, wordsegment tables; about 2 s together) is timed
separately as "first call". Every figure is the best of `repeats` runs over a fixed set of sentences.
"""

from __future__ import annotations

import os
import time

ZH = [
    "今天天气很好，我们一起去公园散步吧。",
    "他在2024年3月5日花了￥12.50买了一本书。",
    "这个问题很重要，我们需要重新考虑一下。",
    "你好，我是一个人工智能助手，很高兴认识你！",
    "银行的利率上涨了3.5%，大家都很关心。",
    "我喜欢用Python写代码，真的很方便。",
]
EN = [
    "The quick brown fox jumps over the lazy dog.",
    "Dr. Smith paid $12.50 on March 5, 2024 at 10:30 a.m.",
    "Giles's book is on the 1st shelf, and I don't know why.",
    "NASA and the FBI both use GPUs for neuralnetwork research.",
    "It was the best of times, it was the worst of times.",
    "Growth reached 3.5% in 1999, well above the 2.1% forecast.",
]


def _rate(sentences: list[str], language: str, rounds: int, repeats: int) -> float:
    from models.text import g2p

    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(rounds):
            for s in sentences:
                g2p(s, language)
        best = min(best, time.perf_counter() - start)
    return rounds * len(sentences) / best


def bench_frontend(rounds: int = 20, repeats: int = 3) -> list[dict]:
    from models.text import g2p

    start = time.perf_counter()
    g2p(ZH[0], "zh")
    g2p(EN[0], "en")
    first = time.perf_counter() - start
    rows = []
    for language, sentences in (("zh", ZH), ("en", EN), ("auto", ZH + EN)):
        chars = sum(len(s) for s in sentences) / len(sentences)
        rate = _rate(sentences, language, rounds, repeats)
        rows.append({"language": language, "sentences": len(sentences), "avg_chars": round(chars, 1),
                     "sentences_per_s": round(rate, 1), "ms_per_sentence": round(1000 / rate, 2)})
    rows.append({"language": "first call (zh+en)", "sentences": 2, "avg_chars": None,
                 "sentences_per_s": None, "ms_per_sentence": round(first * 1000 / 2, 1)})
    return rows


def format_table(rows: list[dict]) -> str:
    header = f"{'language':<20} {'sentences':>9} {'avg chars':>9} {'sent/s':>9} {'ms/sent':>9}"
    lines = [header, "-" * len(header)]
    for r in rows:
        fmt = lambda v: "-" if v is None else str(v)  # noqa: E731
        lines.append(f"{r['language']:<20} {r['sentences']:>9} {fmt(r['avg_chars']):>9} "
                     f"{fmt(r['sentences_per_s']):>9} {r['ms_per_sentence']:>9}")
    return "\n".join(lines)


def main() -> None:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    print(f"Text front-end g2p (models/text), CPU, single thread (load average {load:.1f})")
    print(format_table(bench_frontend()))


if __name__ == "__main__":
    main()
