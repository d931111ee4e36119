"""Keyed audio watermark: a 32-bit payload hidden in the spectral envelope of speech, 500 Hz - 4 kHz.

Everything happens at a fixed analysis rate (16 kHz) whatever the input rate: the mark is computed there and
resampled back; the detector resamples its input there.

* Embedding. The STFT power between 500 Hz and 4 kHz is grouped into tiles (`band_bins` bins x `tile_frames`
  frames, 125 Hz x 128 ms). Each tile carries one bit by quantisation index modulation (QIM) of its log energy:
  the energy is moved towards the nearest point of a keyed, dithered lattice (step `step_db`); the bit chooses
  one of two interleaved lattices. The move is a gain on the tile, so the mark follows the speech and silence
  gets none. Quiet and middle tiles move all the way; the loudest tiles, which hold most of the energy but are
  the least damaged by codecs and noise, move part way (distortion compensation), so that the watermark energy
  sits `target_wsr_db` below the host.
* Layout. A period of `period_columns` tile columns (about 3 s) repeats through the audio. A keyed 60% of
  its tiles carry known sync bits (presence); the rest carry the payload: 32 bits + CRC-16, convolutionally
  coded (rate 1/2, constraint length 7), each coded bit spread over several columns and bands.
* Detection needs no copy of the original. Tile energies are recomputed on a fine time grid (every
  `search_hop` samples), so any excerpt, cut at any sample, is aligned again. For each alignment the tiles
  are summed per period position (fold) and correlated, as unit phasors, with the sync lattice; the magnitude
  ignores a gain change. The null variance comes from the folded data and the key alone, so unmarked audio,
  repetitive audio and audio marked with another key all give a score distributed like N(0, 1). The
  threshold follows from `false_alarm` and the number of alignments and windows tried (Bonferroni). The
  payload is read (soft Viterbi) at the best alignments and returned only when its CRC matches.

The key (any string or bytes) seeds everything secret: dither, sync bits and the tile layout.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soxr
import torch
from scipy import special

from narrator.errors import NarratorError

KEY_ENV = "NARRATOR_WATERMARK_KEY"
KEY_FILE_ENV = "NARRATOR_WATERMARK_KEY_FILE"
PAYLOAD_BITS = 32
MIN_EMBED_RATE_HZ = 16000  # the band must reach 4 kHz with room to spare
MIN_DETECT_RATE_HZ = 8000  # narrow-band copies are still searched (the top bands are lost)
MAX_RATE_HZ = 192000
_CRC_BITS = 16
_CRC_POLY = 0x1021  # CRC-16/CCITT
_CODE_MEMORY = 6  # constraint length 7
_CODE_GENERATORS = (0o171, 0o133)  # the classic rate-1/2 pair (free distance 10)
_KEY_DOMAIN = b"narrator-watermark-v1\x00"
_BISECTION_STEPS = 40
_STFT_PIECE_FRAMES = 4096  # frames per STFT call in detection: bounds memory on long audio
_WINDOWS_PER_BATCH = 8  # detection windows scored together: bounds memory
_TINY = 1e-20
_ENERGY_FLOOR = 1e-30  # added to tile energies before the log (digital silence)


class WatermarkError(NarratorError):
    """The watermark cannot be embedded or read (no key, bad payload, unsupported audio...)."""


@dataclass(frozen=True)
class WatermarkConfig:
    """Geometry and strength of the mark. Embedder and detector must agree on every field above `target_wsr_db`;
    the rest tune one side only."""

    analysis_rate_hz: int = 16000
    hop: int = 256  # embedding frame hop at analysis_rate_hz, samples (16 ms); the window is 2 * hop
    band_hz: tuple[float, float] = (500.0, 4000.0)
    band_bins: int = 4  # STFT bins per tile band (125 Hz)
    tile_frames: int = 8  # frames per tile column (128 ms)
    period_columns: int = 24  # tile columns per repeating period (3.07 s)
    sync_fraction: float = 0.6  # share of a period's tiles that carry known sync bits
    step_db: float = 4.0  # lattice step of a tile's log energy, dB
    # embedder only
    target_wsr_db: float = -31.5  # watermark-to-signal energy ratio the embedder aims at
    max_wsr_db: float = -30.0  # hard cap: the mark is scaled down if it would exceed this
    compensation: float = 1.0  # the largest fraction of the way to its lattice point that a tile moves
    embed_passes: int = 3  # re-analyse and correct (a changed STFT is not consistent)
    chunk_columns: int = 480  # long audio is processed in chunks of this many columns (61 s)
    # detector only
    search_hop: int = 16  # alignment grid, samples at analysis_rate_hz (1 ms)
    weight_floor_db: float = -30.0  # tiles this far below the mean tile energy carry no weight ...
    noise_margin_db: float = 0.0  # ... nor tiles this close to their band's noise floor ...
    weight_ramp_db: float = 15.0  # ... and the weight grows to 1 over this many dB above either limit
    noise_quantile: float = 0.1  # a band's noise floor: this quantile of its tile energies
    window_columns: int = 24  # shortest window searched (3.07 s), doubled up to the whole segment
    segment_columns: int = 480  # long audio is searched in segments of this many columns (61 s) ...
    segment_overlap: int = 120  # ... overlapping by this many (15 s)
    false_alarm: float = 1e-6  # chance of a detection in unmarked audio, per file
    decode_attempts: int = 6  # best windows tried for the payload

    def __post_init__(self) -> None:
        nyquist = self.analysis_rate_hz / 2
        if not 0 < self.band_hz[0] < self.band_hz[1] <= nyquist:
            raise WatermarkError(f"watermark band_hz {self.band_hz} must lie inside 0..{nyquist:g} Hz")
        if self.hop % self.search_hop:
            raise WatermarkError(f"watermark search_hop ({self.search_hop}) must divide hop ({self.hop})")
        if self.n_bands < 1 or not 0 < self.sync_fraction < 1 or self.step_db <= 0:
            raise WatermarkError("watermark band_bins, sync_fraction or step_db out of range: keep the defaults")
        if self.target_wsr_db > self.max_wsr_db:
            raise WatermarkError("watermark target_wsr_db must not exceed max_wsr_db")

    @property
    def n_fft(self) -> int:
        """Analysis window (square-root Hann, 50% overlap: analysis x synthesis windows add up to one)."""
        return 2 * self.hop

    @property
    def step_nepers(self) -> float:
        """Lattice step in natural-log power units."""
        return self.step_db * math.log(10.0) / 10.0

    @property
    def first_bin(self) -> int:
        return int(round(self.band_hz[0] * self.n_fft / self.analysis_rate_hz))

    @property
    def n_bands(self) -> int:
        bins = int(round((self.band_hz[1] - self.band_hz[0]) * self.n_fft / self.analysis_rate_hz))
        return bins // self.band_bins

    @property
    def column_samples(self) -> int:
        return self.hop * self.tile_frames

    @property
    def period_s(self) -> float:
        return self.period_columns * self.column_samples / self.analysis_rate_hz


@dataclass(frozen=True)
class Detection:
    """What the detector found. `score`: z-score of the best alignment (about N(0, 1) on unmarked audio);
    `detected` when it reaches `threshold`; `payload` only when detected and its CRC matches."""

    detected: bool
    payload: int | None
    score: float
    threshold: float


@dataclass(frozen=True)
class KeyLayout:
    """The keyed layout of one period. Arrays are `(period_columns, n_bands)`."""

    dither: np.ndarray  # lattice offset of each tile, nepers in [0, step)
    coded_index: np.ndarray  # payload tiles: index of the coded bit they carry; sync tiles: -1
    sync_bits: np.ndarray  # the known bit of each sync tile (0 on payload tiles)

    @property
    def is_sync(self) -> np.ndarray:
        return self.coded_index < 0


# ---------------------------------------------------------------------------------------------------- key


def key_bytes(key: bytes | str) -> bytes:
    """The secret as bytes; refuses an empty one."""
    data = key.encode("utf-8") if isinstance(key, str) else bytes(key)
    if not data.strip():
        raise WatermarkError("the watermark key is empty: set NARRATOR_WATERMARK_KEY to a long random secret")
    return data


def load_key(environ: dict[str, str] | None = None) -> bytes:
    """The watermark key from $NARRATOR_WATERMARK_KEY, else from the file named by $NARRATOR_WATERMARK_KEY_FILE.

    The key is a secret: it never lives in params.yaml. Raises WatermarkError saying how to provide it.
    """
    env = os.environ if environ is None else environ
    if env.get(KEY_ENV):
        return key_bytes(env[KEY_ENV])
    path = env.get(KEY_FILE_ENV)
    if path:
        try:
            return key_bytes(Path(path).read_bytes().strip())
        except OSError as error:
            raise WatermarkError(f"cannot read the watermark key file {path} ({error.strerror}); fix "
                                 f"{KEY_FILE_ENV} or set {KEY_ENV}") from None
    raise WatermarkError(f"no watermark key: set {KEY_ENV} to the secret, or {KEY_FILE_ENV} to a file holding it "
                         "(e.g. a mounted secret); generate one with `python -c \"import secrets; "
                         "print(secrets.token_hex(32))\"`")


def key_layout(key: bytes | str, cfg: WatermarkConfig) -> KeyLayout:
    """Derive the period layout from the key: dither, sync bits and which coded bit each payload tile carries."""
    seed = int.from_bytes(hashlib.sha256(_KEY_DOMAIN + key_bytes(key)).digest(), "big")
    rng = np.random.Generator(np.random.PCG64(seed))
    shape = (cfg.period_columns, cfg.n_bands)
    tiles = shape[0] * shape[1]
    dither = rng.random(shape) * cfg.step_nepers
    sync_bits = rng.integers(0, 2, shape)
    n_sync = int(round(tiles * cfg.sync_fraction))
    n_coded = coded_length()
    if tiles - n_sync < n_coded:
        raise WatermarkError(f"the watermark period has {tiles - n_sync} payload tiles, fewer than the {n_coded} "
                             "coded bits: raise period_columns or lower sync_fraction")
    order = rng.permutation(tiles)
    coded_index = np.full(tiles, -1)
    payload_tiles = order[n_sync:]
    # deal the coded bits round-robin over a shuffled list, so each bit lands in several columns and bands
    coded_index[payload_tiles] = np.arange(payload_tiles.size) % n_coded
    coded_index = coded_index.reshape(shape)
    sync_bits = np.where(coded_index < 0, sync_bits, 0)
    return KeyLayout(dither=dither, coded_index=coded_index, sync_bits=sync_bits)


# ------------------------------------------------------------------------------------------ payload coding


def _crc16(bits: np.ndarray) -> np.ndarray:
    """CRC-16/CCITT (initial 0xFFFF) of a bit array (MSB first) -> 16 bits."""
    register = 0xFFFF
    for bit in bits:
        top = ((register >> 15) & 1) ^ int(bit)
        register = (register << 1) & 0xFFFF
        if top:
            register ^= _CRC_POLY
    return np.array([(register >> (15 - i)) & 1 for i in range(_CRC_BITS)], dtype=np.int64)


def _int_bits(value: int, n: int) -> np.ndarray:
    """The n low bits of value, most significant first."""
    return np.array([(value >> (n - 1 - i)) & 1 for i in range(n)], dtype=np.int64)


def coded_length() -> int:
    """Coded bits per period: (payload + CRC + zero tail) x 2 (rate 1/2)."""
    return (PAYLOAD_BITS + _CRC_BITS + _CODE_MEMORY) * len(_CODE_GENERATORS)


def _trellis() -> tuple[np.ndarray, np.ndarray]:
    """`next_state[state, bit]` and `outputs[state, bit, generator]` of the convolutional code."""
    states = 1 << _CODE_MEMORY
    next_state = np.zeros((states, 2), dtype=np.int64)
    outputs = np.zeros((states, 2, len(_CODE_GENERATORS)), dtype=np.int64)
    for state in range(states):
        for bit in range(2):
            register = (bit << _CODE_MEMORY) | state
            next_state[state, bit] = register >> 1
            for g, poly in enumerate(_CODE_GENERATORS):
                outputs[state, bit, g] = bin(register & poly).count("1") & 1
    return next_state, outputs


def encode_payload(payload: int) -> np.ndarray:
    """32-bit payload -> coded bits `(coded_length,)`: payload + CRC-16 + zero tail, convolutionally coded."""
    if not 0 <= int(payload) < (1 << PAYLOAD_BITS):
        raise WatermarkError(f"the payload must be an integer from 0 to 2^{PAYLOAD_BITS} - 1, got {payload}")
    info = _int_bits(int(payload), PAYLOAD_BITS)
    message = np.concatenate([info, _crc16(info), np.zeros(_CODE_MEMORY, dtype=np.int64)])
    next_state, outputs = _trellis()
    state, coded = 0, []
    for bit in message:
        coded.extend(outputs[state, bit])
        state = next_state[state, bit]
    return np.array(coded, dtype=np.int64)


def decode_payload(soft: np.ndarray) -> int | None:
    """Soft-decision Viterbi. `soft` `(coded_length,)`: positive means bit 0. Returns the payload, or None when
    the CRC does not match."""
    decoded = viterbi(soft)
    info = decoded[:PAYLOAD_BITS]
    if not np.array_equal(decoded[PAYLOAD_BITS:PAYLOAD_BITS + _CRC_BITS], _crc16(info)):
        return None
    return int("".join(map(str, info)), 2)


def viterbi(soft: np.ndarray) -> np.ndarray:
    """Most likely message bits `(payload + CRC + tail,)` for soft coded bits `(coded_length,)` (positive: 0),
    starting and ending in the zero state. No CRC check."""
    next_state, outputs = _trellis()
    n_gen = len(_CODE_GENERATORS)
    states = next_state.shape[0]
    signs = 1.0 - 2.0 * outputs  # (states, 2, n_gen)
    new_state = np.arange(states)
    bit_in = new_state >> (_CODE_MEMORY - 1)  # the input bit that leads into each state
    low = (new_state & ((states >> 1) - 1)) << 1  # its two predecessors: low and low | 1
    metric = np.full(states, -np.inf)
    metric[0] = 0.0
    steps = soft.size // n_gen
    came_from = np.zeros((steps, states), dtype=np.int64)
    for t in range(steps):
        branch = signs @ soft[t * n_gen:(t + 1) * n_gen]  # (states, 2)
        via_low = metric[low] + branch[low, bit_in]
        via_high = metric[low | 1] + branch[low | 1, bit_in]
        came_from[t] = np.where(via_high > via_low, low | 1, low)
        metric = np.maximum(via_low, via_high)
    state, decoded = 0, np.zeros(steps, dtype=np.int64)  # the zero tail ends in state 0
    for t in range(steps - 1, -1, -1):
        decoded[t] = state >> (_CODE_MEMORY - 1)
        state = came_from[t, state]
    return decoded


# ------------------------------------------------------------------------------------------- signal helpers


def _mono(samples: np.ndarray) -> np.ndarray:
    """`(n,)` or `(channels, n)` -> float64 `(n,)`; refuses other shapes and non-finite samples."""
    array = np.asarray(samples)
    if array.ndim == 2:
        array = array.mean(axis=0)
    if array.ndim != 1:
        raise WatermarkError(f"audio must be (samples,) or (channels, samples), got shape {np.shape(samples)}")
    array = array.astype(np.float64, copy=False)
    if not np.all(np.isfinite(array)):
        raise WatermarkError("the audio holds NaN or infinite samples; decode it again or fix the source")
    return array


def _check_rate(sample_rate_hz: int, minimum_hz: int) -> None:
    if not minimum_hz <= int(sample_rate_hz) <= MAX_RATE_HZ:
        raise WatermarkError(f"unsupported sample rate {sample_rate_hz} Hz: the watermark needs "
                             f"{minimum_hz // 1000}-{MAX_RATE_HZ // 1000} kHz audio (resample it first)")


def _to_analysis_rate(mono: np.ndarray, sample_rate_hz: int, cfg: WatermarkConfig) -> torch.Tensor:
    """Float32 `(m,)` at `analysis_rate_hz`."""
    data = mono.astype(np.float32)
    if sample_rate_hz != cfg.analysis_rate_hz:
        data = soxr.resample(data, sample_rate_hz, cfg.analysis_rate_hz, quality="HQ")
    return torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))


def _window(cfg: WatermarkConfig) -> torch.Tensor:
    """Square-root periodic Hann, `(n_fft,)`."""
    return torch.hann_window(cfg.n_fft, periodic=True, dtype=torch.float32).sqrt()


def _stft(signal: torch.Tensor, hop: int, cfg: WatermarkConfig) -> torch.Tensor:
    """Frames starting at samples 0, hop, 2 hop...: complex `(frames, n_fft // 2 + 1)`."""
    return torch.stft(signal, cfg.n_fft, hop, window=_window(cfg), center=False, return_complex=True).T


def _istft(spec: torch.Tensor, length: int, cfg: WatermarkConfig) -> torch.Tensor:
    """Overlap-add synthesis of `spec` `(frames, bins)` (frames at 0, hop, 2 hop...) into `(length,)` samples."""
    frames = torch.fft.irfft(spec, cfg.n_fft, dim=1) * _window(cfg)
    out = torch.nn.functional.fold(frames.T.unsqueeze(0), (1, length), (1, cfg.n_fft), stride=(1, cfg.hop))
    return out.reshape(-1)


def _band_energy(spec: torch.Tensor, cfg: WatermarkConfig) -> torch.Tensor:
    """One-sided power summed over each band: `(frames, n_bands)`."""
    lo = cfg.first_bin
    power = torch.view_as_real(spec[:, lo:lo + cfg.n_bands * cfg.band_bins]).square().sum(-1)
    return power.reshape(power.shape[0], cfg.n_bands, cfg.band_bins).sum(-1)


# --------------------------------------------------------------------------------------------------- embed


def embed(samples: np.ndarray, sample_rate_hz: int, payload: int, key: bytes | str,
          config: WatermarkConfig | None = None) -> np.ndarray:
    """Return a marked copy of `samples` carrying `payload` (0 <= payload < 2^32).

    `samples`: float audio in [-1, 1], `(n,)` or `(channels, n)`, at 16-192 kHz. The mark is computed on the
    mono mix and added to every channel. Returns float32 of the same shape (not clipped).
    """
    cfg = config or WatermarkConfig()
    _check_rate(sample_rate_hz, MIN_EMBED_RATE_HZ)
    coded = encode_payload(payload)
    layout = key_layout(key, cfg)
    host = np.asarray(samples, dtype=np.float32)
    mono = _mono(host)
    if mono.size == 0:
        return host.copy()
    mark = _mark_signal(_to_analysis_rate(mono, sample_rate_hz, cfg), _tile_bits(layout, coded), layout, cfg)
    mark = mark.numpy()
    if sample_rate_hz != cfg.analysis_rate_hz:
        mark = soxr.resample(mark, cfg.analysis_rate_hz, sample_rate_hz, quality="HQ")
    mark = _fit(mark.astype(np.float64), mono.size)
    mark *= _wsr_scale(mark, mono, cfg.max_wsr_db)
    return (host + mark.astype(np.float32)).astype(np.float32)


def _tile_bits(layout: KeyLayout, coded: np.ndarray) -> np.ndarray:
    """The bit each tile of a period carries: `(period_columns, n_bands)`."""
    return np.where(layout.is_sync, layout.sync_bits, coded[np.maximum(layout.coded_index, 0)])


def _fit(signal: np.ndarray, n: int) -> np.ndarray:
    """Cut or zero-pad `(m,)` to `(n,)`."""
    if signal.size >= n:
        return signal[:n]
    return np.concatenate([signal, np.zeros(n - signal.size)])


def _wsr_scale(mark: np.ndarray, host: np.ndarray, max_wsr_db: float) -> float:
    """Factor (<= 1) that keeps the watermark-to-signal energy ratio at or below `max_wsr_db`."""
    host_energy, mark_energy = float(np.sum(host ** 2)), float(np.sum(mark ** 2))
    if mark_energy == 0.0:
        return 1.0
    return min(1.0, math.sqrt(host_energy * 10.0 ** (max_wsr_db / 10.0) / mark_energy))


def _mark_signal(signal: torch.Tensor, tile_bits: np.ndarray, layout: KeyLayout,
                 cfg: WatermarkConfig) -> torch.Tensor:
    """The watermark for `signal` `(n,)` at the analysis rate, `(n,)`.

    Tile column j covers samples [j C - hop, (j + 1) C) (C = column_samples). Long audio is marked in chunks of
    `chunk_columns` with one column of context on each side, so memory stays bounded; chunks meet at column
    boundaries."""
    n = signal.numel()
    size = cfg.column_samples
    columns = -(-(n + cfg.hop) // size)
    if columns <= cfg.chunk_columns + 2:
        return _mark_columns(signal, 0, tile_bits, layout, cfg)
    mark = torch.zeros(n)
    for first in range(0, columns, cfg.chunk_columns):
        last = min(columns, first + cfg.chunk_columns)
        context = max(0, first - 1)
        part = _mark_columns(signal[context * size:(last + 1) * size], context, tile_bits, layout, cfg)
        keep_from, keep_to = first * size, min(n, last * size)
        mark[keep_from:keep_to] = part[keep_from - context * size:keep_to - context * size]
    return mark


def _mark_columns(signal: torch.Tensor, first_column: int, tile_bits: np.ndarray, layout: KeyLayout,
                  cfg: WatermarkConfig) -> torch.Tensor:
    """The watermark of `signal` `(n,)`, whose sample 0 starts tile column `first_column`; `(n,)`.

    Each pass re-analyses the marked signal and moves every tile's log energy towards its target (fixed in the
    first pass); later passes correct the leakage between neighbouring tiles."""
    n = signal.numel()
    columns = -(-(n + cfg.hop) // cfg.column_samples)
    frames = columns * cfg.tile_frames
    length = frames * cfg.hop + cfg.hop  # frame t covers padded samples [t hop, t hop + n_fft)
    host = torch.nn.functional.pad(signal, (cfg.hop, length - cfg.hop - n))
    column_class = (first_column + np.arange(columns)) % cfg.period_columns
    step = cfg.step_nepers
    offset = torch.from_numpy((layout.dither + tile_bits * step / 2)[column_class])  # (columns, n_bands)
    lo, hi = cfg.first_bin, cfg.first_bin + cfg.n_bands * cfg.band_bins
    marked, target = host, None
    for _ in range(cfg.embed_passes):
        spec = _stft(marked, cfg.hop, cfg)
        energy = _band_energy(spec, cfg).double().reshape(columns, cfg.tile_frames, cfg.n_bands).sum(1)
        level = torch.log(energy + _ENERGY_FLOOR)
        if target is None:
            move = offset + torch.round((level - offset) / step) * step - level  # to the nearest lattice point
            target = level + _move_fractions(energy, move, float(signal.double().square().sum()), cfg) * move
        gain = torch.exp((target - level) / 2).float()  # amplitude gain per tile
        cell_gain = gain.repeat_interleave(cfg.tile_frames, 0).repeat_interleave(cfg.band_bins, 1)
        change = torch.zeros_like(spec)
        change[:, lo:hi] = spec[:, lo:hi] * (cell_gain - 1)
        marked = marked + _istft(change, length, cfg)
    return (marked - host)[cfg.hop:cfg.hop + n]


def _move_fractions(energy: torch.Tensor, move: torch.Tensor, host_energy: float,
                    cfg: WatermarkConfig) -> torch.Tensor:
    """How far each tile moves towards its lattice point, `(columns, n_bands)` in [0, compensation].

    Tiles below a knee energy move all the way (up to `compensation`); above it the move shrinks as
    1 / sqrt(energy), so the loudest tiles, which dominate the watermark energy but are the least damaged by
    codecs and noise, move part way. The knee is found by bisection so that the watermark energy is
    `target_wsr_db` below `host_energy` (sum of squared samples). The detector needs no knowledge of it.
    `energy`: tile power, one-sided |STFT|^2 summed; `move`: log-power distance to the lattice point.
    """
    budget = host_energy * 10.0 ** (cfg.target_wsr_db / 10.0) * cfg.n_fft / 2.0  # in one-sided |STFT|^2 units
    log_energy = torch.log(energy + _ENERGY_FLOOR)

    def fractions(log_knee: float) -> torch.Tensor:
        return torch.clamp(torch.exp((log_knee - log_energy) / 2.0), max=cfg.compensation)

    def cost(log_knee: float) -> float:
        return float((energy * torch.expm1(fractions(log_knee) * move / 2.0).square()).sum())

    low, high = float(log_energy.min()) - 1.0, float(log_energy.max()) + 1.0
    if cost(high) <= budget:
        return fractions(high)
    for _ in range(_BISECTION_STEPS):
        middle = (low + high) / 2.0
        low, high = (middle, high) if cost(middle) <= budget else (low, middle)
    return fractions(low)


# -------------------------------------------------------------------------------------------------- detect


def detect(samples: np.ndarray, sample_rate_hz: int, key: bytes | str,
           config: WatermarkConfig | None = None) -> Detection:
    """Look for the mark of `key` in `samples` (float, `(n,)` or `(channels, n)`, 8-192 kHz); read its payload.

    Any excerpt of a few seconds can be searched; the payload needs about 10 s of marked speech (less when the
    audio was not degraded)."""
    cfg = config or WatermarkConfig()
    layout = key_layout(key, cfg)
    ranked, threshold = search(samples, sample_rate_hz, layout, cfg)
    if not ranked:
        return Detection(False, None, 0.0, threshold)
    payload = None
    for candidate in ranked[:cfg.decode_attempts]:
        if candidate.z < threshold:
            break
        payload = decode_payload(payload_soft(candidate, layout, cfg))
        if payload is not None:
            break
    return Detection(ranked[0].z >= threshold, payload, ranked[0].z, threshold)


def search(samples: np.ndarray, sample_rate_hz: int, layout: KeyLayout,
           cfg: WatermarkConfig) -> tuple[list[Candidate], float]:
    """The best alignment of every window searched, best first, and the detection threshold for that many
    tests. (The building block of `detect`; benchmarks use it to read the raw payload bits.)"""
    _check_rate(sample_rate_hz, MIN_DETECT_RATE_HZ)
    signal = _to_analysis_rate(_mono(samples), sample_rate_hz, cfg)
    candidates, tests = [], 0
    for segment in _segments(signal.numel(), cfg):
        phasors = _tile_phasors(signal[segment], cfg)
        if phasors is None:
            continue
        by_column = _by_column(phasors, cfg)
        windows = _windows(by_column.shape[0], cfg)
        candidates += _search_windows(by_column, windows, layout, cfg)
        tests += len(windows) * by_column.shape[1] * cfg.period_columns
    return sorted(candidates, key=lambda c: -c.z), _threshold(tests, cfg)


@dataclass(frozen=True)
class Candidate:
    """The best alignment found in one window."""

    z: float
    folded: np.ndarray  # complex `(period_columns, n_bands)`: the window's tile phasors summed per period tile
    rotation: complex  # unit phasor: the common lattice rotation (a gain change) seen in the sync tiles


def _threshold(tests: int, cfg: WatermarkConfig) -> float:
    """z such that the chance of any of `tests` N(0, 1) scores exceeding it is `false_alarm` (Bonferroni)."""
    return float(-special.ndtri(cfg.false_alarm / max(tests, 1)))


def _segments(n: int, cfg: WatermarkConfig) -> list[slice]:
    """Pieces of `segment_columns` columns (the whole signal when shorter), overlapping by `segment_overlap`
    columns, so memory stays bounded and any marked stretch up to the overlap lies whole inside one piece."""
    size = cfg.segment_columns * cfg.column_samples
    if n <= size:
        return [slice(0, n)]
    hop = (cfg.segment_columns - cfg.segment_overlap) * cfg.column_samples
    starts = list(range(0, n - size, hop)) + [n - size]
    return [slice(start, start + size) for start in starts]


def _tile_energy(signal: torch.Tensor, cfg: WatermarkConfig) -> torch.Tensor | None:
    """Tile power on the fine grid: row t is the tile whose first frame starts at sample t search_hop - hop.
    `(rows, n_bands)` float64, or None when the audio is shorter than one tile."""
    padded = torch.nn.functional.pad(signal, (cfg.hop, cfg.n_fft))
    frames = 1 + (padded.numel() - cfg.n_fft) // cfg.search_hop
    ratio = cfg.hop // cfg.search_hop
    rows = frames - ratio * (cfg.tile_frames - 1)
    if rows < cfg.column_samples // cfg.search_hop:
        return None
    bands = torch.empty((frames, cfg.n_bands), dtype=torch.float64)
    for first in range(0, frames, _STFT_PIECE_FRAMES):
        last = min(frames, first + _STFT_PIECE_FRAMES)
        piece = padded[first * cfg.search_hop:(last - 1) * cfg.search_hop + cfg.n_fft]
        bands[first:last] = _band_energy(_stft(piece, cfg.search_hop, cfg), cfg)
    return sum(bands[f * ratio:f * ratio + rows] for f in range(cfg.tile_frames))


def _tile_phasors(signal: torch.Tensor, cfg: WatermarkConfig) -> torch.Tensor | None:
    """Each tile's log energy as a weighted phasor on the lattice circle: complex64 `(rows, n_bands)`.

    A tile's weight (0..1) says how much a codec or noise is likely to have left of its energy, from levels
    alone (never from the phases, so unmarked audio keeps its null distribution): it ramps up from
    `weight_floor_db` below the mean tile energy, and from `noise_margin_db` above its band's noise floor (the
    `noise_quantile` of the band's tile energies). None for audio shorter than a tile, or silent."""
    energy = _tile_energy(signal, cfg)
    if energy is None:
        return None
    mean = float(energy.mean())
    if not mean > 0.0:
        return None
    log_relative = torch.log(torch.clamp(energy / mean, min=_TINY))
    rank = min(log_relative.shape[0], max(1, round(cfg.noise_quantile * log_relative.shape[0])))
    noise_floor = torch.kthvalue(log_relative, rank, dim=0).values  # (n_bands,)
    to_db = 10.0 / math.log(10.0)
    loudness = torch.clamp((log_relative * to_db - cfg.weight_floor_db) / cfg.weight_ramp_db, 0.0, 1.0)
    clearance = torch.clamp(((log_relative - noise_floor) * to_db - cfg.noise_margin_db) / cfg.weight_ramp_db,
                            0.0, 1.0)
    angle = log_relative * (2.0 * math.pi / cfg.step_nepers)
    return torch.polar((loudness * clearance).float(), angle.float())


