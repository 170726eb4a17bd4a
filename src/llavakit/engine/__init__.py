"""Generation: KV cache, sampling, the decode loop. Works on ids and embeddings, never on HTTP."""
