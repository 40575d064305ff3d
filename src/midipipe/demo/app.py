"""The Gradio page: an Analyse tab (genre charts, valence/arousal curves, piano roll, facts)
and a Generate tab (composer-conditioned sampling, MIDI download, audio preview).

Uploads land in a fresh temporary folder (GRADIO_TEMP_DIR), are read as MIDI bytes only and
are refused above `demo.max_upload_mb`; nothing is unpickled. Gradio's analytics are off and
no share link is made: the page works offline."""

from __future__ import annotations

import html
import logging
import os
import re
import tempfile
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio reads it

import gradio as gr  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from midipipe.data.midi import load_score  # noqa: E402
from midipipe.demo import DemoParams  # noqa: E402
from midipipe.demo.analyse import Analyser, Analysis, quadrant  # noqa: E402
from midipipe.demo.compose import KEEP_S, Composer  # noqa: E402
from midipipe.demo.examples import write_examples  # noqa: E402
from midipipe.demo.pianoroll import piano_roll  # noqa: E402
from midipipe.emotion import RULES  # noqa: E402
from midipipe.generator import GenerateOptions  # noqa: E402
from midipipe.generator.sampling import SampleConfig  # noqa: E402

log = logging.getLogger(__name__)

ESTIMATORS = {
    RULES: "rule-based estimate (hand-set weights, not learned)",
    "mlp_latents": "MLP on MuseTok latents (learned)",
    "mlp_cues": "MLP on the rule cues (learned)",
    "mlp_latents+cues": "MLP on MuseTok latents and rule cues (learned)",
}
CSS = """
.status-error {border-left: 4px solid #c0392b; background: #fdecea; padding: 8px 12px;}
.status-ok {border-left: 4px solid #2e86c1; background: #eef5fb; padding: 8px 12px;}
footer {display: none !important;}
"""
THEME_FONTS = ["system-ui", "-apple-system", "Segoe UI", "Helvetica", "Arial", "sans-serif"]


def _status(text: str, error: bool = False) -> str:
    """A coloured box; `text` is escaped, except **bold** spans."""
    kind = "error" if error else "ok"
    body = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(text))
    return f'<div class="status-{kind}">{"⚠ " if error else ""}{body}</div>'


def curves_figure(rows: list[dict], title: str) -> Figure:
    """Valence and arousal per bar on one axis, with the quadrant boundary at 0."""
    fig, ax = plt.subplots(figsize=(10, 3.0))
    bars = [r["bar"] for r in rows]
    ax.plot(bars, [r["valence"] for r in rows], color="C0", marker=".", label="valence")
    ax.plot(bars, [r["arousal"] for r in rows], color="C3", marker=".", label="arousal")
    ax.axhline(0, color="grey", linewidth=0.6)
    ax.set_ylim(-1.05, 1.05)
    ax.set_xlabel("bar")
    ax.set_ylabel("value in [-1, 1]")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.25)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    plt.close(fig)
    return fig


def _genre_outputs(result: dict, k: int) -> tuple[dict | None, str]:
    """A Label value and the note under it."""
    if "error" in result:
        return None, _status(result["error"], error=True)
    probs = dict(sorted(result["probabilities"].items(), key=lambda kv: -kv[1])[:k])
    units = (
        f"{result['n_phrases']} phrases"
        if "n_phrases" in result
        else f"{result['n_chunks']} chunks"
    )
    listed = ", ".join(result["genres"]) or "none"
    note = (
        f"**{result['prediction']}** · at or above the threshold {result['threshold']:g}: "
        f"{listed} · read from {units} of {result['n_bars']} bars"
    )
    return probs, note


def emotion_outputs(a: Analysis) -> tuple[Figure | None, str, list[list]]:
    """The curves, the text under them (estimator, summary, quadrant) and the per-bar rows."""
    if a.emotion_error:
        return None, _status(a.emotion_error, error=True), []
    rows = a.emotion
    estimator = rows[0]["estimator"]
    name = ESTIMATORS.get(estimator, estimator)
    fig = curves_figure(rows, f"{a.name}: valence and arousal per bar, {name}")
    v = [r["valence"] for r in rows]
    ar = [r["arousal"] for r in rows]
    text = (
        f"Estimator: **{estimator}** ({name}). {len(rows)} bars; valence mean "
        f"{sum(v) / len(v):+.2f} (range {min(v):+.2f} to {max(v):+.2f}), arousal mean "
        f"{sum(ar) / len(ar):+.2f} (range {min(ar):+.2f} to {max(ar):+.2f})."
    )
    if a.emotion_note:
        text = f"The rule-based estimate stands in: {a.emotion_note}. " + text
    if estimator == RULES:
        text += " The emotion quadrant is shown only for a learned model."
    else:
        q, shares = quadrant(rows)
        share = ", ".join(f"{n.split(' ')[0]} {s:.0%}" for n, s in shares.items())
        text += f" Quadrant: **{q}**; bars per quadrant: {share}."
    table = [[r["bar"], r["start_s"], round(r["valence"], 3), round(r["arousal"], 3)] for r in rows]
    return fig, text, table


