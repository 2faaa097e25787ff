"""Model backends, one interface per capability (see `base`): hf, openai, offline, embedders."""
