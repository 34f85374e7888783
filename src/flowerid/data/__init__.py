"""Photos in, arrays out: image loading (images), ImageFolder splits and category names (folders),
preprocessing (preprocess), augmentation (augment) and data checks (check). Torch-free."""
