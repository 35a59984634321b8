"""The flow, chained: discover → decode/window → batch inference → aggregate → tags + index.

:func:`tag_folder` is what ``genretag scan`` runs; :class:`Tagger` is the same machinery for library
users who want genres for files or arrays without an index.
"""
from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field

from .aggregate import choose_genres, rank_labels
from .batching import predict_in_batches
from .decode import decode_file, windows_from_array
from .discover import count_audio_files, discover
from .engine import LocalEngine, default_batch_size
from .errors import FileChanged, FileError, GenretagError
from .index import STORED_RANKING, path_key
from .records import ABSTAINED, FAILED, OK, SKIPPED, DecodedTrack, Track, TrackResult
from .settings import ScanSettings

INDEX_FLUSH_RESULTS = 64
INDEX_FLUSH_SECONDS = 2.0
CACHE_CHUNK = 2000
"""Tracks whose cached predictions are looked up together; a chunk is checked only as the engine asks
for more tracks, so writes from the cache interleave with predictions as before."""


@dataclass
class ScanSummary:
    """Counts of one scan. ``failed`` counts files (and folders) that could not be processed."""

    scanned: int = 0
    skipped: int = 0
    tagged: int = 0
    abstained: int = 0
    failed: int = 0
    written: int = 0
    requeued: int = 0
    relabelled: int = 0  # unchanged tracks whose cached genres this scan's settings decide differently
    seconds: float = 0.0
    run_id: int | None = None
    model_id: str | None = None
    interrupted: bool = False
    results: list[TrackResult] = field(default_factory=list, repr=False)

    def counts(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "results"}


def tag_folder(root: str | os.PathLike, settings: ScanSettings = ScanSettings(), *, classifier=None,
               on_result: Callable[[TrackResult], None] | None = None,
               on_discovered: Callable[[int], None] | None = None,
               on_skipped: Callable[[int], None] | None = None,
               keep_results: bool = False, engine=None) -> ScanSummary:
    """Scan ``root``: predict every new or changed track, record it in the index and, with
    ``settings.write_tags``, write its genres. Returns the counts. ``on_result`` sees each track
    predicted or failed (and on a dry run each cached prediction not yet written, as a skipped result
    with its labels), ``on_discovered`` how many results to expect (the files discovery will come to, counted
    in a quick pass of its own before the scan starts; only asked for when given), and ``on_skipped``
    each number of unchanged tracks the index served, as the scan comes to them (a progress bar's total
    shrinks by it). Discovery streams into the scan, so memory does not grow with the library.

    ``engine`` decides where decoding and inference run (see :mod:`tagger.engine`); by default the
    one ``settings.engine`` names (:func:`make_engine`). Discovery, the index and tag writing always
    stay here."""
    from .index import Index
    from .models.infer import load_classifier

    from .tagging.formats import separator_problem

    if settings.write_tags and (why := separator_problem(settings.separator)):
        raise GenretagError(f"separator {settings.separator!r} cannot join genres: {why}")
    started = time.perf_counter()
    root = os.path.abspath(root)  # the index and the undo journal key files by absolute path
    classifier = classifier or load_classifier(settings.model, settings.device, settings.precision,
                                               settings.labels, deferred=True)
    summary = ScanSummary(model_id=classifier.model_id)
    with Index(settings.db_path()) as index:
        index.note_model(classifier.model_id, classifier.fingerprint, classifier.labels)
        summary.run_id = index.start_run(
            "scan", root=os.path.abspath(root), model_id=classifier.model_id,
            fingerprint=classifier.fingerprint, options={k: v for k, v in asdict(settings).items()})
        engine = engine or make_engine(classifier, settings)
        scan = _Scan(index, classifier, engine, settings, summary, on_result, keep_results, on_skipped)
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
            index.finish_run(summary.run_id, **{k: summary.counts()[k] for k in (
                "scanned", "skipped", "tagged", "abstained", "failed")}, interrupted=int(summary.interrupted))
    return summary


