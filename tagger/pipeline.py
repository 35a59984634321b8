"""The flow, chained: discover → decode/window → batch inference → aggregate → tags + index.

:func:`tag_folder` is what ``genretag scan`` runs; :class:`Tagger` is the same machinery for library
users who want genres for files or arrays without an index.
"""
from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace

from .aggregate import choose_genres, decision_thresholds, rank_labels, rank_scores, split_outputs, track_embedding
from .batching import predict_in_batches
from .decode import decode_file, windows_from_array
from .discover import count_audio_files, discover
from .engine import LocalEngine, default_batch_size, predict_function
from .errors import FileChanged, FileError, GenretagError
from .index import STORED_RANKING, path_key
from .decide import FROM_EMBEDDING as SCORE_EMBEDDING, PREDICT, Rules, decide
from .records import (ABSTAINED, DISCOVERY, FAILED, FROM_EMBEDDING, FROM_INDEX, OK, PREDICTED, SKIPPED,
                      DecodedTrack, Track, TrackResult)
from .settings import ScanSettings

INDEX_FLUSH_RESULTS = 64
INDEX_FLUSH_SECONDS = 2.0
CACHE_CHUNK = 2000
"""Tracks whose cached predictions are looked up together; a chunk is checked only as the engine asks
for more tracks, so writes from the cache interleave with predictions as before."""


@dataclass
class ScanSummary:
    """Counts of one scan. Every discovered audio file counts once, in ``tagged``, ``abstained`` or
    ``failed`` (the library's state as this scan leaves it), and in ``predicted``, ``from_embedding``
    or ``from_index`` (where that state came from); folders that cannot be read count in ``failed`` only."""

    predicted: int = 0  # tracks this run ran the model on (or tried to: failed decodes count)
    from_embedding: int = 0  # tracks this run's head predicted from their stored embedding, not decoded
    from_index: int = 0  # unchanged tracks whose stored prediction this run took from the index
    tagged: int = 0  # tracks with genres chosen, whichever way
    abstained: int = 0  # no genre reached its threshold
    failed: int = 0  # files (and folders) that could not be processed or written
    written: int = 0  # files this run wrote genres into
    pending: int = 0  # tracks whose chosen genres the file does not hold, on a run that does not write
    requeued: int = 0  # changed on disk before their write: predicted again
    relabelled: int = 0  # from the index, decided again differently under this run's threshold/top-k
    seconds: float = 0.0
    run_id: int | None = None
    model_id: str | None = None
    interrupted: bool = False
    results: list[TrackResult] = field(default_factory=list, repr=False)

    @property
    def scanned(self) -> int:
        """Older name of :attr:`predicted`."""
        return self.predicted

    @property
    def skipped(self) -> int:
        """Older name of :attr:`from_index`."""
        return self.from_index

    def counts(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "results"}


