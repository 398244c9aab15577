"""The Arabic visual-document-retrieval embedding track (PEARL -> Qwen3-VL-Embedding fine-tune)."""