def _by_column(phasors: torch.Tensor, cfg: WatermarkConfig) -> torch.Tensor:
    """Regroup the fine grid as `(columns, phases, n_bands)`: element [j, p] is row j * stride + p."""
    stride = cfg.column_samples // cfg.search_hop
    columns = phasors.shape[0] // stride
    return phasors[:columns * stride].reshape(columns, stride, -1)


def _windows(columns: int, cfg: WatermarkConfig) -> list[tuple[int, int]]:
    """Column ranges searched: `window_columns`, doubled up to the whole, each hopping by half its length."""
    windows = {(0, columns)}
    length = cfg.window_columns
    while length < columns:
        windows.update((start, start + length) for start in range(0, columns - length + 1, length // 2))
        windows.add((columns - length, columns))
        length *= 2
    return sorted(windows)


def _prefix_sums(by_column: torch.Tensor, k: int) -> torch.Tensor:
    """Running sums of the columns of each residue mod k, flattened: `((periods + 1) * k, phases, n_bands)`;
    row q * k + m sums columns m, m + k, ..., m + (q - 1) k."""
    columns = by_column.shape[0]
    periods = -(-columns // k)
    grid = torch.zeros((periods * k,) + tuple(by_column.shape[1:]), dtype=by_column.dtype)
    grid[:columns] = by_column
    partial = torch.zeros(((periods + 1) * k,) + tuple(by_column.shape[1:]), dtype=by_column.dtype)
    partial[k:] = torch.cumsum(grid.reshape((periods, k) + tuple(by_column.shape[1:])), dim=0).flatten(0, 1)
    return partial


def _folds(partial: torch.Tensor, windows: list[tuple[int, int]], k: int) -> torch.Tensor:
    """Phasors of each window [start, end) summed per column residue: `(windows, phases, n_bands, k)`."""
    residue = torch.arange(k)
    bounds = torch.tensor(windows)
    before_start = torch.clamp((bounds[:, :1] - residue + k - 1) // k, min=0)  # (windows, k): earlier columns
    before_end = torch.clamp((bounds[:, 1:] - residue + k - 1) // k, min=0)
    folded = partial[before_end * k + residue] - partial[before_start * k + residue]  # (windows, k, phases, bands)
    return folded.permute(0, 2, 3, 1).contiguous()


def _search_windows(by_column: torch.Tensor, windows, layout: KeyLayout, cfg: WatermarkConfig) -> list[Candidate]:
    """The best alignment (sub-column phase, period shift) of every window.

    Audio column j at shift s carries period column (j - s) mod K. A window's phasors are summed per period tile
    (fold); the score of a shift is the complex correlation of the folded sync tiles with their lattice points,
    for all shifts at once by FFT over the period. Its variance under the null is taken from the folded phasors
    themselves (only the key is random), and |score|^2 / variance, chi-square with 2 degrees of freedom without
    the mark, is reported as the equivalent one-sided N(0, 1) z-score."""
    k = cfg.period_columns
    step = cfg.step_nepers
    sync = layout.is_sync.astype(np.float64)
    target = np.exp(2j * np.pi * (layout.dither + layout.sync_bits * step / 2) / step) * sync  # (K, bands)
    target_f = torch.from_numpy(np.conj(np.fft.fft(target, axis=0)).T.astype(np.complex64))  # (bands, K)
    sync_f = torch.from_numpy(np.conj(np.fft.fft(sync, axis=0)).T.astype(np.complex64))
    partial = _prefix_sums(by_column, k)
    candidates = []
    for first in range(0, len(windows), _WINDOWS_PER_BATCH):
        folded = _folds(partial, windows[first:first + _WINDOWS_PER_BATCH], k)  # (w, phases, bands, K)
        # score[s] = sum_{c, b} folded[b, (c + s) mod K] conj(target[c, b])
        score = torch.fft.ifft((torch.fft.fft(folded, dim=-1) * target_f).sum(2), dim=-1)  # (w, phases, K)
        power = torch.fft.ifft((torch.fft.fft(folded.abs().square(), dim=-1) * sync_f).sum(2), dim=-1).real
        chi2 = torch.where(power > _TINY, score.abs().square() / torch.clamp(power / 2.0, min=_TINY), 0.0)
        best = chi2.flatten(1).argmax(1)
        for w in range(folded.shape[0]):
            phase, shift = divmod(int(best[w]), k)
            peak = complex(score[w, phase, shift])
            z = float(-special.ndtri_exp(-float(chi2[w, phase, shift]) / 2.0))
            rotation = peak / abs(peak) if abs(peak) > 0 else 1.0 + 0j
            aligned = torch.roll(folded[w, phase], -shift, dims=-1).T.numpy()  # (K, bands): row c = period column c
            candidates.append(Candidate(z, aligned.astype(np.complex128), rotation))
    return candidates


def payload_soft(candidate: Candidate, layout: KeyLayout, cfg: WatermarkConfig) -> np.ndarray:
    """Soft coded bits (positive: 0), `(coded_length,)`, summed over the candidate's payload tiles."""
    reference = np.exp(-2j * np.pi * layout.dither / cfg.step_nepers) / candidate.rotation
    tile = (candidate.folded * reference).real
    keep = layout.coded_index >= 0
    return np.bincount(layout.coded_index[keep], weights=tile[keep], minlength=coded_length())
