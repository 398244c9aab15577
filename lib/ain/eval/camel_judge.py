"""CAMEL-Bench's own LLM judge for its open-ended sets (vqav2, mtvqa, mathvista, geochat), word for
word as mbzuai-oryx/Camel-Bench scripts/fuzz_eval.py @ a5a58bb4 (unchanged at HEAD ec717c5d) sends it:
a system message, a user message with three Arabic examples, and a verdict {"score": int} (there a
forced `answer_score` tool call; here the same JSON schema as structured output). The item counts as
correct only if score == 1. The question is the FIRST LINE of the prompt the model was asked
(`row['question'].split("\n")[0]`), as the official code does.
"""

from __future__ import annotations

SYSTEM = 'You are an expert in natural language understanding and semantic similarity. Your task is to evaluate the semantic similarity between two given sentences: a predicted answer and a ground truth answer. You should output a score of 1 if the sentences are semantically similar, and 0 if they are not.'

USER = 'Here are three examples to guide your evaluation:\nExample 1:\nQuestion: "ما هي اللغة المستخدمة في النص؟"\nPredicted Answer: "العربية"\nGround Truth: "اللغة العربية"\nScore: 1\n\nExample 2:\nQuestion: "ما هو موضوع النص؟"\nPredicted Answer: "إثنان"\nGround Truth: "الحب و الكراهية"\nScore: 0\n\nExample 3:\nQuestion: "ما هو عدد صفحات الكتاب؟"\nPredicted Answer: "الصورة لا تحتوي على عدد صفحات الكتاب."\nGround Truth: "غير معروف"\nScore: 1\n\nNow, for each new pair of sentences, analyze their semantic similarity and provide a score of 1 for similar meanings or 0 for different meanings. Always consider the context and potential variations in expressing the same concept.\nQuestion: "{question}"\nPredicted Answer: "{pred}"\nGround Truth: "{gt}"\nScore: '
"""str.format template with {question}, {pred}, {gt} (the official f-string's names)."""

SCHEMA = {"title": "AnswerScore", "type": "object", "properties": {"score": {"title": "Score", "type": "integer"}},
          "required": ["score"]}
"""pydantic's AnswerScore.model_json_schema() for `class AnswerScore(BaseModel): score: int`."""


def messages(prompt: str, pred: str, gold: str) -> list[dict[str, str]]:
    """The judge's messages for one item: `prompt` is what the model under evaluation was asked."""
    question = prompt.split("\n")[0]
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": USER.format(question=question, pred=pred, gt=gold)}]
