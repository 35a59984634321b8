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
    headline = results.get("test") or results.get("valid")
    if headline:
        plot_confusion(headline, folder / "confusion_matrix.png")
    (folder / "classification_report.txt").write_text(
        "\n\n".join(report_text(results[part]) for part in ("test", "valid") if part in results))
    (folder / "README.md").write_text(model_card(results, data, info))


def model_card(results: dict, data: dict, info: dict) -> str:
    """README.md: what the model is, how well it does on which clips, and how exactly it was made."""
    base, settings = info["base_model"], info.get("settings", {})
    front = ["---", "library_name: transformers", "pipeline_tag: audio-classification",
             "tags: [genretag, music-genre-classification]"]
    if not base.startswith((".", "/", "~")) and not Path(base).exists():
        front.append(f"base_model: {base}")  # only hub ids are meaningful to the hub
    headline = results.get("test") or results.get("valid") or {}
    rows = [f"| {m['split']} | {m['count']} | {m['accuracy']:.3f} | {m['macro_f1']:.3f} |"
            for part in ("test", "valid") if (m := results.get(part))]
    per_class = [f"| {label} | {c['precision']:.3f} | {c['recall']:.3f} | {c['f1']:.3f} | {c['support']} |"
                 for label, c in headline.get("per_class", {}).items()]
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
        "Use it: `genretag scan --model <this folder> MUSIC_DIR` (it is also the default model of later scans).",
        "", "## Results", "",
        "Measured with genretag's own decoding, windows and aggregation (what `genretag scan` does), top-1 "
        "genre per clip:", "",
        "| split | clips | accuracy | macro-F1 |", "|---|---|---|---|", *rows, "",
        f"Per genre, {headline.get('split', '-')}:", "",
        "| genre | precision | recall | F1 | clips |", "|---|---|---|---|---|", *per_class, "",
        "The confusion matrix is `confusion_matrix.png`; the full numbers are in `metrics.json` and "
        "`classification_report.txt`.", "",
        "## Training", "", *(f"- {item}." for item in training), "",
        "Data notes:", *(f"- {note}" for note in data["notes"] or ["none"]), "",
    ]
    return "\n".join(lines)
