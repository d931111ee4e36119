"""Text to speech with one voice: the one place where Narrator turns text into audio (ARCH.md section 1).

Evaluation, the watermark check, the packaged sample and the service all speak through this module, so what is
measured is what is served:

    synth = load_synthesizer("sovits.pth", "gpt.ckpt", params)      # files (local or s3://), device, inference.mode
    ref = synth.reference(wav, sample_rate_hz, "The reference clip's transcript.", "en")
    speech = synth.speak("Any text, several sentences.", ref, language="en", seed=0)
    speech.samples (n,) float32 at speech.sample_rate_hz (32 kHz)

    voice = load_bundle(bundle_dir, params)                          # a packaged voice: synthesizer + its reference

Per sentence, three stages:
    plan     the text front-end gives phones (+ BERT features for Chinese), joined after the reference's
    decode   the GPT continues the reference's semantic codes given [reference phones ; sentence phones]
    render   SoVITS decodes the new codes with the sentence's phones and the reference's timbre
Sentences are joined with `pause_s` of silence; `stream` yields them one at a time (time to first audio is one
sentence's work). The service replaces only `decode`, to batch GPT decodes across concurrent requests.

Seeding rule: with a seed, sentence i of a text draws its GPT sampling and then its decoder noise from one
generator seeded with `sentence_seed(seed, i)` (on the synthesizer's device). A seeded text therefore gives the
same audio whichever path speaks it (evaluation, sample, service), whether streamed or whole. Without a seed the
draws come from torch's global generator.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np
import torch

from narrator.config import Params
from narrator.errors import NarratorError

if TYPE_CHECKING:
    from models.text.lexicon import PhoneLexicon

REFERENCE_MIN_S, REFERENCE_MAX_S = 3.0, 10.0  # the official limits on the reference clip
SAMPLE_RATE_HZ = 32000
SEED_STRIDE = 0x9E3779B1  # sentence_seed: far apart for neighbouring seeds, so no two (seed, sentence) collide
MAX_SEED = 2 ** 63 - 1


class SynthesisError(NarratorError):
    """The text or the reference cannot be synthesized."""


@dataclass
class Reference:
    """A voice's timbre reference and GPT prompt, computed once and reused for every sentence.

    spec `(1, 1025, T50)` linear spectrogram at 32 kHz; codes `(1, T25)` semantic prompt; phones `(Lp,)` ids of the
    transcript; bert `(1024, Lp)`; sv `(1, 20480)` for v2Pro / v2ProPlus else None.
    """

    spec: torch.Tensor
    codes: torch.Tensor
    phones: torch.Tensor
    bert: torch.Tensor
    sv: torch.Tensor | None
    text: str
    duration_s: float


@dataclass
class SentencePlan:
    """One sentence ready for the GPT: its own phone ids `(Lt,)`, and the GPT inputs with the reference's in
    front, phones `(1, Lp + Lt)` and bert `(1, 1024, Lp + Lt)`; `max_new_tokens` stops a runaway decode."""

    text: str
    language: str
    target_phones: torch.Tensor
    phones: torch.Tensor
    bert: torch.Tensor
    max_new_tokens: int


@dataclass
class SentenceAudio:
    text: str
    samples: np.ndarray  # (n,) float32
    tokens: int  # semantic tokens the GPT made (25 per second of speech)
    phones: int
    seconds: float  # wall time to make it


@dataclass
class Speech:
    samples: np.ndarray  # (n,) float32 in [-1, 1]
    sample_rate_hz: int
    sentences: list[SentenceAudio] = field(default_factory=list)
    first_audio_s: float = 0.0  # wall time until the first sentence was ready
    seconds: float = 0.0  # wall time of the whole synthesis

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate_hz

    @property
    def real_time_factor(self) -> float:
        return self.seconds / max(self.duration_s, 1e-9)


@dataclass
class SamplingSettings:
    """GPT sampling (official WebUI defaults) and SoVITS decoding settings."""

    top_k: int = 15
    top_p: float = 1.0
    temperature: float = 1.0
    repetition_penalty: float = 1.35
    noise_scale: float = 0.5
    speed: float = 1.0
    pause_s: float = 0.3
    max_tokens_per_phone: float = 8.0  # stop runaway decoding: at most this many codes per target phone (+ 25)

    def batch_key(self) -> tuple:
        """Sentences whose settings share this key may be decoded by the GPT in one batch."""
        return self.top_k, self.top_p, self.temperature, self.repetition_penalty


INFERENCE_MODES = ("exact", "fast")

# A replacement for `Synthesizer.decode` (the service's batcher): (plan, generator or None) -> codes (1, n_new).
Decoder = Callable[[SentencePlan, "torch.Generator | None"], torch.Tensor]


def sentence_seed(seed: int, index: int) -> int:
    """The seed of sentence `index` of a text spoken with `seed` (the seeding rule of the module docstring)."""
    return (seed * SEED_STRIDE + index) % MAX_SEED


class Synthesizer:
    """One SoVITS + one GPT (+ the HuBERT, BERT and sv front models) turned into a text-to-speech engine."""

    def __init__(self, sovits, gpt, hubert=None, bert=None, sv_model=None,
                 lexicon: PhoneLexicon | None = None) -> None:
        self.sovits, self.gpt, self.hubert, self.bert, self.sv_model = sovits.eval(), gpt.eval(), hubert, bert, sv_model
        self.lexicon = lexicon  # the voice's pronunciation lexicon, applied to every text it reads (None: none)
        self.device = next(sovits.parameters()).device
        self.mode = "as loaded"  # until prepare()
        if sovits.is_pro and sv_model is None:
            raise SynthesisError(f"a {sovits.version} voice needs the speaker-verification model: set "
                                 "pretrained.sv_checkpoint in params.yaml")

    def prepare(self, mode: str = "exact") -> "Synthesizer":
        """Choose how the models run (`inference.mode` in params.yaml); returns self. Call once, before speaking.

        "exact": float32 as loaded, the official computation up to float rounding (the decoder's weight-norm
        weights cached and, on CPU, its convolutions channels-last).
        "fast": on CPU, a bfloat16 SoVITS and int8 GPT decoding steps; on a GPU, bfloat16 SoVITS and GPT with the
        GPT's decoding step replayed as a CUDA graph. About 2.3x
        faster per sentence on a 2-core CPU (docs/benchmarks.md); outputs differ from "exact" by bfloat16 rounding of
        the waveform and occasional different sampled tokens. Both are `models.inference.prepare_for_inference`.
        """
        from models.inference import prepare_for_inference

        if mode not in INFERENCE_MODES:
            raise SynthesisError(f"inference mode must be one of {', '.join(INFERENCE_MODES)}, got {mode!r}")
        prepare_for_inference(self.sovits, self.gpt, mode)
        self.mode = mode
        return self

    # -- reference ----------------------------------------------------------------------------------------------

    def reference(self, samples: np.ndarray, sample_rate_hz: int, text: str, language: str = "auto",
                  ssl: torch.Tensor | None = None) -> Reference:
        """Prepare a reference clip `(n,)` (any rate) and its transcript. `ssl` `(768, T50)` skips HuBERT (the
        features step already computed it)."""
        from models.audio import spectrogram
        from models.features import bert_for_segments, reference_hubert_input
        from models.text import prepare_for_synthesis
        from narrator.audiofile import resample

        duration_s = len(samples) / sample_rate_hz
        if not REFERENCE_MIN_S <= duration_s <= REFERENCE_MAX_S:
            raise SynthesisError(f"the reference clip is {duration_s:.1f} s; it must be {REFERENCE_MIN_S:g}-"
                                 f"{REFERENCE_MAX_S:g} s long (pick another clip of the narrator)")
        wav32 = resample(np.asarray(samples, np.float32), sample_rate_hz, SAMPLE_RATE_HZ)
        peak = float(np.abs(wav32).max()) if len(wav32) else 0.0
        if peak > 1.0:
            wav32 = wav32 / min(2.0, peak)
        wav32_t = torch.from_numpy(wav32)[None].to(self.device)
        spec = spectrogram(wav32_t)
        if ssl is None:
            if self.hubert is None:
                raise SynthesisError("no HuBERT model: set pretrained.hubert_dir in params.yaml")
            wav16 = resample(wav32, SAMPLE_RATE_HZ, 16000)
            ssl = self.hubert([reference_hubert_input(wav16)])[0]
        codes = self.sovits.extract_latent(ssl[None].to(self.device))[0]  # (1, T25)
        prompt = prepare_for_synthesis(text, language, lexicon=self.lexicon)
        bert = bert_for_segments(self.bert, prompt.segments, prompt.word2ph)
        sv = None
        if self.sovits.is_pro:
            from models.sv import sv_embedding

            sv = sv_embedding(wav32_t, self.sv_model)
        return Reference(spec=spec, codes=codes, phones=torch.tensor(prompt.ids, dtype=torch.long), bert=bert,
                         sv=sv, text=prompt.text, duration_s=duration_s)

    # -- the three stages of a sentence ---------------------------------------------------------------------------

    @torch.inference_mode()
    def plan(self, text: str, reference: Reference, language: str = "auto",
             settings: SamplingSettings | None = None, *, lexicon: PhoneLexicon | None = None) -> SentencePlan:
        """Phones and BERT features of one sentence (read with the voice's lexicon, or `lexicon` when given: an SSML
        segment's, `models.text.ssml.segment_lexicon`), after the reference's."""
        from models.features import bert_for_segments
        from models.text import prepare_for_synthesis

        s = settings or SamplingSettings()
        target = prepare_for_synthesis(text, language, lexicon=lexicon if lexicon is not None else self.lexicon)
        bert = bert_for_segments(self.bert, target.segments, target.word2ph)
        target_phones = torch.tensor(target.ids, dtype=torch.long)
        return SentencePlan(text=target.text, language=language, target_phones=target_phones,
                            phones=torch.cat([reference.phones, target_phones])[None],
                            bert=torch.cat([reference.bert, bert], dim=1)[None],
                            max_new_tokens=int(s.max_tokens_per_phone * len(target.ids)) + 25)

    @torch.inference_mode()
    def decode(self, plan: SentencePlan, reference: Reference, settings: SamplingSettings | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """The GPT's new semantic codes for one sentence: `(1, n_new)`."""
        s = settings or SamplingSettings()
        return self.gpt.generate(plan.phones.to(self.device), plan.bert.to(self.device, self._gpt_dtype),
                                 reference.codes.to(self.device), top_k=s.top_k, top_p=s.top_p,
                                 temperature=s.temperature, repetition_penalty=s.repetition_penalty,
                                 early_stop_num=plan.max_new_tokens, generator=generator)

    @torch.inference_mode()
    def decode_batch(self, plans: list[SentencePlan], reference: Reference,
                     settings: SamplingSettings | None = None) -> list[torch.Tensor]:
        """Unseeded GPT decodes of several sentences in one batch (the service's batcher): a list of `(1, n_i)`.

        Rows share the reference prompt; each row computes what it would alone, but the sampling draws of a batch
        differ from one sentence's, so seeded sentences are decoded one at a time with `decode`."""
        s = settings or SamplingSettings()
        codes = self.gpt.generate_batch([p.phones.to(self.device) for p in plans],
                                        [p.bert.to(self.device, self._gpt_dtype) for p in plans],
                                        reference.codes.to(self.device), top_k=s.top_k, top_p=s.top_p,
                                        temperature=s.temperature, repetition_penalty=s.repetition_penalty,
                                        early_stop_num=max(p.max_new_tokens for p in plans))
        return [row[:, :plan.max_new_tokens + 1] for plan, row in zip(plans, codes)]

    @torch.inference_mode()
    def render(self, plan: SentencePlan, codes: torch.Tensor, reference: Reference,
               settings: SamplingSettings | None = None, generator: torch.Generator | None = None) -> np.ndarray:
        """SoVITS audio of the sentence's codes `(1, n)` in the reference's timbre: `(samples,)` float32 at 32 kHz,
        peak at most 1. The decoder's noise comes from `generator` when given."""
        s = settings or SamplingSettings()
        if codes.shape[1] == 0:
            raise SynthesisError(f"the GPT made no audio tokens for {plan.text!r}; try again with another seed")
        noise = None
        if generator is not None and s.noise_scale:
            frames = int(2 * codes.shape[1] / s.speed) + 1 if s.speed != 1.0 else 2 * codes.shape[1]
            noise = torch.randn(1, self.sovits.config.inter_channels, frames, generator=generator,
                                device=generator.device).to(self.device)
        wav = self.sovits.decode(codes[None].to(self.device), plan.target_phones[None].to(self.device),
                                 reference.spec, noise_scale=s.noise_scale, speed=s.speed, sv_emb=reference.sv,
                                 noise=noise)
        samples = wav[0, 0].float().cpu().numpy()
        peak = float(np.abs(samples).max()) if len(samples) else 0.0
        if peak > 1.0:
            samples = samples / peak
        return samples.astype(np.float32)

    @property
    def _gpt_dtype(self) -> torch.dtype:
        return next(self.gpt.parameters()).dtype

    def generator(self, seed: int | None, index: int) -> torch.Generator | None:
        """The generator of sentence `index` under `seed` (None: torch's global one)."""
        if seed is None:
            return None
        return torch.Generator(device=self.device).manual_seed(sentence_seed(seed, index))

    # -- text -----------------------------------------------------------------------------------------------------

    def sentence(self, text: str, reference: Reference, language: str = "auto",
                 settings: SamplingSettings | None = None, generator: torch.Generator | None = None,
                 decode: Decoder | None = None, *, lexicon: PhoneLexicon | None = None) -> SentenceAudio:
        """One sentence -> audio `(n,)` float32 at 32 kHz (plan, decode, render)."""
        started = time.perf_counter()
        plan = self.plan(text, reference, language, settings, lexicon=lexicon)
        if decode is None:
            codes = self.decode(plan, reference, settings, generator)
        else:
            codes = decode(plan, generator)
        samples = self.render(plan, codes, reference, settings, generator)
        return SentenceAudio(plan.text, samples, int(codes.shape[1]), int(plan.target_phones.numel()),
                             time.perf_counter() - started)

    def stream(self, text: str, reference: Reference, language: str = "auto",
               settings: SamplingSettings | None = None, seed: int | None = None,
               decode: Decoder | None = None) -> Iterator[SentenceAudio]:
        """Sentence by sentence (split as the official front-end does), each with its trailing pause.

        `decode` replaces `Synthesizer.decode` (the service batches GPT decodes across requests with it)."""
        from models.text import split_sentences

        s = settings or SamplingSettings()
        sentences = split_sentences(text, language)
        if not sentences:
            raise SynthesisError("the text is empty: give at least one word to synthesize")
        pause = np.zeros(int(s.pause_s * SAMPLE_RATE_HZ), np.float32)
        for i, sentence in enumerate(sentences):
            audio = self.sentence(sentence.text, reference, sentence.language, s, self.generator(seed, i), decode)
            if i + 1 < len(sentences):
                audio.samples = np.concatenate([audio.samples, pause])
            yield audio

    def stream_segments(self, segments: list, reference: Reference, settings: SamplingSettings | None = None,
                        seed: int | None = None, decode: Decoder | None = None) -> Iterator[SentenceAudio]:
        """An SSML document's segments (`models.text.ssml.parse_ssml`) in order: each `Speech` split into sentences
        and spoken as `stream` speaks text (sentence i of the document, counting every segment's, is seeded with
        `sentence_seed(seed, i)`), at `settings.speed` times its rate (bounded 0.5-2) and read with its phones; each
        `Pause` as exactly that many zero samples, in place of the pause between sentences where it stands."""
        import dataclasses

        from models.text import split_sentences
        from models.text.ssml import MAX_RATE, MIN_RATE, Pause, segment_lexicon

        s = settings or SamplingSettings()
        items: list = []
        for segment in segments:
            if isinstance(segment, Pause):
                items.append(segment)
                continue
            speed = min(MAX_RATE, max(MIN_RATE, s.speed * segment.rate))
            seg_settings = dataclasses.replace(s, speed=speed) if speed != s.speed else s
            lexicon = segment_lexicon(self.lexicon, segment.phones)
            items += [(sentence, seg_settings, lexicon) for sentence in split_sentences(segment.text, segment.language)]
        if not any(not isinstance(item, Pause) for item in items):
            raise SynthesisError("the SSML document has nothing to speak: give at least one word to synthesize")
        pause = np.zeros(int(s.pause_s * SAMPLE_RATE_HZ), np.float32)
        index = 0
        for k, item in enumerate(items):
            if isinstance(item, Pause):
                yield SentenceAudio("", np.zeros(round(item.seconds * SAMPLE_RATE_HZ), np.float32), 0, 0, 0.0)
                continue
            sentence, seg_settings, lexicon = item
            audio = self.sentence(sentence.text, reference, sentence.language, seg_settings,
                                  self.generator(seed, index), decode, lexicon=lexicon)
            index += 1
            if k + 1 < len(items) and not isinstance(items[k + 1], Pause):
                audio.samples = np.concatenate([audio.samples, pause])
            yield audio

    def speak(self, text: str, reference: Reference, language: str = "auto",
              settings: SamplingSettings | None = None, seed: int | None = None,
              decode: Decoder | None = None) -> Speech:
        """The whole text as one waveform, with per-sentence details and time to first audio."""
        started = time.perf_counter()
        parts, first = [], 0.0
        for audio in self.stream(text, reference, language, settings, seed, decode):
            if not parts:
                first = time.perf_counter() - started
            parts.append(audio)
        samples = np.concatenate([p.samples for p in parts]).astype(np.float32)
        return Speech(samples, SAMPLE_RATE_HZ, parts, first, time.perf_counter() - started)


# -- loading ------------------------------------------------------------------------------------------------------


class FrontModels:
    """The HuBERT, BERT and speaker-verification models a synthesizer needs besides its own two, loaded once per
    file and shared: they carry no timbre, so one set serves every voice of a process. Thread-safe."""

    def __init__(self, params: Params, device: str | torch.device = "auto") -> None:
        import threading

        from models.features import pick_device

        self.params = params
        self.device = pick_device(device) if isinstance(device, str) else device
        self._loaded: dict[tuple[str, str], object] = {}
        self._lock = threading.Lock()

    def get(self, kind: str, path: str | None):
        """The model of `kind` ("hubert_dir", "bert_dir" or "sv_checkpoint") at `path` (local or s3://), or None
        when no path is given."""
        if not path:
            return None
        with self._lock:
            if (kind, path) in self._loaded:
                return self._loaded[(kind, path)]
        from models.features import BertExtractor, HubertExtractor
        from narrator.storage import fetch

        local = fetch(path, self.params.storage, f"pretrained.{kind}")
        if kind == "hubert_dir":
            model = HubertExtractor(local, device=str(self.device))
        elif kind == "bert_dir":
            model = BertExtractor(local, device=str(self.device))
        elif kind == "sv_checkpoint":
            from models.sv import load_sv

            model = load_sv(local, device=self.device)
        else:
            raise ValueError(f"unknown front model kind {kind!r}")
        with self._lock:
            return self._loaded.setdefault((kind, path), model)


def load_synthesizer(sovits_path: str | Path, gpt_path: str | Path, params: Params,
                     device: str | torch.device = "auto", fronts: FrontModels | None = None,
                     base_models: dict[str, str | None] | None = None,
                     lexicon: PhoneLexicon | None = None) -> Synthesizer:
    """A voice's synthesizer from its two files (local paths or s3:// URIs), on `device`, prepared for
    `inference.mode`. The front models come from `base_models` (a bundle's `base_models`) where it names them,
    else from `pretrained.*`; `fronts` shares them between voices. `lexicon`: the voice's pronunciation lexicon
    (`models.text.lexicon.PhoneLexicon`), applied to every text it reads."""
    from models.checkpoints import load_gpt, load_sovits
    from narrator.storage import fetch

    fronts = fronts or FrontModels(params, device)
    pre, bases = params.pretrained, base_models or {}
    sovits = load_sovits(fetch(str(sovits_path), params.storage, "sovits"), device=fronts.device)
    gpt = load_gpt(fetch(str(gpt_path), params.storage, "gpt"), device=fronts.device)
    hubert_dir = bases.get("hubert_dir") or pre.hubert_dir
    if not hubert_dir:
        raise SynthesisError("speaking from a reference clip needs HuBERT: set pretrained.hubert_dir in params.yaml")
    hubert = fronts.get("hubert_dir", hubert_dir)
    bert = fronts.get("bert_dir", bases.get("bert_dir") or pre.bert_dir)
    sv = fronts.get("sv_checkpoint", bases.get("sv_checkpoint") or pre.sv_checkpoint) if sovits.is_pro else None
    return Synthesizer(sovits, gpt, hubert=hubert, bert=bert, sv_model=sv,
                       lexicon=lexicon).prepare(params.inference.mode)


@dataclass
class BundledVoice:
    """A packaged voice ready to speak: its synthesizer, its reference prompt and its bundle's voice.yaml."""

    synth: Synthesizer
    reference: Reference
    manifest: dict


def load_bundle(bundle: str | Path, params: Params, device: str | torch.device = "auto",
                fronts: FrontModels | None = None) -> BundledVoice:
    """The voice in a bundle folder (`narrator/bundle.py`), speaking from the bundle's reference clip with the
    bundle's pronunciation lexicon (when it has one, checked against its digest and the v2 symbol table)."""
    from models.text.lexicon import compile_lexicon
    from narrator.audiofile import read_audio
    from narrator.bundle import read_bundle_lexicon, read_manifest

    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    lexicon = compile_lexicon(read_bundle_lexicon(bundle, manifest))
    synth = load_synthesizer(bundle / "sovits.pth", bundle / "gpt.ckpt", params, device, fronts,
                             manifest.get("base_models") or {}, lexicon)
    ref = manifest["reference"]
    audio = read_audio(bundle / ref["file"])
    reference = synth.reference(audio.mono(), audio.sample_rate_hz, ref["text"], ref["language"])
    return BundledVoice(synth, reference, manifest)
