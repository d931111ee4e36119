"""Narration: a manuscript in, a publishable audiobook out (`narrator narrate`, the `narrate` pipeline).

    result = narrate("book.md", "alice", None, "out/book", params)      # None: the champion version

1. The manuscript is read into chapters (`narrator.manuscript`); each chapter's paragraphs are split into sentences
   by the text front-end (`models.text.split_sentences`).
2. The voice's bundle is fetched from the registry (the version's `bundle_uri`, checked against `bundle_sha256`;
   else its BentoML store tag) and loaded by the one synthesizer (`models.tts.load_bundle`).
3. Every sentence is spoken through the quality guard (`models.guard.guarded_sentence`): sentence i of chapter c
   draws from `sentence_seed(narrate.seed + attempt, c * CHAPTER_SEED_STRIDE + i)`; one that fails its checks is
   spoken again with the next seed up to `narrate.max_attempts`, the best attempt kept. Each finished sentence is
   kept in `OUT/.sentences/CC/IIII-KEY.npz` (written atomically), KEY hashing everything that shapes it (voice,
   version, bundle digest, text, language, seed, index, sampling, guard and inference settings): a killed run
   re-run with the same arguments redoes no finished sentence and ends with byte-identical chapters.
4. A chapter is its sentences joined with pauses (`sentence_pause_s`, `paragraph_pause_s`), mastered to the ACX
   limits (room tone, RMS, peaks, 44.1 kHz), marked with the voice's watermark payload (the key from
   $NARRATOR_WATERMARK_KEY[_FILE]: no chapter leaves unmarked), limited again and written as `chapters/CC-TITLE.mp3`
   (192 kbps CBR), `masters/CC-TITLE.wav` and `captions/CC-TITLE.vtt` (one cue per sentence, shifted by the head
   room tone). Each file is measured back (`measure_acx`) and the chapter gets an audit record (`narrated`).
5. The book: `book.m4b` (chapter marks), `narration.json` and `report.html` (loudness against the limits,
   regenerations, sentences that still fail with their text, attempts and scores, a player per chapter).

Chapters run in parallel (`narrate.parallel_chapters` threads, each with its own progress bar). The output folder
is locked for the run (`--out/.narrator.lock`); files are renamed into place only when complete. The pipeline runs
the same three parts as separate steps: `manuscript_chapters`, `narrate_chapter` per chapter, `assemble_book`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from narrator import mastering
from narrator.config import Params
from narrator.errors import NarratorError
from narrator.log import get_logger
from narrator.manuscript import Chapter, Manuscript, read_manuscript

log = get_logger("narrate")

CHAPTER_SEED_STRIDE = 100_000  # sentence indices of chapter c start at c * this (no chapter has as many sentences)
SENTENCES_DIR = ".sentences"
CHAPTER_RESULTS_DIR = ".chapters"
CACHE_FORMAT = 1  # bump to invalidate every kept sentence
KEY_DIGITS = 16
TITLE_SLUG_CHARS = 40


class NarrationError(NarratorError):
    """A narration cannot start or finish (unknown voice, no bundle, no watermark key); the message says what to do."""

    exit_code = 2


# -- results -----------------------------------------------------------------------------------------------------


@dataclass
class SentenceResult:
    index: int
    text: str
    start_s: float  # in the chapter file, head room tone included
    end_s: float
    attempts: int
    kept_attempt: int
    passed: bool
    verdicts: list[dict] = field(default_factory=list)


@dataclass
class ChapterResult:
    index: int
    title: str
    audio: str  # relative to the output folder
    master: str
    captions: str
    duration_s: float
    rms_db: float
    peak_db: float
    noise_floor_db: float
    head_room_tone_s: float
    tail_room_tone_s: float
    sentences: int
    regenerated: int  # sentences spoken more than once
    failed: list[dict]  # sentences still failing after every attempt: index, text, attempts, scores
    synthesized: int  # sentences spoken in this run (the others were kept from an earlier one)
    audio_sha256: str
    watermark_payload: str
    acx_problems: list[str] = field(default_factory=list)  # the ACX limits its MP3 fails, in words (none: passes)
    details: list[SentenceResult] = field(default_factory=list)

    def public(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("details")
        return data


@dataclass
class NarrationResult:
    title: str
    voice: str
    version: int
    payload_hex: str
    out_dir: str
    chapters: list[ChapterResult]
    m4b: str
    report: str
    narration_json: str
    limits: dict[str, list[float | None]] = field(default_factory=dict)  # figure: [low, high] (mastering.*)
    seconds: float = 0.0

    @property
    def synthesized(self) -> int:
        return sum(c.synthesized for c in self.chapters)

    @property
    def failed(self) -> list[dict]:
        return [f for c in self.chapters for f in c.failed]


# -- the voice ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VoiceSource:
    """A registered voice version and its bundle on this machine."""

    voice: str
    version: int
    payload_hex: str
    bundle_dir: Path
    bundle_sha256: str


def parse_voice(spec: str) -> tuple[str, int | None]:
    """"alice" -> ("alice", None); "alice@3" -> ("alice", 3)."""
    name, _, version = spec.partition("@")
    if not version:
        return name, None
    if not version.isdigit() or int(version) < 1:
        raise NarrationError(f"voice {spec!r}: the version after '@' must be a positive number, e.g. {name}@3")
    return name, int(version)


def resolve_voice(voice: str, version: int | None, params: Params) -> VoiceSource:
    """The bundle of `voice` at `version` (None: its champion) fetched from the registry's artifact store into
    `storage.cache_dir/bundles`, or from the BentoML model store for a version packaged before bundles were
    published."""
    from narrator.bundle import (
        BUNDLE_SHA256_TAG,
        BUNDLE_URI_TAG,
        BundleError,
        bundle_sha256,
        fetch_bundle,
        stored_bundle,
        use_model_store,
    )
    from narrator.registry import (
        RegistryError,
        champion,
        model_name,
        model_version,
        registered_model,
        registry_client,
    )

    try:
        if version is None:
            best = champion(voice, params)
            if best is None:
                raise NarrationError(f"voice {voice!r} has no champion version yet: give one with --voice "
                                     f"{voice}@N, or approve a version (`narrator approve {voice} N`)")
            version, tags = best.version, best.tags
        else:
            client = registry_client(params)
            name = model_name(voice, params)
            registered_model(client, name, voice)
            tags = dict(model_version(client, name, version).tags)
    except RegistryError as error:
        raise NarrationError(str(error)) from None
    payload_hex = tags.get("payload_hex") or ""
    if not payload_hex:
        raise NarrationError(f"{voice} v{version} has no watermark payload (tag payload_hex): register it again")
    try:
        if tags.get(BUNDLE_URI_TAG) and tags.get(BUNDLE_SHA256_TAG):
            cache = Path(params.storage.cache_dir).expanduser() / "bundles"
            folder = fetch_bundle(voice, version, tags[BUNDLE_URI_TAG], tags[BUNDLE_SHA256_TAG], cache, params)
            return VoiceSource(voice, version, payload_hex, folder, tags[BUNDLE_SHA256_TAG])
        if tags.get("bento"):
            use_model_store(params)
            folder = stored_bundle(tags["bento"])
            return VoiceSource(voice, version, payload_hex, folder, bundle_sha256(folder))
    except BundleError as error:
        raise NarrationError(f"voice {voice} v{version}: {error}") from None
    raise NarrationError(f"{voice} v{version} is registered but not packaged; run `narrator package {voice} "
                         f"--version {version} ...` first")


@dataclass
class Narrator:
    """A loaded voice, shared by the chapters narrated at once: its synthesizer and reference, the watermark key,
    the guard's transcriber (when configured) and a lock around it."""

    source: VoiceSource
    synth: Any
    reference: Any
    key: bytes
    transcriber: Any = None
    asr_lock: threading.Lock = field(default_factory=threading.Lock)


