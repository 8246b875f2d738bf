"""Typed errors. The service maps each class to one HTTP status; the CLI prints the message."""

from __future__ import annotations


class MotifError(Exception):
    """Base of every error Motif raises on purpose."""


class AudioError(MotifError):
    """The input audio cannot be used. Subclasses say why."""


class NotAudioError(AudioError):
    """The bytes are not a media container FFmpeg understands (HTTP 415)."""


class NoAudioStreamError(AudioError):
    """A valid container (e.g. video) with no audio stream (HTTP 415)."""


class EmptyAudioError(AudioError):
    """The audio stream decodes to zero samples (HTTP 422)."""


class TooShortError(AudioError):
    """Shorter than the minimum usable length (HTTP 422)."""


class TooLongError(AudioError):
    """Longer than MAX_DURATION, measured while decoding (HTTP 413)."""


class TooManySamplesError(TooLongError):
    """More decoded samples (seconds x rate x channels) than MAX_SAMPLES, counted while decoding (HTTP 413)."""


class UnsupportedAudioError(AudioError):
    """Readable audio outside what we decode: sample rate, channels or packets per second over the limits (422)."""


class CorruptAudioError(AudioError):
    """Decoding started but failed, or samples are unusable (HTTP 422)."""


class ModelUnavailableError(MotifError):
    """A configured model cannot be loaded: message names the model, where we looked, and the fix."""


class GenerationCancelled(MotifError):
    """A cancel flag was seen between decode steps."""


class InvalidRequestError(MotifError):
    """A request that passes schema validation but cannot be served (e.g. melody mode on a non-melody model)."""
