"""SCRAM credentials held in memory, so that a login in a reconnect storm of a
thousand sites costs no metadata round trip (one per login was about half a
millisecond on SQLite, a network round trip on PostgreSQL).

Kept in step by a VersionPoller on the store's version counter: a change made
through this broker applies at once, one made elsewhere (another broker,
`shoal users --metadata`) within one poll interval. A user not in the cache is
looked up in the store once; a miss is remembered until the next reload, so
guessing user names costs no query per attempt (at most MAX_UNKNOWN names are
remembered)."""

from __future__ import annotations

from shoal.security.scram import ScramCredential

Credentials = dict[str, ScramCredential]  # mechanism -> credential


MAX_UNKNOWN = 10_000
_NONE: Credentials = {}


class CredentialCache:
    def __init__(self) -> None:
        self.version = -1  # nothing loaded yet
        self._users: dict[str, Credentials] = {}
        self._unknown: set[str] = set()  # looked up since the last reload: no such user

    def get(self, user: str) -> Credentials | None:
        """The user's credentials, {} for a user known not to exist, or None
        when the store must be asked."""
        found = self._users.get(user)
        if found is None and user in self._unknown:
            return _NONE
        return found

    def put(self, user: str, credentials: Credentials) -> None:
        if credentials:
            self._users[user] = credentials
            return
        if len(self._unknown) >= MAX_UNKNOWN:
            self._unknown.clear()
        self._unknown.add(user)

    def replace(self, users: dict[str, Credentials], version: int) -> None:
        self._users = users
        self._unknown = set()
        self.version = version

    def __len__(self) -> int:
        return len(self._users)
