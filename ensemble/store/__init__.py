"""The competition folder (its tables, folds, corpora that build one), the run store, the split training and blending see, and submissions."""
