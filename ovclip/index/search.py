"""Search an `ovclip` index with a text or an image, encoded by the deployment the collection was embedded with.

    result = search("idx/", text="a red coat", k=10)
    [(h.rank, h.path, h.score) for h in result.hits]

Scores are cosine similarities (embeddings are L2-normalised). Below the index's ANN threshold the search is
exact; above it, LanceDB's IVF index is probed (`nprobes` lists; an IVF-PQ index re-ranks its candidates with the
exact vectors).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ovclip.embed.store import manifest_digest
from ovclip.errors import OvclipError
from ovclip.index.store import INFO_FILE, TABLE, VECTOR, lancedb, read_info

COLUMNS = ["path", "exit_block", "width", "height"]


@dataclass
class Hit:
    rank: int
    path: str
    score: float  # cosine similarity
    exit_block: int
    width: int
    height: int
    captions: list[str] | None = None


@dataclass
class SearchResult:
    query: str  # the text, or the image path
    kind: str  # text | image
    hits: list[Hit]
    exact: bool  # True: brute force; False: the ANN index answered
    index: Path = field(default=Path())


class Index:
    """An opened index: its table, its build info, and (loaded on first use) its deployment."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).absolute()
        if not self.path.exists():
            raise OvclipError(f"{self.path}: no such index; build one with `ovclip embed SRC ... --index PATH`")
        info = read_info(self.path)
        if info is None:
            raise OvclipError(f"{self.path}: not an ovclip index (no valid {INFO_FILE}); pass the --index PATH")
        self.info = info
        self.table = lancedb().connect(self.path).open_table(TABLE)
        self.columns = COLUMNS + (["captions"] if "captions" in self.table.schema.names else [])
        self._dep = None

    @property
    def exact(self) -> bool:
        return self.info.get("ann") is None

    def deployment(self, folder: str | Path | None = None, device: str = "CPU"):
        """The deployment that encodes queries: `folder`, or the one recorded at build time; its digest must match."""
        if self._dep is None or folder is not None:
            from ovclip.runtime import Deployment

            path = Path(folder or self.info["deployment"]).absolute()
            if not (path / "manifest.json").exists():
                what = "not a deployment folder" if folder else "the deployment folder this index was built with"
                raise OvclipError(
                    f"{path}: {what} (no manifest.json); pass the folder `ovclip embed` used with `deployment`",
                    params="deployment",
                )
            if manifest_digest(path) != self.info["deployment_digest"]:
                raise OvclipError(
                    f"{path} is not the deployment folder this index was built with (its manifest differs); pass "
                    "that folder with `deployment`",
                    params="deployment",
                )
            self._dep = Deployment(path, device, hint="latency")
        return self._dep

    def search_vectors(
        self, queries: np.ndarray, k: int = 10, *, nprobes: int | None = None, refine_factor: int | None = None
    ) -> list[list[Hit]]:
        """Top-`k` rows for each query embedding (rows of `queries`, L2-normalised). With an ANN index, `nprobes`
        and `refine_factor` override the values recorded at build time."""
        if k < 1:
            raise OvclipError(f"k={k}: must be at least 1", params="k")
        out = []
        for q in np.atleast_2d(np.asarray(queries, np.float32)):
            builder = self.table.search(q, vector_column_name=VECTOR).distance_type(self.info["metric"]).limit(k)
            if not self.exact:
                builder = builder.nprobes(nprobes or self.info["search"]["nprobes"])
                refine = refine_factor or self.info["search"].get("refine_factor")
                if refine:
                    builder = builder.refine_factor(refine)
            rows = builder.select([*self.columns, "_distance"]).to_arrow().to_pylist()
            out.append([_hit(i, r) for i, r in enumerate(rows, start=1)])
        return out

    def encode(self, text: str | None = None, image: str | Path | None = None, deployment=None) -> np.ndarray:
        """The query embedding (1, E) of a text or an image file, as the collection was embedded."""
        if (text is None) == (image is None):
            raise OvclipError("give `text` or `image` (one of them)", params=("text", "image"))
        dep = self.deployment(deployment)
        if text is not None:
            if not text.strip():
                raise OvclipError("the query text is empty; give some words to search for", params="text")
            return dep.encode_text([text])
        from ovclip.data.images import load_image

        pixels = dep.preprocess([load_image(image)])
        return dep.run_vision(pixels, early_exit=bool(self.info.get("early_exit", True))).embeddings


def _hit(rank: int, row: dict) -> Hit:
    return Hit(
        rank=rank,
        path=row["path"],
        score=1.0 - float(row["_distance"]),
        exit_block=int(row["exit_block"]),
        width=int(row["width"]),
        height=int(row["height"]),
        captions=row.get("captions"),
    )


def search(
    index: str | Path,
    *,
    text: str | None = None,
    image: str | Path | None = None,
    k: int = 10,
    deployment: str | Path | None = None,
) -> SearchResult:
    """The top-`k` images of the index for a text or an image query."""
    if k < 1:
        raise OvclipError(f"k={k}: must be at least 1", params="k")
    idx = Index(index)
    query = idx.encode(text=text, image=image, deployment=deployment)
    hits = idx.search_vectors(query, k)[0]
    return SearchResult(
        query=text if text is not None else str(image),
        kind="text" if text is not None else "image",
        hits=hits,
        exact=idx.exact,
        index=idx.path,
    )
