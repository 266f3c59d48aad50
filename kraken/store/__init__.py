"""The content-addressed blob store on disk."""
from kraken.store.cas import CAStore, DigestMismatch, SizeMismatch, UploadOffsetMismatch, UploadUnknown

__all__ = ["CAStore", "DigestMismatch", "UploadUnknown", "UploadOffsetMismatch", "SizeMismatch"]
