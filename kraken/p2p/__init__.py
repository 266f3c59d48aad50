"""BitTorrent transfer of blobs between origins and agents (libtorrent, driven from asyncio)."""
from kraken.p2p.config import P2PConfig
from kraken.p2p.session import DownloadError, DownloadResult, DownloadTimeout, P2PError, P2PSession

__all__ = ["DownloadError", "DownloadResult", "DownloadTimeout", "P2PConfig", "P2PError", "P2PSession"]
