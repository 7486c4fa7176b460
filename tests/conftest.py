"""Test-session setup: share XLA compilations between tests through JAX's persistent cache.

Many tests build identical tiny models in fresh Trainers; each would otherwise
recompile the same step. The cache lives in a per-session temporary directory.
"""

import os
import sys
import tempfile

import jax

sys.path.insert(0, os.path.dirname(__file__))  # tests import their helper modules (tiny_lm)

jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="artrainer-xla-cache-"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
