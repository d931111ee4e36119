"""Text front-end as a pronunciation table: input -> exact v2 phones, plus the interface's invariants.

Phones are written space-separated. Chinese: initial (or AA/EE/OO) + final with tone digit per character;
English: CMUdict ARPAbet with stress digits. Every test runs with sockets blocked.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from models.text import (LanguageNotSupported, Sentence, TextError, g2p, normalize, prepare_for_synthesis,
                         split_languages, split_sentences, symbols)
from narrator.errors import NarratorError


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to open a socket fails the test: the front-end must work offline."""

    def refuse(*args, **kwargs):
        raise AssertionError("the text front-end tried to use the network")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def phones(text: str, language: str) -> str:
    return " ".join(g2p(text, language).phones)


# --- Mandarin ------------------------------------------------------------------------------------------
ZH = [
    # third-tone sandhi: inside words, 2+1 / 1+2 structure, across short words
    ("你好", "n i2 h ao3"),
    ("你好吗？", "n i2 h ao3 m a5 ?"),
    ("我很好。", "w o2 h en2 h ao3 ."),
    ("展览馆", "zh an2 l an2 g uan3"),
    ("纸老虎", "zh ir3 l ao2 h u3"),
    ("我想买水果", "w o2 x iang2 m ai3 sh ui2 g uo3"),
    # 不
    ("不要走", "b u2 y ao4 z ou3"),
    ("不对", "b u2 d ui4"),
    ("不好", "b u4 h ao3"),
    ("好不好", "h ao3 b u5 h ao3"),
    ("你是不是学生？", "n i3 sh ir4 b u5 sh ir4 x ve2 sh eng5 ?"),
    ("对不起", "d ui4 b u5 q i3"),
    # 一
    ("一个人", "y i2 g e4 r en2"),
    ("一样", "y i2 y ang4"),
    ("一天", "y i4 t ian1"),
    ("一起去", "y i4 q i3 q v4"),
    ("看一看", "k an4 y i5 k an4"),
    ("第一名", "d i4 y i1 m ing2"),
    ("统一了", "t ong3 y i1 l e5"),
    ("十一月一日", "sh ir2 y i1 y ve4 y i1 r ir4"),
    ("一百二十三", "y i4 b ai3 EE er4 sh ir2 s an1"),
    # polyphones decided by the word
    ("我们去银行取钱。", "w o3 m en5 q v4 y in2 h ang2 q v3 q ian2 ."),
    ("他在街上行走。", "t a1 z ai4 j ie1 sh ang4 x ing2 z ou3 ."),
    ("这很重要。", "zh e4 h en3 zh ong4 y ao4 ."),
    ("重新开始。", "ch ong2 x in1 k ai1 sh ir3 ."),
    ("音乐很快乐", "y in1 y ve4 h en3 k uai4 l e4"),
    ("还是还钱", "h ai2 sh ir4 h ai2 q ian2"),
    ("银行行长", "y in2 h ang2 h ang2 zh ang3"),
    # neutral tones: particles, suffixes, reduplication, lexical
    ("他的东西", "t a1 d e5 d ong1 x i5"),
    ("妈妈看看", "m a1 m a5 k an4 k an5"),
    ("站起来吧", "zh an4 q i3 l ai5 b a5"),
    ("我的孩子们", "w o3 d e5 h ai2 z i05 m en5"),
    ("知道", "zh ir1 d ao5"),
    ("他跑得快", "t a1 p ao3 d e5 k uai4"),
    ("你得去", "n i2 d ei3 q v4"),
    # final spelling: ir / i0, ü finals, zero initials; y/w syllables keep the written vowel
    # (you -> y ou, wei -> w ei, wo -> w o) and ye/yan use the finals E/En
    ("我也有眼镜，为什么问我？", "w o2 y E2 y ou3 y En3 j ing4 , w ei4 sh en2 m e5 w en4 w o3 ?"),
    ("永远", "y ong2 y van3"),
    ("日子", "r ir4 z i05"),
    ("学习绿色", "x ve2 x i2 l v4 s e4"),
    ("女儿", "n v3 EE er2"),
    ("我爱北京天安门", "w o3 AA ai4 b ei3 j ing1 t ian1 AA an1 m en2"),
    ("嗯，对的", "EE en1 , d ui4 d e5"),  # 嗯 is read as 恩, as the v2 model was trained
    # erhua: word-final 儿 stays a syllable (one per character) with the tone before it
    ("一会儿", "y i2 h ui4 EE er4"),
    ("这儿有花儿", "zh e4 EE er4 y ou3 h ua1 EE er1"),
    # numbers, dates, units
    ("2024年", "EE er4 l ing2 EE er4 s i04 n ian2"),
    ("他工作了10年", "t a1 g ong1 z uo4 l e5 sh ir2 n ian2"),
    ("增长了3.5%", "z eng1 zh ang3 l e5 b ai3 f en1 zh ir1 s an1 d ian3 w u3"),
    ("现在是10:30。", "x ian4 z ai4 sh ir4 sh ir2 d ian3 s an1 sh ir2 f en1 ."),
    ("我有2个苹果", "w o2 y ou3 l iang3 g e4 p ing2 g uo3"),
    ("价格是￥12.50", "j ia4 g e2 sh ir4 sh ir2 EE er4 d ian3 w u3 y van2"),
    ("温度是-3℃", "w en1 d u4 sh ir4 f u4 s an1 sh e4 sh ir4 d u4"),
    ("他跑了5km", "t a1 p ao3 l e5 w u3 q ian1 m i3"),
    # punctuation
    ("你好，世界！……真的？", "n i2 h ao3 , sh ir4 j ie4 ! zh en1 d e5 ?"),
    ("“你好”，他说——再见", "n i2 h ao3 , t a1 sh uo1 - z ai4 j ian4"),
    ("欢迎^来到￥这里", "h uan1 y ing2 SP3 l ai2 d ao4 SP2 zh e4 l i3"),
]