def make_engine(classifier, settings: ScanSettings):
    """The engine ``settings.engine`` names; Ray is imported only when it is asked for."""
    if settings.engine == "ray":
        from .engine_ray import RayEngine

        return RayEngine(classifier, settings)
    return LocalEngine(classifier, settings)


class _Scan:
    """State of one scan: the buffered index rows, the counters and the per-track decisions."""

    def __init__(self, index, classifier, engine, settings: ScanSettings, summary: ScanSummary, on_result,
                 keep_results: bool, on_skipped=None):
        self.index, self.classifier, self.settings, self.summary = index, classifier, settings, summary
        self.engine = engine
        self.on_result = on_result or (lambda result: None)
        self.on_skipped = on_skipped or (lambda count: None)
        label_map = classifier.label_map
        self.label_map_digest = label_map.digest()
        self.genre_count = len({label_map.genre(label) for label in classifier.labels
                                if label_map.kept(label)})  # a complete ranking's length
        self.ranking_kept = max(STORED_RANKING, settings.top_k)
        self.relabelled: list[dict] = []  # genres decided again from the cache, not yet in the index
        self.keep_results = keep_results
        self.min_confidence = (settings.min_confidence if settings.min_confidence is not None
                               else classifier.default_min_confidence)
        self.pending: list[TrackResult] = []
        self.last_flush = time.monotonic()
        self.requeue: list[Track] = []

    # -- stages ---------------------------------------------------------------------------------------
    def run(self, tracks: Iterable[Track], requeued: bool = False) -> None:
        for item, probs in self.engine.predictions(self._to_predict(tracks, requeued)):
            self._finish(self._result(item, probs))

    def _to_predict(self, tracks: Iterable[Track], requeued: bool) -> Iterator[Track]:
        """The tracks the cache does not serve, looked up in the index a chunk at a time."""
        use_cache = requeued or not self.settings.rescan
        tracks = iter(tracks)
        while chunk := list(itertools.islice(tracks, CACHE_CHUNK)):
            cached = (self.index.cached_predictions([t.path for t in chunk], self.classifier.fingerprint)
                      if use_cache else {})
            genres = self._genres_before_pending_writes(cached) if self.settings.dry_run else {}
            skipped = self.summary.skipped
            to_predict = [t for t in chunk
                          if not self._served_from_cache(t, cached.get(path_key(t.path)), genres)]
            self._store_relabelled()
            if self.summary.skipped > skipped:
                self.on_skipped(self.summary.skipped - skipped)
            yield from to_predict

    def _genres_before_pending_writes(self, cached: dict[str, dict]) -> dict[str, list[str]]:
        """For a dry run: the current genres of the cached tracks that a ``--write-tags`` run might
        write from the cache (their genres are decided again first), as the index last read them."""
        pending = [key for key, row in cached.items() if row["status"] in (OK, ABSTAINED)]
        return self.index.genres(pending) if pending else {}

    def _result(self, item, probs) -> TrackResult:
        if probs is None:
            return item  # a failure from decoding
        result = describe(item, probs, self.classifier, self.settings.top_k, self.min_confidence)
        result.tags = _read_tags(item.track.path)
        if self.settings.write_tags and not self.settings.dry_run and result.status == OK:
            self._write(result)
        return result

    def _served_from_cache(self, track: Track, row: dict | None, genres: dict[str, list[str]]) -> bool:
        """An unchanged track already predicted by this model (``row``) is skipped (and, if asked,
        tagged from the cached prediction). On a dry run, a cached prediction not yet written is
        reported as a skipped result with its labels: it is a change that ``--write-tags`` would make."""
        if not row:
            return False
        if (row["size"], row["mtime_ns"]) != (track.size, track.mtime_ns):
            if not self._completed_interrupted_write(track):
                return False
            row = {**row, "written": 1}
        row = self._decided_again(row)
        if row is None:
            return False
        self.summary.skipped += 1
        if row["status"] != OK or row["written"] or not (self.settings.write_tags or self.settings.dry_run):
            return True
        result = TrackResult(track.path, OK, labels=json.loads(row["labels"]),
                             scores=json.loads(row["scores"]), size=track.size, mtime_ns=track.mtime_ns)
        if self.settings.dry_run:
            result.status = SKIPPED
            key = path_key(track.path)
            result.tags = {"genres": genres[key]} if key in genres else None
            self.on_result(result)
            return True
        self._store_relabelled()  # before the write marks the prediction written
        self._write(result, fresh=False)
        if result.written:
            self.summary.tagged += 1
        return True

    def _decided_again(self, row: dict) -> dict | None:
        """A cached prediction with its genres decided again under this scan's ``--top-k`` and
        ``--min-confidence`` from its stored ranking, so that a rescan with a lower threshold tags the
        tracks it now clears without predicting anything. A changed decision is stored (and, no longer
        being what was written, written again by ``--write-tags``). None when the cache cannot decide:
        the ranking went through another label map, or ``--top-k`` asks for more genres than the index
        kept; the track is then predicted again."""
        if row["status"] not in (OK, ABSTAINED):
            return row
        if row["label_map"] not in (None, self.label_map_digest):
            return None
        ranking = [(label, score) for label, score in json.loads(row["ranking"] or "[]")]
        if not ranking:  # nothing to decide from
            return row
        if self.settings.top_k > len(ranking) < self.genre_count:  # more asked for than was stored
            return None
        status, labels, scores = choose_genres(ranking, self.settings.top_k, self.min_confidence)
        if status == row["status"] and labels == json.loads(row["labels"]):
            return row
        self.relabelled.append({"path": row["path"], "status": status, "labels": labels, "scores": scores,
                                "written": 0})
        self.summary.relabelled += 1
        return {**row, "status": status, "labels": json.dumps(labels), "scores": json.dumps(scores),
                "written": 0}

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
        self._finish(TrackResult(err.path, FAILED, error=err.reason))

    def _finish(self, result: TrackResult) -> None:
        counts = {OK: "tagged", ABSTAINED: "abstained", FAILED: "failed"}
        if result.status in counts:
            self.summary.scanned += 1
            setattr(self.summary, counts[result.status], getattr(self.summary, counts[result.status]) + 1)
        if result.status != SKIPPED:
            self.pending.append(result)
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


