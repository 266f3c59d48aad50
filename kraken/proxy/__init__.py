"""The proxy: the registry v2 API for push (and pull) in front of the origins and build-index."""
