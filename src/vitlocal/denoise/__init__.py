"""Denoising Vision Transformers (Yang et al., ECCV 2024) in plain PyTorch, CPU or GPU.

- ``geometry``: random-resized crops of one image and where each crop patch
  sits in the image (``p``) and in the ViT input (``q``), flips included.
- ``stage1``: per-image decomposition ``y ≈ F(p) + G(q) + h(y)`` with a
  multi-resolution grid neural field ``F``, a shared artifact map ``G`` and
  a residual MLP ``h`` (the authors need tiny-cuda-nn; this does not).
- ``stage2``: the generalizable denoiser (one timm ``Block`` + learnable
  position embedding), its training, versioned checkpoints with sha256, and
  a loader for the authors' released checkpoints.
- ``shards``: stage 1 of one model as shard jobs (planned from the config,
  resumable step by step, same per-tile seeds as one job); ``stage1_files``:
  the stage-1 ``.npz`` files (atomic, byte-reproducible, checked) and the
  gather of the shards, torch-free.
- ``pipeline``: what the workflow rules call (stage-1 outputs -> denoiser;
  raw feature files -> denoised feature files; ``dvt1`` files).
"""
