"""Text to speech with one voice: the GPT-SoVITS inference path (ARCH.md section 1) over our models.

    synth = Synthesizer(sovits, gpt, hubert=HubertExtractor(dir), bert=BertExtractor(dir) or None)
    ref = synth.reference(wav, sample_rate_hz, "The reference clip's transcript.", "en")
    speech = synth.speak("Any text, several sentences.", ref, language="en", seed=0)
    speech.samples (n,) float32 at speech.sample_rate_hz (32 kHz)

Per sentence: the text front-end gives phones (+ BERT features for Chinese); the GPT continues the reference's
semantic codes given [reference phones ; sentence phones]; SoVITS decodes the new codes with the sentence's
phones and the reference's timbre. Sentences are joined with `pause_s` of silence. `stream` yields the audio a
sentence at a time (what the service streams; time to first audio is one sentence's work).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch

from narrator.errors import NarratorError

REFERENCE_MIN_S, REFERENCE_MAX_S = 3.0, 10.0  # the official limits on the reference clip
SAMPLE_RATE_HZ = 32000


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


INFERENCE_MODES = ("exact", "fast")


class Synthesizer:
    """One SoVITS + one GPT (+ the HuBERT, BERT and sv front models) turned into a text-to-speech engine."""

    def __init__(self, sovits, gpt, hubert=None, bert=None, sv_model=None) -> None:
        self.sovits, self.gpt, self.hubert, self.bert, self.sv_model = sovits.eval(), gpt.eval(), hubert, bert, sv_model
        self.device = next(sovits.parameters()).device
        self.mode = "as loaded"  # until prepare()
        if sovits.is_pro and sv_model is None:
            raise SynthesisError(f"a {sovits.version} voice needs the speaker-verification model: set "
                                 "pretrained.sv_checkpoint in params.yaml")

    def prepare(self, mode: str = "exact") -> "Synthesizer":
        """Choose how the models run (`inference.mode` in params.yaml); returns self. Call once, before speaking.

        "exact": float32 as loaded, the official computation up to float rounding (the decoder's weight-norm
        weights cached and, on CPU, its convolutions channels-last).
        "fast": on CPU, a bfloat16 SoVITS and int8 GPT decoding steps; on a GPU, bfloat16 SoVITS and GPT. About 2.3x
        faster per sentence on a 2-core CPU (docs/benchmarks.md); outputs differ from "exact" by bfloat16 rounding of
        the waveform and occasional different sampled tokens. Both are `models.inference.prepare_for_inference`.
        """
        from models.inference import prepare_for_inference

        if mode not in INFERENCE_MODES:
            raise SynthesisError(f"inference mode must be one of {', '.join(INFERENCE_MODES)}, got {mode!r}")
        prepare_for_inference(self.sovits, self.gpt, mode)
        self.mode = mode
        return self

    # -- reference --------------------------------------------------------------------------------------------------

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
        prompt = prepare_for_synthesis(text, language)
        bert = bert_for_segments(self.bert, prompt.segments, prompt.word2ph)
        sv = None
        if self.sovits.is_pro:
            from models.sv import sv_embedding

            sv = sv_embedding(wav32_t, self.sv_model)
        return Reference(spec=spec, codes=codes, phones=torch.tensor(prompt.ids, dtype=torch.long), bert=bert,
                         sv=sv, text=prompt.text, duration_s=duration_s)

    # -- synthesis --------------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def sentence(self, text: str, reference: Reference, language: str = "auto",
                 settings: SamplingSettings | None = None, generator: torch.Generator | None = None) -> SentenceAudio:
        """One sentence -> audio `(n,)` float32 at 32 kHz."""
        from models.features import bert_for_segments
        from models.text import prepare_for_synthesis

        s = settings or SamplingSettings()
        started = time.perf_counter()
        target = prepare_for_synthesis(text, language)
        bert = bert_for_segments(self.bert, target.segments, target.word2ph)
        target_ids = torch.tensor(target.ids, dtype=torch.long)
        phones = torch.cat([reference.phones, target_ids])[None].to(self.device)
        bert_all = torch.cat([reference.bert, bert], dim=1)[None].to(self.device)
        gpt_dtype = next(self.gpt.parameters()).dtype
        max_new = int(s.max_tokens_per_phone * len(target.ids)) + 25
        codes = self.gpt.generate(phones, bert_all.to(gpt_dtype), reference.codes.to(self.device), top_k=s.top_k,
                                  top_p=s.top_p, temperature=s.temperature, repetition_penalty=s.repetition_penalty,
                                  early_stop_num=max_new, generator=generator)
        if codes.shape[1] == 0:
            raise SynthesisError(f"the GPT made no audio tokens for {text!r}; try again with another seed")
        noise = None
        if generator is not None and s.noise_scale:
            frames = int(2 * codes.shape[1] / s.speed) + 1 if s.speed != 1.0 else 2 * codes.shape[1]
            noise = torch.randn(1, self.sovits.config.inter_channels, frames, generator=generator,
                                device=generator.device).to(self.device)
        wav = self.sovits.decode(codes[None], target_ids[None].to(self.device), reference.spec,
                                 noise_scale=s.noise_scale, speed=s.speed, sv_emb=reference.sv, noise=noise)
        samples = wav[0, 0].float().cpu().numpy()
        peak = float(np.abs(samples).max()) if len(samples) else 0.0
        if peak > 1.0:
            samples = samples / peak
        return SentenceAudio(target.text, samples.astype(np.float32), int(codes.shape[1]), len(target.ids),
                             time.perf_counter() - started)

    def stream(self, text: str, reference: Reference, language: str = "auto",
               settings: SamplingSettings | None = None, seed: int | None = None) -> Iterator[SentenceAudio]:
        """Sentence by sentence (split as the official front-end does), each with its trailing pause."""
        from models.text import split_sentences

        s = settings or SamplingSettings()
        generator = torch.Generator(device="cpu").manual_seed(seed) if seed is not None else None
        sentences = split_sentences(text, language)
        if not sentences:
            raise SynthesisError("the text is empty: give at least one word to synthesize")
        pause = np.zeros(int(s.pause_s * SAMPLE_RATE_HZ), np.float32)
        for i, sentence in enumerate(sentences):
            audio = self.sentence(sentence.text, reference, sentence.language, s, generator)
            if i + 1 < len(sentences):
                audio.samples = np.concatenate([audio.samples, pause])
            yield audio

    def speak(self, text: str, reference: Reference, language: str = "auto",
              settings: SamplingSettings | None = None, seed: int | None = None) -> Speech:
        """The whole text as one waveform, with per-sentence details and time to first audio."""
        started = time.perf_counter()
        parts, first = [], 0.0
        for audio in self.stream(text, reference, language, settings, seed):
            if not parts:
                first = time.perf_counter() - started
            parts.append(audio)
        samples = np.concatenate([p.samples for p in parts]).astype(np.float32)
        return Speech(samples, SAMPLE_RATE_HZ, parts, first, time.perf_counter() - started)
