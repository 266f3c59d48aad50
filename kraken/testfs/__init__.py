"""testfs: a toy HTTP file store used as the storage backend in development and tests."""
