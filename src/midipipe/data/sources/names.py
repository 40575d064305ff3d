"""Label spelling shared by the adapters, so one composer or tag reads the same in every corpus."""

from __future__ import annotations

import re
import unicodedata

# Full names whose surname alone would collide or mislead; everything else keeps its surname.
COMPOSER_ALIASES = {
    "carl philipp emanuel bach": "cpe-bach",
    "c.p.e. bach": "cpe-bach",
    "johann christian bach": "jc-bach",
    "wilhelm friedemann bach": "wf-bach",
    "clara schumann": "clara-schumann",
    "clara wieck": "clara-schumann",
    "johann strauss ii": "strauss-ii",
    "johann strauss": "strauss-ii",
    "richard strauss": "r-strauss",
    "josquin de pre": "josquin",
    "josquin des prez": "josquin",
    "josquin des pres": "josquin",
    "jacopo da bologna": "jacopo",
    "lorenzo da firenze": "lorenzo",
    "philippe de vitry": "vitry",
    "d. luca": "luca",
    "h.r.h.liliuokalani": "liliuokalani",
    "mrs. h.h.a. beach (amy beach)": "beach",
    "amy beach": "beach",
}
_PARTICLES = {"van", "von", "de", "da", "di", "del", "der", "le", "la"}


def ascii_fold(text: str) -> str:
    """Lowercase, accents removed: 'Frédéric' -> 'frederic'."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).lower().strip()


def slug(text: str) -> str:
    """A tag or folder name as a lowercase, dash-separated token: 'Hip Hop/Rap' -> 'hip-hop-rap'."""
    return re.sub(r"[^a-z0-9]+", "-", ascii_fold(text)).strip("-")


def normalize_composer(name: str | None) -> str | None:
    """A composer's short key, the same across corpora: 'Bach, Johann Sebastian' -> 'bach'.

    The first of several composers ('Wagner / Liszt') is kept; 'Last, First' is turned round;
    the surname is the last word, except for the aliases above (family names shared by
    several composers, and names whose last word is a place).
    """
    if not name or not name.strip():
        return None
    text = ascii_fold(re.split(r"\s*(?:/|&|\n)\s*", name.strip())[0])
    if text in COMPOSER_ALIASES:
        return COMPOSER_ALIASES[text]
    if "," in text:
        last, _, first = text.partition(",")
        text = f"{first.strip()} {last.strip()}".strip()
    if text in COMPOSER_ALIASES:
        return COMPOSER_ALIASES[text]
    if text.startswith(("anonym", "anonyous", "unknown", "traditional", "trad.")):
        return None
    words = text.split()
    while len(words) > 1 and words[-1] in _PARTICLES:
        words.pop()
    return (slug(words[-1]) or None) if words else None


_TITLE_EXTRAS = re.compile(r"\([^)]*\)|\[[^\]]*\]")  # (Live), [Remastered 2011]
_TITLE_TAIL = re.compile(r"\s+-\s+|\s+(?:feat|ft)\.?\s+")  # "Song - Radio Edit", "Song feat. X"
_ARTIST_TAIL = re.compile(r"\s+(?:feat|ft)\.?\s+|\s+&\s+|\s*,\s*|\s+with\s+")


def work_key(artist: str | None, title: str | None) -> str | None:
    """A song's grouping key from artist and title, alike across renditions and file copies:
    'The Beatles', 'Let It Be (Remastered 2009)' -> 'beatles/let-it-be'. None without both."""
    if not artist or not title or not str(artist).strip() or not str(title).strip():
        return None
    name = _TITLE_TAIL.split(_TITLE_EXTRAS.sub(" ", ascii_fold(str(title))))[0]
    who = _ARTIST_TAIL.split(ascii_fold(str(artist)))[0]
    who = re.sub(r"^the\s+", "", who)
    a, t = slug(who), slug(name)
    return f"{a}/{t}" if a and t else None
