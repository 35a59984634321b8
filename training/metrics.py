"""Numbers and reports for a trained checkpoint: scikit-learn metrics, a confusion-matrix plot, the text
report and the model card. Every number carries the name of the split it was measured on."""
from __future__ import annotations

import json
import time
from pathlib import Path

ERRORS_KEPT = 50
"""Misclassified clips listed per split in metrics.json (enough to listen to, not a dump)."""


def split_metrics(true: list[str], predicted: list[str], labels: list[str], split: str,
                  paths: list[str] | None = None) -> dict:
    """Accuracy, macro-F1 and per-class precision/recall/F1 of one split.

    Macro-F1 averages over the genres present in the split (as truth or prediction), as scikit-learn
    does by default; the confusion matrix has every label of the model, in the model's order.
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    present = [label for label in labels if label in set(true) | set(predicted)]
    precision, recall, f1, support = precision_recall_fscore_support(
        true, predicted, labels=present, zero_division=0)
    errors = [{"path": p, "true": t, "predicted": y}
              for p, t, y in zip(paths or [None] * len(true), true, predicted) if t != y]
    return {
        "split": split,
        "count": len(true),
        "accuracy": float(accuracy_score(true, predicted)),
        "macro_f1": float(f1_score(true, predicted, labels=present, average="macro", zero_division=0)),
        "per_class": {label: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                      for label, p, r, f, s in zip(present, precision, recall, f1, support)},
        "labels": list(labels),
        "confusion_matrix": confusion_matrix(true, predicted, labels=labels).tolist(),
        "errors": errors[:ERRORS_KEPT],
    }


def report_text(m: dict) -> str:
    """scikit-learn's classification report under a header that names the split."""
    from sklearn.metrics import classification_report

    cm = m["confusion_matrix"]
    labels = m["labels"]
    true = [labels[i] for i, row in enumerate(cm) for j, n in enumerate(row) for _ in range(n)]
    pred = [labels[j] for i, row in enumerate(cm) for j, n in enumerate(row) for _ in range(n)]
    present = list(m["per_class"])
    body = classification_report(true, pred, labels=present, digits=3, zero_division=0)
    return (f"{m['split']}: {m['count']} clips, accuracy {m['accuracy']:.3f}, macro-F1 {m['macro_f1']:.3f}\n\n"
            f"{body}")


