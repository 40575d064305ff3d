"""Hugging Face Space entry point: the `midipipe demo` page, with paths from the environment.

MIDIPIPE_MODELS  the trained models folder (default: models)
MIDIPIPE_PARAMS  a params.yaml whose `demo:` section applies (default: params.yaml, if present)
GRADIO_SERVER_NAME / GRADIO_SERVER_PORT  where to serve (a Space sets them)
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

from midipipe.demo import load_params  # noqa: E402
from midipipe.demo.app import serve  # noqa: E402

if __name__ == "__main__":
    serve(
        os.environ.get("MIDIPIPE_MODELS", "models"),
        load_params(os.environ.get("MIDIPIPE_PARAMS", "params.yaml")),
        host=None,
        port=None,
    )
