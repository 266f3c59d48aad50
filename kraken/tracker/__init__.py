"""The tracker: who is in which torrent's swarm, and the metainfo agents start from.

It speaks the standard BitTorrent HTTP tracker protocol (libtorrent announces to it), offers
each blob's owning origins as seeders, and proxies metainfo from the origins with a cache.
"""
