"""Training: settings and presets (config), the shared epoch loop (loop), the three modes (frozen, tuned,
full), calibration, resume state, and `train()` (run), which picks the mode.

`from flowerid.training.run import train`; this package itself imports nothing, so reading the
settings (config) costs no torch."""