def tag_folder(root: str | os.PathLike, settings: ScanSettings = ScanSettings(), *, classifier=None,
               on_result: Callable[[TrackResult], None] | None = None,
               on_discovered: Callable[[int], None] | None = None,
               on_skipped: Callable[[int], None] | None = None,
               on_phase: Callable[[str, str], None] | None = None,
               keep_results: bool = False, engine=None) -> ScanSummary:
    """Scan ``root``: predict every new or changed track, record it in the index and, with
    ``settings.write_tags``, write its genres. Returns the counts.

    ``on_result`` sees exactly one final result per discovered file (and per unreadable folder):
    predicted, failed, or taken from the index (``source`` says which), in discovery order for those
    the index serves and as predictions finish for the others. ``on_discovered`` gets how many files
    discovery will come to (counted in a quick pass of its own before the scan starts; only asked for
    when given), ``on_skipped`` each number of tracks the index served, as the scan comes to them (a
    progress bar's total shrinks by it), and ``on_phase`` ``("loading", model_id)`` when the first track
    to predict waits for the model to load and ``("predicting", model_id)`` once its first prediction is
    in. Discovery streams
    into the scan, so memory does not grow with the library.

    ``engine`` decides where decoding and inference run (see :mod:`tagger.engine`); by default the
    one ``settings.engine`` names (:func:`make_engine`). Discovery, the index and tag writing always
    stay here."""
    from .index import Index
    from .models.infer import load_classifier
    from .tagging.formats import separator_problem

    if settings.write_tags and (why := separator_problem(settings.separator)):
        raise GenretagError(f"separator {settings.separator!r} cannot join genres: {why}")
    started = time.perf_counter()
    root = os.path.abspath(os.path.expanduser(root))  # the index and the journal key files by absolute path
    classifier = classifier or load_classifier(settings.model, settings.device, settings.precision,
                                               settings.labels, deferred=True, level=settings.level)
    summary = ScanSummary(model_id=classifier.model_id)
    with Index(settings.db_path()) as index:
        index.note_model(classifier.model_id, classifier.fingerprint, classifier.labels)
        summary.run_id = index.start_run(
            "scan", root=os.path.abspath(root), model_id=classifier.model_id,
            fingerprint=classifier.fingerprint, options={k: v for k, v in asdict(settings).items()})
        engine = engine or make_engine(classifier, settings)
        scan = _Scan(index, classifier, engine, settings, summary, on_result, keep_results, on_skipped, on_phase)
        scan.recover_interrupted_writes()
        try:
            if on_discovered:
                on_discovered(count_audio_files(root))
            scan.run(discover(root, on_error=scan.discovery_failed))
            if scan.requeue:
                scan.run(list(scan.requeue), requeued=True)
        except KeyboardInterrupt:
            summary.interrupted = True
            raise
        finally:
            scan.flush()
            summary.seconds = time.perf_counter() - started
            index.finish_run(summary.run_id, scanned=summary.predicted + summary.from_embedding,
                             from_embedding=summary.from_embedding, skipped=summary.from_index,
                             tagged=summary.tagged, abstained=summary.abstained, failed=summary.failed,
                             interrupted=int(summary.interrupted))
    return summary


def make_engine(classifier, settings: ScanSettings):
    """The engine ``settings.engine`` names; Ray is imported only when it is asked for."""
    if settings.engine == "ray":
        from .engine_ray import RayEngine

        return RayEngine(classifier, settings)
    return LocalEngine(classifier, settings)


