"""vitlocal: patch-level (local) representations of vision transformers.

Regenerates the figures and tables of "Analyzing Local Representations of
Self-supervised Vision Transformers" (arXiv 2401.00463) and evaluates
Denoising Vision Transformers (arXiv 2401.02957) in the same framework.
"""

__version__ = "0.1.0"