def load_narrator(source: VoiceSource, params: Params) -> Narrator:
    from models.tts import load_bundle
    from models.watermark import WatermarkError, load_key

    try:
        key = load_key()
    except WatermarkError as error:
        raise NarrationError(f"{error}; every chapter carries the voice's watermark, so narration needs the key") \
            from None
    voice = load_bundle(source.bundle_dir, params)
    transcriber = None
    if params.narrate.guard and params.narrate.guard_limits.asr_model_dir:
        from components.prepare import Transcriber

        transcriber = Transcriber(params.narrate.guard_limits.asr_model_dir)
    return Narrator(source, voice.synth, voice.reference, key, transcriber)


@contextmanager
def narration_threads(params: Params) -> Iterator[None]:
    """torch's threads for narration (`narrate.torch_threads`, else the CPUs shared by the parallel chapters) for
    the block, then restored: the process's other work (a test run, a service) keeps its own count."""
    import torch

    cfg = params.narrate
    before = torch.get_num_threads()
    torch.set_num_threads(cfg.torch_threads or max(1, (os.cpu_count() or 1) // cfg.parallel_chapters))
    try:
        yield
    finally:
        torch.set_num_threads(before)


# -- sentences ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedSentence:
    index: int  # within the chapter
    text: str
    language: str
    pause_s: float  # silence after it (none after the chapter's last)


def chapter_sentences(chapter: Chapter, params: Params) -> list[PlannedSentence]:
    """The sentences of a chapter, paragraph by paragraph, with the pause after each."""
    from models.text import split_sentences

    cfg = params.narrate
    planned: list[PlannedSentence] = []
    for paragraph in (p for p in chapter.text.split("\n\n") if p.strip()):
        pieces = split_sentences(paragraph, cfg.language, max_chars=cfg.max_sentence_chars)
        for j, piece in enumerate(pieces):
            pause = cfg.paragraph_pause_s if j + 1 == len(pieces) else cfg.sentence_pause_s
            planned.append(PlannedSentence(len(planned), piece.text, piece.language, pause))
    if planned:
        last = planned[-1]
        planned[-1] = PlannedSentence(last.index, last.text, last.language, 0.0)
    return planned


def _sampling(params: Params):
    from models.tts import SamplingSettings

    return SamplingSettings()


def sentence_key(source: VoiceSource, chapter_index: int, sentence: PlannedSentence, params: Params) -> str:
    """What a kept sentence was made from, hashed: a change in any of it makes the sentence be spoken again."""
    cfg = params.narrate
    recipe = {"format": CACHE_FORMAT, "voice": source.voice, "version": source.version,
              "bundle": source.bundle_sha256, "text": sentence.text, "language": sentence.language,
              "seed": cfg.seed, "index": chapter_index * CHAPTER_SEED_STRIDE + sentence.index,
              "sampling": asdict(_sampling(params)), "inference": params.inference.mode, "guard": cfg.guard,
              "guard_limits": cfg.guard_limits.model_dump(mode="json"), "max_attempts": cfg.max_attempts}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode("utf-8")).hexdigest()[:KEY_DIGITS]


def _atomic_write(path: Path, write) -> Path:
    """`write(temporary)` then rename it to `path`: a killed run leaves the old file or none, never half of one.
    The temporary name keeps the extension (writers choose the format by it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.{os.getpid()}.{threading.get_ident()}.tmp{path.suffix}")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()
    return path


@dataclass
class KeptSentence:
    samples: np.ndarray  # (n,) float32 at 32 kHz, without its pause
    attempts: int
    kept_attempt: int
    passed: bool
    verdicts: list[dict]


def _save_sentence(path: Path, kept: KeptSentence) -> None:
    meta = json.dumps({"attempts": kept.attempts, "kept_attempt": kept.kept_attempt, "passed": kept.passed,
                       "verdicts": kept.verdicts})

    def write(temporary: Path) -> None:
        with open(temporary, "wb") as handle:
            np.savez(handle, samples=kept.samples.astype(np.float32), meta=np.array(meta))

    _atomic_write(path, write)


def _load_sentence(path: Path) -> KeptSentence | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            return KeptSentence(np.asarray(data["samples"], np.float32), meta["attempts"], meta["kept_attempt"],
                                meta["passed"], meta["verdicts"])
    except (OSError, ValueError, KeyError, json.JSONDecodeError):  # a damaged file: speak the sentence again
        log.warning("kept sentence %s is unreadable; speaking it again", path)
        return None


def speak_sentence(narrator: Narrator, chapter_index: int, sentence: PlannedSentence, params: Params) -> KeptSentence:
    from models.guard import guarded_sentence

    cfg = params.narrate
    limits = cfg.guard_limits if cfg.guard else None
    transcriber = None
    if narrator.transcriber is not None:
        def transcriber(wav_16k, language):
            with narrator.asr_lock:
                return narrator.transcriber(wav_16k, language)
    kept = guarded_sentence(narrator.synth, narrator.reference, sentence.text, sentence.language, _sampling(params),
                            cfg.seed, chapter_index * CHAPTER_SEED_STRIDE + sentence.index, limits,
                            cfg.max_attempts, transcriber)
    return KeptSentence(kept.audio.samples, max(1, len(kept.verdicts)), kept.attempt, kept.passed,
                        [v.as_dict() for v in kept.verdicts])


# -- a chapter ---------------------------------------------------------------------------------------------------


def chapter_stem(index: int, title: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", title).strip("-").lower()[:TITLE_SLUG_CHARS].strip("-")
    return f"{index + 1:02d}-{slug or 'chapter'}"


def narrate_chapter(narrator: Narrator, chapter_index: int, chapter: Chapter, out_dir: str | Path, params: Params,
                    position: int = 0) -> ChapterResult:
    """One chapter: its sentences (kept ones reused), joined, marked, mastered, written and measured; its result
    is also kept in OUT/.chapters/CC.json for `assemble_book`."""
    from tqdm import tqdm

    from models.tts import SAMPLE_RATE_HZ
    from models.watermark import embed
    from narrator.registry import audit_event
    from narrator.storage import sha256_file

    out = Path(out_dir)
    planned = chapter_sentences(chapter, params)
    if not planned:
        raise NarrationError(f"chapter {chapter_index + 1} ({chapter.title!r}) has no sentence to speak")
    folder = out / SENTENCES_DIR / f"{chapter_index + 1:02d}"
    parts: list[np.ndarray] = []
    details: list[SentenceResult] = []
    synthesized = 0
    cursor = 0
    bar = tqdm(planned, desc=f"chapter {chapter_index + 1}: {chapter.title[:30]}", unit="sentence",
               position=position, leave=True, disable=None)
    for sentence in bar:
        path = folder / f"{sentence.index:04d}-{sentence_key(narrator.source, chapter_index, sentence, params)}.npz"
        kept = _load_sentence(path) if path.exists() else None
        if kept is None:
            kept = speak_sentence(narrator, chapter_index, sentence, params)
            _save_sentence(path, kept)
            synthesized += 1
        pause = np.zeros(round(sentence.pause_s * SAMPLE_RATE_HZ), np.float32)
        details.append(SentenceResult(sentence.index, sentence.text, cursor / SAMPLE_RATE_HZ,
                                      (cursor + len(kept.samples)) / SAMPLE_RATE_HZ, kept.attempts,
                                      kept.kept_attempt, kept.passed, kept.verdicts))
        parts += [kept.samples, pause]
        cursor += len(kept.samples) + len(pause)
    bar.close()
    speech = np.concatenate(parts).astype(np.float32)
    # master, then mark the master, then limit its peaks again: the order the publishing measurements chose
    # (narrator/mastering.py WATERMARK_ORDER: marking before the limiter costs detection margin)
    settings = params.mastering
    master = mastering.master_chapter(speech, SAMPLE_RATE_HZ, settings)
    marked = embed(master.samples, master.sample_rate_hz, int(narrator.source.payload_hex, 16), narrator.key)
    master = mastering.relimit(master, marked, settings)
    stem = chapter_stem(chapter_index, chapter.title)
    paths = {"audio": out / "chapters" / f"{stem}.mp3", "master": out / "masters" / f"{stem}.wav",
             "captions": out / "captions" / f"{stem}.vtt"}
    mastering.write_wav_master(master, paths["master"])  # the writers write atomically
    mastering.write_mp3(master, paths["audio"], title=chapter.title, settings=settings)
    for d in details:  # sentence times in the chapter file: after the head room tone
        d.start_s, d.end_s = round(master.output_time_s(d.start_s), 3), round(master.output_time_s(d.end_s), 3)
    cues = [(d.start_s, d.end_s, d.text) for d in details]
    mastering.write_vtt(cues, paths["captions"])
    measured = mastering.measure_acx(paths["audio"], settings=settings)
    failed = [{"chapter": chapter_index + 1, "index": d.index, "text": d.text, "attempts": d.attempts,
               "scores": [v.get("scores", {}) for v in d.verdicts],
               "reasons": d.verdicts[d.kept_attempt]["reasons"] if d.verdicts else []}
              for d in details if not d.passed]
    digest = sha256_file(paths["audio"])
    result = ChapterResult(
        index=chapter_index + 1, title=chapter.title, audio=_rel(paths["audio"], out),
        master=_rel(paths["master"], out),
        captions=_rel(paths["captions"], out), duration_s=round(measured.duration_s, 3),
        rms_db=round(measured.rms_db, 2), peak_db=round(measured.peak_db, 2),
        noise_floor_db=round(measured.noise_floor_db, 2), head_room_tone_s=round(measured.head_room_tone_s, 3),
        tail_room_tone_s=round(measured.tail_room_tone_s, 3), sentences=len(details),
        regenerated=sum(d.attempts > 1 for d in details), failed=failed, synthesized=synthesized,
        audio_sha256=digest, watermark_payload=narrator.source.payload_hex,
        acx_problems=measured.problems(settings), details=details)
    _atomic_write(out / CHAPTER_RESULTS_DIR / f"{chapter_index + 1:02d}.json",
                  lambda p: p.write_text(json.dumps(asdict(result), indent=1, ensure_ascii=False), encoding="utf-8"))
    audit_event(params, "narrated", voice=narrator.source.voice, version=narrator.source.version,
                payload_hex=narrator.source.payload_hex, chapter=result.index, title=chapter.title,
                output=result.audio, output_sha256=digest, duration_s=result.duration_s)
    log.info("chapter %d (%s): %d sentences (%d spoken now, %d regenerated, %d failing) -> %s", result.index,
             chapter.title, result.sentences, synthesized, result.regenerated, len(failed), result.audio)
    return result


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _load_chapter_result(path: Path) -> ChapterResult:
    data = json.loads(path.read_text(encoding="utf-8"))
    data["details"] = [SentenceResult(**d) for d in data.get("details", [])]
    return ChapterResult(**data)


# -- the book ----------------------------------------------------------------------------------------------------


def assemble_book(book: Manuscript, source: VoiceSource, out_dir: str | Path, params: Params,
                  chapters: list[ChapterResult] | None = None) -> NarrationResult:
    """The M4B, narration.json and report.html from the chapters' results (read from OUT/.chapters when not
    given: the pipeline's assemble step)."""
    out = Path(out_dir)
    if chapters is None:
        chapters = []
        for i in range(len(book.chapters)):
            path = out / CHAPTER_RESULTS_DIR / f"{i + 1:02d}.json"
            if not path.exists():
                raise NarrationError(f"chapter {i + 1} of {book.title!r} is not narrated yet ({path} is missing); "
                                     "narrate it first")
            chapters.append(_load_chapter_result(path))
    settings = params.mastering
    m4b = out / "book.m4b"
    mastering.write_m4b([(c.title, out / c.master) for c in chapters], m4b, book.title, settings=settings)
    result = NarrationResult(title=book.title, voice=source.voice, version=source.version,
                             payload_hex=source.payload_hex, out_dir=str(out), chapters=chapters, m4b=_rel(m4b, out),
                             report="report.html", narration_json="narration.json", limits=acx_limits(settings))
    summary = {"title": book.title, "voice": source.voice, "version": source.version,
               "watermark_payload": source.payload_hex, "m4b": result.m4b, "limits": result.limits,
               "chapters": [c.public() for c in chapters], "failed": result.failed}
    _atomic_write(out / "narration.json", lambda p: p.write_text(json.dumps(summary, indent=2, ensure_ascii=False),
                                                                 encoding="utf-8"))
    _atomic_write(out / "report.html", lambda p: p.write_text(report_html(result), encoding="utf-8"))
    return result


def acx_limits(settings) -> dict[str, list[float | None]]:
    """The ACX limits of the figures narration.json and the report show: name -> [low, high] (None: no bound)."""
    return {"rms_db": [settings.min_rms_db, settings.max_rms_db], "peak_db": [None, settings.max_peak_dbfs],
            "noise_floor_db": [None, settings.max_noise_floor_db],
            "head_room_tone_s": [settings.min_head_room_tone_s, settings.max_head_room_tone_s],
            "tail_room_tone_s": [settings.min_tail_room_tone_s, settings.max_tail_room_tone_s]}


def _within(limits: dict, name: str, value: float) -> bool:
    low, high = limits[name]
    return (low is None or value >= low) and (high is None or value <= high)


def report_html(result: NarrationResult) -> str:
    from narrator.report import cards, esc, fmt, page, table

    body = [cards([("chapters", str(len(result.chapters)), ""),
                   ("sentences", str(sum(c.sentences for c in result.chapters)), ""),
                   ("regenerated", str(sum(c.regenerated for c in result.chapters)), ""),
                   ("still failing", str(len(result.failed)), "bad" if result.failed else "ok")])]
    body.append("<h2>Loudness against the ACX limits</h2>")
    names = ("rms_db", "peak_db", "noise_floor_db", "head_room_tone_s", "tail_room_tone_s")
    limits = [" .. ".join("" if v is None else f"{v:g}" for v in result.limits[n]) for n in names]
    rows = []
    for c in result.chapters:
        cells = [esc(c.index), esc(c.title), fmt(c.duration_s, 1)]
        for name in names:
            value = getattr(c, name)
            good = _within(result.limits, name, value)
            cells.append(f"<span class={'ok' if good else 'bad'}>{fmt(value, 2)}</span>")
        cells += [esc(c.sentences), esc(c.regenerated), esc(len(c.failed)),
                  (f"<audio controls preload=none src='{esc(c.audio)}'></audio> "
                   f"<a href='{esc(c.captions)}'>captions</a>")]
        rows.append(cells)
    body.append(table(["#", "chapter", "duration s", *[f"{n} ({lim})" for n, lim in zip(names, limits)],
                       "sentences", "regenerated", "failing", "listen"], rows, numeric={2, 3, 4, 5, 6, 7, 8, 9, 10}))
    body.append("<h2>Regenerated sentences</h2>")
    regen = [[esc(c.index), esc(d.index), esc(d.text), esc(d.attempts), esc(d.kept_attempt + 1),
              "ok" if d.passed else "<span class=bad>failing</span>"]
             for c in result.chapters for d in c.details if d.attempts > 1]
    body.append(table(["chapter", "sentence", "text", "attempts", "kept", "guard"], regen) if regen
                else "<p>None: every sentence passed the guard at its first attempt.</p>")
    body.append("<h2>Sentences for a human</h2>")
    failing = [[esc(f["chapter"]), esc(f["index"]), esc(f["text"]), esc(f["attempts"]),
                esc("; ".join(f["reasons"])),
                esc(", ".join(json.dumps(s, sort_keys=True) for s in f["scores"]))] for f in result.failed]
    body.append(table(["chapter", "sentence", "text", "attempts", "why", "scores per attempt"], failing) if failing
                else "<p>None: every sentence passed the guard.</p>")
    return page(f"Narration: {result.title}",
                f"voice {result.voice} v{result.version}, watermark payload {result.payload_hex}; book "
                f"{result.m4b}", body)


def narrate(manuscript_path: str | Path, voice: str, version: int | None, out_dir: str | Path,
            params: Params) -> NarrationResult:
    """Narrate a manuscript into `out_dir` (see the module docstring). Re-running with the same arguments reuses
    every finished sentence and gives byte-identical chapters."""

    from narrator.storage import folder_lock

    started = time.perf_counter()
    book = read_manuscript(manuscript_path)
    out = Path(out_dir)
    with folder_lock(out, "narrator narrate"), narration_threads(params):
        source = resolve_voice(voice, version, params)
        narrator = load_narrator(source, params)
        workers = min(params.narrate.parallel_chapters, len(book.chapters))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="chapter") as pool:
            futures = [pool.submit(narrate_chapter, narrator, i, chapter, out, params, i % workers)
                       for i, chapter in enumerate(book.chapters)]
            chapters = [future.result() for future in futures]
        result = assemble_book(book, source, out, params, chapters)
    result.seconds = time.perf_counter() - started
    return result


