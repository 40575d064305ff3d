"""Stage 07: labelled bars + per-bar latents -> models/emotion/ and metrics/emotion.json (the
MLP beside its baselines, or the rule-based estimate when nothing is labelled, said so)."""

from midipipe.core import params
from midipipe.core.logs import run_main
from midipipe.emotion import EmotionParams
from midipipe.emotion.train import train_emotion


def main() -> None:
    p = params.build(EmotionParams, params.section("params.yaml", "emotion"), "emotion")
    train_emotion(p, params.merged_train(params.load(), p.train))


if __name__ == "__main__":
    run_main(main)
