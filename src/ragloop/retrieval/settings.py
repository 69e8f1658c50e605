"""How an index is built, in one checked object: the FAISS type and its search parameters, the refine
stage, the chunking of a streaming build, BM25 and the passage encoder's precision.

    >>> from ragloop.retrieval.settings import IndexSettings
    >>> settings = IndexSettings(factory="OPQ64,IVF1024,PQ64x4fs", refine="disk", refine_factor=8)
    >>> settings.search_params_or_defaults()["nprobe"]       # FAISS's search parameters, defaults filled in
    16
    >>> Index.build(passages, encoder, "runs/idx", settings)  # also: build_shard, Index.from_vectors
    >>> IndexSettings(batch_size=0)                           # a bad value fails here, once, for every caller
    Traceback (most recent call last):
    ragloop.errors.RagloopError: --batch-size must be at least 1 (got 0)

`Index.build` keeps its keyword arguments (`factory=`, `refine=`, `chunk_size=` ...): `IndexSettings.of`
maps them onto this object. Whether FAISS knows the factory string is checked when the backend is
created (that needs faiss); everything else is checked here, without importing faiss or torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ragloop import checks
from ragloop.constants import INDEX_CHUNK_SIZE, INDEX_REFINE_FACTOR
from ragloop.errors import RagloopError
from ragloop.quantize import check_mode

DEFAULT_SEARCH_PARAMS = {"efSearch": 128, "nprobe": 16}  # HNSW's and IVF's search breadth, unless given
TRAIN_SIZE = 100_000  # vectors (spread evenly over the corpus) that train IVF centroids / PQ codebooks / OPQ
REFINE_KINDS, REFINE_DTYPES = ("disk",), ("float32", "float16")
VECTORS_FILE = "vectors.npy"  # refine "disk": the exact vectors, row i = FAISS row i


@dataclass(frozen=True)
class IndexSettings:
    """Every option of an index build. `refine="disk"` keeps the exact vectors in the folder
    (vectors.npy, `refine_dtype`) to re-score FAISS's top k * `refine_factor`; `chunk_size` passages are
    encoded and written at a time; FAISS trains on `train_size` vectors; `quantize` ("int8") encodes the
    passages with a quantized encoder (recorded in the manifest)."""

    factory: str = "Flat"
    search_params: dict[str, Any] | None = field(default=None, hash=False)
    with_bm25: bool = True
    refine: str | None = None
    refine_factor: int = INDEX_REFINE_FACTOR
    refine_dtype: str = "float32"
    chunk_size: int = INDEX_CHUNK_SIZE
    train_size: int = TRAIN_SIZE
    batch_size: int = 64
    quantize: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.factory, str) or not self.factory.strip():
            raise RagloopError(f"the FAISS index type must be a factory string such as 'Flat' (got {self.factory!r})")
        if self.search_params is not None and not (
                isinstance(self.search_params, dict) and all(isinstance(k, str) for k in self.search_params)):
            raise RagloopError(f"search_params must map FAISS parameter names to values (got {self.search_params!r})")
        for name, shown_as in (("batch_size", "--batch-size"), ("chunk_size", "--chunk-size"),
                               ("train_size", "train_size"), ("refine_factor", "--refine-factor")):
            checks.whole(getattr(self, name), shown_as, low=1)
        checks.flag(self.with_bm25, "with_bm25")
        if self.refine == "none":
            object.__setattr__(self, "refine", None)
        if self.refine is not None:
            checks.choice(self.refine, "--refine", REFINE_KINDS,
                          f"--refine must be one of none, {', '.join(REFINE_KINDS)} (got {self.refine!r})")
        checks.choice(self.refine_dtype, "--refine-dtype", REFINE_DTYPES,
                      f"--refine-dtype must be one of {', '.join(REFINE_DTYPES)} (got {self.refine_dtype!r})")
        check_mode(self.quantize)

    @classmethod
    def of(cls, settings: IndexSettings | str | None = None, **options: Any) -> IndexSettings:
        """`settings` (or the defaults; a string is short for `factory=`) with `options` (the keyword
        arguments `Index.build` has always taken) applied: the one place loose options become settings."""
        if isinstance(settings, str):
            settings, options = None, {"factory": settings, **options}
        unknown = sorted(set(options) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise TypeError(f"unexpected index option(s) {', '.join(unknown)} (known: "
                            f"{', '.join(f.name for f in dataclasses.fields(cls))})")
        return dataclasses.replace(settings or cls(), **options)

    @classmethod
    def from_manifest(cls, manifest: dict) -> IndexSettings:
        """The settings an index folder's manifest records (type, search parameters, refine, BM25)."""
        entry, refine = manifest["index"], manifest["index"].get("refine") or {}
        return cls(factory=entry["factory"], search_params=entry.get("search_params"),
                   with_bm25=manifest.get("bm25") is not None, refine=refine.get("kind"),
                   refine_factor=refine.get("factor", INDEX_REFINE_FACTOR), refine_dtype=refine.get("dtype", "float32"))

    def build_options(self) -> dict[str, Any]:
        """The `Index.build` keyword arguments that rebuild an index the same way (type, search, refine)."""
        return {"factory": self.factory, "search_params": self.search_params, "with_bm25": self.with_bm25,
                "refine": self.refine, "refine_factor": self.refine_factor, "refine_dtype": self.refine_dtype}

    def search_params_or_defaults(self) -> dict[str, Any]:
        """FAISS's search parameters as the manifest records them: the defaults, then the given ones."""
        return {**DEFAULT_SEARCH_PARAMS, **(self.search_params or {})}

    def refine_entry(self) -> dict | None:
        """The manifest's refine entry ({"kind", "factor", "dtype", "file"}), or None without a refine stage."""
        if self.refine is None:
            return None
        return {"kind": self.refine, "factor": self.refine_factor, "dtype": self.refine_dtype, "file": VECTORS_FILE}