# -- the pipeline's three parts ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BookPlan:
    """What the pipeline fans out over: the book's chapters and the voice version every chapter speaks with (the
    champion is resolved once, so a promotion during the run cannot mix two versions in one book)."""

    title: str
    chapters: list[str]  # titles, in order
    voice: str
    version: int


def plan_book(manuscript_path: str | Path, voice: str, version: int | None, params: Params) -> BookPlan:
    book = read_manuscript(manuscript_path)
    source = resolve_voice(voice, version, params)
    return BookPlan(book.title, [c.title for c in book.chapters], source.voice, source.version)


def narrate_one_chapter(manuscript_path: str | Path, chapter_index: int, voice: str, version: int,
                        out_dir: str | Path, params: Params) -> ChapterResult:
    """Chapter `chapter_index` (from 0) of the manuscript into `out_dir` (the pipeline's per-chapter step)."""
    from narrator.storage import folder_lock

    book = read_manuscript(manuscript_path)
    if not 0 <= chapter_index < len(book.chapters):
        raise NarrationError(f"the manuscript has {len(book.chapters)} chapters; there is no chapter "
                             f"{chapter_index + 1}")
    with folder_lock(out_dir, "narrator narrate (one chapter)"), narration_threads(params):
        narrator = load_narrator(resolve_voice(voice, version, params), params)
        return narrate_chapter(narrator, chapter_index, book.chapters[chapter_index], out_dir, params)


def assemble_chapters(manuscript_path: str | Path, voice: str, version: int, chapter_dirs: list[str | Path],
                      out_dir: str | Path, params: Params) -> NarrationResult:
    """The book from chapters narrated apart (each in its own folder by `narrate_one_chapter`): their files are
    copied into `out_dir`, then the M4B, narration.json and report.html are written."""
    import shutil

    out = Path(out_dir)
    for folder in map(Path, chapter_dirs):
        for sub in ("chapters", "masters", "captions", CHAPTER_RESULTS_DIR):
            if (folder / sub).is_dir():
                shutil.copytree(folder / sub, out / sub, dirs_exist_ok=True)
    book = read_manuscript(manuscript_path)
    return assemble_book(book, resolve_voice(voice, version, params), out, params)
