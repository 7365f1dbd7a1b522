"""Embed image collections of any size into Parquet shards, in one process or on a Ray cluster.

    from ovclip.embed import EmbedOptions, embed_collection
    result = embed_collection("photos/", "out/int8", "emb/", EmbedOptions(shard_size=4096))

Needs pyarrow (`pip install 'ovclip[index]'`); the Ray run also needs `pip install 'ovclip[ray]'`.
"""

from ovclip.embed.job import EmbedOptions, EmbedProgress, EmbedResult, embed_collection
from ovclip.embed.sources import Item, Source, open_source
from ovclip.embed.store import read_job, shard_files

__all__ = [
    "EmbedOptions",
    "EmbedProgress",
    "EmbedResult",
    "Item",
    "Source",
    "embed_collection",
    "open_source",
    "read_job",
    "shard_files",
]
