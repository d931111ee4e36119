"""Pronunciation lexicons: a lexicon.yaml entry changes how the front-end reads its word (ARPAbet, pinyin or a
respelling), a bad entry is refused naming the word and the phone, `narrator lexicon check` lists what the
front-end would guess, and the lexicon travels with the voice (registered with a digest, bundled, applied when the
bundle is loaded)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli.main import main
from components.register import lineage, registered_lexicon
from models.text import g2p, prepare_for_synthesis
from models.text.lexicon import compile_lexicon
from narrator.lexicon import LEXICON_TAG, LexiconError, load_lexicon, parse_lexicon
from tests.test_register import _client, evaluation, make_params, register_voice, steps  # noqa: F401 (fixture)

ZORBLAX = "Z AO1 R B L AE2 K S"  # the front-end's own guess is Z AO1 R B L AH0 K S


def lexicon_of(text: str):
    return compile_lexicon(parse_lexicon(text, "test-lexicon.yaml"))


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_a_lexicon_entry_changes_the_phones_of_its_word():
    lexicon = lexicon_of(f'zorblax: {{phones: "{ZORBLAX}"}}\n')

    before = prepare_for_synthesis("Zorblax landed.", "en")
    after = prepare_for_synthesis("Zorblax landed.", "en", lexicon=lexicon)

    assert before.phones[:8] == ["Z", "AO1", "R", "B", "L", "AH0", "K", "S"]
    assert after.phones[:8] == ZORBLAX.split()
    assert after.ids[:8] != before.ids[:8] and after.ids[8:] == before.ids[8:]  # only its word changed
    assert after.word2ph == before.word2ph and sum(after.word2ph) == len(after.phones)  # one entry per word


def test_a_lower_case_entry_matches_any_capitalisation_and_the_possessive():
    lexicon = lexicon_of(f'zorblax: {{phones: "{ZORBLAX}"}}\n')

    result = g2p("ZORBLAX saw Zorblax's ship.", "en", lexicon)

    assert result.phones[:8] == ZORBLAX.split()
    assert result.phones[10:20] == [*ZORBLAX.split(), "IH0", "Z"]


def test_a_pinyin_entry_gives_a_chinese_word_its_syllables():
    lexicon = lexicon_of('单: {pinyin: "shan4"}\n')  # the surname, not dan1

    before = prepare_for_synthesis("单老师来了。", "zh")
    after = prepare_for_synthesis("单老师来了。", "zh", lexicon=lexicon)

    assert before.phones[:2] == ["d", "an1"]
    assert after.phones[:2] == ["sh", "an4"]
    assert after.word2ph == before.word2ph == [2] * 5 + [1]  # per character, as the BERT features need


def test_a_respelling_is_read_in_place_of_its_word():
    lexicon = lexicon_of('SQL: {say: "sequel"}\n')

    respelled = prepare_for_synthesis("We use SQL daily.", "en", lexicon=lexicon)

    assert respelled.text == "We use sequel daily."
    assert respelled.phones == prepare_for_synthesis("We use sequel daily.", "en").phones


def test_without_a_lexicon_the_phones_are_the_same_as_before():
    text = "我喜欢Python, 真的! Zorblax met the FBI in 1984."
    untouched = lexicon_of('Quixotry: {phones: "K W IH0 K S AA1 T R IY0"}\n')  # a word the text lacks

    plain = g2p(text, "auto")

    assert g2p(text, "auto", None) == plain
    assert g2p(text, "auto", untouched) == plain


def test_a_phone_outside_the_table_is_refused_naming_the_word_the_phone_and_the_nearest_symbols(tmp_path, capsys):
    bad = write(tmp_path / "lexicon.yaml", f'zorblax: {{phones: "{ZORBLAX}"}}\nAnnika: {{phones: "AE1 N IH0 K AX"}}\n')

    assert main(["lexicon", "validate", str(bad)]) == 2

    message = capsys.readouterr().err
    assert "'AX'" in message and "'Annika'" in message and "AH0" in message
    assert bad.read_text(encoding="utf-8").count("phones") == 2  # the file is left as it was


@pytest.mark.parametrize("entry, named", [
    ('hello: {phones: "HH AH L OW1"}', "stress digit"),  # a vowel without its stress
    ('张三: {pinyin: "zhang1"}', "one syllable per Chinese character"),
    ('你好: {pinyin: "ni hao3"}', "tone digit"),
    ('你好: {pinyin: "ni3 hx3"}', "nearest valid symbols"),
    ('你好: {phones: "N IY1 HH AW1"}', "give it pinyin"),
    ('Jean-Luc: {phones: "ZH AA1 N L UW1 K"}', "give each part its own entry"),
])
def test_a_bad_entry_is_refused_with_what_to_fix(entry, named):
    with pytest.raises(LexiconError, match=named):
        lexicon_of(entry + "\n")


@pytest.mark.parametrize("text, named", [
    ("zorblax: {phones: [unclosed\n", "not valid YAML"),
    ("- zorblax\n", "must map words to entries"),
    ('zorblax: {phones: "Z", say: "zorb"}\n', "exactly one of"),
    ('zorblax: {sound: "Z"}\n', "unknown key"),
])
def test_a_malformed_lexicon_is_a_clear_error(text, named):
    with pytest.raises(LexiconError, match=named) as error:
        parse_lexicon(text, "lexicon.yaml")
    assert error.value.exit_code == 2


MANUSCRIPT = """# Chapter One

