"""A trained model: head shape (head), the checkpoint file (checkpoint), the built-in flower model (builtin),
what a checkpoint is (info), the torch network of a checkpoint (network), exports for apps (export), prediction
(predictor), streaming batch prediction (batch) and its result files (results), the unknown-photo score (unknown),
the torch-free checkpoint reader (_torchfile), explanations (explain: the maps in numpy; spatial: the cached
graph that gives them; overlay: the picture), and adding categories (class_stats: what a checkpoint keeps
for it; teach: fitting the new rows; add: `flowerid add`).

Torch-free on the predict path: only network, export and `build_head` import torch, when used."""
