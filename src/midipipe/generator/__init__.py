"""The composer-conditioned generator: training (stage 08, `train`), sampling per composer
and scoring (stage 09, `generate`), and the `midipipe generate` command (`cli`, `command`).

A trained generator folder is self-contained: `model.safetensors` + `config.json` (the GPT),
`composers.json` (names -> conditioning ids, as trained) and `tokenizer.json` (the REMI
vocabulary the ids mean), so it can be copied elsewhere and still sample. This module is
imported by the command line, so it holds names only, nothing that loads torch.
"""

COMPOSERS_FILE = "composers.json"
TOKENIZER_FILE = "tokenizer.json"
ANY = "any"  # the CLI's name for the unconditional id
