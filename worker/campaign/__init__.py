"""``camsam campaign``: a labelling project replayed on a dataset with ground truth."""
