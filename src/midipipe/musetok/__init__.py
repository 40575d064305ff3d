"""MuseTok-compatible per-bar tokenizer: events from symusic, the RVQ-VAE model, per-bar latents."""
