"""Builders: the seed CNN and its pruned, distilled, FP16 and INT8 variants, compiled into a Triton repository."""
