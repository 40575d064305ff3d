"""Genre classification: a phrase encoder (stage 05) and a hierarchical multi-label model over
frozen-LM chunk embeddings (stage 06), their baselines, and prediction for one MIDI file.

    phrases.py    phrases and chunks cut from REMI token rows, transposition, vocab checks
    train.py      params, training glue (shared `training.fit`), metrics, early stopping
    baselines.py  metadata-only and MuseTok-latent logistic regressions
    predict.py    `predict(path, model=...)`, what `midipipe genre` calls
"""
