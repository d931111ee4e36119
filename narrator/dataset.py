"""A narrator's source folder: which files are clips, what each one says, in which language.

Transcripts come in three forms (the first that names a clip wins):
1. GPT-SoVITS `.list` files: `path|speaker|lang|text` per line (path absolute or relative; matched by relative
   path, then by file name);
2. `metadata.csv`: `file,text[,lang]` (a header row `file,text[,lang]` is optional);
3. a `.txt` or `.lab` file beside the clip with the same stem.
The consent record (`consent.yaml` and the recording it names) is never a training clip.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from narrator.errors import SourceError

# GPT-SoVITS language tags -> ours. Unsupported tags are kept (lower-cased) so the report can name them.
_LANGUAGE_ALIASES = {
    "zh": "zh", "all_zh": "zh", "cn": "zh", "zh-cn": "zh", "mandarin": "zh", "chinese": "zh",
    "en": "en", "all_en": "en", "en-us": "en", "en-gb": "en", "english": "en",
    "ja": "ja", "jp": "ja", "all_ja": "ja", "ko": "ko", "all_ko": "ko", "yue": "yue", "all_yue": "yue",
}
_CJK = re.compile(r"[\u4e00-\u9fff]")
_KANA = re.compile(r"[\u3040-\u30ff]")
_HANGUL = re.compile(r"[\uac00-\ud7af\u1100-\u11ff]")
_LATIN = re.compile(r"[A-Za-z]")

CONSENT_FIELDS = ("speaker", "organisation", "date", "scope")


@dataclass(frozen=True)
class Transcript:
    text: str
    language: str  # "zh", "en", or another code (unsupported) ; "" when unknown
    origin: str  # where it came from: the .list/.csv/.txt file


@dataclass(frozen=True)
class Clip:
    path: Path  # local path
    rel: str  # path relative to the source root (posix)
    transcript: Transcript | None


@dataclass(frozen=True)
class Consent:
    """The consent record: `consent.yaml` fields and the recording of the consent statement."""

    file: Path | None
    fields: dict
    recording: Path | None
    problems: tuple[str, ...]  # why it cannot be used; empty when complete


def normalise_language(tag: str | None, text: str = "") -> str:
    """Map a language tag to "zh"/"en"/other; with no tag, guess from the script of `text`."""
    if tag:
        key = tag.strip().lower()
        return _LANGUAGE_ALIASES.get(key, key)
    if _KANA.search(text):
        return "ja"
    if _HANGUL.search(text):
        return "ko"
    if _CJK.search(text):
        return "zh"
    if _LATIN.search(text):
        return "en"
    return ""


def discover(root: Path, audio_extensions: tuple[str, ...], consent_file: str) -> tuple[list[Clip], Consent]:
    """All clips under `root` (sorted by relative path) with their transcripts, and the consent record."""
    consent = read_consent(root, consent_file, audio_extensions)
    excluded = {p.resolve() for p in (consent.file, consent.recording) if p is not None}
    audio = sorted(
        p for p in root.rglob("*")
        if p.is_file() and p.suffix.lower() in audio_extensions and p.resolve() not in excluded
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    by_rel, by_name = _transcript_tables(root)
    clips = []
    for path in audio:
        rel = path.relative_to(root).as_posix()
        transcript = by_rel.get(rel) or by_name.get(path.name) or _sidecar(path)
        clips.append(Clip(path=path, rel=rel, transcript=transcript))
    return clips, consent


def _sidecar(path: Path) -> Transcript | None:
    for suffix in (".txt", ".lab"):
        side = path.with_suffix(suffix)
        if side.exists():
            text = side.read_text(encoding="utf-8", errors="replace").strip()
            if text:
                return Transcript(text=text, language=normalise_language(None, text), origin=side.name)
    return None


def _transcript_tables(root: Path) -> tuple[dict[str, Transcript], dict[str, Transcript]]:
    by_rel: dict[str, Transcript] = {}
    by_name: dict[str, Transcript] = {}
    for list_file in sorted(root.rglob("*.list")):
        for number, line in enumerate(list_file.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split("|", 3)
            if len(parts) != 4:
                raise SourceError(
                    f"{list_file}:{number}: expected 'path|speaker|lang|text' (GPT-SoVITS .list format), "
                    f"got {line[:80]!r}; fix or remove that line"
                )
            audio_path, _speaker, lang, text = (p.strip() for p in parts)
            _add(by_rel, by_name, root, list_file.parent, audio_path,
                 Transcript(text=text, language=normalise_language(lang, text), origin=list_file.name))
    for csv_file in sorted(root.rglob("metadata.csv")):
        with open(csv_file, newline="", encoding="utf-8", errors="replace") as handle:
            for number, row in enumerate(csv.reader(handle), 1):
                if not row or (number == 1 and row[0].strip().lower() == "file"):
                    continue
                if len(row) < 2:
                    raise SourceError(f"{csv_file}:{number}: expected 'file,text[,lang]', got {row!r}")
                lang = row[2] if len(row) > 2 else None
                text = row[1].strip()
                _add(by_rel, by_name, root, csv_file.parent, row[0].strip(),
                     Transcript(text=text, language=normalise_language(lang, text), origin=csv_file.name))
    return by_rel, by_name


def _add(by_rel, by_name, root: Path, base: Path, named: str, transcript: Transcript) -> None:
    candidate = Path(named)
    if not candidate.is_absolute():
        candidate = base / candidate
    try:
        rel = candidate.resolve().relative_to(root.resolve()).as_posix()
        by_rel.setdefault(rel, transcript)
    except ValueError:
        pass
    by_name.setdefault(Path(named.replace("\\", "/")).name, transcript)


def read_consent(root: Path, consent_file: str, audio_extensions: tuple[str, ...]) -> Consent:
    """Read `consent.yaml`; its `recording` key names the consent recording (default: consent.<audio ext>)."""
    file = root / consent_file
    if not file.exists():
        return Consent(None, {}, None, (f"no {consent_file} in the source folder",))
    problems = []
    try:
        fields = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        return Consent(file, {}, None, (f"{consent_file} is not valid YAML: {error}",))
    if not isinstance(fields, dict):
        return Consent(file, {}, None, (f"{consent_file} must be a mapping of {', '.join(CONSENT_FIELDS)}",))
    missing = [name for name in CONSENT_FIELDS if not str(fields.get(name) or "").strip()]
    if missing:
        problems.append(f"{consent_file} lacks {', '.join(missing)}")
    recording = None
    if fields.get("recording"):
        recording = (root / str(fields["recording"])).resolve()
        if not recording.exists():
            problems.append(f"the consent recording {fields['recording']} named in {consent_file} does not exist")
            recording = None
    else:
        for ext in audio_extensions:
            if (root / f"consent{ext}").exists():
                recording = (root / f"consent{ext}").resolve()
                break
        if recording is None:
            problems.append(f"no consent recording: add consent.wav or name it under 'recording:' in {consent_file}")
    return Consent(file, {k: v for k, v in fields.items()}, recording, tuple(problems))


def list_line(path: Path | str, speaker: str, language: str, text: str) -> str:
    """One GPT-SoVITS `.list` line. `|` and newlines in the text are replaced so the line stays parseable."""
    clean = " ".join(text.replace("|", " ").split())
    return f"{path}|{speaker}|{language}|{clean}"
