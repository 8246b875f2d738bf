"""CLAP embeddings: deterministic track vectors from consecutive 10 s windows, text vectors, and captions.

CLAP's own feature extractor crops a *random* 10 s window from longer audio (`rand_trunc`, or `fusion`'s
random crops), so the same file embeds differently run to run. We cut the whole track into consecutive
480,000-sample windows ourselves, give each window exactly what the checkpoint's extractor gives a clip that
long (`repeatpad`: whole copies, then zeros; for fusion checkpoints the HTK mel stacked four times with
`is_longer`, as the extractor sets it for a clip embedded alone), embed them in batches, average weighted by
how much real audio each window holds, and L2-normalise: same samples in, identical vector out. The log-mel
features come from `motif.engine.melspec` (torch, the extractor's numbers to ~1e-4 dB).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from motif.engine.melspec import LogMel
from motif.engine.models import LoadedEmbedder
from motif.engine.types import CLAP_SAMPLE_RATE

WINDOW_SAMPLES = 10 * CLAP_SAMPLE_RATE  # CLAP-HTSAT's training window: 10 s at 48 kHz
# Bump when what a window's vector means changes (cutting, padding, pooling): vectors of two versions never mix.
WINDOWING_VERSION = "2"  # 2: repeatpad padding (whole copies, then zeros), fusion checkpoints
EMBEDDING_DIM = 512

# Zero-shot vocabulary for captions ("style" mode). Each group contributes its best matches.
VOCABULARY: dict[str, list[str]] = {
    "genre": [
        "ambient", "classical", "jazz", "blues", "rock", "pop", "hip hop", "electronic", "house", "techno",
        "drum and bass", "lo-fi", "folk", "country", "funk", "soul", "reggae", "metal", "orchestral",
        "cinematic", "synthwave", "latin", "disco", "trap",
    ],
    "instrument": [
        "piano", "acoustic guitar", "electric guitar", "bass guitar", "drums", "synthesizer", "strings",
        "violin", "cello", "brass", "trumpet", "saxophone", "flute", "organ", "pads", "percussion",
        "harp", "choir", "bells", "808 bass",
    ],
    "mood": [
        "calm", "happy", "sad", "dark", "bright", "energetic", "relaxing", "epic", "melancholic",
        "uplifting", "aggressive", "dreamy", "romantic", "mysterious", "playful", "tense",
    ],
}  # fmt: skip
TOP_PER_GROUP = {"genre": 1, "instrument": 2, "mood": 1}


@dataclass(frozen=True)
class Caption:
    text: str  # e.g. "calm ambient music with piano and pads, 84 BPM, in A minor"
    tags: dict[str, list[str]]


def split_windows(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(samples,) at 48 kHz -> windows (n, 480000) and the real-audio fraction of each (n,).

    A window shorter than 10 s (the last one, or the whole of a short track) is padded as the extractor's
    `repeatpad` pads a short clip: as many whole copies as fit, then zeros.
    """
    samples = np.asarray(samples, dtype=np.float32)
    if samples.size == 0:
        raise ValueError("cannot embed empty audio")
    n_windows = -(-samples.size // WINDOW_SAMPLES)
    windows = np.empty((n_windows, WINDOW_SAMPLES), dtype=np.float32)
    weights = np.empty(n_windows, dtype=np.float64)
    for i in range(n_windows):
        chunk = samples[i * WINDOW_SAMPLES : (i + 1) * WINDOW_SAMPLES]
        windows[i] = repeat_pad(chunk, WINDOW_SAMPLES)
        weights[i] = chunk.size / WINDOW_SAMPLES
    return windows, weights


def repeat_pad(chunk: np.ndarray, length: int) -> np.ndarray:
    """ClapFeatureExtractor's `repeatpad`: int(length / n) whole copies of the chunk, then zeros to `length`."""
    if chunk.size >= length:
        return chunk[:length]
    tiled = np.tile(chunk, length // chunk.size)
    return np.pad(tiled, (0, length - tiled.size))


class Embedder:
    """Embeds audio and text with one loaded CLAP model. Thread-safe for concurrent readers."""

    def __init__(self, loaded: LoadedEmbedder, batch_size: int = 8) -> None:
        self.loaded = loaded
        self.batch_size = batch_size
        self.log_mel = LogMel(loaded.feature_extractor)
        if self.log_mel.window_samples != WINDOW_SAMPLES:
            raise ValueError(f"CLAP feature extractor expects {self.log_mel.window_samples}-sample clips, "
                             f"Motif cuts {WINDOW_SAMPLES}-sample windows")  # fmt: skip
        self._vocab_vectors: dict[str, np.ndarray] = {}
        self.is_fusion = bool(getattr(loaded.model.config.audio_config, "enable_fusion", False))

    @property
    def model_id(self) -> str:
        return self.loaded.model_id

    def features(self, windows: np.ndarray) -> torch.Tensor:
        """(n, 480000) -> (n, 1, frames, mel) float32 log-mel in dB ((n, 1, 1001, 64) for CLAP): the extractor's."""
        return self.log_mel(windows)

    @torch.inference_mode()
    def embed_audio(self, samples: np.ndarray) -> np.ndarray:
        """(samples,) mono float32 at 48 kHz -> (512,) float32 with L2 norm 1. Deterministic."""
        windows, weights = split_windows(samples)
        vectors = []
        for start in range(0, len(windows), self.batch_size):
            feats = self.features(windows[start : start + self.batch_size])
            feats = feats.to(self.loaded.device, self.loaded.dtype)
            is_longer = None
            if self.is_fusion:  # global mel plus three "crops": all the same window, as the extractor stacks it
                feats = feats.expand(-1, 4, -1, -1)
                is_longer = torch.ones(feats.shape[0], 1, dtype=torch.bool, device=self.loaded.device)
            out = self.loaded.model.get_audio_features(input_features=feats, is_longer=is_longer).pooler_output
            vectors.append(out.float().cpu())
        pooled = (torch.cat(vectors).double() * torch.from_numpy(weights)[:, None]).sum(0)
        return _unit(pooled.numpy())

    @torch.inference_mode()
    def embed_text(self, texts: list[str]) -> np.ndarray:
        """n strings -> (n, 512) float32 unit rows, in the same space as embed_audio."""
        if not texts:
            return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
        tok = self.loaded.tokenizer(texts, padding=True, truncation=True, max_length=77, return_tensors="pt")
        out = self.loaded.model.get_text_features(
            input_ids=tok["input_ids"].to(self.loaded.device),
            attention_mask=tok["attention_mask"].to(self.loaded.device),
        ).pooler_output
        return np.stack([_unit(v) for v in out.float().cpu().numpy()])

    def caption(self, audio_vector: np.ndarray, tempo_bpm: float | None = None, key: str | None = None) -> Caption:
        """Describe a track in words by zero-shot matching its vector against VOCABULARY."""
        tags: dict[str, list[str]] = {}
        for group, words in VOCABULARY.items():
            if group not in self._vocab_vectors:
                self._vocab_vectors[group] = self.embed_text([f"{group_prompt(group)} {w}" for w in words])
            scores = self._vocab_vectors[group] @ audio_vector
            best = np.argsort(-scores, kind="stable")[: TOP_PER_GROUP[group]]
            tags[group] = [words[i] for i in best]
        text = f"{tags['mood'][0]} {tags['genre'][0]} music with {' and '.join(tags['instrument'])}"
        if tempo_bpm:
            text += f", {round(tempo_bpm)} BPM"
        if key:
            text += f", in {key}"
        return Caption(text, tags)


def group_prompt(group: str) -> str:
    return {"genre": "this is", "instrument": "music played on", "mood": "music that feels"}[group]


def _unit(vector: np.ndarray) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float64)
    norm = np.linalg.norm(vector)
    if not np.isfinite(norm) or norm == 0:
        raise ValueError("embedding is zero or non-finite")
    return (vector / norm).astype(np.float32)
