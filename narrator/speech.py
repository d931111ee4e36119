"""Speech analysis shared by intake and evaluation: voice activity and speaker embeddings.

Both models ship inside their wheels and run offline:
- voice activity: Silero VAD (ONNX, `silero-vad`), one speech probability per 32 ms frame at 16 kHz;
- speaker embedding: the GE2E encoder of `resemblyzer`, 256-d, L2-normalised.

Both run batched across clips: one call of the VAD model advances many clips by one frame, and the partial
utterances of many clips go through the speaker LSTM together. Per-clip calls spend most of their time in call
overhead; batching makes validation several times faster (see bench/validate.py).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence

import numpy as np
import torch

SAMPLE_RATE_HZ = 16000
VAD_FRAME_SAMPLES = 512  # Silero's window at 16 kHz (32 ms)
VAD_CONTEXT_SAMPLES = 64  # samples of the previous window the model sees with each window

_MEL_WINDOW = 400  # 25 ms at 16 kHz (GE2E front end)
_MEL_HOP = 160  # 10 ms
_MEL_BANDS = 40
_PARTIAL_FRAMES = 160  # 1.6 s per partial utterance
_PARTIAL_STEP = 160  # no overlap: half the cost of 50 %, same verdicts on whole clips
_MIN_LAST_COVERAGE = 0.75


def vad_frame_s() -> float:
    return VAD_FRAME_SAMPLES / SAMPLE_RATE_HZ


class VoiceActivityDetector:
    """Silero VAD over many 16 kHz clips at once.

    `probabilities(clips)` returns, per clip, `(frames,)` speech probabilities, one per 32 ms frame.
    """

    def __init__(self, batch_size: int = 64):
        import importlib.resources

        import onnxruntime

        threads = torch.get_num_threads()
        model_path = importlib.resources.files("silero_vad.data").joinpath("silero_vad.onnx")
        options = onnxruntime.SessionOptions()
        options.inter_op_num_threads = 1
        options.intra_op_num_threads = 1
        options.log_severity_level = 3
        self._session = onnxruntime.InferenceSession(
            str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        # importing the silero_vad package sets torch to one thread for the whole process (silero_vad/model.py):
        # without this, every torch model that runs after a VAD was made (evaluation, tests) would use one core
        torch.set_num_threads(threads)
        self.batch_size = batch_size

    def probabilities(self, clips: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Speech probability per frame for each clip. Clips: `(samples,)` float32 at 16 kHz."""
        order = sorted(range(len(clips)), key=lambda i: len(clips[i]))
        out: list[np.ndarray | None] = [None] * len(clips)
        for start in range(0, len(order), self.batch_size):
            group = order[start:start + self.batch_size]
            for index, probs in zip(group, self._run_batch([clips[i] for i in group])):
                out[index] = probs
        return out  # type: ignore[return-value]

    def _run_batch(self, clips: list[np.ndarray]) -> list[np.ndarray]:
        frames = [max(1, -(-len(c) // VAD_FRAME_SAMPLES)) for c in clips]
        n_frames = max(frames)
        batch = np.zeros((len(clips), VAD_CONTEXT_SAMPLES + n_frames * VAD_FRAME_SAMPLES), np.float32)
        for row, clip in enumerate(clips):
            batch[row, VAD_CONTEXT_SAMPLES:VAD_CONTEXT_SAMPLES + len(clip)] = clip
        state = np.zeros((2, len(clips), 128), np.float32)
        rate = np.array(SAMPLE_RATE_HZ, dtype=np.int64)
        probs = np.empty((len(clips), n_frames), np.float32)
        width = VAD_CONTEXT_SAMPLES + VAD_FRAME_SAMPLES
        for f in range(n_frames):
            begin = f * VAD_FRAME_SAMPLES
            window = batch[:, begin:begin + width]
            out, state = self._session.run(None, {"input": window, "state": state, "sr": rate})
            probs[:, f] = out[:, 0]
        return [probs[row, :frames[row]] for row in range(len(clips))]


@functools.lru_cache(maxsize=1)
def _mel_basis() -> torch.Tensor:
    import librosa

    return torch.from_numpy(librosa.filters.mel(sr=SAMPLE_RATE_HZ, n_fft=_MEL_WINDOW, n_mels=_MEL_BANDS))


def ge2e_mel(wav_16k: np.ndarray) -> np.ndarray:
    """The GE2E encoder's input: `(frames, 40)` mel power (not log), 25 ms windows every 10 ms."""
    x = torch.from_numpy(np.ascontiguousarray(wav_16k, dtype=np.float32))
    window = torch.hann_window(_MEL_WINDOW)
    pad = _MEL_WINDOW // 2
    x = torch.nn.functional.pad(x[None, None], (pad, pad), mode="constant")[0, 0]
    spec = torch.stft(x, _MEL_WINDOW, _MEL_HOP, window=window, center=False, return_complex=True)
    power = spec.real.square() + spec.imag.square()
    return (_mel_basis() @ power).T.contiguous().numpy()


class SpeakerEncoder:
    """GE2E speaker embeddings (resemblyzer's pretrained encoder), batched across clips.

    `embed(clips)` -> `(n_clips, 256)` L2-normalised float32. Clips are 16 kHz mono; pass only voiced audio
    (see `voiced`) for the most stable embeddings.
    """

    def __init__(self, batch_partials: int = 256):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from resemblyzer import VoiceEncoder

            self._encoder = VoiceEncoder("cpu", verbose=False)
        self.batch_partials = batch_partials

    def embed(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        partials: list[np.ndarray] = []
        owners: list[int] = []
        for index, clip in enumerate(clips):
            clip = _normalise_volume(clip)
            for part in _partials(ge2e_mel(clip)):
                partials.append(part)
                owners.append(index)
        if not partials:
            return np.zeros((0, 256), np.float32)
        embeddings = []
        with torch.inference_mode():
            for start in range(0, len(partials), self.batch_partials):
                chunk = torch.from_numpy(np.stack(partials[start:start + self.batch_partials]))
                embeddings.append(self._encoder(chunk).numpy())
        partial_embeddings = np.concatenate(embeddings)
        owner_ids = np.asarray(owners)
        out = np.zeros((len(clips), partial_embeddings.shape[1]), np.float32)
        for index in range(len(clips)):
            mean = partial_embeddings[owner_ids == index].mean(axis=0)
            out[index] = mean / max(float(np.linalg.norm(mean)), 1e-9)
        return out


def _normalise_volume(wav: np.ndarray, target_dbfs: float = -30.0) -> np.ndarray:
    """Raise quiet audio to `target_dbfs` RMS (never lower it), as the GE2E encoder was trained."""
    rms = float(np.sqrt(np.mean(np.square(wav), dtype=np.float64))) if len(wav) else 0.0
    if rms <= 1e-9:
        return wav
    gain_db = target_dbfs - 20 * np.log10(rms)
    return wav * (10 ** (gain_db / 20)) if gain_db > 0 else wav


def _partials(mel: np.ndarray) -> list[np.ndarray]:
    """Cut `(frames, 40)` into 160-frame partials; zero-pad a last partial that covers 75 %."""
    n = len(mel)
    if n <= _PARTIAL_FRAMES:
        return [np.pad(mel, ((0, _PARTIAL_FRAMES - n), (0, 0)))]
    out = []
    start = 0
    while start + _PARTIAL_FRAMES <= n:
        out.append(mel[start:start + _PARTIAL_FRAMES])
        start += _PARTIAL_STEP
    rest = n - start
    if rest >= _MIN_LAST_COVERAGE * _PARTIAL_FRAMES:
        out.append(np.pad(mel[start:], ((0, _PARTIAL_FRAMES - rest), (0, 0))))
    return out


def voiced(wav_16k: np.ndarray, probabilities: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """The samples of `wav_16k` in frames the VAD marked as speech (all of it when no frame is speech)."""
    mask = np.repeat(probabilities >= threshold, VAD_FRAME_SAMPLES)[: len(wav_16k)]  # frames cover the clip
    if mask.sum() < SAMPLE_RATE_HZ // 2:  # under half a second of speech: keep everything
        return wav_16k
    return wav_16k[mask]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-9))
