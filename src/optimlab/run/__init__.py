"""A run and its folder: the runner (composition root), the folder (the only reader and
writer of its files), resume, rerun, provenance and stop signals."""
