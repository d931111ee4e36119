"""A narrator's source folder: which files are clips, what each one says, in which language.

Transcripts come in three forms (the first that names a clip wins):
1. GPT-SoVITS `.list` files: `path|speaker|lang|text` per line (path absolute or relative; matched by relative
   path, then by file name);
2. `metadata.csv`: `file,text[,lang]` (a header row `file,text[,lang]` is optional);
3. a `.txt` or `.lab` file beside the clip with the same stem.
The consent record (`consent.yaml` and the recording it names) is never a training clip.

Nothing outside the source folder is read. Links that stay inside it are followed like the files they point to;
a clip that is a link leaving the folder is kept as a clip with the problem `outside_source` (never opened), and
a transcript, a linked folder or a consent file that leaves it is not read (`ignored`, or a consent problem).
Files that are not regular files (pipes, devices, broken links) are never opened. Hidden files and folders
(names starting with a dot) are skipped. A clip whose path cannot stand in a `.list` line (a `|`, a line break
or another control character, bytes that are not UTF-8) has the problem `bad_file_name`.
"""

from __future__ import annotations

import csv
import datetime
import os
import re
import stat
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import yaml

from narrator.errors import NarratorError, SourceError

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
    problem: tuple[str, str] | None = None  # (reason code, detail) found without opening the file


@dataclass(frozen=True)
class Ignored:
    """A file or folder that would have been read (a transcript, a linked folder of clips) but was not."""

    path: str  # relative to the source root
    reason: str  # outside_source | unreadable
    detail: str


@dataclass(frozen=True)
class Consent:
    """The consent record: `consent.yaml` fields and the recording of the consent statement."""

    file: Path | None  # None unless it is a readable regular file inside the source folder
    fields: dict  # scalar values only: anything else is replaced by a placeholder
    recording: Path | None  # likewise
    problems: tuple[str, ...]  # why it cannot be used; empty when complete
    named: tuple[Path, ...] = ()  # the paths the record occupies in the folder (never clips), usable or not


class ListLineError(NarratorError, ValueError):
    """A path that a GPT-SoVITS `.list` line cannot hold (a `|`, a line break or control character, non-UTF-8)."""


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


def discover(root: Path, audio_extensions: tuple[str, ...],
             consent_file: str) -> tuple[list[Clip], Consent, list[Ignored]]:
    """All clips under `root` (sorted by path) with their transcripts, the consent record, and the transcripts and
    linked folders that were not read (see the module's docstring)."""
    root = Path(os.path.realpath(root))
    consent = read_consent(root, consent_file, audio_extensions)
    excluded = {os.path.normpath(p) for p in (*consent.named, consent.file, consent.recording) if p is not None}
    files, ignored = _scan(root)
    tables: list[tuple[str, Path]] = []  # (rel, path) of .list and metadata.csv files
    sidecars: dict[str, Path] = {}  # rel -> a readable .txt/.lab
    audio: list[tuple[str, Path, tuple[str, str] | None]] = []
    for rel, path, problem in files:
        suffix = path.suffix.lower()
        if suffix in audio_extensions:
            if os.path.normpath(path) not in excluded:
                audio.append((rel, path, problem or _name_problem(rel, path)))
        elif suffix == ".list" or path.name == "metadata.csv" or suffix in _SIDECAR_SUFFIXES:
            if problem is not None:
                ignored.append(Ignored(rel, problem[0], f"transcripts not read: {problem[1]}"))
            elif path.suffix in _SIDECAR_SUFFIXES:
                sidecars[rel] = path
            else:
                tables.append((rel, path))
    by_rel, by_name = _transcript_tables(root, tables, ignored)
    clips = []
    for rel, path, problem in sorted(audio, key=lambda item: item[1]):
        transcript = by_rel.get(rel) or by_name.get(path.name) or _sidecar(rel, path, sidecars, ignored)
        clips.append(Clip(path=path, rel=rel, transcript=transcript, problem=problem))
    return clips, consent, sorted(ignored, key=lambda item: item.path)


_SIDECAR_SUFFIXES = (".txt", ".lab")
_NOT_A_FILE = "not a regular file (a folder, a pipe, a device or a broken link), so it is not opened"


def inside(path: str | os.PathLike, root: str | os.PathLike) -> bool:
    """Whether `path` (already resolved) is `root` or lies under it."""
    path, root = os.fspath(path), os.fspath(root)
    try:
        return os.path.commonpath([path, root]) == root
    except ValueError:
        return False


