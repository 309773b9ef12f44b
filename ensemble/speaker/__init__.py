"""Who speaks in each clip: voice embeddings, inferred speakers and per-speaker normalisation."""
