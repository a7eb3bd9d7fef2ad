"""Principals from client certificates: Kafka's `ssl.principal.mapping.rules`.

Rules are `RULE:pattern/replacement/[LU]` or `DEFAULT`, comma-separated, tried
in order; the first whose pattern matches the whole distinguished name gives
the name (`$1`... refer to its groups; `/L` lower-cases, `/U` upper-cases).
`DEFAULT` keeps the DN as it is. No rule matching is an authentication failure,
as in Kafka. Patterns are regular expressions; the common subset of Java's and
Python's syntax behaves the same.

The DN is the certificate subject in RFC 4514 form, most specific first
(`CN=plant-7,OU=sites,O=acme`), which is what Kafka's X500Principal gives for
the usual attributes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from shoal.config import ConfigError

# One rule, as Kafka's parser reads it: DEFAULT, RULE:pattern/replacement/[LU]
# (backslash escapes allowed in both parts), or anything else (invalid).
_RULE = r"(DEFAULT)|RULE:((?:\\.|[^\\/])*)/((?:\\.|[^\\/])*)/([LU]?).*?|(.*?)"
_SPLITTER = re.compile(r"\s*(" + _RULE + r")\s*(?:,\s*|$)")
_PARSER = re.compile(_RULE)


class NoMatchingRule(Exception):
    """No mapping rule applies to a certificate's subject."""


@dataclass(frozen=True, slots=True)
class Rule:
    pattern: re.Pattern[str] | None  # None: DEFAULT
    replacement: str = ""
    case: str = ""  # "L", "U" or ""

    def apply(self, dn: str) -> str | None:
        if self.pattern is None:
            return dn
        if self.pattern.fullmatch(dn) is None:
            return None
        out = self.pattern.sub(lambda m: _expand(self.replacement, m), dn)
        if self.case == "L":
            return out.lower()
        if self.case == "U":
            return out.upper()
        return out


def _expand(replacement: str, m: re.Match[str]) -> str:
    """Java's replacement syntax: `$n` is group n, read greedily while the
    number stays within the groups there are (a first digit beyond them is
    kept literally, as Kafka escapes it); `\\x` is a literal x."""
    groups = m.re.groups
    out: list[str] = []
    i, size = 0, len(replacement)
    while i < size:
        c = replacement[i]
        if c == "\\" and i + 1 < size:
            out.append(replacement[i + 1])
            i += 2
        elif c == "$" and i + 1 < size and replacement[i + 1].isdigit():
            n, j = int(replacement[i + 1]), i + 2
            if n > groups:
                out.append(c)
                i += 1
                continue
            while j < size and replacement[j].isdigit() and n * 10 + int(replacement[j]) <= groups:
                n, j = n * 10 + int(replacement[j]), j + 1
            out.append(m.group(n) or "")
            i = j
        else:
            out.append(c)
            i += 1
    return "".join(out)


class PrincipalMapper:
    def __init__(self, rules: list[Rule]) -> None:
        self.rules = rules

    @classmethod
    def parse(cls, text: str) -> PrincipalMapper:
        """Kafka's parsing: empty entries are skipped; an entry that is not a
        whole rule is an error naming it."""
        rules: list[Rule] = []
        for m in _SPLITTER.finditer(text.strip()):
            entry = m.group(1)
            p = _PARSER.match(entry)
            assert p is not None  # the last alternative matches anything
            if p.end() != len(entry):
                raise ConfigError(
                    f"ssl.principal.mapping.rules: invalid rule {entry!r} "
                    f"(cannot read {entry[p.end() :]!r})"
                )
            if p.group(1):
                rules.append(Rule(None))
            elif p.group(2) is not None:
                try:
                    pattern = re.compile(p.group(2))
                except re.error as exc:
                    raise ConfigError(
                        f"ssl.principal.mapping.rules: bad pattern {p.group(2)!r}: {exc}"
                    ) from None
                rules.append(Rule(pattern, p.group(3), p.group(4)))
        return cls(rules)

    def name(self, dn: str) -> str:
        for rule in self.rules:
            out = rule.apply(dn)
            if out is not None:
                return out
        raise NoMatchingRule(f"no ssl.principal.mapping.rules rule applies to {dn!r}")


def subject_dn(der: bytes) -> str:
    """The subject of a DER certificate as an RFC 4514 string."""
    from cryptography import x509

    return x509.load_der_x509_certificate(der).subject.rfc4514_string()