def _facts_markdown(facts: dict) -> str:
    """One row of facts, the tracks below it."""
    row = {k: v for k, v in facts.items() if k != "tracks"}
    return (
        "| "
        + " | ".join(row)
        + " |\n|"
        + "---|" * len(row)
        + "\n| "
        + " | ".join(str(v) for v in row.values())
        + " |\n\n**Tracks:** "
        + facts["tracks"]
    )


def model_summary(analyser: Analyser, composer: Composer) -> str:
    """One line per model: loaded, or why not."""
    lines = []
    for kind, what in (("phrase", "phrase classifier"), ("hier", "hierarchical tagger")):
        model = analyser.genre_model(kind)
        if isinstance(model, str):
            lines.append(f"- {what}: ✗ {model}")
        else:
            label = model.meta.get("label", "tags")
            lines.append(f"- {what}: ✓ {len(model.names())} {label} classes, `{model.folder}`")
    config = analyser.models / "emotion" / "config.json"
    lines.append(
        f"- valence/arousal: ✓ `{config.parent}`"
        if config.exists()
        else f"- valence/arousal: rule-based estimate (no `{config}`)"
    )
    missing = composer.missing()
    lines.append(
        f"- generator: ✗ {missing}"
        if missing
        else f"- generator: ✓ {len(composer.composers()) - 1} composers, `{composer.folder}`"
    )
    return "\n".join(lines)


