"""`python -m motif.bench [--quick]` (also `motif bench`): Motif against stock transformers, on this machine.

Builds random-weight models of the real architectures once (musicgen-small: T5-base, a 24-layer
1024-wide decoder over 4 codebooks, EnCodec 32 kHz, 587M parameters; CLAP-HTSAT-unfused at
`ClapConfig()` defaults, 154M) into MODEL_CACHE_DIR; speed depends on the shapes, not on the weights.
Then, in one process: (a) the baseline a user would write (transformers `generate`, fp32, CFG 3, batch 1);
(b) Motif's generator at its defaults on the same request; (c) 4 concurrent jobs through
`Engine.run_batch`; (d) CLAP on a 60 s track, stock vs Motif; server cold start; peak memory; the
bandwidth and FLOP floors of a decode step; and the fidelity of the fast paths against float32 on the
same weights (teacher-forced logits, EnCodec SNR). Prints a table, then one JSON line last.
`--quick` runs every stage on the tiny models, for CI smoke (its numbers mean nothing).
"""

from motif.bench.run import format_table, main, run_bench

__all__ = ["format_table", "main", "run_bench"]
