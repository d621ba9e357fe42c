"""Locating the evaluator's external resources: the SciBERT vocabulary and WordNet 3.0.

Each resource is looked up in a fixed order: an explicit path (command line or config), an
environment variable, the standard locations, and finally a fallback that needs no network
(the repository's ``../shared/data`` copy of the vocabulary; Debian's WordNet files laid out as
an NLTK corpus in a cache directory). A missing resource raises :class:`MissingResourceError`
naming what is missing, where it looked, and the one command that gets it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

SCIBERT_REPO_ID = "allenai/scibert_scivocab_uncased"
SCIBERT_ENV = "ALMOL_SCIBERT_VOCAB"
WORDNET_ENV = "NLTK_DATA"
CACHE_ENV = "ALMOL_CACHE_DIR"
DEBIAN_WORDNET_DIR = Path("/usr/share/wordnet")
REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_SCIBERT_VOCAB = (
    REPO_ROOT.parent / "shared" / "data" / "scibert_scivocab_uncased" / "vocab.txt"
)

SCIBERT_HINT = f"hf download {SCIBERT_REPO_ID} vocab.txt"
WORDNET_HINT = "apt-get install -y wordnet-base wordnet-sense-index"
FCD_HINT = "pip install fcd_torch==1.0.7"

# The standard lexicographer-file list of WordNet 3.0, documented in lexnames(5WN). Debian's
# wordnet-base package does not ship it, and nltk's reader needs it.
LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute "
    "noun.body noun.cognition noun.communication noun.event noun.feeling noun.food noun.group "
    "noun.location noun.motive noun.object noun.person noun.phenomenon noun.plant "
    "noun.possession noun.process noun.quantity noun.relation noun.shape noun.state "
    "noun.substance noun.time verb.body verb.change verb.cognition verb.communication "
    "verb.competition verb.consumption verb.contact verb.creation verb.emotion verb.motion "
    "verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()
_POS_NUMBER = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
WORDNET_FILES = (
    "data.adj data.adv data.noun data.verb index.adj index.adv index.noun index.verb "
    "adj.exc adv.exc noun.exc verb.exc index.sense"
).split()


class MissingResourceError(RuntimeError):
    """A resource a metric needs is absent; the message says what and how to get it."""

    def __init__(self, resource: str, looked: list[str], command: str):
        self.resource = resource
        self.command = command
        where = "; ".join(looked) if looked else "nowhere"
        super().__init__(
            f"{resource} not found (looked in: {where}). Get it with: {command}"
            " (or pass --skip-unavailable to skip the metrics that need it)"
        )


def lexnames_text() -> str:
    """The 45-line ``lexnames`` file: ``NN<TAB>name<TAB>pos-number`` per line."""
    return "".join(
        f"{i:02d}\t{name}\t{_POS_NUMBER[name.split('.')[0]]}\n" for i, name in enumerate(LEXNAMES)
    )


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_dir() -> Path:
    """The evaluator's cache: $ALMOL_CACHE_DIR, else $XDG_CACHE_HOME/almol_jax, else ~/.cache."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "almol_jax"


def find_scibert_vocab(explicit: str | os.PathLike | None = None) -> Path:
    """Path of the SciBERT uncased ``vocab.txt``.

    Order: ``explicit`` (a vocab.txt or a directory holding one), $ALMOL_SCIBERT_VOCAB, the
    Hugging Face cache for allenai/scibert_scivocab_uncased, then ``<repo>/../shared/data``.
    """
    looked: list[str] = []
    candidates: list[tuple[str, str | os.PathLike | None]] = [
        ("explicit path", explicit),
        (f"${SCIBERT_ENV}", os.environ.get(SCIBERT_ENV)),
    ]
    for label, value in candidates:
        if not value:
            continue
        path = Path(value)
        path = path / "vocab.txt" if path.is_dir() else path
        if path.is_file():
            return path
        looked.append(f"{label} {path}")
        if label == "explicit path":
            raise MissingResourceError("SciBERT vocabulary", looked, SCIBERT_HINT)
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(SCIBERT_REPO_ID, "vocab.txt")
        if isinstance(hit, str) and Path(hit).is_file():
            return Path(hit)
    except Exception:  # noqa: BLE001 - a broken cache is just a miss
        pass
    looked.append(f"Hugging Face cache ({SCIBERT_REPO_ID})")
    if SHARED_SCIBERT_VOCAB.is_file():
        return SHARED_SCIBERT_VOCAB
    looked.append(str(SHARED_SCIBERT_VOCAB))
    raise MissingResourceError("SciBERT vocabulary", looked, SCIBERT_HINT)


