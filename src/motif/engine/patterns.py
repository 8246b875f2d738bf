"""MusicGen's token layout and sampling: the codebook delay pattern (mono and stereo) and one draw per codebook.

The decoder predicts every codebook at each position, codebook k `delay[k]` positions late. Mono models
(4 codebooks) delay codebook k by k. Stereo models (8 codebooks) interleave left and right: codebooks 2j and
2j + 1 are the left and right channel's j-th codebook and share delay j, exactly as transformers'
`build_delay_pattern_mask` lays them out for `audio_channels=2`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from motif.engine.types import GenerationParams

PAD = 2048  # MusicGen's pad / decoder-start token, one past the codebook


def codebook_delays(n_codebooks: int, n_channels: int) -> list[int]:
    """Positions each codebook lags: [0, 1, 2, 3] mono, [0, 0, 1, 1, 2, 2, 3, 3] stereo."""
    if n_channels not in (1, 2) or n_codebooks % n_channels:
        raise ValueError(f"{n_codebooks} codebooks cannot be split over {n_channels} audio channels")
    return [k // n_channels for k in range(n_codebooks)]


@dataclass
class Window:
    """One decoding window in delay-pattern layout."""

    seq: torch.Tensor  # (K, F + D + 1) tokens; PAD where nothing is known yet (D = the largest delay)
    known: torch.Tensor  # (K, F + D + 1) bool: prompt or pad positions that sampling must not overwrite
    n_prompt: int  # P frames of prompt in this window
    n_frames: int  # F = P + new frames
    delays: list[int]
    pos: int = 0  # last position fed to the decoder


def delay_pattern(prompt: torch.Tensor, n_frames: int, delays: list[int] | None = None) -> Window:
    """Lay out a window: position p of codebook k holds frame p - delay[k] - 1; PAD before and after.

    prompt (K, P) frames on any device; the window's tensors live on the same device.
    """
    n_codebooks, n_prompt = prompt.shape
    delays = list(range(n_codebooks)) if delays is None else delays
    length = n_frames + max(delays) + 1
    seq = torch.full((n_codebooks, length), PAD, dtype=torch.long, device=prompt.device)
    known = torch.ones(n_codebooks, length, dtype=torch.bool, device=prompt.device)
    for k, delay in enumerate(delays):
        seq[k, delay + 1 : delay + 1 + n_prompt] = prompt[k]
        known[k, delay + 1 + n_prompt : delay + 1 + n_frames] = False
    return Window(seq, known, n_prompt, n_frames, delays)


def undelay(seq: torch.Tensor, n_frames: int, delays: list[int] | None = None) -> torch.Tensor:
    """(K, F + D + 1) delay layout -> (K, F) frames."""
    delays = list(range(seq.shape[0])) if delays is None else delays
    return torch.stack([seq[k, d + 1 : d + 1 + n_frames] for k, d in enumerate(delays)])


def sample_next(
    logits_c: torch.Tensor, logits_u: torch.Tensor | None, params: GenerationParams, generator: torch.Generator
) -> torch.Tensor:
    """CFG, temperature, top-k, top-p, then one draw per codebook. (K, V) float32 each -> (K,) long.

    `generator` must live on the logits' device (torch.multinomial refuses a CPU generator for CUDA tensors).
    logits_u may be None only when cfg_coef is 1 (no guidance: the unconditional row is never computed).
    """
    if params.cfg_coef == 1.0:
        logits = logits_c
    elif logits_u is None:
        raise ValueError("classifier-free guidance needs the unconditional logits")
    else:
        logits = logits_u + (logits_c - logits_u) * params.cfg_coef
    logits = logits / max(params.temperature, 1e-5)
    if params.top_k > 0:
        kth = torch.topk(logits, min(params.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if 0.0 < params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) > params.top_p  # keep the token that crosses top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]
