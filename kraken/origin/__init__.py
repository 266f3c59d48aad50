"""The origin: dedicated seeder owning a shard of blobs on the hash ring, with write-back to storage."""
