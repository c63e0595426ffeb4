"""RAG: ingest documents into named collections, retrieve (dense / BM25 / hybrid), answer with citations.

    from rag import Collection, answer_stream
    col = Collection.open("notes")
    report = col.ingest(["docs/"], progress=lambda stage, done, total: ...)
    hits = col.search("who killed the king?", k=5, mode="hybrid")
    stream = answer_stream(col, "who killed the king?")     # stream.sources known now; grounded by default
    for piece in stream: ...                                 # then stream.citations, stream.abstained
"""

from .answer import (
    ANSWER_MODES,
    DEFAULT_ANSWER_MODE,
    NO_DOCUMENTS,
    NOT_FOUND,
    Answer,
    AnswerStream,
    CoreLLM,
    Source,
    answer,
    answer_stream,
    build_messages,
    extractive_answer,
    grounded_answer,
    pack_passages,
    parse_citations,
    retrieve,
)
from .chunking import Chunk, chunk_document, split_sentences
from .collection import (
    Collection,
    CollectionInfo,
    DocumentInfo,
    FileResult,
    IngestReport,
    check_collection_name,
    collection_names,
    delete_collection,
    list_collections,
    rag_home,
)
from .embed import DEFAULT_EMBED_MODEL, Cancelled, Embedder, get_embedder
from .grounded import Pick, pick
from .llm import LLM, core_llm_factory, get_core_llm
from .loaders import DEFAULT_MAX_BYTES, SUPPORTED_EXTENSIONS, LoadedDocument, LoadError, load_file
from .reader import load_reader, read
from .retrieve import MODES, SearchResult, diversify

__all__ = [
    "ANSWER_MODES", "DEFAULT_ANSWER_MODE", "NO_DOCUMENTS", "NOT_FOUND", "grounded_answer", "retrieve", "Pick", "pick",
    "load_reader", "read",
    "core_llm_factory", "get_core_llm", "diversify", "LLM", "Answer", "AnswerStream", "CoreLLM", "Source", "answer", "answer_stream", "build_messages",
    "extractive_answer", "pack_passages", "parse_citations", "Chunk", "chunk_document", "split_sentences",
    "Collection", "CollectionInfo", "DocumentInfo", "FileResult", "IngestReport", "delete_collection",
    "list_collections", "collection_names", "check_collection_name", "rag_home", "DEFAULT_EMBED_MODEL", "Cancelled", "Embedder", "get_embedder",
    "DEFAULT_MAX_BYTES", "SUPPORTED_EXTENSIONS", "LoadedDocument", "LoadError", "load_file", "MODES", "SearchResult",
]