@pytest.mark.parametrize("text,expected", ZH, ids=[t for t, _ in ZH])
def test_mandarin_pronunciation(text, expected):
    assert phones(text, "zh") == expected


ZH_TEXT = [
    ("今天是2024年3月5日。", "今天是二零二四年三月五日."),
    ("2024-03-05发布", "二零二四年三月五日发布"),
    ("利率是3.5%。", "利率是百分之三点五."),
    ("10:05出发，2:00到", "十点零五分出发,两点到"),
    ("一共123456元", "一共十二万三千四百五十六元"),
    ("人口1,400,000人", "人口一百四十万人"),
    ("2000年有2000人", "二零零零年有两千人"),
    ("第2个，2月，2个月", "第二个,二月,两个月"),
    ("1/2的人", "二分之一的人"),
    ("10-20个", "十到二十个"),
    ("花了$12.50", "花了十二点五美元"),
    ("电话13812345678", "电话一三八一二三四五六七八"),
    ("你好！！？", "你好!"),
]


@pytest.mark.parametrize("text,expected", ZH_TEXT, ids=[t for t, _ in ZH_TEXT])
def test_mandarin_normalisation(text, expected):
    assert g2p(text, "zh").text == expected


# --- English -------------------------------------------------------------------------------------------
EN = [
    ("Hello, world!", "HH AH0 L OW1 , W ER1 L D !"),
    ("I don't know.", "AY1 D OW1 N T N OW1 ."),
    ("Can't we'll they're I'm", "K AE1 N T W IY1 L DH EH1 R AY1 M"),
    # possessives: CMUdict base + IH0 Z / S / Z after sibilant / voiceless / voiced sounds
    ("Giles's book", "JH AY1 L Z IH0 Z B UH1 K"),
    ("the boss's desk", "DH AH0 B AO1 S IH0 Z D EH1 S K"),
    ("the cat's toy", "DH AH0 K AE1 T S T OY1"),
    ("the students' exam", "DH AH0 S T UW1 D AH0 N T S IH0 G Z AE1 M"),
    # abbreviations, ordinals, money, time
    ("Dr. Smith", "D AA1 K T ER0 S M IH1 TH"),
    ("Mrs. Jones", "M IH1 S IH0 Z JH OW1 N Z"),
    ("the 1st and 21st", "DH AH0 F ER1 S T AH0 N D T W EH1 N T IY0 F ER1 S T"),
    ("$12.50", "T W EH1 L V D AA1 L ER0 Z AH0 N D F IH1 F T IY0 S EH1 N T S"),
    ("at 10:30", "AE1 T T EH1 N TH ER1 T IY0"),
    ("3.5%", "TH R IY1 P OY1 N T F AY1 V P ER0 S EH1 N T"),
    ("in 1999", "IH0 N N AY1 N T IY1 N N AY1 N T IY0 N AY1 N"),
    # acronyms are spelled unless CMUdict reads them as a word
    ("FBI", "EH1 F B IY1 AY1"),
    ("GPUs", "JH IY1 P IY1 Y UW1 Z"),
    ("NASA", "N AE1 S AH0"),
    # unknown words: split by wordsegment, else letter-to-sound rules
    ("neuralnetwork", "N UH1 R AH0 L N EH1 T W ER2 K"),
    ("WeChat", "W IY1 CH AE1 T"),
    ("Zorblatt", "Z AO1 R B L AH0 T"),
    ("ChatGPT", "CH AE1 T JH IY1 P IY1 T IY1"),  # camel case: each part read on its own
    ("iOS", "AY1 OW1 EH1 S"),
    # accents are dropped, letters and digits glued together are read apart
    ("café", "K AH0 F EY1"),
    ("H2O", "EY1 CH T UW1 OW1"),
]


