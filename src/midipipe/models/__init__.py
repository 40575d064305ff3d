"""Models trained on REMI token shards: the composer-conditioned music transformer (`gpt`) and
its training windows (`generator_data`)."""
