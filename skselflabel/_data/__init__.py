"""What comes in: input checks, sample sources, input scaling, augmentations, IDX files."""
