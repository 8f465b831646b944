"""Tolerances the exactness tests hold, each with where it comes from (docs/method.md, "Precision").

Measured with ``python benchmarks/precision.py`` on the embedded SmolLM2-135M; numbers here are the measured
largest deviation times a margin, so the tests pass on any CPU, whose float32 sums run in another order.
"""

from __future__ import annotations

# float64: the pass is exact to rounding. Measured deviations are below 1.5e-14 (with transformers'
# RMSNorm computing in float64, see conftest.py); 1e-9 leaves room for longer sums, and any real error (a
# wrong position, layer or token) moves scores by far more.
EXACT = 1e-9

# float32 against float64, and so two float32 computations of one pair against each other (twice this).
# Measured largest: 8.3e-5 (semgrad of the embedded model: the output layer's backward sums a 49k-word
# vocabulary, so its rounding depends on the order a CPU's kernels choose). 5e-4 is a 6x margin.
FLOAT32 = 5e-4

# bfloat16 / float16 models against float32 (statistics computed in float32, float16 loss scaled):
# the 8-bit (bfloat16) or 11-bit (float16) mantissas of the layers' activations remain. Measured largest
# over 8 pairs up to 1050 tokens: bfloat16 9.5e-2 (semgrad, batched), float16 1.1e-2; about 2x margin.
BFLOAT16 = 0.2
FLOAT16 = 0.03