@pytest.mark.parametrize("text,expected", EN, ids=[t for t, _ in EN])
def test_english_pronunciation(text, expected):
    assert phones(text, "en") == expected


EN_TEXT = [
    ("Dr. Smith paid $12.50 on March 5, 2024 at 10:30 a.m.",
     "doctor Smith paid twelve dollars and fifty cents on March fifth, twenty twenty four at ten thirty A M."),
    ("1st, 2nd, 3rd, 4th, 21st", "first, second, third, fourth, twenty first"),
    ("$1 and $0.99 and £5", "one dollar and ninety nine cents and five pounds"),
    ("It costs $3M, about 10-20 units.", "It costs three million dollars, about ten to twenty units."),
    ("At 7:05 pm, not 9:00.", "At seven oh five P M, not nine o'clock."),
    ("In 2005, 1905 and 1900.", "In two thousand five, nineteen oh five and nineteen hundred."),
    ("I read 1,234 books.", "I read one thousand two hundred thirty four books."),
    ("etc. vs. e.g. i.e.", "et cetera versus for example that is."),
    ("Prof. Lee of St. Mary's on Baker St. with Mr. Holmes Jr.",
     "professor Lee of saint Mary's on Baker street with mister Holmes junior."),
    ("It's a well-known fact.", "It's a well known fact."),
    ("It weighs 3kg, or 6.6 lbs.", "It weighs three kilograms, or six point six pounds."),
    ("The 3/4 and 1/2 cup", "The three quarters and one half cup"),
    ("The U.S. economy", "The U S economy"),
    ('She said "Wow..." and left; he stayed: fine.', "She said Wow… and left, he stayed, fine."),
    ("A 50% discount, #1 seller & more!", "A fifty percent discount, number one seller and more!"),
    ("US$5 on 2024/3/5, .5 more", "five dollars on March fifth, twenty twenty four, zero point five more"),
    ("GPT4 runs 9am to 5 p.m.", "GPT four runs nine A M to five P M."),
    ("Call 555-1234 now", "Call five five five, one two three four now"),
]


@pytest.mark.parametrize("text,expected", EN_TEXT, ids=[t for t, _ in EN_TEXT])
def test_english_normalisation(text, expected):
    assert g2p(text, "en").text == expected


# --- mixed text ----------------------------------------------------------------------------------------
def test_mixed_sentence_is_split_into_language_segments():
    r = g2p("我喜欢Python和Java，真的！", "zh")
    assert [(s.language, s.text) for s in r.segments] == [
        ("zh", "我喜欢"), ("en", "Python"), ("zh", "和"), ("en", "Java,"), ("zh", "真的!")]
    assert " ".join(r.phones) == ("w o2 x i3 h uan5 P AY1 TH AA0 N h e2 JH AA1 V AH0 , "
                                  "zh en1 d e5 !")
    assert r.word2ph == [2, 2, 2, 5, 2, 4, 1, 2, 2, 1]
    assert [(s.start, s.end) for s in r.segments] == [(0, 6), (6, 11), (11, 13), (13, 18), (18, 23)]
    assert r.segment_word2ph(3) == [4, 1]


def test_numbers_join_the_language_they_touch():
    r = g2p("今天是2024年3月5日，GPU很贵。", "auto")
    assert [(s.language, s.text) for s in r.segments] == [
        ("zh", "今天是二零二四年三月五日,"), ("en", "GPU"), ("zh", "很贵.")]
    assert " ".join(r.phones[-7:]) == "Y UW1 h en3 g ui4 ."
    assert [s.language for s in g2p("我用iPhone 15拍照", "auto").segments] == ["zh", "en", "zh"]
    assert g2p("我用iPhone 15拍照", "auto").segments[2].text == "十五拍照"
    assert g2p("I bought 15 apples", "auto").text == "I bought fifteen apples"
    assert phones("我买了A股", "zh") == "w o2 m ai3 l e5 EY1 g u3"


def test_text_without_words_follows_the_requested_language():
    assert g2p("123", "zh").text == "一百二十三"
    assert g2p("123", "en").text == "one hundred twenty three"
    assert g2p("123", "auto").text == "one hundred twenty three"
    assert split_languages("3.5%", "zh") == [("zh", "3.5%")]


