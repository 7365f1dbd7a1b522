"""An embedded vector index (LanceDB: Arrow-native, no server) over `ovclip embed` output, and search over it.

    from ovclip.index import build_index, search
    build_index("emb/", "idx/")                       # after embed_collection("photos/", "out/int8", "emb/")
    search("idx/", text="a red coat", k=10).hits

Needs `pip install 'ovclip[index]'`.
"""

from ovclip.index.search import Hit, Index, SearchResult, search
from ovclip.index.store import AnnOptions, build_index, read_info

__all__ = ["AnnOptions", "Hit", "Index", "SearchResult", "build_index", "read_info", "search"]