def build_app(
    models: str | Path, params: DemoParams, workdir: str | Path, renderer: str = "auto"
) -> gr.Blocks:
    """The page over the models in `models` (genre_phrase/, genre_hier/, emotion/, musetok/,
    generator/); examples and generated files go to `workdir`."""
    workdir = Path(workdir)
    analyser = Analyser(models, params)
    composer = Composer(Path(models) / "generator", params.sample_rate, renderer)
    examples = write_examples(workdir / "examples")
    labels, present, missing = {}, {}, {}
    for kind, what in (("phrase", "phrase model"), ("hier", "hierarchical model")):
        model = analyser.genre_model(kind)
        present[kind] = not isinstance(model, str)
        missing[kind] = "" if present[kind] else _status(model, error=True)
        name = model.meta.get("label", "tag") if present[kind] else "genre"
        labels[kind] = f"{'tag' if name == 'tags' else name} probabilities ({what})"

    def analyse(path: str | None, k: int):
        def nothing(status: str) -> tuple:
            return (status, "", None, missing["phrase"], None, missing["hier"], None, "", [], None)

        if not path:
            return nothing(_status("Upload a MIDI file or pick an example."))
        a = analyser.analyse(path, int(k))
        if a.error:
            log.info("refused %s", a.error)
            return nothing(_status(a.error, error=True))
        phrase, phrase_note = _genre_outputs(a.genre["phrase"], int(k))
        hier, hier_note = _genre_outputs(a.genre["hier"], int(k))
        curves, emotion_text, table = emotion_outputs(a)
        roll = piano_roll(a.score, f"{a.name}: piano roll")
        return (
            _status(f"Analysed **{a.name}**."),
            _facts_markdown(a.facts),
            phrase,
            phrase_note,
            hier,
            hier_note,
            curves,
            emotion_text,
            table,
            roll,
        )

    def compose(name, guidance, temperature, top_k, top_p, length, seed):
        try:
            cfg = SampleConfig(
                temperature=float(temperature),
                top_k=int(top_k),
                top_p=float(top_p),
                guidance=float(guidance),
                max_tokens=int(length),
                min_tokens=int(length),  # the length asked for, not an early end of piece
                seed=int(seed),
            )
            take = composer.take(name or "", cfg, workdir / "generated")
        except (ValueError, FileNotFoundError) as exc:
            return _status(str(exc), error=True), None, None, None
        s = take.stats
        summary = (
            f"**{s['composer']}**, guidance {cfg.guidance:g}, seed {cfg.seed}: {s['tokens']} "
            f"tokens, {s['bars']} bars, {s['notes']} notes; sampled in {s['sample_s']:.2f} s"
        )
        if not s["notes"]:
            text = _status(summary + ". No notes came out: try another seed or more tokens.", True)
            return text, str(take.midi), None, None
        text = _status(
            f"{summary}, rendered in {s['render_s']:.2f} s. Audio renderer: **{take.renderer}**."
        )
        roll = piano_roll(load_score(take.midi), f"{take.midi.name}: piano roll")
        audio = str(take.wav)
        return text, str(take.midi), audio, roll

    d = GenerateOptions(composer="")
    # Gradio's copies of uploads and results: checked hourly, deleted after an hour
    with gr.Blocks(title="midipipe demo", delete_cache=(KEEP_S, KEEP_S)) as page:
        gr.Markdown(
            "# midipipe: symbolic-music models in the browser\n"
            f"Models from `{Path(models)}`. Analyse a MIDI file (genre, valence/arousal, piano "
            "roll) or generate a piece for a composer and listen to it."
        )
        with gr.Accordion("Loaded models", open=False):
            gr.Markdown(model_summary(analyser, composer))
        with gr.Tab("Analyse", id="analyse"):
            with gr.Row():
                with gr.Column(scale=1, min_width=280):
                    upload = gr.File(
                        label=f"MIDI file (.mid, .midi; at most {params.max_upload_mb:g} MB)",
                        file_types=[".mid", ".midi"],
                        type="filepath",
                        elem_id="upload",
                    )
                    k = gr.Slider(1, 20, value=params.top_k, step=1, label="top-k classes shown")
                    gr.Examples([[str(p)] for p in examples], inputs=[upload], label="Examples")
                with gr.Column(scale=2):
                    status = gr.HTML(
                        _status("Upload a MIDI file or pick an example."), elem_id="status"
                    )
                    facts = gr.Markdown(elem_id="facts")
                    with gr.Row():
                        with gr.Column():
                            phrase = gr.Label(
                                label=labels["phrase"],
                                elem_id="genre-phrase",
                                visible=present["phrase"],
                            )
                            phrase_note = gr.Markdown(
                                missing["phrase"], elem_id="genre-phrase-note"
                            )
                        with gr.Column():
                            hier = gr.Label(
                                label=labels["hier"], elem_id="genre-hier", visible=present["hier"]
                            )
                            hier_note = gr.Markdown(missing["hier"], elem_id="genre-hier-note")
            curves = gr.Plot(label="valence and arousal", elem_id="curves")
            emotion_text = gr.Markdown(elem_id="emotion")
            roll = gr.Plot(label="piano roll", elem_id="roll")
            with gr.Accordion("Per-bar values", open=False):
                table = gr.Dataframe(
                    headers=["bar", "start (s)", "valence", "arousal"],
                    elem_id="bars",
                    interactive=False,
                )
            outputs = [
                status,
                facts,
                phrase,
                phrase_note,
                hier,
                hier_note,
                curves,
                emotion_text,
                table,
                roll,
            ]
            upload.change(analyse, [upload, k], outputs)
            k.release(analyse, [upload, k], outputs)
        with gr.Tab("Generate", id="generate"):
            with gr.Row():
                with gr.Column(scale=1, min_width=280):
                    names = composer.composers()
                    who = gr.Dropdown(
                        names,
                        value=names[0] if names else None,
                        label="composer",
                        elem_id="composer",
                    )
                    guidance = gr.Slider(
                        1, 6, value=d.guidance, step=0.5, label="guidance (1 = none)"
                    )
                    temperature = gr.Slider(
                        0.1, 2.0, value=d.temperature, step=0.05, label="temperature"
                    )
                    top_k = gr.Slider(0, 200, value=d.top_k, step=1, label="top-k (0 = off)")
                    top_p = gr.Slider(0.1, 1.0, value=d.top_p, step=0.01, label="top-p (1 = off)")
                    length = gr.Slider(
                        16,
                        params.max_tokens,
                        value=min(512, params.max_tokens),
                        step=16,
                        label="length (new tokens)",
                        elem_id="length",
                    )
                    seed = gr.Number(value=0, precision=0, label="seed")
                    go = gr.Button("Generate", variant="primary", elem_id="generate-button")
                with gr.Column(scale=2):
                    gen_status = gr.HTML(
                        _status(composer.missing() or "Pick a composer and press Generate."),
                        elem_id="gen-status",
                    )
                    preview = gr.Audio(
                        label="audio preview",
                        type="filepath",
                        elem_id="audio",
                        buttons=["download"],
                        interactive=False,
                    )
                    midi = gr.File(label="generated MIDI", elem_id="midi")
                    gen_roll = gr.Plot(label="piano roll", elem_id="gen-roll")
            go.click(
                compose,
                [who, guidance, temperature, top_k, top_p, length, seed],
                [gen_status, midi, preview, gen_roll],
            )
    return page


def serve(
    models: str | Path = "models",
    params: DemoParams | None = None,
    host: str | None = "127.0.0.1",
    port: int | None = 7860,
    renderer: str = "auto",
    block: bool = True,
):
    """Build and launch the page; uploads and outputs stay in a fresh temporary folder."""
    params = params or DemoParams()
    workdir = Path(tempfile.mkdtemp(prefix="midipipe-demo-"))
    os.environ.setdefault("GRADIO_TEMP_DIR", str(workdir / "uploads"))
    page = build_app(models, params, workdir, renderer)
    page.queue(default_concurrency_limit=1)  # one model call at a time: CPU-bound
    page.launch(
        server_name=host,
        server_port=port,
        share=False,
        ssr_mode=False,
        max_file_size=int(params.max_upload_mb * 2**20),
        allowed_paths=[str(workdir)],
        prevent_thread_lock=not block,
        theme=gr.themes.Soft(font=THEME_FONTS, font_mono=["ui-monospace", "monospace"]),
        css=CSS,
        footer_links=[],
        quiet=True,
    )
    return page