# --- invariants over the whole table -------------------------------------------------------------------
ALL = ([(t, "zh") for t, _ in ZH + ZH_TEXT] + [(t, "en") for t, _ in EN + EN_TEXT]
       + [("我喜欢Python和Java，真的！", "auto"), ("Hello 你好 world, 2024年!", "auto"), ("", "zh")])


@pytest.mark.parametrize("text,language", ALL)
def test_every_result_is_consistent(text, language):
    r = g2p(text, language)
    assert all(p in symbols for p in r.phones) and "UNK" not in r.phones
    assert r.ids == [symbols.index(p) for p in r.phones]
    assert sum(r.word2ph) == len(r.phones) and all(n > 0 for n in r.word2ph)
    cursor = 0
    for i, seg in enumerate(r.segments):
        assert seg.start == cursor and seg.end > seg.start
        cursor = seg.end
        entries = r.segment_word2ph(i)
        assert sum(entries) == seg.end - seg.start
        if seg.language == "zh":  # BERT gives one vector per character, repeated word2ph times
            assert len(entries) == len(seg.text)
    assert cursor == len(r.phones)


def test_symbol_table_is_the_v2_table():
    assert len(symbols) == 732
    assert (symbols.index("!"), symbols.index(","), symbols.index("SP"), symbols.index("UNK"),
            symbols.index("_"), symbols.index("["), symbols[-1]) == (0, 1, 77, 86, 95, 322, "Yz")
    shared = Path(__file__).resolve().parents[3] / "shared" / "gsv" / "symbols_v2.json"
    if shared.exists():
        assert json.loads(shared.read_text(encoding="utf-8")) == symbols


# --- unsupported languages -----------------------------------------------------------------------------
@pytest.mark.parametrize("language", ["ja", "ko", "yue"])
def test_japanese_korean_cantonese_are_refused_clearly(language):
    with pytest.raises(LanguageNotSupported, match="not supported yet") as info:
        g2p("你好", language)
    assert isinstance(info.value, NarratorError)


@pytest.mark.parametrize("text", ["こんにちは", "안녕하세요"])
def test_kana_and_hangul_are_refused_clearly(text):
    with pytest.raises(LanguageNotSupported, match="not supported yet"):
        g2p(text, "auto")


def test_unknown_language_code_is_an_error():
    with pytest.raises(TextError, match="unknown language"):
        g2p("hello", "fr")


# --- synthesis padding and sentence splitting ----------------------------------------------------------
def test_prepare_for_synthesis_closes_and_pads_short_sentences():
    assert prepare_for_synthesis("好", "zh").phones == [".", "h", "ao3", "."]
    assert prepare_for_synthesis("Hi", "en").phones == [".", "HH", "AY1", "."]
    r = prepare_for_synthesis("今天天气很好", "zh")
    assert r.phones[-1] == "." and r.phones[0] == "j" and r.word2ph[-1] == 1
    assert prepare_for_synthesis("Hello there, my friend!", "en").phones[0] == "HH"
    with pytest.raises(TextError):
        prepare_for_synthesis("  ", "zh")
    with pytest.raises(TextError, match="nothing pronounceable"):
        prepare_for_synthesis("“”", "zh")


def test_split_sentences_cuts_at_sentence_punctuation_and_keeps_language():
    text = "第一句。第二句！Third one? Dr. Smith arrived at 3.5 km. Then he left…好的"
    assert split_sentences(text, "auto") == [
        Sentence("第一句。", "zh"), Sentence("第二句!", "zh"), Sentence("Third one?", "en"),
        Sentence("Dr. Smith arrived at 3.5 km.", "en"), Sentence("Then he left…", "en"), Sentence("好的", "zh")]
    assert [s.language for s in split_sentences(text, "zh")] == ["zh"] * 6


def test_split_sentences_cuts_long_sentences_at_commas():
    long = "很长的句子，" * 20 + "结束。"
    pieces = split_sentences(long, "zh", max_chars=30)
    assert all(len(p.text) <= 30 for p in pieces)
    assert "".join(p.text for p in pieces) == long.replace("，", ",")
    assert split_sentences("x" * 25, "en", max_chars=10) == [Sentence("x" * 10, "en"), Sentence("x" * 10, "en"),
                                                            Sentence("x" * 5, "en")]


def test_normalize_is_exposed_per_language():
    assert normalize("3.5%", "zh") == "百分之三点五"
    assert normalize("3.5%", "en") == "three point five percent"


def test_sockets_are_blocked_in_these_tests():
    with pytest.raises(AssertionError, match="network"):
        socket.create_connection(("example.com", 80))
