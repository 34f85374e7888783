"""A trained model: head shape (head), the checkpoint file (checkpoint), the built-in flower model (builtin),
what a checkpoint is (info), exports for apps (export) and prediction (predictor).

Torch-free on the predict path: only export and `build_head` import torch, when used."""
