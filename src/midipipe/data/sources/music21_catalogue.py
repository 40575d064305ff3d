"""What the music21 corpus holds, as facts: which files, by whom, when, and in what form.

The corpus's own metadata is patchy (many files carry no composer or title), so labels come
from this table, keyed by the corpus's folder layout. One `Entry` is a set of files sharing
labels; a *group* (a composer or a collection) is the unit that `max_per_group` caps and
that `selection` names.

song_id rules (`Entry.song`): movements of one work share it, so a work never straddles splits:
  - "file": each file (or each tune of a multi-tune ABC file) is its own work;
  - "parent": the parent folder is the work (string-quartet movements: `opus18no1/movementN`);
  - "cantata": Bach chorales by BWV number (`bwv248.12-2` -> `bwv248`): the chorales of one
    cantata or oratorio share a song_id;
  - "mass": Palestrina mass movements by the mass named in the Humdrum `!!!OPR` header;
  - "work:<key>": a fixed key (the two Dichterliebe files are one song cycle).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Entry:
    group: str  # composer or collection: the unit of `selection` and `max_per_group`
    pattern: str  # glob under the corpus root
    period: str
    genres: tuple[str, ...]
    composer: str | None = None  # None: anonymous / folk, or read from the file (trecento)
    song: str = "file"
    exclude: str | None = None  # regex on the relative path
    in_default: bool = True  # False: only with selection "all" or the group named explicitly
    voices_as_tunes: bool = False  # ABC files whose X: tunes are the voices of one piece
    composer_from_metadata: bool = False


CATALOGUE: tuple[Entry, ...] = (
    # -- medieval and renaissance
    Entry("trecento", "trecento/*.xml", "medieval", ("vocal",), composer_from_metadata=True),
    Entry("ciconia", "ciconia/*.xml", "medieval", ("vocal",), "ciconia"),
    Entry("luca", "luca/*.xml", "medieval", ("mass", "sacred", "vocal"), "luca"),
    Entry("josquin", "josquin/*.abc", "renaissance", ("vocal",), "josquin", voices_as_tunes=True),
    Entry(
        "palestrina",
        "palestrina/*.krn",
        "renaissance",
        ("mass", "sacred", "vocal"),
        "palestrina",
        song="mass",
    ),
    Entry(
        "monteverdi",
        "monteverdi/*.mxl",
        "renaissance",
        ("madrigal", "vocal"),
        "monteverdi",
        exclude=r"_old\.",
    ),
    Entry("lusitano", "lusitano/*.mxl", "renaissance", ("madrigal", "vocal"), "lusitano"),
    # -- baroque
    Entry(
        "bach",
        "bach/bwv*.mxl",
        "baroque",
        ("chorale", "sacred", "vocal"),
        "bach",
        song="cantata",
        exclude=r"bwv[\d.]+-",  # variant settings (-a, -sc, -lpz...) of a chorale
    ),
    Entry("handel", "handel/**/*.mxl", "baroque", ("aria", "opera", "vocal"), "handel"),
    Entry("corelli", "corelli/**/*.xml", "baroque", ("trio-sonata", "instrumental"), "corelli"),
    # -- classical
    Entry("cpe-bach", "cpebach/*.mxl", "classical", ("keyboard", "instrumental"), "cpe-bach"),
    Entry(
        "haydn",
        "haydn/*/movement*.mxl",
        "classical",
        ("string-quartet", "instrumental"),
        "haydn",
        song="parent",
    ),
    Entry(
        "mozart",
        "mozart/k[0-9]*/movement*.mxl",
        "classical",
        ("string-quartet", "instrumental"),
        "mozart",
        song="parent",
        exclude=r"^mozart/k545/",
    ),
    Entry(
        "mozart",
        "mozart/k545/*.mxl",
        "classical",
        ("piano-sonata", "piano", "instrumental"),
        "mozart",
        song="parent",
    ),
    Entry(
        "beethoven",
        "beethoven/*/movement*.mxl",
        "classical",
        ("string-quartet", "instrumental"),
        "beethoven",
        song="parent",
    ),
    Entry(  # whole quartets in one file: large and slow to convert
        "beethoven",
        "beethoven/opus*.mxl",
        "classical",
        ("string-quartet", "instrumental"),
        "beethoven",
        in_default=False,
    ),
    # -- romantic
    Entry("schubert", "schubert/*.xml", "romantic", ("lied", "vocal"), "schubert"),
    Entry(
        "schumann",
        "schumann_robert/opus41no1/*.mxl",
        "romantic",
        ("string-quartet", "instrumental"),
        "schumann",
        song="parent",
    ),
    Entry(  # dichterliebe_no2.xml is the same song as opus48no2.mxl
        "schumann",
        "schumann_robert/opus48no2.mxl",
        "romantic",
        ("lied", "vocal"),
        "schumann",
        song="work:dichterliebe",
    ),
    Entry(
        "clara-schumann",
        "schumann_clara/polonaise_*.mxl",
        "romantic",
        ("polonaise", "dance", "piano", "instrumental"),
        "clara-schumann",
    ),
    Entry(
        "clara-schumann",
        "schumann_clara/opus17/*.xml",
        "romantic",
        ("piano-trio", "instrumental"),
        "clara-schumann",
        song="parent",
    ),
    Entry(
        "chopin",
        "chopin/*.krn",
        "romantic",
        ("mazurka", "dance", "piano", "instrumental"),
        "chopin",
    ),
    Entry("verdi", "verdi/*.mxl", "romantic", ("aria", "opera", "vocal"), "verdi"),
    Entry("weber", "weber/*.mxl", "romantic", ("concertino", "instrumental"), "weber"),
    Entry("foster", "leadSheet/foster*.mxl", "romantic", ("song", "lead-sheet"), "foster"),
    Entry("liliuokalani", "liliuokalani/*.mxl", "romantic", ("song", "vocal"), "liliuokalani"),
    Entry("joplin", "joplin/*.mxl", "romantic", ("rag", "piano", "instrumental"), "joplin"),
    # -- 20th century
    Entry(
        "berlin", "leadSheet/berlin*.mxl", "20th-century", ("song", "rag", "lead-sheet"), "berlin"
    ),
    Entry("johnson", "johnson_j_r/*.mxl", "20th-century", ("song", "hymn", "vocal"), "johnson"),
    Entry("beach", "beach/*.musicxml", "20th-century", ("song", "vocal"), "beach"),
    Entry(
        "schoenberg",
        "schoenberg/*/movement*.mxl",
        "20th-century",
        ("piano", "instrumental"),
        "schoenberg",
        song="parent",
    ),
    Entry("webern", "webern/*.mxl", "20th-century", ("canon", "vocal"), "webern"),
    # -- folk collections: every tune of a multi-tune ABC file is its own piece
    Entry(
        "essen",
        "essenFolksong/*.abc",
        "folk",
        ("folksong", "vocal", "european"),
        exclude=r"/(test|variant|han)\w*\.abc$",
    ),
    Entry("essen", "essenFolksong/han*.abc", "folk", ("folksong", "vocal", "chinese")),
    Entry("oneills", "oneills1850/*.abc", "folk", ("irish", "fiddle-tune", "instrumental")),
    Entry("ryans", "ryansMammoth/*.abc", "folk", ("fiddle-tune", "instrumental")),
    Entry("airds", "airdsAirs/*.abc", "folk", ("scottish", "instrumental")),
    Entry("fife", "miscFolk/americanfifeopus.abc", "folk", ("fife", "instrumental")),
)

# How many pieces the default selection takes from each group (spread evenly over its files).
# Budget: the default selection (419 pieces) costs about 150 CPU-seconds to convert, so
# about 80 s of wall time on 2 free cores (measured: 144 CPU-s for the same with beethoven 12).
DEFAULT_CAPS: dict[str, int] = {
    "bach": 80,
    "palestrina": 60,
    "monteverdi": 30,
    "trecento": 30,
    "beethoven": 16,
    "mozart": 17,
    "haydn": 9,
    "schumann": 6,
    "essen": 30,
    "oneills": 40,
    "ryans": 40,
    "airds": 20,
    "fife": 10,
}
SINGLE_GROUP_CAP = 8  # groups not listed above: a handful of files, all taken

GROUPS: tuple[str, ...] = tuple(dict.fromkeys(e.group for e in CATALOGUE))

# Dance and tune types, as written in ABC `R:` fields or tune titles -> one tag.
_DANCES = (
    ("slip jig", "slip-jig"),
    ("slipjig", "slip-jig"),
    ("jig", "jig"),
    ("reel", "reel"),
    ("hornpipe", "hornpipe"),
    ("strathspey", "strathspey"),
    ("waltz", "waltz"),
    ("quick step", "march"),
    ("quickstep", "march"),
    ("march", "march"),
    ("polka", "polka"),
    ("schottische", "schottische"),
    ("mazurka", "mazurka"),
    ("clog", "clog"),
    ("set dance", "set-dance"),
    ("slide", "slide"),
    ("fling", "fling"),
    ("minuet", "minuet"),
    ("gavotte", "gavotte"),
)


def tune_type(rhythm: str | None, title: str | None) -> str | None:
    """The dance or tune type of a folk tune, from its ABC `R:` field, else from its title."""
    for text in (rhythm, title):
        if not text:
            continue
        low = text.lower()
        for word, tag in _DANCES:
            if re.search(rf"\b{word}s?\b", low):
                return tag
        if text is rhythm and re.search(r"\bairs?\b", low):
            return "air"
    return None
