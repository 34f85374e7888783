"""Photos in, arrays out: image loading (images), ImageFolder splits, category names and exclude lists (folders), the
layouts people bring and the valid split held out when none is given (layout), streaming walks of photo folders
(walk), preprocessing (preprocess), augmentation (augment), stratified folds (folds), data checks (check) and the
algorithms of `check --deep` (deep_check).

Importing any of it imports no torch; deep_check's linear heads and principal components import it
when they are called."""
