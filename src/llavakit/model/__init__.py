"""Model components: vision towers, projector, decoder and the LLaVA glue."""
