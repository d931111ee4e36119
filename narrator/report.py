"""Self-contained HTML reports: one file, pictures embedded as PNG data URIs, no scripts or network."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable, Sequence

import numpy as np

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;color:#1d2330;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem} h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #dde;padding-bottom:.3rem}
.sub{color:#667;margin-top:0} .cards{display:flex;gap:1rem;flex-wrap:wrap;margin:1rem 0}
.card{border:1px solid #dde;border-radius:8px;padding:.7rem 1rem;min-width:140px}
.card b{display:block;font-size:1.4rem} .ok{color:#17803d} .bad{color:#b42318} .warn{color:#a15c07}
table{border-collapse:collapse;width:100%;font-size:.85rem} th,td{padding:.3rem .5rem;border-bottom:1px solid #eef;text-align:left;vertical-align:top}
th{background:#f5f6fa;position:sticky;top:0} td.num{text-align:right;font-variant-numeric:tabular-nums}
code{background:#f3f4f8;padding:0 .25rem;border-radius:3px} figure{margin:1rem 0} figcaption{font-size:.85rem;color:#445}
.pill{display:inline-block;border-radius:10px;padding:0 .5rem;font-size:.75rem;margin:1px;background:#fde8e7;color:#8a1c12}
.pill.warn{background:#fdf0d5;color:#7a4a00} .msg{background:#fff4f2;border-left:4px solid #b42318;padding:.5rem 1rem;margin:.5rem 0}
"""


def esc(value) -> str:
    return html.escape("" if value is None else str(value))


def page(title: str, subtitle: str, body: Iterable[str]) -> str:
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{esc(title)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{esc(title)}</h1><p class=sub>{esc(subtitle)}</p>"
            + "".join(body) + "</body></html>")


def cards(items: Sequence[tuple[str, str, str]]) -> str:
    """`(label, value, css_class)` boxes."""
    return "<div class=cards>" + "".join(
        f"<div class=card><span>{esc(label)}</span><b class='{cls}'>{esc(value)}</b></div>" for label, value, cls in items
    ) + "</div>"


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], numeric: set[int] | None = None) -> str:
    """Rows hold already-escaped HTML cells."""
    numeric = numeric or set()
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td class=num>{c}</td>" if i in numeric else f"<td>{c}</td>"
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def fmt(value, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return esc(value)


def figure_png(fig) -> str:
    """A matplotlib figure as an <img> data URI (the figure is closed)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return f"<img alt='' src='data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}'>"


def waveform_and_spectrogram(mono: np.ndarray, rate: int, title: str) -> str:
    """A two-panel picture (waveform over a log spectrogram) as an <img> tag."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 3.6), sharex=True)
    limit = min(len(mono), rate * 30)  # at most 30 s drawn
    mono = mono[:limit]
    times = np.arange(len(mono)) / rate
    step = max(1, len(mono) // 4000)
    top.plot(times[::step], mono[::step], linewidth=0.6, color="#345")
    top.set_ylim(-1.05, 1.05)
    top.set_ylabel("amplitude")
    top.set_title(title, fontsize=9)
    if len(mono) >= 512:
        with np.errstate(divide="ignore"):
            bottom.specgram(mono + 1e-6, NFFT=512, Fs=rate, noverlap=384, cmap="magma", scale="dB")
    bottom.set_ylabel("Hz")
    bottom.set_xlabel("seconds")
    return figure_png(fig)


def audio_tag(wav_bytes: bytes, mime: str = "audio/wav") -> str:
    return f"<audio controls src='data:{mime};base64,{base64.b64encode(wav_bytes).decode()}'></audio>"
