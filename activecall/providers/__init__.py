"""Voice-AI providers (ASR, TTS, LLM) behind small interfaces, found by name."""
