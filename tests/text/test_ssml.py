"""The SSML subset (models/text/ssml.py) and the cleaning of plain text (models/text/clean.py): each element maps
onto the front-end, unsafe or unknown markup is refused naming what is wrong, breaks are silences of the asked
length in the synthesizer's audio, and escape or control characters never reach the front-end."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from models.text import g2p, prepare_for_synthesis, split_sentences
from models.text.clean import clean_text
from models.text.ssml import (
    Pause,
    Speech,
    SsmlError,
    SsmlLimits,
    ipa_to_arpabet,
    is_ssml,
    parse_ssml,
    segment_lexicon,
)


def speak(body: str, language: str = "en", **limits) -> list:
    return parse_ssml(f"<speak>{body}</speak>", language, SsmlLimits(**limits) if limits else None)


def phones_of(segment: Speech) -> list[str]:
    return prepare_for_synthesis(segment.text, segment.language, lexicon=segment_lexicon(None, segment.phones)).phones


# -- parsing --------------------------------------------------------------------------------------------------------


def test_plain_speak_is_one_speech_segment():
    assert speak("Hello  there,\n reader.") == [Speech("Hello there, reader.", "en")]
    document = '<speak xmlns="http://www.w3.org/2001/10/synthesis" version="1.1" xml:lang="zh-CN">你好</speak>'
    assert parse_ssml(document, "auto") == [Speech("你好", "zh")]


def test_break_time_and_strength():
    assert speak('Hello <break time="700ms"/> world') == [Speech("Hello", "en"), Pause(0.7), Speech("world", "en")]
    assert speak('a<break time="1.5s"/>b')[1] == Pause(1.5)
    limits = SsmlLimits()
    for strength, seconds in limits.break_strengths_s.items():
        assert speak(f'a <break strength="{strength}"/> b')[1] == Pause(seconds)
    assert speak("a <break/> b")[1] == Pause(limits.break_strengths_s["medium"])
    assert speak('a <break strength="weak"/> b', break_strengths_s={"weak": 0.33})[1] == Pause(0.33)
    with pytest.raises(SsmlError, match="longer than 10 s"):
        speak('a <break time="11s"/> b')
    with pytest.raises(SsmlError, match="not a time"):
        speak('a <break time="soon"/> b')
    with pytest.raises(SsmlError, match="strength='loud'"):
        speak('a <break strength="loud"/> b')


def test_prosody_rate_multiplies_and_is_bounded():
    assert speak('<prosody rate="slow">a</prosody>')[0].rate == 0.8
    assert speak('<prosody rate="150%">a</prosody>')[0].rate == 1.5
    assert speak('<prosody rate="-20%">a</prosody>')[0].rate == pytest.approx(0.8)
    assert speak('<prosody rate="fast"><prosody rate="120%">a</prosody></prosody>')[0].rate == pytest.approx(1.5)
    assert [s.rate for s in speak('a <prosody rate="x-fast">b</prosody> c')] == [1.0, 1.5, 1.0]
    with pytest.raises(SsmlError, match="outside 0.5-2"):
        speak('<prosody rate="300%">a</prosody>')


def test_say_as_characters_cardinal_date():
    spelled = speak('<say-as interpret-as="characters">FBI</say-as> agent')[0]
    assert phones_of(spelled)[:5] == ["EH1", "F", "B", "IY1", "AY1"]
    assert "two" in speak('<say-as interpret-as="characters">A2</say-as>')[0].text
    assert speak('<say-as interpret-as="cardinal">1984</say-as>')[0].text == "one thousand nine hundred eighty-four"
    assert speak('<say-as interpret-as="cardinal">1,200</say-as>', "zh")[0].text == "一千二百"
    assert speak('<say-as interpret-as="date" format="mdy">03/05/2024</say-as>')[0].text == \
        "March fifth, twenty twenty-four"
    assert speak('<say-as interpret-as="date" format="dmy">5.3.2024</say-as>')[0].text == \
        "the fifth of March, twenty twenty-four"
    assert speak('<say-as interpret-as="date">2024-03-05</say-as>', "zh")[0].text == "2024年3月5日"
    with pytest.raises(SsmlError, match="not a number"):
        speak('<say-as interpret-as="cardinal">many</say-as>')
    with pytest.raises(SsmlError, match="month 1-12"):
        speak('<say-as interpret-as="date" format="mdy">13/05/2024</say-as>')
    with pytest.raises(SsmlError, match="interpret-as='telephone'"):
        speak('<say-as interpret-as="telephone">555</say-as>')


def test_sub_speaks_the_alias():
    assert speak('the <sub alias="World Wide Web">WWW</sub> grew')[0].text == "the World Wide Web grew"


def test_phoneme_overrides_that_occurrence_only():
    plain = prepare_for_synthesis("tomato and tomato", "en").phones
    segment = speak('<phoneme alphabet="x-arpabet" ph="T AH0 M AA1 T OW2">tomato</phoneme> and tomato')[0]
    phones = phones_of(segment)
    assert phones[:6] == ["T", "AH0", "M", "AA1", "T", "OW2"] and phones != plain
    assert phones[-7:] == plain[-7:]  # the second "tomato" is read as always
    ipa = speak('<phoneme alphabet="ipa" ph="təˈmɑːtoʊ">tomato</phoneme>')[0]
    assert phones_of(ipa)[:6] == ["T", "AH0", "M", "AA1", "T", "OW0"]
    zh = speak('<phoneme alphabet="pinyin" ph="shan4">单</phoneme>位', "zh")[0]
    assert phones_of(zh)[-5:-1] == ["sh", "an4", "w", "ei4"]  # (after the "." short sentences get in front)
    with pytest.raises(SsmlError, match="'AX'.*nearest valid symbols: 'AH0'"):
        speak('<phoneme alphabet="x-arpabet" ph="AX B">ab</phoneme>')
    with pytest.raises(SsmlError, match="not a syllable"):
        speak('<phoneme alphabet="pinyin" ph="shan">单</phoneme>')
    with pytest.raises(SsmlError, match="'ʁ'"):
        speak('<phoneme alphabet="ipa" ph="ʁ">r</phoneme>')
    with pytest.raises(SsmlError, match="alphabet='sampa'"):
        speak('<phoneme alphabet="sampa" ph="t@">to</phoneme>')


def test_ipa_table_stress_and_diphthongs():
    assert ipa_to_arpabet("ˈhɛloʊ") == ("HH", "EH1", "L", "OW0")
    assert ipa_to_arpabet("haʊs") == ("HH", "AW1", "S")
    assert ipa_to_arpabet("/ˌʌndərˈstænd/") == ("AH2", "N", "D", "AH0", "R", "S", "T", "AE1", "N", "D")
    assert ipa_to_arpabet("t͡ʃɜːtʃ") == ("CH", "ER1", "CH")


def test_lang_switches_the_front_end_language():
    segments = speak('Hello <lang xml:lang="zh-CN">你好</lang> again')
    assert [(s.text, s.language) for s in segments] == [("Hello", "en"), ("你好", "zh"), ("again", "en")]
    with pytest.raises(SsmlError, match="'fr-FR'"):
        speak('<lang xml:lang="fr-FR">bonjour</lang>')


@pytest.mark.parametrize("body, named", [
    ("<emphasis>now</emphasis>", "<emphasis>"),
    ("<audio src='x.wav'/>", "<audio>"),
    ("<p>para</p>", "<p>"),
    ('<prosody pitch="high">hi</prosody>', "'pitch' of <prosody>"),
    ('<break time="1s" foo="x"/>', "'foo' of <break>"),
    ('<x:mark xmlns:x="urn:x" name="a"/>', "<mark>"),
])
def test_unknown_markup_is_refused_naming_it(body, named):
    with pytest.raises(SsmlError) as error:
        speak(body)
    assert named in str(error.value)


def test_malformed_nested_and_oversized_documents_are_refused():
    with pytest.raises(SsmlError, match="not well-formed"):
        parse_ssml("<speak>a <break></speak>")
    with pytest.raises(SsmlError, match="starts with <speak>"):
        parse_ssml("<voice>a</voice>")
    with pytest.raises(SsmlError, match="deeper than 16"):
        speak("<prosody>" * 20 + "a" + "</prosody>" * 20)
    with pytest.raises(SsmlError, match="at most 500"):
        speak("<break time='0ms'/>" * 600)
    with pytest.raises(SsmlError, match="only text"):
        speak("<sub alias='x'><break/></sub>")


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE speak [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<speak>&lol9;</speak>"""
EXTERNAL_ENTITY = """<?xml version="1.0"?>
<!DOCTYPE speak [<!ENTITY secret SYSTEM "file:///etc/passwd">]>
<speak>&secret;</speak>"""
EXTERNAL_DTD = '<!DOCTYPE speak SYSTEM "file:///etc/passwd"><speak>hi</speak>'


