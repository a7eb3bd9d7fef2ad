"""SCRAM credentials held in memory, so that a login in a reconnect storm of a
thousand sites costs no metadata round trip (one per login was about half a
millisecond on SQLite, a network round trip on PostgreSQL).

Kept in step by a VersionPoller on the store's version counter: a change made
through this broker applies at once, one made elsewhere (another broker,
`shoal users --metadata`) within one poll interval. A user not in the cache is
looked up in the store, so a credential written a moment ago still works."""

from __future__ import annotations

from shoal.security.scram import ScramCredential

Credentials = dict[str, ScramCredential]  # mechanism -> credential


class CredentialCache:
    def __init__(self) -> None:
        self.version = -1  # nothing loaded yet
        self._users: dict[str, Credentials] = {}

    def get(self, user: str) -> Credentials | None:
        """The user's credentials, or None when the cache does not know them."""
        return self._users.get(user)

    def put(self, user: str, credentials: Credentials) -> None:
        if credentials:
            self._users[user] = credentials

    def replace(self, users: dict[str, Credentials], version: int) -> None:
        self._users = users
        self.version = version

    def __len__(self) -> int:
        return len(self._users)