def _scan(root: Path) -> tuple[list[tuple[str, Path, tuple[str, str] | None]], list[Ignored]]:
    """Every non-hidden file under `root` as (rel, path, problem): problem None for a regular file (or a link to
    one inside root), ("outside_source", ...) for a link leaving root, ("unreadable", ...) for anything that is
    not a regular file. Links to folders are not followed: one leaving root is listed in the ignored."""
    files, ignored = [], []
    pending = [(root, "")]
    while pending:
        folder, prefix = pending.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError as error:
            ignored.append(Ignored(prefix.rstrip("/") or ".", "unreadable", f"folder not read: {error.strerror}"))
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            rel, path = prefix + entry.name, Path(entry.path)
            try:
                if entry.is_symlink():
                    target = os.path.realpath(entry.path)
                    if os.path.isdir(target):
                        if not inside(target, root):
                            ignored.append(Ignored(rel, "outside_source", f"a link to the folder {target} outside the "
                                                   "source folder: its files are not read; copy them into the folder"))
                        continue  # a link to a folder inside root: its files are read where they are
                    if not inside(target, root):
                        files.append((rel, path, ("outside_source", f"a link to {target}, outside the source folder: "
                                                  "it is not read; copy the file itself into the folder")))
                    elif os.path.isfile(target):
                        files.append((rel, path, None))
                    else:
                        files.append((rel, path, ("unreadable", _NOT_A_FILE)))
                elif entry.is_dir(follow_symlinks=False):
                    pending.append((path, rel + "/"))
                elif entry.is_file(follow_symlinks=False):
                    files.append((rel, path, None))
                else:
                    files.append((rel, path, ("unreadable", _NOT_A_FILE)))
            except OSError as error:
                files.append((rel, path, ("unreadable", f"cannot be examined: {error.strerror}")))
    return files, ignored


def _name_problem(rel: str, path: Path) -> tuple[str, str] | None:
    """("bad_file_name", why) when the clip's path could not stand in a GPT-SoVITS .list line."""
    what = _list_unsafe(str(path))
    if what is None:
        return None
    where = "its name" if _list_unsafe(rel) else "the source folder's path"
    return "bad_file_name", f"{where} ({rel!r}) holds {what}, which a .list line cannot carry: rename it"


def _list_unsafe(text: str) -> str | None:
    """What makes `text` unusable as a .list path: a '|', a line break or control character, non-UTF-8 bytes."""
    if "|" in text:
        return "a '|'"
    for ch in text:
        category = unicodedata.category(ch)
        if category == "Cs":
            return "bytes that are not UTF-8"
        if category in ("Cc", "Zl", "Zp"):
            return "a line break or another control character"
    return None


def _read_text(path: Path, rel: str, ignored: list[Ignored]) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as error:
        ignored.append(Ignored(rel, "unreadable", f"transcripts not read: {error.strerror}"))
        return None


def _sidecar(rel: str, path: Path, sidecars: dict[str, Path], ignored: list[Ignored]) -> Transcript | None:
    stem = rel[: -len(path.suffix)] if path.suffix else rel
    for suffix in _SIDECAR_SUFFIXES:
        side = sidecars.get(stem + suffix)
        text = (_read_text(side, stem + suffix, ignored) or "").strip() if side is not None else ""
        if text:
            return Transcript(text=text, language=normalise_language(None, text), origin=side.name)
    return None


def parse_list_line(line: str) -> tuple[str, str, str, str] | None:
    """`path|speaker|lang|text` -> its four fields, stripped; None when the line does not have four fields. The
    text is the last field, so it may hold '|' (list_line never writes one)."""
    parts = line.split("|", 3)
    if len(parts) != 4:
        return None
    path, speaker, lang, text = (p.strip() for p in parts)
    return path, speaker, lang, text


def _transcript_tables(root: Path, tables: list[tuple[str, Path]],
                       ignored: list[Ignored]) -> tuple[dict[str, Transcript], dict[str, Transcript]]:
    by_rel: dict[str, Transcript] = {}
    by_name: dict[str, Transcript] = {}
    for rel, list_file in sorted((t for t in tables if t[1].suffix.lower() == ".list"), key=lambda t: t[1]):
        content = _read_text(list_file, rel, ignored)
        for number, line in enumerate((content or "").splitlines(), 1):
            if not line.strip():
                continue
            parts = parse_list_line(line)
            if parts is None:
                raise SourceError(
                    f"{list_file}:{number}: expected 'path|speaker|lang|text' (GPT-SoVITS .list format), "
                    f"got {line[:80]!r}; fix or remove that line"
                )
            audio_path, _speaker, lang, text = parts
            _add(by_rel, by_name, root, list_file.parent, audio_path,
                 Transcript(text=text, language=normalise_language(lang, text), origin=list_file.name))
    for rel, csv_file in sorted((t for t in tables if t[1].name == "metadata.csv"), key=lambda t: t[1]):
        content = _read_text(csv_file, rel, ignored)
        try:
            rows = list(csv.reader((content or "").splitlines()))
        except csv.Error as error:
            raise SourceError(f"{csv_file}: not a valid CSV file ({error}); fix it (file,text[,lang] per row)"
                              ) from None
        for number, row in enumerate(rows, 1):
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
    """Index a transcript by the path it names (worked out from the text alone: nothing is opened or resolved)."""
    candidate = os.path.normpath(os.path.join(base, named.replace("\\", "/")))
    if inside(candidate, root):
        by_rel.setdefault(Path(candidate).relative_to(root).as_posix(), transcript)
    by_name.setdefault(Path(named.replace("\\", "/")).name, transcript)