def _is_wordnet_dict(path: Path) -> bool:
    return all((path / name).is_file() for name in ("data.noun", "index.noun", "noun.exc"))


def _nltk_root_with_wordnet(root: Path) -> bool:
    wn = root / "corpora" / "wordnet"
    return (wn.is_dir() and _is_wordnet_dict(wn) and (wn / "lexnames").is_file()) or (
        root / "corpora" / "wordnet.zip"
    ).is_file()


def layout_wordnet(dict_dir: str | os.PathLike, cache: str | os.PathLike | None = None) -> Path:
    """Lay a WordNet 3.0 ``dict`` directory (e.g. Debian's) out as an NLTK_DATA root.

    Creates ``<cache>/nltk_data_<hash>/corpora/wordnet/`` holding copies of the dict files
    (~36 MB) plus the standard ``lexnames`` file, atomically (safe when several processes race),
    and returns the root to put on ``nltk.data.path``. Links do not do: nltk 3.10 rejects
    symlinks that resolve outside the corpus root and multiply-linked files.
    """
    dict_dir = Path(dict_dir)
    missing = [name for name in WORDNET_FILES if not (dict_dir / name).is_file()]
    if missing:
        raise MissingResourceError(
            f"WordNet files {missing} in {dict_dir}", [str(dict_dir)], WORDNET_HINT
        )
    key = hashlib.sha256(str(dict_dir.resolve()).encode()).hexdigest()[:12]
    root = Path(cache or cache_dir()) / f"nltk_data_{key}"
    target = root / "corpora" / "wordnet"
    if _nltk_root_with_wordnet(root):
        return root
    (root / "corpora").mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="wordnet.", dir=root / "corpora"))
    try:
        for name in sorted(os.listdir(dict_dir)):
            src = dict_dir / name
            if src.is_file():
                shutil.copyfile(src, tmp / name)
        if not (tmp / "lexnames").exists():
            (tmp / "lexnames").write_text(lexnames_text())
        try:
            tmp.rename(target)
        except OSError:  # another process won the race
            if not _nltk_root_with_wordnet(root):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def nltk_data_path() -> list:
    """``nltk.data.path``, without importing nltk when it is not loaded yet.

    Importing nltk takes ~0.8 s (it imports scipy.stats), which a report that only names the
    WordNet source should not pay. Until nltk is imported nobody can have changed its path, so
    this is the list nltk's data module builds at import on POSIX (tested equal to it); once
    nltk is loaded (or on Windows), it is the live ``nltk.data.path``.
    """
    if "nltk" in sys.modules or sys.platform.startswith("win"):
        import nltk

        return list(nltk.data.path)
    path = [os.path.expanduser(d) for d in os.environ.get("NLTK_DATA", "").split(os.pathsep) if d]
    if "APPENGINE_RUNTIME" not in os.environ and os.path.expanduser("~/") != "~/":
        path.append(os.path.expanduser("~/nltk_data"))
    path += [
        os.path.join(sys.prefix, "nltk_data"),
        os.path.join(sys.prefix, "share", "nltk_data"),
        os.path.join(sys.prefix, "lib", "nltk_data"),
        "/usr/share/nltk_data",
        "/usr/local/share/nltk_data",
        "/usr/lib/nltk_data",
        "/usr/local/lib/nltk_data",
    ]
    return path


