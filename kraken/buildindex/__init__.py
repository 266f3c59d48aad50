"""build-index: the tag -> manifest digest index.

A tag (``repo:tag``) is accepted only once every blob and child manifest its manifest
references exists on the origins, is written through to a storage backend (the source of
truth, shared by every build-index node of a cluster), and is read back from that backend,
so a re-pushed tag resolves to its new digest on every node. ``tag_store.write_through:
false`` trades that for pushes that work while the backend is down (see
:mod:`kraken.buildindex.tagwriteback`).
"""