def describe(decoded: DecodedTrack, probs, classifier, top_k: int, min_confidence: float) -> TrackResult:
    """Aggregate one track's window probabilities into a :class:`TrackResult`."""
    ranking = rank_labels(probs, classifier.labels, classifier.label_map)
    status, labels, scores = choose_genres(ranking, top_k, min_confidence)
    window_labels = [rank_labels(row.unsqueeze(0), classifier.labels, classifier.label_map)[:3]
                     for row in probs]
    track = decoded.track
    return TrackResult(track.path, status, labels=labels, scores=scores,
                       ranking=[(label, round(float(s), 6)) for label, s in ranking],
                       window_labels=[[(label, round(float(s), 6)) for label, s in w] for w in window_labels],
                       windows=probs.shape[0], duration=decoded.duration, codec=decoded.codec,
                       size=track.size, mtime_ns=track.mtime_ns)


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
                 labels: str | None = None, classifier=None):
        from .models.infer import load_classifier

        self.classifier = classifier or load_classifier(model, device, precision, labels)
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
        conf = self.classifier.default_min_confidence
        return [describe(item, probs, self.classifier, 1, conf)
                for item, probs in predict_in_batches(decoded, self.classifier.predict, self.batch_size)]

    @staticmethod
    def _ranked(result: TrackResult, top_k: int | None) -> list[dict]:
        ranking = result.ranking[:top_k] if top_k else result.ranking
        return [{"label": label, "score": score} for label, score in ranking]