class _Scan:
    """Carries out one scan: asks :func:`tagger.decide.decide` what to do with each discovered track,
    does it, and keeps the index rows, the counts and the results in one place (:meth:`_finish`)."""

    def __init__(self, index, classifier, engine, settings: ScanSettings, summary: ScanSummary, on_result,
                 keep_results: bool, on_skipped=None, on_phase=None):
        self.index, self.classifier, self.settings, self.summary = index, classifier, settings, summary
        self.engine = engine
        self.on_result = on_result or (lambda result: None)
        self.on_skipped = on_skipped or (lambda count: None)
        self.on_phase = on_phase or (lambda phase, model_id: None)
        self.phase = None
        label_map = classifier.label_map
        self.label_map_digest = label_map.digest(classifier.multi_label)
        self.ranking_kept = max(STORED_RANKING, settings.top_k, label_map.ranking_needed(classifier.labels))
        self.relabelled: list[dict] = []  # genres decided again from the cache, not yet in the index
        self.keep_results = keep_results
        self.min_confidence, self.thresholds = decision_thresholds(classifier, settings.min_confidence)
        self.rules = Rules(
            rescan=settings.rescan, write_tags=settings.write_tags and not settings.dry_run,
            top_k=settings.top_k, min_confidence=self.min_confidence, label_map=self.label_map_digest,
            genre_count=len(label_map.genres(classifier.labels)), thresholds=self.thresholds,
            parents=label_map.nesting())
        self.pending: list[TrackResult] = []
        self.last_flush = time.monotonic()
        self.requeue: list[Track] = []
        # A head scores the embeddings of its space that the index keeps (read without loading the head).
        self.head_space = getattr(classifier, "head_space", None)

    # -- stages ---------------------------------------------------------------------------------------
    def run(self, tracks: Iterable[Track], requeued: bool = False) -> None:
        for item, probs in self.engine.predictions(self._to_predict(tracks, requeued)):
            if self.phase != "predicting" and probs is not None:
                self._enter_phase("predicting")
            self._finish(self._result(item, probs))

    def _to_predict(self, tracks: Iterable[Track], requeued: bool) -> Iterator[Track]:
        """The tracks to predict, in discovery order; the others are served from the index as they come.
        Stored predictions are looked up a chunk at a time. A track re-queued after a failed write is
        looked up again even with --rescan: only a killed scan's own write can have changed it."""
        rules = replace(self.rules, rescan=False) if requeued else self.rules
        tracks = iter(tracks)
        while chunk := list(itertools.islice(tracks, CACHE_CHUNK)):
            cached = (self.index.cached_predictions([t.path for t in chunk], self.classifier.fingerprint)
                      if not rules.rescan else {})
            rows = [self._row_for(track, cached) for track in chunk]
            decisions = [decide(t.size, t.mtime_ns, row, rules) for t, row in zip(chunk, rows)]
            scored = self._from_embeddings(chunk, rows, decisions, rules)
            served = 0
            for i, (track, decision) in enumerate(zip(chunk, decisions)):
                if decision.action == PREDICT:
                    if self.phase is None:
                        self._enter_phase("loading")
                    yield track
                elif decision.action == SCORE_EMBEDDING:
                    self._finish(self._settled(scored[i]))
                elif self._serve(track, decision):
                    served += 1
            self._store_relabelled()
            if served:
                self.on_skipped(served)

    def _from_embeddings(self, chunk: list[Track], rows: list, decisions: list, rules: Rules) -> dict[int, TrackResult]:
        """For a head: decide again, with the embedding the index keeps in the head's space, each track of
        ``chunk`` decided PREDICT (``decisions`` changes in place), and score those it can be taken from,
        all in one call of the head (no decoding, no backbone). Their results, by position in ``chunk``."""
        wanted = [i for i, d in enumerate(decisions) if d.action == PREDICT]
        if not (self.head_space and wanted) or rules.rescan:
            return {}
        stored = self.index.embedded_tracks([chunk[i].path for i in wanted], self.head_space)
        usable = {}
        for i in wanted:
            if (found := stored.get(path_key(chunk[i].path))) is not None:
                decisions[i] = decide(chunk[i].size, chunk[i].mtime_ns, rows[i], rules,
                                      (found["size"], found["mtime_ns"]))
                if decisions[i].action == SCORE_EMBEDDING:
                    usable[i] = found
        if not usable:
            return {}
        if self.phase is None:
            self._enter_phase("loading")
        import numpy as np

        scores = self.classifier.head_scores(np.stack([found["vector"] for found in usable.values()]))
        self._enter_phase("predicting")
        return {i: self._embedding_result(chunk[i], found, track_scores)
                for (i, found), track_scores in zip(usable.items(), scores)}

    def _embedding_result(self, track: Track, stored: dict, scores) -> TrackResult:
        """The result of scoring ``track``'s stored embedding, as :func:`describe` makes it from windows
        (none are shown: none were decoded). The file's tags are the index's when it recorded this version
        of the file, else read from it."""
        result = result_from_scores(track, scores, self.classifier, self.settings.top_k, self.min_confidence,
                                    self.thresholds, windows=stored["windows"] or 0, duration=stored["duration"],
                                    codec=stored["codec"], source=FROM_EMBEDDING)
        result.tags = stored["tags"] if stored["tags"] is not None else _read_tags(track.path)
        return result

    def _enter_phase(self, phase: str) -> None:
        """Tell the caller the scan moved on: "loading" (a track waits for the model, unless it is
        loaded already) and "predicting" (the first prediction is in)."""
        if phase == "loading" and getattr(self.classifier, "loaded", True):
            phase = "predicting"
        if phase != self.phase:
            self.phase = phase
            self.on_phase(phase, self.classifier.model_id)

    def _row_for(self, track: Track, cached: dict[str, dict]) -> dict | None:
        """The stored prediction of ``track``, as the decision needs it: a file changed only by the
        journalled write of a killed scan (:meth:`_completed_interrupted_write`) counts as unchanged and
        written."""
        row = cached.get(path_key(track.path))
        if row and (row["size"], row["mtime_ns"]) != (track.size, track.mtime_ns) \
                and self._completed_interrupted_write(track):
            row = {**row, "size": track.size, "mtime_ns": track.mtime_ns, "written": 1}
        return row

    def _serve(self, track: Track, decision) -> bool:
        """Carry out a decision to take ``track``'s prediction from the index: store a changed decision,
        write the genres if asked, and report the track. False if its write found the file changed: it
        is predicted again instead."""
        row = decision.row
        result = TrackResult(track.path, row["status"], labels=row["labels"], scores=row["scores"],
                             ranking=row["ranking"], windows=row["windows"] or 0, duration=row["duration"],
                             codec=row["codec"], error=row["error"], size=track.size, mtime_ns=track.mtime_ns,
                             tags={"genres": row["genres"]} if row["genres"] is not None else None,
                             source=FROM_INDEX, relabelled=decision.relabelled, pending=decision.pending)
        if decision.relabelled:
            self.relabelled.append({"path": row["path"], "status": row["status"], "labels": result.labels,
                                    "scores": result.scores, "written": 0})
        if decision.write:
            self._store_relabelled()  # before the write marks the prediction written
            self._write(result, fresh=False)
            if result.status == SKIPPED:  # changed on disk meanwhile: re-queued, predicted again
                return False
        self._finish(result)
        return True

    def _result(self, item, probs) -> TrackResult:
        if probs is None:
            return item  # a failure from decoding
        result = describe(item, probs, self.classifier, self.settings.top_k, self.min_confidence,
                          self.thresholds)
        result.tags = _read_tags(item.track.path)
        return self._settled(result)

    def _settled(self, result: TrackResult) -> TrackResult:
        """A new prediction's genres written into its file (with ``--write-tags``), or left pending."""
        if result.status == OK:
            if self.rules.write_tags:
                self._write(result)
            else:
                result.pending = (result.tags or {}).get("genres") != result.labels
        return result

    def _store_relabelled(self) -> None:
        if self.relabelled:
            self.index.relabel(self.relabelled, self.classifier.fingerprint)
            self.relabelled = []

    @property
    def journal(self):
        """The undo journal of this scan's writes (:class:`tagger.tagging.journal.Journal`)."""
        if getattr(self, "_journal", None) is None:
            from .tagging.journal import Journal

            self._journal = Journal(self.index, self.summary.run_id)
        return self._journal

    def recover_interrupted_writes(self) -> None:
        """Before a scan writes: settle the writes of scans that died mid-write (and remove the temp
        copies they left), so that a file one of them replaced is recognised as written."""
        if self.settings.write_tags and not self.settings.dry_run:
            self.journal.recover()

    def _completed_interrupted_write(self, track: Track) -> bool:
        """True if ``track`` changed only because a scan with this model that died mid-write replaced it
        with its written copy (the file holds exactly what that write recorded, by sha256): the journal
        entry is completed, and the track is not predicted (nor written) again."""
        if not (self.settings.write_tags and not self.settings.dry_run):
            return False
        for write in self.journal.recover(track.path):
            run = self.index.db.execute("select fingerprint from runs where id = ?", [write["run_id"]]).fetchone()
            if run and run[0] == self.classifier.fingerprint:
                st = os.stat(track.path)
                return (st.st_size, st.st_mtime_ns) == (track.size, track.mtime_ns)
        return False

    def _write(self, result: TrackResult, fresh: bool = True) -> None:
        """Write ``result``'s genres into its file, journaled ahead (see :mod:`tagger.tagging.journal`).
        ``fresh``: predicted in this run, so its prediction is committed with the journal entry (a cached
        one is in the index already)."""
        from .tagging import tags

        provenance = None
        if self.settings.provenance:
            provenance = (f"model={self.classifier.model_id};fp={self.classifier.fingerprint};"
                          f"score={result.scores[0]:.4f};labels={','.join(result.labels)}")
        entry = None
        fp = self.classifier.fingerprint
        try:
            entry = self.journal.begin(
                result.path, result.labels,
                prediction=(result, self.classifier.model_id, fp, self.label_map_digest, self.ranking_kept)
                if fresh else None)
            change = tags.write_genres(
                result.path, result.labels, mode=self.settings.mode, separator=self.settings.separator,
                provenance=provenance, keep_mtime=self.settings.keep_mtime, verify=self.settings.verify,
                expected=(result.size, result.mtime_ns), temp=entry.temp,
                before_replace=lambda record: self.journal.replacing(entry, record))
        except (GenretagError, ValueError) as err:  # ValueError: a genre no tag field can hold as one line
            if entry is not None:
                self.journal.discard(entry)
            self._write_failed(result, err)
            return
        if result.tags is not None:  # the index keeps what the file holds now, not what it held
            result.tags["genres"] = list(change.new_genres)
        if not change.written:
            self.journal.discard(entry)
            self.index.mark_written(result.path, fp, result.size, result.mtime_ns, change.new_genres)
            return
        st = os.stat(result.path)
        result.size, result.mtime_ns = st.st_size, st.st_mtime_ns
        self.journal.written(entry, change, fp, result.size, result.mtime_ns)
        result.written = True
        self.summary.written += 1

    def _write_failed(self, result: TrackResult, err: Exception) -> None:
        """A changed file is predicted again (re-queued); any other write error fails the track."""
        if isinstance(err, FileChanged):
            result.status, result.error = SKIPPED, "changed on disk before the write; predicted again"
            try:
                st = os.stat(result.path)
            except OSError as exc:  # changed by being deleted or moved away
                result.status, result.error = FAILED, f"vanished before the write ({exc.strerror})"
                return
            self.summary.requeued += 1
            self.requeue.append(Track(result.path, st.st_size, st.st_mtime_ns))
        else:
            result.status, result.error = FAILED, getattr(err, "reason", str(err))

    # -- bookkeeping ----------------------------------------------------------------------------------
    def discovery_failed(self, err: FileError) -> None:
        self._finish(TrackResult(err.path, FAILED, error=err.reason, source=DISCOVERY))

    def _finish(self, result: TrackResult) -> None:
        """Count, store and report a track's final result. A re-queued one (``skipped``: changed on disk
        before its write) is neither: it comes back once predicted again."""
        if result.status == SKIPPED:
            return
        counts = {OK: "tagged", ABSTAINED: "abstained", FAILED: "failed"}
        setattr(self.summary, counts[result.status], getattr(self.summary, counts[result.status]) + 1)
        if result.source == FROM_INDEX:
            self.summary.from_index += 1
        else:
            self.summary.predicted += result.source == PREDICTED
            self.summary.from_embedding += result.source == FROM_EMBEDDING
            self.pending.append(result)
        self.summary.relabelled += result.relabelled
        self.summary.pending += result.pending
        if self.keep_results:
            self.summary.results.append(result)
        self.on_result(result)
        # A written file has a new stat: its prediction is committed at once, or a crash would make the
        # next scan see a changed file and predict (and maybe write) it again.
        if (result.written or len(self.pending) >= INDEX_FLUSH_RESULTS
                or time.monotonic() - self.last_flush > INDEX_FLUSH_SECONDS):
            self.flush()

    def flush(self) -> None:
        self._store_relabelled()
        if self.pending:
            self.index.record_results(self.pending, self.classifier.model_id, self.classifier.fingerprint,
                                      self.summary.run_id, self.label_map_digest, self.ranking_kept)
            self.pending = []
        self.last_flush = time.monotonic()