Zorblax met the FBI agents in 1984. Later, Zorblax smiled at the NASA team.
"""


def test_lexicon_check_lists_an_invented_name_an_acronym_and_an_ambiguous_number(tmp_path, capsys):
    book = write(tmp_path / "book.md", MANUSCRIPT)

    assert main(["lexicon", "check", str(book), "--json"]) == 0

    guesses = {g["word"]: g for g in json.loads(capsys.readouterr().out)["guesses"]}
    assert guesses["Zorblax"]["kind"] == "not_in_dictionary" and guesses["Zorblax"]["count"] == 2
    assert guesses["Zorblax"]["phones"] == ["Z", "AO1", "R", "B", "L", "AH0", "K", "S"]
    assert "met the FBI" in guesses["Zorblax"]["context"]
    assert guesses["FBI"]["kind"] == "acronym" and guesses["FBI"]["note"] == "spelled out"
    assert guesses["NASA"]["kind"] == "acronym" and guesses["NASA"]["note"] == "read as a word"
    assert guesses["1984"]["kind"] == "ambiguous_number"
    assert guesses["1984"]["reading"] == "nineteen eighty four"
    assert not {"met", "agents", "Chapter", "smiled"} & set(guesses)  # dictionary words are no guesses


def test_lexicon_check_leaves_out_the_words_a_lexicon_fixes(tmp_path, capsys):
    book = write(tmp_path / "book.txt", MANUSCRIPT)
    lexicon = write(tmp_path / "lexicon.yaml", f'zorblax: {{phones: "{ZORBLAX}"}}\nFBI: {{say: "F B I"}}\n')

    assert main(["lexicon", "check", str(book), "--lexicon", str(lexicon), "--json"]) == 0

    words = [g["word"] for g in json.loads(capsys.readouterr().out)["guesses"]]
    assert words == ["1984", "NASA"]  # Zorblax has phones, FBI a respelling


def test_lexicon_check_prints_a_line_per_guess_with_its_phones(tmp_path, capsys):
    book = write(tmp_path / "book.txt", MANUSCRIPT)

    assert main(["lexicon", "check", str(book)]) == 0

    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:4] == ["not_in_dictionary", "Zorblax", "x2", "Z"]
    assert "4 word(s) guessed" in out


# -- the lexicon travels with the voice ----------------------------------------------------------------------------


def test_registration_logs_the_lexicon_and_tags_its_digest(steps, tmp_path, capsys):  # noqa: F811
    lexicon = write(tmp_path / "lexicon.yaml", f'zorblax: {{phones: "{ZORBLAX}"}}\n')
    params = make_params(steps, tmp_path, lexicon=str(lexicon))

    done = register_voice("lexicon-voice", steps, evaluation(tmp_path, "eval", 0.86), params)

    tags = _client(steps).get_model_version("narrator-lexicon-voice", str(done.version)).tags
    assert tags[LEXICON_TAG] == load_lexicon(lexicon).sha256
    assert f"lexicon sha256 {tags[LEXICON_TAG]}" in lineage("lexicon-voice", done.version, params).to_text()
    assert registered_lexicon("lexicon-voice", done.version, params).text == lexicon.read_text()
    book = write(tmp_path / "book.txt", MANUSCRIPT)
    params_file = write(tmp_path / "params.yaml", json.dumps({"registry": {"tracking_uri": steps.uri}}))
    assert main(["lexicon", "check", str(book), "--voice", "lexicon-voice", "--json", "--params",
                 str(params_file)]) == 0
    assert "Zorblax" not in {g["word"] for g in json.loads(capsys.readouterr().out)["guesses"]}


def test_a_tenant_lexicon_merges_under_the_voices(steps, tmp_path):  # noqa: F811
    tenant = write(tmp_path / "tenant.yaml", 'zorblax: {phones: "Z AO1 R B L AA2 K S"}\nacme: {say: "ack me"}\n')
    voice = write(tmp_path / "voice.yaml", f'zorblax: {{phones: "{ZORBLAX}"}}\n')
    params = make_params(steps, tmp_path, lexicon=str(voice), tenant="acme", tenant_lexicons={"acme": str(tenant)})

    done = register_voice("tenant-voice", steps, evaluation(tmp_path, "eval", 0.86), params)

    merged = registered_lexicon("tenant-voice", done.version, params)
    assert merged.entries["zorblax"].value == ZORBLAX  # the voice's entry wins
    assert merged.entries["acme"].value == "ack me"  # the tenant's fills in


def test_a_lexicon_with_a_bad_phone_registers_nothing(steps, tmp_path):  # noqa: F811
    bad = write(tmp_path / "lexicon.yaml", 'zorblax: {phones: "Z AO1 R B L AX K S"}\n')
    params = make_params(steps, tmp_path, lexicon=str(bad))

    with pytest.raises(LexiconError, match="'AX'"):
        register_voice("refused-lexicon", steps, evaluation(tmp_path, "eval", 0.86), params)

    assert _client(steps).search_model_versions("name='narrator-refused-lexicon'") == []


@pytest.fixture(scope="module")
def bundled_voice(tmp_path_factory):
    """A tiny packaged voice (random demo bases, an espeak reference) whose bundle carries a lexicon."""
    from cli.demo import build_demo_bases, espeak
    from narrator.audiofile import read_audio, resample, write_wav
    from narrator.bundle import BundleReference, write_bundle
    from narrator.config import load_params

    root = tmp_path_factory.mktemp("bundle")
    bases = build_demo_bases(root / "bases")
    params = load_params(None, {"pretrained": {"hubert_dir": bases["hubert_dir"]}})
    audio = read_audio(espeak("The lighthouse keeper climbed the spiral stairs.", root / "ref.wav"))
    wav = write_wav(root / "ref-32k.wav", resample(audio.mono(), audio.sample_rate_hz, 32000), 32000)
    lexicon = load_lexicon(write(root / "lexicon.yaml", f'zorblax: {{phones: "{ZORBLAX}"}}\n'))
    bundle = root / "voice"
    write_bundle(bundle, "lexi", 1, "00000001", Path(bases["sovits"]), Path(bases["gpt"]),
                 BundleReference(Path(wav), "The lighthouse keeper climbed the spiral stairs.", "en",
                                 audio.duration_s), params, lexicon=lexicon)
    return bundle, params, lexicon


def test_the_bundle_carries_the_lexicon_and_the_loaded_voice_reads_with_it(bundled_voice):
    from models.tts import load_bundle
    from narrator.bundle import read_manifest

    bundle, params, lexicon = bundled_voice

    voice = load_bundle(bundle, params, device="cpu")

    manifest = read_manifest(bundle)
    assert manifest["lexicon"] == {"file": "lexicon.yaml", "sha256": lexicon.sha256}
    assert manifest["sha256"]["lexicon.yaml"]
    plan = voice.synth.plan("Zorblax landed.", voice.reference, "en")
    expected = prepare_for_synthesis("Zorblax landed.", "en", lexicon=compile_lexicon(lexicon)).ids
    assert plan.target_phones.tolist() == expected
    assert plan.target_phones.tolist() != prepare_for_synthesis("Zorblax landed.", "en").ids


def test_a_bundle_whose_lexicon_changed_after_packaging_is_refused(bundled_voice, tmp_path):
    import shutil

    from models.tts import load_bundle
    from narrator.bundle import BundleError

    bundle, params, _ = bundled_voice
    changed = shutil.copytree(bundle, tmp_path / "voice")
    write(changed / "lexicon.yaml", 'zorblax: {phones: "Z IY1"}\n')

    with pytest.raises(BundleError, match="changed after packaging"):
        load_bundle(changed, params, device="cpu")
