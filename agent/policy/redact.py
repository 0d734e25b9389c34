"""Data minimization: replace personal data with typed placeholders before text leaves the device.

``Redactor(names).redact(text)`` returns the text with each value found replaced by
a placeholder (``[EMAIL]``, ``[PHONE]``, ``[CARD]``, ``[IBAN]``, ``[IP]``, ``[MAC]``,
``[NAME]``) and a count per type. The values themselves are never logged, stored or
returned.

Detectors run in a fixed order, each on the output of the one before, so a value
claimed by an earlier detector is already a placeholder when the later ones look:

1. e-mail addresses (they contain names and digits);
2. IBANs: a candidate is cut to its country's registered length (ISO 13616
   registry) and must pass the mod-97 check;
3. payment cards: 13-19 digits with optional space/dash separators, first digit
   2-6 (every major scheme; this keeps 13-digit epoch-millisecond timestamps out),
   Luhn-valid;
4. MAC addresses (colon, dash and Cisco dotted forms) and 8-octet EUI-64 ids
   (Zigbee/Thread radios), which would otherwise parse as IPv6;
5. IPv6, then IPv4: a loose regex proposes, :mod:`ipaddress` decides; a dotted quad
   right after "version"/"firmware"/"v" is a version string, not an address;
6. phone numbers: international (``+CC`` or ``00CC``, 8-15 digits; E.164 allows 15),
   North American ``(555) 123-4567`` / ``555-123-4567``, and European national
   numbers with a trunk ``0`` (9-13 digits). Times (``07:15``), dates, decimals and
   short numbers do not fit these shapes or digit counts;
7. configured names: whole word, case-insensitive, longest first, so ``Anna's``
   and ``Anna Schmidt`` are caught.

Placeholders contain no digits and names never match inside brackets, so
redacting twice changes nothing. Every pattern is linear on its input: no nested
unbounded quantifiers, and digit runs are possessive (Python 3.11).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TypeAlias

PII_TYPES: tuple[str, ...] = ("email", "phone", "card", "iban", "ip", "mac", "name")
PLACEHOLDERS: dict[str, str] = {kind: f"[{kind.upper()}]" for kind in PII_TYPES}

JsonValue: TypeAlias = str | int | float | bool | list["JsonValue"] | dict[str, "JsonValue"] | None


@dataclass(frozen=True, slots=True)
class Redacted:
    """Redacted text and how many values of each type were replaced (every type, 0 if none)."""

    text: str
    counts: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.counts.values())


# --- checksums -------------------------------------------------------------------


def luhn_valid(number: str) -> bool:
    """Luhn (mod 10) check on a digit string; separators must already be removed."""
    if not number.isdigit():
        return False
    total = 0
    for i, ch in enumerate(reversed(number)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


# Registered IBAN lengths per country (SWIFT ISO 13616 IBAN registry).
IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22,
    "BH": 22, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22,
    "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FO": 18, "FR": 27,
    "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28,
    "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20,
    "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27,
    "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15,
    "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24,
    "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28, "TL": 23,
    "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}  # fmt: skip


def iban_valid(iban: str) -> bool:
    """ISO 13616 check: known country, registered length, alphanumeric, mod 97 == 1."""
    compact = iban.replace(" ", "").upper()
    if IBAN_LENGTHS.get(compact[:2]) != len(compact) or not compact.isalnum():
        return False
    if not compact[2:4].isdigit() or not compact.isascii():
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


# --- detectors -------------------------------------------------------------------

# Returns where the value found by a candidate match ends (absolute offset), or None
# when the candidate is not a value of this type.
_Accept = Callable[[re.Match[str]], int | None]


@dataclass(frozen=True, slots=True)
class _Rule:
    kind: str
    pattern: re.Pattern[str]
    accept: _Accept


def _whole(match: re.Match[str]) -> int:
    return match.end()


_EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9_%+-]+(?:\.[A-Za-z0-9_%+-]+)*+"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}(?![\w-])"
)

# Country code, check digits, then up to 30 alphanumerics, optionally grouped by
# spaces. The candidate may run into the next word; _accept_iban cuts it.
_IBAN = re.compile(r"(?<!\w)[A-Za-z]{2}\d{2}(?: ?[A-Za-z0-9]){11,30}")


def _accept_iban(match: re.Match[str]) -> int | None:
    cand = match.group()
    want = IBAN_LENGTHS.get(cand[:2].upper())
    if want is None:
        return None
    seen = 0
    for i, ch in enumerate(cand):
        if ch != " ":
            seen += 1
        if seen == want:
            end = i + 1
            if end < len(cand) and cand[end] != " ":
                return None  # the value runs on into more letters/digits
            return match.start() + end if iban_valid(cand[:end]) else None
    return None


# Not the digits of an IBAN-shaped "DE89 ..." whose checksum failed.
_CARD = re.compile(r"(?<![\w+.,/-])(?<![A-Z]{2}\d{2} )[2-6](?:[ -]?\d){12,18}(?!\w|[.,/-]?\d)")


def _accept_card(match: re.Match[str]) -> int | None:
    # A card number followed by more digit groups (an expiry, a CVV): try the
    # longest prefix ending at a group boundary that is a valid card.
    cand = match.group()
    ends = [m.start() for m in re.finditer(r"[ -]", cand)] + [len(cand)]
    for end in reversed(ends):
        digits = re.sub(r"\D", "", cand[:end])
        if 13 <= len(digits) <= 19 and luhn_valid(digits):
            return match.start() + end
    return None


_MAC = re.compile(
    r"(?<![\w:.-])(?:"
    r"[0-9A-Fa-f]{2}([:-])[0-9A-Fa-f]{2}(?:\1[0-9A-Fa-f]{2}){4}(?:\1[0-9A-Fa-f]{2}\1[0-9A-Fa-f]{2})?"
    r"|[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4}"
    r")(?!\w|[:.-]\w)"
)

_IPV6 = re.compile(
    r"(?<![\w:.])(?=[0-9A-Fa-f]*:[0-9A-Fa-f]*:)[0-9A-Fa-f:]++"
    r"(?:\.\d{1,3}){0,3}(?:%[0-9A-Za-z_.-]+)?(?![\w:]|\.\d)"
)


def _accept_ipv6(match: re.Match[str]) -> int | None:
    cand = match.group()
    if not any(ch in "0123456789abcdefABCDEF" for ch in cand):
        return None  # a bare "::" is punctuation, not the unspecified address
    try:
        ipaddress.IPv6Address(cand)
    except ValueError:
        return None
    return match.end()


_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?!\w|\.\d)")
_VERSION_CONTEXT = re.compile(
    r"(?:\b(?:version|ver|firmware|fw|build|release|sw|os|v)\.?\s*[:=]?\s*|\bv)$", re.IGNORECASE
)


def _accept_ipv4(match: re.Match[str]) -> int | None:
    before = match.string[max(0, match.start() - 16) : match.start()]
    if _VERSION_CONTEXT.search(before):
        return None
    try:
        ipaddress.IPv4Address(match.group())
    except ValueError:
        return None
    return match.end()


# International: "+" or "00", country code, then groups. The trunk "(0)" in
# "+44 (0)20 ..." is dialled only nationally and does not count as a digit.
_PHONE_INTL = re.compile(
    r"(?<![\w+])(?:\+|\b00)[1-9]\d{0,2}+"
    r"(?:[ .\-/]?(?:\(\d{1,5}\)|\d++)){1,7}(?!\w|[.\-/]?\d)"
)
_PHONE_NANP = re.compile(
    r"(?<![\w+(.\-/])(?<!\d )(?:1[ .\-])?"
    r"(?:\(\d{3}\) ?|\d{3}[ .\-])\d{3}[ .\-]\d{4}(?!\w|[.\-/]?\d)"
)
_PHONE_NATIONAL = re.compile(
    r"(?<![\w+.\-/(])(?<!\d )(?:\(0\d{1,4}\) ?|0\d{1,4}+[ .\-/]?)"
    r"\d++(?:[ .\-/]\d++){0,5}(?!\w|[.\-/]?\d)"
)
# "05.11.2026 0830": a date, then another number; "01.23.45.67.89" is a French phone.
_DATE_PREFIX = re.compile(r"\d{1,2}([./-])\d{1,2}\1\d{2,4}(?:\s|$)")
_GROUP_SEP = re.compile(r"[ .\-/]")


def _digits(text: str) -> int:
    return sum(ch.isdigit() for ch in text)


def _accept_intl(match: re.Match[str]) -> int | None:
    cand = match.group()
    skip = 1 if cand.startswith("+") else 2  # the "+" or "00" international prefix
    ends = [m.start() for m in _GROUP_SEP.finditer(cand)] + [len(cand)]
    for end in reversed(ends):  # drop trailing groups that push it past E.164's 15
        n = _digits(cand[skip:end].replace("(0)", ""))
        if 8 <= n <= 15:
            return match.start() + end
        if n < 8:
            break
    return None


def _accept_national(match: re.Match[str]) -> int | None:
    cand = match.group()
    if _DATE_PREFIX.match(cand):
        return None
    return match.end() if 9 <= _digits(cand) <= 13 else None


_BASE_RULES: tuple[_Rule, ...] = (
    _Rule("email", _EMAIL, _whole),
    _Rule("iban", _IBAN, _accept_iban),
    _Rule("card", _CARD, _accept_card),
    _Rule("mac", _MAC, _whole),
    _Rule("ip", _IPV6, _accept_ipv6),
    _Rule("ip", _IPV4, _accept_ipv4),
    _Rule("phone", _PHONE_INTL, _accept_intl),
    _Rule("phone", _PHONE_NANP, _whole),
    _Rule("phone", _PHONE_NATIONAL, _accept_national),
)


def _names_pattern(names: Iterable[str]) -> re.Pattern[str] | None:
    words = {tuple(name.split()) for name in names if name.strip()}
    if not words:
        return None
    # Longest first, so "Anna Schmidt" wins over "Anna"; any whitespace between parts.
    alternatives = sorted(words, key=lambda parts: (-len(" ".join(parts)), parts))
    body = "|".join(r"\s+".join(re.escape(part) for part in parts) for parts in alternatives)
    # Not inside a word, nor inside a placeholder ("[NAME]" for a person called Name).
    return re.compile(rf"(?<![\w\[])(?:{body})(?![\w\]])", re.IGNORECASE)


def _apply(rule: _Rule, text: str, counts: dict[str, int]) -> str:
    out: list[str] = []
    pos = 0
    found = 0
    placeholder = PLACEHOLDERS[rule.kind]
    search = rule.pattern.search
    match = search(text)
    while match is not None:
        end = rule.accept(match)
        if end is None:
            # Not a value, but a shorter one may start inside the candidate (the IBAN
            # candidate runs on into the next words): look again one character on.
            match = search(text, match.start() + 1)
            continue
        out.append(text[pos : match.start()])
        out.append(placeholder)
        pos = end
        found += 1
        match = search(text, end)
    if not found:
        return text
    out.append(text[pos:])
    counts[rule.kind] += found
    return "".join(out)


class Redactor:
    """Compiled redaction for one set of configured names; safe to share between threads."""

    __slots__ = ("_rules",)

    def __init__(self, names: Iterable[str] = ()) -> None:
        pattern = _names_pattern(names)
        extra = (_Rule("name", pattern, _whole),) if pattern is not None else ()
        self._rules: tuple[_Rule, ...] = _BASE_RULES + extra

    def redact(self, text: str) -> Redacted:
        counts = dict.fromkeys(PII_TYPES, 0)
        for rule in self._rules:
            text = _apply(rule, text, counts)
        return Redacted(text, counts)

    def redact_value(self, value: JsonValue) -> JsonValue:
        """Redact the strings in a sensor value (recursing into lists and dicts; keys kept)."""
        if isinstance(value, str):
            return self.redact(value).text
        if isinstance(value, list):
            return [self.redact_value(item) for item in value]
        if isinstance(value, dict):
            return {key: self.redact_value(item) for key, item in value.items()}
        return value


@lru_cache(maxsize=64)
def _redactor(names: tuple[str, ...]) -> Redactor:
    return Redactor(names)


def redact(text: str, *, names: Sequence[str] = ()) -> Redacted:
    """Redact ``text``; the compiled redactor is cached per name set."""
    return _redactor(tuple(names)).redact(text)


def redact_value(value: JsonValue, *, names: Sequence[str] = ()) -> JsonValue:
    """Redact a sensor value: strings are redacted, numbers and booleans pass through."""
    return _redactor(tuple(names)).redact_value(value)