def describe(decoded: DecodedTrack, outputs, classifier, top_k: int, min_confidence: float,
             thresholds: dict[str, float] | None = None) -> TrackResult:
    """Aggregate one track's window outputs (probabilities, and embeddings where the model gives them:
    :func:`tagger.aggregate.split_outputs`) into a :class:`TrackResult`, which carries the track's
    embedding for the index. A head scores the track from that embedding, exactly as it will score the
    stored one; other models by the mean of the window probabilities."""
    label_map, multi_label = classifier.label_map, classifier.multi_label
    probs, window_embeddings = split_outputs(outputs, len(classifier.labels))
    embedding = track_embedding(window_embeddings) if window_embeddings is not None else None
    if embedding is not None and getattr(classifier, "head_space", None):
        scores = classifier.head_scores(embedding[None])[0]
    else:
        scores = probs.float().mean(dim=0)
    window_labels = [rank_labels(row.unsqueeze(0), classifier.labels, label_map, multi_label)[:3]
                     for row in probs]
    return result_from_scores(
        decoded.track, scores, classifier, top_k, min_confidence, thresholds,
        window_labels=[[(label, round(float(s), 6)) for label, s in w] for w in window_labels],
        windows=probs.shape[0], duration=decoded.duration, codec=decoded.codec, embedding=embedding,
        embedding_space=classifier.embedding_space if embedding is not None else None)


