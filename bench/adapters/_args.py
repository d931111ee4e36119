"""The command line every adapter takes (standard library only: adapters parse it before torch loads)."""

from __future__ import annotations

import argparse


def adapter_parser(doc: str | None) -> argparse.ArgumentParser:
    """--workload DIR, --threads N, --tokens N, --repeats N; an adapter adds its own options."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", required=True, help="folder of gpt.ckpt, sovits.pth and inputs.pt")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=250, help="new tokens decoded per sentence")
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs per figure")
    return parser