@dataclass(frozen=True)
class WordNetSource:
    """Where WordNet came from: the NLTK_DATA root to use and a description for reports."""

    nltk_root: Path
    source: str


def find_wordnet(
    explicit: str | os.PathLike | None = None, *, cache: str | os.PathLike | None = None
) -> WordNetSource:
    """Locate WordNet 3.0 as an NLTK_DATA root.

    Order: ``explicit`` (an NLTK_DATA root holding corpora/wordnet, or a WordNet dict directory,
    laid out on the fly), $NLTK_DATA, nltk's standard data path, then Debian's
    /usr/share/wordnet laid out in the cache with the lexnames file written by us.
    Finding it does not import nltk (:func:`nltk_data_path`).
    """
    looked: list[str] = []
    if explicit:
        path = Path(explicit)
        if _nltk_root_with_wordnet(path):
            return WordNetSource(path, f"explicit NLTK_DATA root {path}")
        if _is_wordnet_dict(path):
            return WordNetSource(layout_wordnet(path, cache), f"explicit WordNet dict {path}")
        raise MissingResourceError("WordNet", [f"explicit path {path}"], WORDNET_HINT)
    for entry in os.environ.get(WORDNET_ENV, "").split(os.pathsep):
        if entry and _nltk_root_with_wordnet(Path(entry)):
            return WordNetSource(Path(entry), f"${WORDNET_ENV} {entry}")
        if entry:
            looked.append(f"${WORDNET_ENV} {entry}")
    for entry in nltk_data_path():
        if isinstance(entry, str) and _nltk_root_with_wordnet(Path(entry)):
            return WordNetSource(Path(entry), f"nltk_data {entry}")
    looked.append("nltk.data.path")
    if _is_wordnet_dict(DEBIAN_WORDNET_DIR):
        root = layout_wordnet(DEBIAN_WORDNET_DIR, cache)
        return WordNetSource(root, f"debian {DEBIAN_WORDNET_DIR}{_debian_version()}")
    looked.append(str(DEBIAN_WORDNET_DIR))
    raise MissingResourceError("WordNet 3.0", looked, WORDNET_HINT)


def _debian_version() -> str:
    """`` (wordnet-base VERSION)`` from dpkg's status file, or '' where that is unknown."""
    status = Path("/var/lib/dpkg/status")
    if not status.is_file():
        return ""
    package = None
    for line in status.read_text(errors="replace").splitlines():
        if line.startswith("Package: "):
            package = line.split(": ", 1)[1]
        elif line.startswith("Version: ") and package == "wordnet-base":
            return f" (wordnet-base {line.split(': ', 1)[1]})"
    return ""


def load_wordnet(source: WordNetSource):
    """An nltk WordNetCorpusReader for ``source``, fast to start (:mod:`almol_jax.eval.wordnet`);
    adds its root to ``nltk.data.path``, as nltk 3.10 requires."""
    from almol_jax.eval.wordnet import load_reader

    return load_reader(source.nltk_root)


def package_versions() -> dict[str, str | None]:
    """Versions of the packages whose releases move the numbers."""
    from importlib import metadata

    out: dict[str, str | None] = {}
    for name in ("rdkit", "nltk", "rouge-score", "sacrebleu", "levenshtein", "tokenizers"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    for name in ("fcd_torch", "torch"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


@dataclass
class Resources:
    """What a scoring run used, for the report: versions, vocab hash, WordNet source, skips."""

    versions: dict = field(default_factory=package_versions)
    scibert_vocab: str | None = None
    scibert_vocab_sha256: str | None = None
    wordnet_source: str | None = None
    wordnet_version: str | None = None
    skipped: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "settings": dict(self.settings),
            "versions": dict(self.versions),
            "scibert_vocab": self.scibert_vocab,
            "scibert_vocab_sha256": self.scibert_vocab_sha256,
            "wordnet_source": self.wordnet_source,
            "wordnet_version": self.wordnet_version,
            "skipped": dict(self.skipped),
        }