@pytest.mark.parametrize("document", [BILLION_LAUGHS, EXTERNAL_ENTITY, EXTERNAL_DTD])
def test_entity_expansion_and_external_entities_are_refused_fast(document):
    started = time.perf_counter()
    with pytest.raises(SsmlError, match="DOCTYPE"):
        parse_ssml(document)
    assert time.perf_counter() - started < 0.5


def test_is_ssml():
    assert is_ssml("  <speak>hi</speak>") and is_ssml("\ufeff<speak>hi</speak>")
    assert is_ssml('<?xml version="1.0"?>\n<speak>hi</speak>') and is_ssml(EXTERNAL_DTD)
    assert not is_ssml("speak <break> please") and not is_ssml("<p>hi</p>") and not is_ssml("<speaker> hi")


# -- cleaning -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dirty", [
    "\x1b[31mHello\x1b[0m world.",
    "\x1b]0;title\x07Hello world.",
    "Hel\u200blo\u202e world\x00.\x07",
    "\u2066Hello\u2069 \ufeffworld\x1b[1;32m.",
    "\x9b31mHello world.\x7f",
])
def test_escapes_and_control_characters_never_reach_the_front_end(dirty):
    clean = "Hello world."
    assert clean_text(dirty) == clean
    assert prepare_for_synthesis(dirty, "en").ids == prepare_for_synthesis(clean, "en").ids
    assert g2p(dirty, "en").ids == g2p(clean, "en").ids
    assert split_sentences(dirty, "en") == split_sentences(clean, "en")


