"""RAG: ingest documents into named collections, retrieve (dense / BM25 / hybrid), answer with citations.

    from rag import Collection, answer_stream
    col = Collection.open("notes")
    report = col.ingest(["docs/"], progress=lambda stage, done, total: ...)
    hits = col.search("who killed the king?", k=5, mode="hybrid")
    stream = answer_stream(col, "who killed the king?")     # stream.sources known now
    for piece in stream: ...                                 # then stream.citations
"""

from .answer import (
    LLM,
    Answer,
    AnswerStream,
    CoreLLM,
    Source,
    answer,
    answer_stream,
    build_messages,
    extractive_answer,
    pack_passages,
    parse_citations,
)
from .chunking import Chunk, chunk_document, split_sentences
from .collection import (
    Collection,
    CollectionInfo,
    DocumentInfo,
    FileResult,
    IngestReport,
    delete_collection,
    list_collections,
    rag_home,
)
from .embed import DEFAULT_EMBED_MODEL, Cancelled, Embedder, get_embedder
from .loaders import DEFAULT_MAX_BYTES, SUPPORTED_EXTENSIONS, LoadedDocument, LoadError, load_file
from .retrieve import MODES, SearchResult

__all__ = [
    "LLM", "Answer", "AnswerStream", "CoreLLM", "Source", "answer", "answer_stream", "build_messages",
    "extractive_answer", "pack_passages", "parse_citations", "Chunk", "chunk_document", "split_sentences",
    "Collection", "CollectionInfo", "DocumentInfo", "FileResult", "IngestReport", "delete_collection",
    "list_collections", "rag_home", "DEFAULT_EMBED_MODEL", "Cancelled", "Embedder", "get_embedder",
    "DEFAULT_MAX_BYTES", "SUPPORTED_EXTENSIONS", "LoadedDocument", "LoadError", "load_file", "MODES", "SearchResult",
]
