"""Which credentials a ``gcs`` backend uses, decided once at start.

- ``username`` set: the credential set of that name in ``auth: {gcs: {...}}`` must hold
  ``access_blob``, a credential JSON as Kraken reads it: a service-account key, or an
  ``authorized_user`` file (gcloud's). Other types (external accounts, which may run commands
  or read files named in the JSON) are refused.
- no ``username``, an endpoint set (``endpoint`` or ``STORAGE_EMULATOR_HOST``): anonymous, for
  emulators such as fake-gcs-server.
- otherwise: application default credentials (``GOOGLE_APPLICATION_CREDENTIALS``, gcloud's
  file, the metadata server of GCE/GKE).

Anything missing or unreadable is a :class:`~kraken.config.ConfigError` naming the backend, so
a component fails at start instead of at its first write-back. The secret is never part of a
message: only the library's own description of what is wrong with it (field names, a JSON
position) is quoted.
"""
from __future__ import annotations

import json
from collections.abc import Mapping

import google.auth
from google.auth.credentials import AnonymousCredentials
from google.auth.credentials import Credentials as GoogleCredentials
from google.auth.exceptions import GoogleAuthError
from google.oauth2 import credentials as user_credentials
from google.oauth2 import service_account

from kraken.backend.base import Credentials
from kraken.config import ConfigError

#: Read and write objects; nothing broader (buckets are never created or changed).
SCOPES = ["https://www.googleapis.com/auth/devstorage.read_write"]


def resolve_credentials(what: str, username: str, endpoint: str,
                        sets: Mapping[str, Credentials]) -> tuple[GoogleCredentials, str]:
    """The credentials and a word saying where they came from (for the start log line).

    ``what`` names the backend in errors (``gcs backend (bucket b)``). Finding application
    default credentials may ask the metadata server (a few seconds at most, at start only).
    """
    if username:
        return _from_secret(what, username, sets), f"auth.gcs.{username}"
    if endpoint:
        return AnonymousCredentials(), "anonymous"
    try:
        credentials, _ = google.auth.default(scopes=SCOPES)
    except GoogleAuthError as e:
        raise ConfigError(
            f"{what}: no credentials: set username (a credential set under auth.gcs in the --secrets "
            f"file) or provide application default credentials ({e})") from None
    return credentials, "application default credentials"


def _from_secret(what: str, username: str, sets: Mapping[str, Credentials]) -> GoogleCredentials:
    fields = sets.get(username)
    where = f"auth.gcs.{username}"
    if fields is None:
        known = ", ".join(sorted(sets)) or "none"
        raise ConfigError(f"{what}: username {username!r} has no credential set under auth.gcs "
                          f"(the --secrets file; sets given: {known})")
    blob = fields.get("access_blob")
    if blob is None:
        raise ConfigError(f"{what}: {where} has no access_blob (the credential JSON)")
    try:
        info = json.loads(blob.reveal())
    except json.JSONDecodeError as e:
        # The position only: JSONDecodeError's message never quotes the text.
        raise ConfigError(f"{what}: {where}.access_blob is not JSON "
                          f"(line {e.lineno} column {e.colno}: {e.msg})") from None
    if not isinstance(info, dict):
        raise ConfigError(f"{what}: {where}.access_blob is not a JSON object")
    kind = info.get("type")
    try:
        if kind == "service_account":
            return service_account.Credentials.from_service_account_info(info, scopes=SCOPES)
        if kind == "authorized_user":
            return user_credentials.Credentials.from_authorized_user_info(info, scopes=SCOPES)
    except (GoogleAuthError, ValueError) as e:
        raise ConfigError(f"{what}: {where}.access_blob is not a usable credential: {e}") from None
    raise ConfigError(f"{what}: {where}.access_blob has type {str(kind)[:40]!r}; "
                      "expected service_account or authorized_user")