_CONSENT_MAX_BYTES = 1 << 20
_SCALARS = (str, int, float, bool, datetime.date)


def _realpath(path: Path) -> Path | None:
    """The resolved path; None for a name no file can have (a NUL byte)."""
    try:
        return Path(os.path.realpath(path))
    except ValueError:
        return None


def _consent_target(root: Path, named: Path, label: str) -> tuple[Path | None, str | None]:
    """(resolved path, None) for a regular file inside root; (None, problem) otherwise."""
    real = _realpath(named)
    if real is None:
        return None, f"{label} is not a valid file name"
    if not inside(real, root):
        return None, f"{label} lies outside the source folder ({real}), so it is not read: put the file itself " \
                     "in the source folder"
    try:
        info = os.stat(real)
    except OSError as error:
        return None, f"{label} cannot be read ({error.strerror})"
    if stat.S_ISDIR(info.st_mode):
        return None, f"{label} is a folder, not a file"
    if not stat.S_ISREG(info.st_mode):
        return None, f"{label} is not a regular file (a pipe or a device)"
    return real, None


def read_consent(root: Path, consent_file: str, audio_extensions: tuple[str, ...]) -> Consent:
    """Read `consent.yaml`; its `recording` key names the consent recording (default: consent.<audio ext>).

    Every way it can be unusable (missing, a folder, not UTF-8, not YAML, fields that are not text, a recording
    outside the folder or not a file) is a problem in the returned record, never an exception."""
    root = Path(os.path.realpath(root))
    file = root / consent_file
    named = [file]
    if not os.path.lexists(file):
        return Consent(None, {}, None, (f"no {consent_file} in the source folder",), tuple(named))
    real, problem = _consent_target(root, file, consent_file)
    if problem is None and os.path.getsize(real) > _CONSENT_MAX_BYTES:
        problem = f"{consent_file} is larger than {_CONSENT_MAX_BYTES >> 20} MB: a consent record is a short text"
    if problem is not None:
        return Consent(None, {}, None, (problem,), tuple(named))
    try:
        text = real.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        return Consent(None, {}, None, (f"{consent_file} is not UTF-8 text (byte 0x{error.object[error.start]:02x} "
                                        f"at position {error.start}): save it as UTF-8",), tuple(named))
    except OSError as error:
        return Consent(None, {}, None, (f"{consent_file} cannot be read ({error.strerror})",), tuple(named))
    problems = []
    try:
        fields = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        return Consent(real, {}, None, (f"{consent_file} is not valid YAML: {error}",), tuple(named))
    if not isinstance(fields, dict):
        return Consent(real, {}, None, (f"{consent_file} must be a mapping of {', '.join(CONSENT_FIELDS)}",),
                       tuple(named))
    not_text = [str(k) for k, v in fields.items() if v is not None and not isinstance(v, _SCALARS)]
    fields = {str(k): (v if v is None or isinstance(v, _SCALARS) else f"<{type(v).__name__}: not text>")
              for k, v in fields.items()}  # never print a nested structure: YAML aliases can make it huge
    if not_text:
        problems.append(f"{consent_file}: {', '.join(not_text[:5])} must be text, not a list or a mapping")
    missing = [name for name in CONSENT_FIELDS if not str(fields.get(name) or "").strip()]
    if missing:
        problems.append(f"{consent_file} lacks {', '.join(missing)}")
    recording = None
    if fields.get("recording"):
        label = f"the consent recording {fields['recording']} named in {consent_file}"
        path = root / str(fields["recording"])
        named.append(path)
        target = _realpath(path)
        if target is not None and not os.path.lexists(path) and inside(target, root):
            problems.append(f"{label} does not exist")
        else:
            recording, problem = _consent_target(root, path, label)
            if problem:
                problems.append(problem)
    else:
        for ext in audio_extensions:
            path = root / f"consent{ext}"
            if os.path.lexists(path):
                named.append(path)
                recording, problem = _consent_target(root, path, f"the consent recording consent{ext}")
                if problem:
                    problems.append(problem)
                break
        else:
            problems.append(f"no consent recording: add consent.wav or name it under 'recording:' in {consent_file}")
    return Consent(real, fields, recording, tuple(problems), tuple(named))


def list_line(path: Path | str, speaker: str, language: str, text: str) -> str:
    """One GPT-SoVITS `.list` line that `parse_list_line` reads back as exactly these fields: the speaker, language
    and text are cleaned ('|' and line breaks become spaces, runs of spaces one, non-UTF-8 becomes '?'); a path
    that cannot stand in the line (see `bad_file_name`) raises ListLineError."""
    shown = str(path)
    what = _list_unsafe(shown) or ("spaces at its ends" if shown != shown.strip() else None)
    if what is not None:
        raise ListLineError(f"{shown!r} holds {what}, which a GPT-SoVITS .list line cannot carry: rename it")
    return f"{shown}|{_list_field(speaker)}|{_list_field(language)}|{_list_field(text)}"


def _list_field(value) -> str:
    return " ".join(str(value).replace("|", " ").split()).encode("utf-8", "replace").decode("utf-8")