def result_from_scores(track: Track, scores, classifier, top_k: int, min_confidence: float,
                       thresholds: dict[str, float] | None, **fields) -> TrackResult:
    """A track's result from its scores (one per model label): ranked through the classifier's label
    map, its genres chosen under ``top_k`` and the thresholds; ``fields`` fill in the rest."""
    label_map = classifier.label_map
    ranking = rank_scores(scores, classifier.labels, label_map, classifier.multi_label)
    status, labels, chosen = choose_genres(ranking, top_k, min_confidence, thresholds, label_map.nesting())
    return TrackResult(track.path, status, labels=labels, scores=chosen,
                       ranking=[(label, round(float(s), 6)) for label, s in ranking],
                       size=track.size, mtime_ns=track.mtime_ns, **fields)


def _read_tags(path: str) -> dict | None:
    """Artist/album/title/genres for the index; a file whose tags cannot be read still gets genres."""
    from .tagging import tags

    try:
        return tags.read_tags_summary(path)
    except GenretagError:
        return None


class Tagger:
    """Genres for files or audio arrays, the way the Hugging Face pipeline is called::

        t = Tagger()                      # the default model (see resolve_model_name)
        t.classify("song.flac")           # [{"label": "Rock", "score": 0.62}, ...]
        t.classify(["a.mp3", "b.ogg"])    # one list per file
        t.classify(samples, sampling_rate=44100)
    """

    def __init__(self, model: str | None = None, *, device: str = "auto", precision: str = "auto",
                 batch_size: int | None = None, max_windows: int = ScanSettings.max_windows,
                 labels: str | None = None, level: str = ScanSettings.level, classifier=None):
        from .models.infer import load_classifier

        self.classifier = classifier or load_classifier(model, device, precision, labels, level=level)
        self.max_windows = max_windows
        self.batch_size = batch_size or default_batch_size(self.classifier.device)

    def classify(self, inputs, sampling_rate: int | None = None, top_k: int | None = 5):
        """Ranked ``[{"label", "score"}]`` for a path or array; a list of those for a list of paths."""
        if isinstance(inputs, (list, tuple)) and all(isinstance(x, (str, os.PathLike)) for x in inputs):
            return [self._ranked(r, top_k) for r in self.classify_tracks(inputs)]
        if isinstance(inputs, (str, os.PathLike)):
            return self._ranked(self.classify_tracks([inputs])[0], top_k)
        if sampling_rate is None:
            raise ValueError("classify(array) needs sampling_rate=")
        decoded = windows_from_array(inputs, sampling_rate, self.classifier.sampling_rate, self.max_windows)
        return self._ranked(self._describe_all([decoded])[0], top_k)

    def classify_tracks(self, paths: Iterable) -> list[TrackResult]:
        """Full :class:`TrackResult` per path; unreadable files raise :class:`UnreadableFile`."""
        decoded = [decode_file(p, self.classifier.sampling_rate, self.max_windows) for p in paths]
        return self._describe_all(decoded)

    def _describe_all(self, decoded: list[DecodedTrack]) -> list[TrackResult]:
        conf, thresholds = decision_thresholds(self.classifier, None)
        return [describe(item, outputs, self.classifier, 1, conf, thresholds)
                for item, outputs in predict_in_batches(decoded, predict_function(self.classifier),
                                                        self.batch_size)]

    @staticmethod
    def _ranked(result: TrackResult, top_k: int | None) -> list[dict]:
        ranking = result.ranking[:top_k] if top_k else result.ranking
        return [{"label": label, "score": score} for label, score in ranking]