def plot_confusion(m: dict, path: Path) -> None:
    """Counts per (true, predicted) genre. Uses the Agg canvas directly, never pyplot's global backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels, cm = m["labels"], m["confusion_matrix"]
    size = 2.5 + 0.55 * len(labels)
    fig = Figure(figsize=(size, size * 0.9))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{m['split']}: accuracy {m['accuracy']:.3f} ({m['count']} clips)", fontsize=10)
    peak = max(max(row) for row in cm) or 1
    for i, row in enumerate(cm):
        for j, n in enumerate(row):
            if n:
                ax.text(j, i, str(n), ha="center", va="center", fontsize=8,
                        color="white" if n > peak / 2 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_artifacts(folder: Path, results: dict, dataset, info: dict) -> None:
    """``metrics.json``, ``confusion_matrix.png`` (test split, else valid), ``classification_report.txt``
    and the ``README.md`` model card."""
    folder = Path(folder)
    data = {"labels": dataset.labels, "source": dataset.source, "root": dataset.root, "split": dataset.split,
            "counts": {part: len(v) for part, v in dataset.parts().items()}, "notes": dataset.notes}
    (folder / "metrics.json").write_text(json.dumps(
        {"splits": results, "dataset": data, "training": info}, indent=2, default=str))
    headline = results.get("test") or results.get("valid") or results.get("cv")
    if headline:
        plot_confusion(headline, folder / "confusion_matrix.png")
    (folder / "classification_report.txt").write_text(
        "\n\n".join(report_text(results[part]) for part in REPORTED if part in results))
    card = head_card if info.get("kind") == "head" else model_card
    (folder / "README.md").write_text(card(results, data, info))


REPORTED = ("test", "valid", "cv")
"""The parts a checkpoint's report and card show, headline first: cv is a head's cross-validation on its
training clips."""


def _result_rows(results: dict) -> list[str]:
    rows = []
    for part in REPORTED:
        if m := results.get(part):
            spread = f" ± {m['accuracy_std']:.3f}" if "accuracy_std" in m else ""
            rows.append(f"| {m['split']} | {m['count']} | {m['accuracy']:.3f}{spread} | {m['macro_f1']:.3f} |")
    return rows


def _per_class_rows(m: dict) -> list[str]:
    return [f"| {label} | {c['precision']:.3f} | {c['recall']:.3f} | {c['f1']:.3f} | {c['support']} |"
            for label, c in m.get("per_class", {}).items()]


def _calibration_lines(info: dict) -> list[str]:
    cal = info.get("calibration")
    if not cal:
        return ["- No held-out predictions: the fallback threshold 0.3 applies."]
    t = cal["thresholds"]
    lines = [f"- Threshold {t['min_confidence']:.2f} (per genre: "
             f"{', '.join(f'{k} {v:.2f}' for k, v in t['label_thresholds'].items()) or 'none'}): the lowest "
             f"top score at which held-out predictions were right {t['target_precision']:.0%} of the time "
             f"(they were {t['precision']:.1%} right, {t['coverage']:.0%} of the tracks reached it)"
             + ("" if t["target_reached"] else "; the target was not reached") + "."]
    if "ece_calibrated" in cal:
        verdict = (f"applied (T = {cal['temperature']:.2f})" if cal["temperature_scaling"]
                   else "not applied: it did not help predictions it was not fitted on")
        low, high = cal["ece_if_calibrated"]
        lines.append(f"- Calibration of the out-of-fold probabilities: expected calibration error {cal['ece']:.3f} "
                     f"(log loss {cal['log_loss']:.3f}); with a temperature fitted on the other folds "
                     f"{cal['ece_calibrated']:.3f} (log loss {cal['log_loss_calibrated']:.3f}); temperature "
                     f"scaling {verdict}. Perfectly calibrated scores would show an ECE of {low:.3f}-{high:.3f} "
                     f"on as many clips (90 % of draws).")
    else:
        lines.append(f"- Calibration on the {cal['clips']} validation clips: expected calibration error "
                     f"{cal['ece']:.3f} (no temperature scaling).")
    return lines


def _fitted_on_lines(info: dict) -> list[str]:
    fitted = info.get("fitted_on")
    if not fitted:
        return []
    if "test" in fitted["parts"]:
        return ["", f"**The head written was fitted on all {fitted['clips']} labelled clips** "
                    f"({'+'.join(fitted['parts'])}, `--refit-all`), with the C, temperature and thresholds chosen "
                    "on train+valid. The figures below are of heads fitted without the clips they score; "
                    "`genretag evaluate` on the test part of this split scores clips this head was fitted on."]
    return ["", f"The head written was fitted on the {fitted['clips']} train+valid clips (`--no-refit-all`): the "
                "test part is held out from it."]


def head_card(results: dict, data: dict, info: dict) -> str:
    """README.md of a head checkpoint: what it is, how well it does, and how it was made."""
    headline = results.get("test") or results.get("cv") or {}
    head = info["head"]
    cv = head["cv"]
    counts = data["counts"]
    stages = info.get("stages_seconds", {})
    lines = [
        "---", "tags: [genretag, music-genre-classification]", "---", "",
        f"# Music genre classifier ({len(data['labels'])} genres): a head on {info['base_model']}", "",
        f"A {head['kind']} on the {head['embedding_dim']}-d embeddings `{head['embedding_space']}`, trained "
        f"on the {data['source']} dataset at `{data['root']}` ({data['split']} split: {counts['train']} train "
        f"+ {counts['valid']} valid clips to choose and measure it on, {counts['test']} test clips).",
        f"Genres: {', '.join(data['labels'])}.", *_fitted_on_lines(info), "",
        "Use it: `genretag scan --model <this folder> MUSIC_DIR`; make it the default with "
        "`genretag models use <this folder>`. It needs the built-in model it names (checked by fingerprint).",
        "", "## Results", "",
        "Cross-validated on the train+valid clips (out-of-fold predictions, "
        f"{'nested: C chosen inside each fold, ' if cv['nested'] else ''}"
        f"{'folds keep groups (artists, neighbouring clips) together' if cv['grouped'] else 'clip by clip'}), "
        "and on the test part, scored from its clips' embeddings by the head fitted on train+valid only; top-1 "
        "genre per clip (a clip with several genres is right when it is any of them):", "",
        "| split | clips | accuracy | macro-F1 |", "|---|---|---|---|", *_result_rows(results), "",
        f"Per genre, {headline.get('split', '-')}:", "",
        "| genre | precision | recall | F1 | clips |", "|---|---|---|---|---|", *_per_class_rows(headline), "",
        "## Scores and thresholds", "", *_calibration_lines(info), "",
        "## Training", "",
        f"- Command: `{info['command']}`.",
        f"- Hardware: {info['hardware']}; {info['train_seconds']:.0f} s in all (decoding {stages.get('decode_cpu')} "
        f"s of CPU, embedding {stages.get('embed')} s, fitting {stages.get('fit')} s; "
        f"{stages.get('embeddings_from_index', 0)} embeddings read from the index).",
        f"- C = {head['C']:.3g} chosen from {len(head['selection'])} values by {cv['folds']}-fold cross-validation "
        f"({'standardised' if head['standardize'] else 'raw'} float16-rounded embeddings, backbone in "
        f"{head['precision']}).",
        f"- Trained {time.strftime('%Y-%m-%d')}; unreadable clips skipped: "
        f"{', '.join(info.get('skipped_unreadable') or []) or 'none'}.", "",
        "Data notes:", *(f"- {note}" for note in data["notes"] or ["none"]), "",
    ]
    return "\n".join(lines)


def model_card(results: dict, data: dict, info: dict) -> str:
    """README.md: what the model is, how well it does on which clips, and how exactly it was made."""
    base, settings = info["base_model"], info.get("settings", {})
    front = ["---", "library_name: transformers", "pipeline_tag: audio-classification",
             "tags: [genretag, music-genre-classification]"]
    if not base.startswith((".", "/", "~")) and not Path(base).exists():
        front.append(f"base_model: {base}")  # only hub ids are meaningful to the hub
    headline = results.get("test") or results.get("valid") or {}
    rows = _result_rows(results)
    per_class = _per_class_rows(headline)
    recipe = (f"learning rate {settings.get('learning_rate')} ({settings.get('lr_scheduler')} decay, "
              f"{settings.get('warmup_ratio')} warm-up), batch {settings.get('batch_size')} x "
              f"{settings.get('gradient_accumulation_steps')} accumulation, random {info.get('crop_seconds'):g} s "
              f"crops, augmentation {'on' if settings.get('augment') else 'off'}, encoder "
              f"{'frozen' if settings.get('freeze_encoder') else 'fine-tuned'}")
    training = [
        f"Command: `{info['command']}`",
        f"Hardware: {info['hardware']}; training took {info['train_seconds'] / 60:.1f} min "
        f"({info.get('steps')} steps, {info.get('epochs')} epochs; best epoch {info.get('best_epoch')})",
        recipe[0].upper() + recipe[1:],
        f"Trained {time.strftime('%Y-%m-%d')}; unreadable clips skipped: "
        f"{', '.join(info.get('skipped_unreadable') or []) or 'none'}",
    ]
    counts = data["counts"]
    lines = [
        *front, "---", "",
        f"# Music genre classifier ({len(data['labels'])} genres), fine-tuned with genretag", "",
        f"Fine-tuned from `{base}` on the {data['source']} dataset at `{data['root']}` ({data['split']} split: "
        f"{counts['train']} train / {counts['valid']} valid / {counts['test']} test clips).",
        f"Genres: {', '.join(data['labels'])}.", "",
        "Use it: `genretag scan --model <this folder> MUSIC_DIR`; make it the default with "
        "`genretag models use <this folder>`.",
        "", "## Results", "",
        "Measured with genretag's own decoding, windows and aggregation (what `genretag scan` does), top-1 "
        "genre per clip:", "",
        "| split | clips | accuracy | macro-F1 |", "|---|---|---|---|", *rows, "",
        f"Per genre, {headline.get('split', '-')}:", "",
        "| genre | precision | recall | F1 | clips |", "|---|---|---|---|---|", *per_class, "",
        "The confusion matrix is `confusion_matrix.png`; the full numbers are in `metrics.json` and "
        "`classification_report.txt`.", "",
        "## Scores and thresholds", "", *_calibration_lines(info), "",
        "## Training", "", *(f"- {item}." for item in training), "",
        "Data notes:", *(f"- {note}" for note in data["notes"] or ["none"]), "",
    ]
    return "\n".join(lines)