def test_ansi_colour_is_not_read_as_meters():
    assert "meters" not in g2p("\x1b[31mred\x1b[0m", "en").text
    assert parse_ssml("<speak>\x1b[31mred\x1b[0m</speak>") == [Speech("red", "auto")]
    assert parse_ssml("<speak>r&#x200b;e&#x202e;d&#x9b;</speak>") == [Speech("red", "auto")]


def test_clean_text_keeps_ordinary_text_unchanged():
    for text in ("Hello, world.\nNext line\tand tab.", "今天是2024年3月5日…", "café ﬁne １２３"):
        assert clean_text(text) == text


# -- synthesis ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synth(gsv_dir):
    from models.checkpoints import load_gpt, load_sovits
    from models.tts import Synthesizer
    from tests.conftest import torch_threads

    with torch_threads(1):
        yield Synthesizer(load_sovits(gsv_dir / "golden_A_s2_v2.pth"), load_gpt(gsv_dir / "golden_A_s1.ckpt"))


@pytest.fixture(scope="module")
def reference(synth):
    from tests.intake import speech

    samples, rate = speech("This is the reference clip of our narrator speaking.")
    ssl = torch.randn(768, int(len(samples) / rate * 50), generator=torch.Generator().manual_seed(0))
    return synth.reference(samples, rate, "This is the reference clip of our narrator speaking.", "en", ssl=ssl)


def _settings():
    from models.tts import SamplingSettings

    return SamplingSettings(max_tokens_per_phone=1.0)


def _longest_zero_run(samples: np.ndarray) -> tuple[int, int]:
    """(start, length) of the longest run of exact zeros."""
    zero = np.concatenate([[0], (samples == 0).astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(zero))
    starts, ends = edges[::2], edges[1::2]
    k = int(np.argmax(ends - starts))
    return int(starts[k]), int(ends[k] - starts[k])


def test_a_break_is_silence_of_its_length_in_the_audio(synth, reference):
    segments = parse_ssml('<speak>Hello there <break time="700ms"/> my reader.</speak>', "en")
    parts = list(synth.stream_segments(segments, reference, _settings(), seed=0))
    samples = np.concatenate([p.samples for p in parts])
    start, length = _longest_zero_run(samples)
    assert abs(length - 0.7 * 32000) <= 640  # one 20 ms frame
    assert start == len(parts[0].samples)  # where the break stands: right after "Hello there"
    assert np.abs(samples[:start]).max() > 0 and np.abs(samples[start + length:]).max() > 0


def test_plain_text_as_ssml_is_the_same_audio_as_text(synth, reference):
    text = "Hello there, reader. Then it runs home."
    whole = synth.speak(text, reference, "en", _settings(), seed=4).samples
    parts = synth.stream_segments(parse_ssml(f"<speak>{text}</speak>", "en"), reference, _settings(), seed=4)
    assert np.array_equal(np.concatenate([p.samples for p in parts]), whole)


def test_prosody_rate_changes_the_duration(synth, reference):
    def duration(rate: str) -> int:
        segments = parse_ssml(f'<speak><prosody rate="{rate}">Hello there, my reader.</prosody></speak>', "en")
        return sum(len(p.samples) for p in synth.stream_segments(segments, reference, _settings(), seed=2))

    assert duration("x-slow") > duration("medium") > duration("x-fast")


def test_a_phoneme_changes_the_phone_ids_the_gpt_reads(synth, reference):
    from models.text.ssml import segment_lexicon as lexicon_of

    segment = parse_ssml('<speak><phoneme alphabet="x-arpabet" ph="Z AO1 R B L AE2 K S">tomato</phoneme> '
                         'smiled.</speak>', "en")[0]
    plan = synth.plan(segment.text, reference, "en", lexicon=lexicon_of(synth.lexicon, segment.phones))
    plain = synth.plan("tomato smiled.", reference, "en")
    from models.text import to_ids

    assert plan.target_phones.tolist()[:8] == to_ids(["Z", "AO1", "R", "B", "L", "AE2", "K", "S"])
    assert plan.target_phones.tolist() != plain.target_phones.tolist()
