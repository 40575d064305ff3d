"""Genre classification: a phrase encoder (stage 05) and a hierarchical multi-label model over
frozen-LM chunk embeddings (stage 06), their baselines, and prediction for one MIDI file.

    params.py        the `genre:` and `genre_hier:` params sections
    labels.py        manifest rows and the label a piece gets
    phrases.py       phrases and chunks cut from REMI token rows, transposition, vocab checks
    remiz.py         REMI-z chunks (remi_z) for a Hugging Face LM with its own tokenizer
    phrase_train.py  stage 05: the phrase classifier's data, training and report
    hier_train.py    stage 06: chunk embeddings by a frozen LM, the pooling head, its report
    metrics.py       single- and multi-label metrics, threshold tuning, probability pooling
    confusion.py     the confusion-matrix CSV and PNG
    baselines.py     metadata-only and MuseTok-latent logistic regressions, scored alike
    predict.py       `predict(path, model=...)`, what `midipipe genre` calls
"""
