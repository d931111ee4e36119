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

Sub-sentence streaming (`stream(..., chunking=StreamingConfig)`, settings `inference.stream`): the GPT hands its
tokens out in chunks as it makes them (`GPT.generate_chunks`, the same tokens as a whole decode) and `ChunkedRender`
decodes each chunk with SoVITS together with `context_tokens` tokens before it, holds the last `lookahead_tokens`
back (their audio lacks right context) and cross-fades the held-back audio into the next chunk's over
`crossfade_ms`. Time to first audio is then `first_chunk_tokens` of GPT decoding plus one short SoVITS decode. Such
a sentence decodes its GPT alone (no cross-request batching: `decode` is not used for it), and at `speed` 1 only:
another speed is spoken a sentence at a time.

Seeding rule: with a seed, sentence i of a text draws its GPT sampling from a generator seeded with
`sentence_seed(seed, i)` (on the synthesizer's device), and its decoder noise from a `NoiseTrack` seeded from that
seed: blocks of noise drawn in time order, so every frame's noise is the same whether the sentence is decoded whole
or chunk by chunk. A seeded text therefore gives the same tokens and noise whichever path speaks it (evaluation,
sample, service), whether streamed or whole. Without a seed the draws come from torch's global generator.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np
import torch

from narrator.config import Params, StreamingConfig
from narrator.errors import NarratorError

if TYPE_CHECKING:
    from models.text.lexicon import PhoneLexicon

REFERENCE_MIN_S, REFERENCE_MAX_S = 3.0, 10.0  # the official limits on the reference clip
SAMPLE_RATE_HZ = 32000
SEED_STRIDE = 0x9E3779B1  # sentence_seed: far apart for neighbouring seeds, so no two (seed, sentence) collide
MAX_SEED = 2 ** 63 - 1
NOISE_SEED_SALT = 0x2545F4914F6CDD1D  # NoiseTrack: its seed is the sentence's seed mixed with this
NOISE_BLOCK_FRAMES = 50  # NoiseTrack draws decoder noise in blocks of this many frames (50 Hz: 1 s)


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
    last: bool = True  # the sentence's last piece (sub-sentence streaming yields several pieces per sentence)


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

    def pause(self) -> np.ndarray:
        """The silence between two sentences: `(int(pause_s * 32000),)` float32 zeros."""
        return np.zeros(int(self.pause_s * SAMPLE_RATE_HZ), np.float32)


def spoken_sentences(text: str, language: str) -> list:
    """`models.text.split_sentences` of a text to speak (split as the official front-end does); an empty text is a
    SynthesisError."""
    from models.text import split_sentences

    sentences = split_sentences(text, language)
    if not sentences:
        raise SynthesisError("the text is empty: give at least one word to synthesize")
    return sentences


INFERENCE_MODES = ("exact", "fast")

# A replacement for `Synthesizer.decode` (the service's batcher): (plan, generator or None) -> codes (1, n_new).
Decoder = Callable[[SentencePlan, "torch.Generator | None"], torch.Tensor]
# A replacement for `Synthesizer.decode_chunks` (the service's, which takes the voice's lock per chunk):
# (plan, generator or None) -> (new codes (1, k), last) as the GPT makes them.
ChunkDecoder = Callable[[SentencePlan, "torch.Generator | None"], Iterator[tuple[torch.Tensor, bool]]]


def sentence_seed(seed: int, index: int) -> int:
    """The seed of sentence `index` of a text spoken with `seed` (the seeding rule of the module docstring)."""
    return (seed * SEED_STRIDE + index) % MAX_SEED


class NoiseTrack:
    """The decoder noise of one sentence, N(0, 1) of shape `(1, channels, frames)` at 50 frames per second, drawn
    in blocks of `NOISE_BLOCK_FRAMES` frames in time order: the noise of a frame does not depend on how many frames
    are asked for, so a chunked decode and a whole one draw the same noise at the same frame. Seeded from the
    sentence generator's seed (its draws for the GPT are left alone), or torch's global generator when None."""

    def __init__(self, channels: int, device: torch.device, generator: torch.Generator | None = None) -> None:
        self.channels, self.device = channels, device
        self._generator = None
        if generator is not None:
            seed = (generator.initial_seed() ^ NOISE_SEED_SALT) % MAX_SEED
            self._generator = torch.Generator(device=generator.device).manual_seed(seed)
        self._blocks: list[torch.Tensor] = []

    def frames(self, start: int, stop: int) -> torch.Tensor:
        """Noise of frames [start, stop): `(1, channels, stop - start)` on the synthesizer's device."""
        while len(self._blocks) * NOISE_BLOCK_FRAMES < stop:
            gen = self._generator
            self._blocks.append(torch.randn(1, self.channels, NOISE_BLOCK_FRAMES, generator=gen,
                                            device=gen.device if gen is not None else "cpu"))
        first, last = start // NOISE_BLOCK_FRAMES, max(start, stop - 1) // NOISE_BLOCK_FRAMES
        block = torch.cat(self._blocks[first:last + 1], dim=2)
        offset = first * NOISE_BLOCK_FRAMES
        return block[:, :, start - offset:stop - offset].to(self.device)


class ChunkedRender:
    """SoVITS audio of one sentence as its tokens arrive (sub-sentence streaming, the module docstring).

    `push(codes (1, k), last)` takes the GPT's next tokens and returns the audio `(samples,)` float32 at 32 kHz that
    is final now: tokens [sent, n - lookahead) (all of them when `last`), decoded as the window
    [sent - context, n) with the sentence's phones and the noise of those frames; the first `crossfade` samples fade
    from the audio held back by the window before. The pieces joined are as long as the whole decode of all the
    tokens (1280 samples per token) and close to it: a window's attention sees its own tokens, not the whole
    sentence's (0.18 dB mean log-mel difference at full size, docs/benchmarks.md). Samples are clipped to [-1, 1]
    (a whole decode is scaled down instead, which a stream cannot know in advance).
    """

    def __init__(self, synth: "Synthesizer", plan: SentencePlan, reference: Reference, settings: SamplingSettings,
                 chunking: StreamingConfig, noise: NoiseTrack | None) -> None:
        if settings.speed != 1.0:
            raise SynthesisError(f"sub-sentence streaming speaks at speed 1 only, got {settings.speed:g}; stream "
                                 "a sentence at a time for other speeds")
        self.synth, self.plan, self.reference, self.settings = synth, plan, reference, settings
        self.chunking, self.noise = chunking, noise
        self.samples_per_token = synth.sovits.samples_per_code  # samples per token (1280 at 32 kHz)
        self.frames_per_token = synth.sovits.samples_per_code // synth.sovits.config.upsample_factor  # 2
        self.fade_samples = min(int(round(chunking.crossfade_ms * SAMPLE_RATE_HZ / 1000)),
                                chunking.lookahead_tokens * self.samples_per_token)
        self.codes = torch.zeros(1, 0, dtype=torch.long)
        self.sent = 0  # audio of tokens [0, sent) has been handed out
        self._held = np.zeros(0, np.float32)  # the last window's audio after token `sent` (fade source)

    def push(self, codes: torch.Tensor, last: bool = False) -> np.ndarray:
        self.codes = torch.cat([self.codes, codes.cpu()], dim=1)
        n = self.codes.shape[1]
        stop = n if last else n - self.chunking.lookahead_tokens
        if stop <= self.sent:
            if last and n == 0:
                raise SynthesisError(f"the GPT made no audio tokens for {self.plan.text!r}; try again with another "
                                     "seed")
            return np.zeros(0, np.float32)
        start = max(0, self.sent - self.chunking.context_tokens)
        wav = self._decode(start, n)
        out = wav[(self.sent - start) * self.samples_per_token:(stop - start) * self.samples_per_token].copy()
        fade_n = min(len(self._held), len(out))
        if fade_n:
            ramp = (0.5 - 0.5 * np.cos(np.pi * (np.arange(fade_n) + 0.5) / fade_n)).astype(np.float32)
            out[:fade_n] = self._held[:fade_n] * (1.0 - ramp) + out[:fade_n] * ramp
        held_from = (stop - start) * self.samples_per_token
        self._held = wav[held_from:held_from + self.fade_samples].copy() if not last else np.zeros(0, np.float32)
        self.sent = stop
        return np.clip(out, -1.0, 1.0)

    def _decode(self, start: int, stop: int) -> np.ndarray:
        """Waveform of the tokens [start, stop) `(samples,)`, with the noise of their frames."""
        s, synth = self.settings, self.synth
        noise = None
        if self.noise is not None and s.noise_scale:
            noise = self.noise.frames(start * self.frames_per_token, stop * self.frames_per_token)
        wav = synth.sovits.decode(self.codes[None, :, start:stop].to(synth.device),
                                  self.plan.target_phones[None].to(synth.device), self.reference.spec,
                                  noise_scale=s.noise_scale, sv_emb=self.reference.sv, noise=noise)
        return wav[0, 0].float().cpu().numpy()


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
            per_token = self.sovits.samples_per_code // self.sovits.config.upsample_factor  # frames per token: 2
            frames = int(per_token * codes.shape[1] / s.speed) + 1 if s.speed != 1.0 else per_token * codes.shape[1]
            noise = self.noise_track(generator).frames(0, frames)
        wav = self.sovits.decode(codes[None].to(self.device), plan.target_phones[None].to(self.device),
                                 reference.spec, noise_scale=s.noise_scale, speed=s.speed, sv_emb=reference.sv,
                                 noise=noise)
        samples = wav[0, 0].float().cpu().numpy()
        peak = float(np.abs(samples).max()) if len(samples) else 0.0
        if peak > 1.0:
            samples = samples / peak
        return samples.astype(np.float32)

    @torch.inference_mode()
    def decode_chunks(self, plan: SentencePlan, reference: Reference, settings: SamplingSettings | None = None,
                      generator: torch.Generator | None = None, chunking: StreamingConfig | None = None
                      ) -> Iterator[tuple[torch.Tensor, bool]]:
        """`decode` handed out as the GPT makes it: `(new codes (1, k), last)`, the first after
        `chunking.first_chunk_tokens` tokens, then every `chunking.chunk_tokens`; joined, exactly `decode`'s codes."""
        s, c = settings or SamplingSettings(), chunking or StreamingConfig()
        yield from self.gpt.generate_chunks(plan.phones.to(self.device), plan.bert.to(self.device, self._gpt_dtype),
                                            reference.codes.to(self.device), c.first_chunk_tokens, c.chunk_tokens,
                                            top_k=s.top_k, top_p=s.top_p, temperature=s.temperature,
                                            repetition_penalty=s.repetition_penalty,
                                            early_stop_num=plan.max_new_tokens, generator=generator)

    def noise_track(self, generator: torch.Generator | None) -> NoiseTrack:
        """The decoder noise of the sentence whose generator is `generator` (None: torch's global one)."""
        return NoiseTrack(self.sovits.config.inter_channels, self.device, generator)

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

    def sentence_pieces(self, text: str, reference: Reference, language: str = "auto",
                        settings: SamplingSettings | None = None, generator: torch.Generator | None = None,
                        decode: Decoder | None = None, *, lexicon: PhoneLexicon | None = None,
                        chunking: StreamingConfig | None = None,
                        decode_chunks: ChunkDecoder | None = None) -> Iterator[SentenceAudio]:
        """One sentence as audio pieces: the whole sentence (`sentence`) without `chunking` or at a speed other
        than 1, else sub-sentence chunks as the GPT makes its tokens (`ChunkedRender`; `decode_chunks` replaces
        `Synthesizer.decode_chunks`, `decode` is not used). Each piece's `tokens` are the tokens its audio covers;
        the last piece has `last=True`."""
        s = settings or SamplingSettings()
        if chunking is None or s.speed != 1.0:
            yield self.sentence(text, reference, language, s, generator, decode, lexicon=lexicon)
            return
        started = time.perf_counter()
        plan = self.plan(text, reference, language, s, lexicon=lexicon)
        planned_s = time.perf_counter() - started
        for k, piece in enumerate(self.plan_pieces(plan, reference, s, generator, chunking, decode_chunks)):
            if k == 0:
                piece.seconds += planned_s  # the first piece's wall time includes the planning
            yield piece

    def plan_pieces(self, plan: SentencePlan, reference: Reference, settings: SamplingSettings,
                    generator: torch.Generator | None, chunking: StreamingConfig,
                    decode_chunks: ChunkDecoder | None = None) -> Iterator[SentenceAudio]:
        """The sub-sentence pieces of a planned sentence at speed 1 (`sentence_pieces` after `plan`): GPT chunks
        (`decode_chunks`, or the `ChunkDecoder` given) rendered by `ChunkedRender` as they come."""
        s = settings
        started = time.perf_counter()
        render = ChunkedRender(self, plan, reference, s, chunking, self.noise_track(generator))
        if decode_chunks is None:
            chunks = self.decode_chunks(plan, reference, s, generator, chunking)
        else:
            chunks = decode_chunks(plan, generator)
        phones = int(plan.target_phones.numel())
        try:
            for codes, last in chunks:
                before = render.sent
                samples = render.push(codes, last)
                if len(samples) or last:
                    now = time.perf_counter()
                    yield SentenceAudio(plan.text, samples, render.sent - before, phones, now - started, last)
                    started = now
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:  # a stream closed early stops its GPT decode here
                close()

    def stream(self, text: str, reference: Reference, language: str = "auto",
               settings: SamplingSettings | None = None, seed: int | None = None,
               decode: Decoder | None = None, *, chunking: StreamingConfig | None = None,
               decode_chunks: ChunkDecoder | None = None) -> Iterator[SentenceAudio]:
        """Sentence by sentence (split as the official front-end does), each with its trailing pause; with
        `chunking`, each sentence in sub-sentence pieces (`sentence_pieces`), the pause after its last.

        `decode` replaces `Synthesizer.decode` (the service batches GPT decodes across requests with it)."""
        s = settings or SamplingSettings()
        sentences = spoken_sentences(text, language)
        pause = s.pause()
        for i, sentence in enumerate(sentences):
            for audio in self.sentence_pieces(sentence.text, reference, sentence.language, s, self.generator(seed, i),
                                              decode, chunking=chunking, decode_chunks=decode_chunks):
                if audio.last and i + 1 < len(sentences):
                    audio.samples = np.concatenate([audio.samples, pause])
                yield audio

    def stream_segments(self, segments: list, reference: Reference, settings: SamplingSettings | None = None,
                        seed: int | None = None, decode: Decoder | None = None, *,
                        chunking: StreamingConfig | None = None,
                        decode_chunks: ChunkDecoder | None = None) -> Iterator[SentenceAudio]:
        """An SSML document's segments (`models.text.ssml.parse_ssml`) in order: each `Speech` split into sentences
        and spoken as `stream` speaks text (sentence i of the document, counting every segment's, is seeded with
        `sentence_seed(seed, i)`), at `settings.speed` times its rate (bounded 0.5-2) and read with its phones; each
        `Pause` as exactly that many zero samples, in place of the pause between sentences where it stands.
        `chunking`: sub-sentence pieces for the sentences spoken at speed 1 (`sentence_pieces`)."""
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
        pause = s.pause()
        index = 0
        for k, item in enumerate(items):
            if isinstance(item, Pause):
                yield SentenceAudio("", np.zeros(round(item.seconds * SAMPLE_RATE_HZ), np.float32), 0, 0, 0.0)
                continue
            sentence, seg_settings, lexicon = item
            for audio in self.sentence_pieces(sentence.text, reference, sentence.language, seg_settings,
                                              self.generator(seed, index), decode, lexicon=lexicon,
                                              chunking=chunking, decode_chunks=decode_chunks):
                if audio.last and k + 1 < len(items) and not isinstance(items[k + 1], Pause):
                    audio.samples = np.concatenate([audio.samples, pause])
                yield audio
            index += 1

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
