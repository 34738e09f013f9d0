"""Competition folders, decoded image caches, folds and augmentation views."""
