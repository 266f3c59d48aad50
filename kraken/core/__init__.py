"""Value types with no I/O: digests and size parsing."""
