"""Training: settings, presets and the small records functions take (config), the learning-rate schedule (schedule),
the shared epoch loop (loop), the four modes (frozen, tuned with its tail training in tail, full, distilled in
distill with its cross-validation in distill_cv) and their table (modes), what they share (common), calibration
(calibrate), the unknown-photo detector's fit (unknown), cross-validation (crossval), resume state (resume), and
`train()` (run), which picks the mode.

`from flowerid.training.run import train`; this package itself imports nothing, so reading the
settings (config) costs no torch."""

import os

# Idle OpenMP threads sleep instead of spinning. On a shared 2-core machine a spinning
# torch thread fights the other processes for its core: one training step of Lite0's last
# stage took 4.5 s with spinning threads and 0.84 s with sleeping ones under the same load.
# Only effective before torch is imported; a value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
