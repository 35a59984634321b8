"""Step 6: what the index knows, as plain data — the library report, one track's story, the models.

Every aggregate is computed by SQLite (GROUP BY, ``json_extract``), never by looping over tracks in
Python: :func:`build_report` answers for a 100,000-track index in about a second on two CPU cores
(``bench/report_100k.py``). Rendering
(terminal, JSON, CSV, HTML) lives in :mod:`tagger.reporting.render`.

A track's *prediction* is the one made by the chosen model (``--model``), or by default the one made
by the model that last scanned the track (``tracks.fingerprint``). Its *genre* is that prediction's
top label and its *confidence* the top score of the ranking (abstentions have a confidence too, only
no label). Each track is in exactly one status: ``ok`` (tagged), ``abstained``, ``failed`` or
``unpredicted`` (the chosen model never saw it); *untagged* is everything but ``ok``.

*Disputed* tracks (``--disputed``, :func:`disputed_tracks`): those whose user genres
(:mod:`tagger.tagging.user_genres`: never the ones genretag wrote) the track's prediction confidently
contradicts: its top genre is none of them (nor a parent or sub-genre of one, in the model's label map)
and scores at least that genre's threshold.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import sqlite3
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import quote

from ..errors import GenretagError, IndexUnusable

GROUPINGS = ("genre", "folder", "artist", "album")
STATUSES = ("ok", "abstained", "failed", "unpredicted")
HISTOGRAM_BINS = 10  # confidence bins of 0.1 over [0, 1]
SINCE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclass(frozen=True)
class ReportOptions:
    """What a report covers; ``genretag report``'s options (their help is in :mod:`tagger.reporting.commands`)."""

    path: str | None = None  # only tracks under this folder
    folders: tuple[str, ...] = ()  # ... and under one of these
    model: str | None = None  # model id, path or fingerprint (prefix); None: each track's last model
    min_confidence: float | None = None  # only tracks whose top score is at least this
    since: float | None = None  # only tracks predicted at or after this Unix time
    by: str = "genre"  # one of GROUPINGS
    review: int = 10  # least confident tracks listed
    tracks: bool = False  # also return one row per track (HTML table, --tracks)
    disputed: bool = False  # also list the tracks whose own genres the model contradicts (--disputed)


@dataclass
class Report:
    """The answer of :func:`build_report`; ``asdict`` of it is the ``--json`` output."""

    db: str
    generated_at: float
    options: dict
    total: int
    status: dict  # ok, abstained, failed, unpredicted, untagged, written: counts
    models: list[dict]  # fingerprint, model_id, tracks: whose predictions were counted
    by: str
    groups: list[dict]  # key, tracks, percent, ok, abstained, failed, unpredicted, mean_confidence, top_genre
    confidence: list[dict]  # low, high, tracks, ok, abstained
    review: list[dict]  # path, status, genre, confidence, model_id (least confident first)
    failed: list[dict]  # path, error
    tracks: list[dict] | None = None  # path, artist, album, status, genre, confidence, model_id
    disputed: list[dict] | None = None  # see disputed_tracks; most confident first
    disputed_models: list[dict] | None = None  # the thresholds each model's disputes were judged by

    def as_json(self) -> dict:
        data = asdict(self)
        for key in ("tracks", "disputed", "disputed_models"):
            if data[key] is None:
                del data[key]
        return data


def parse_since(text: str, now: float | None = None) -> float:
    """``"7d"``, ``"12h"``, ``"30m"``, ``"2w"``, ``"90s"`` ago, or an ISO date / date-time (local time
    unless it names a zone) -> Unix timestamp."""
    now = time.time() if now is None else now
    if m := re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text):
        return now - float(m[1]) * SINCE_UNITS[m[2]]
    try:
        return dt.datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise ValueError(f"{text!r} is neither an age (7d, 12h, 30m, 2w) nor an ISO date/time "
                         "(2024-05-01, 2024-05-01T18:30)") from None


def connect(db_path: str | os.PathLike) -> sqlite3.Connection:
    """A connection to the existing index at ``db_path``; never creates one. An older index is migrated
    (through :class:`tagger.index.Index`), a newer one refused. Plain sqlite3, not sqlite-utils: its
    import alone costs more than a report's queries. Every way the file can be unusable is one line
    (:class:`tagger.errors.IndexUnusable`)."""
    from ..index import BUSY_TIMEOUT_MS, SCHEMA_VERSION, Index, check_index_path, index_errors

    check_index_path(Path(db_path), create=False)
    for _ in range(2):  # the second time round, after a migration
        with index_errors(db_path):
            conn = sqlite3.connect(f"file:{quote(os.fsencode(os.path.abspath(db_path)))}?mode=rw",
                                   timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, uri=True)
            try:
                conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                conn.execute("PRAGMA temp_store = MEMORY")
                tables = {r[0] for r in conn.execute("select name from sqlite_master where type = 'table'")}
                version = int(conn.execute("select value from meta where key = 'schema_version'").fetchone()[0]) \
                    if "meta" in tables else 0
            except (TypeError, ValueError) as err:
                conn.close()
                raise IndexUnusable(db_path, f"not a genretag index ({err})") from None
            except BaseException:
                conn.close()
                raise
        if version == SCHEMA_VERSION:
            return conn
        conn.close()
        if "tracks" not in tables:
            raise IndexUnusable(db_path, "not a genretag index (no tracks table)")
        Index(db_path, create=False).close()  # upgrades an older schema step by step; raises for a newer one
    raise IndexUnusable(db_path, f"could not bring the index to schema {SCHEMA_VERSION}")


def _rows(conn, sql: str, args=()) -> list[dict]:
    cur = conn.execute(sql, args)
    names = [c[0] for c in cur.description]
    return [dict(zip(names, r)) for r in cur]


def folder_prefix(folder: str) -> str:
    """The text every indexed path under ``folder`` starts with."""
    from ..index import path_key

    return path_key(os.path.abspath(folder)).rstrip("/") + "/"


# -- the report ----------------------------------------------------------------------------------------

def build_report(db_path: str | os.PathLike, options: ReportOptions = ReportOptions()) -> Report:
    """Aggregate the index at ``db_path`` (see the module docs for what is counted)."""
    if options.by not in GROUPINGS:
        raise ValueError(f"by must be one of {GROUPINGS}, not {options.by!r}")
    conn = connect(db_path)
    try:
        # One read transaction: every query sees the same snapshot, even while a scan commits.
        conn.execute("BEGIN")
        fingerprints = resolve_model(conn, options.model) if options.model else None
        _select_tracks(conn, options, fingerprints)
        report = _aggregate(conn, db_path, options)
        if options.disputed:
            report.disputed, report.disputed_models = disputed_tracks(conn, options.min_confidence)
        conn.execute("COMMIT")
        return report
    finally:
        conn.close()


def resolve_model(conn, model: str) -> list[str]:
    """The fingerprints a ``--model`` value names: a fingerprint (or its 4+ digit prefix), else every
    fingerprint recorded under that model id (a retrained checkpoint in the same folder has several)."""
    found = [r[0] for r in conn.execute("select fingerprint from models where fingerprint = ?", [model])]
    if not found and re.fullmatch(r"[0-9a-f]{4,16}", model):
        found = [r[0] for r in conn.execute(
            "select fingerprint from models where substr(fingerprint, 1, ?) = ?", [len(model), model])]
        if len(found) > 1:
            raise GenretagError(f"fingerprint prefix {model!r} matches several models ({', '.join(found)}); "
                                "give more digits")
    if not found:
        ids = {model, os.path.abspath(os.path.expanduser(model)), f"builtin:{model}"}
        marks = ",".join("?" * len(ids))
        found = [r[0] for r in conn.execute(
            f"select fingerprint from models where model_id in ({marks}) order by last_seen desc", list(ids))]
    if not found:
        raise GenretagError(f"model {model!r} is not in the index; `genretag models` lists the ones "
                            "it has seen")
    return found


def _select_tracks(conn, options: ReportOptions, fingerprints: list[str] | None) -> None:
    """One pass over tracks ⨝ predictions into a temp table (one statement, so one consistent snapshot
    even while a scan writes); every aggregate then reads that table."""
    where, args = [], []
    if fingerprints is None:
        join = "p.fingerprint = t.fingerprint"
    elif len(fingerprints) == 1:
        join, args = "p.fingerprint = ?", [fingerprints[0]]
    else:  # several checkpoints under one model id: each track's newest prediction among them
        marks = ",".join("?" * len(fingerprints))
        join = (f"p.fingerprint = (select fingerprint from predictions where path = t.path and "
                f"fingerprint in ({marks}) order by created_at desc limit 1)")
        args = list(fingerprints)
    if options.path:
        where.append("t.path >= ? and t.path < ?")
        args += _prefix_range(folder_prefix(options.path))
    if options.folders:
        where.append("(" + " or ".join(["(t.path >= ? and t.path < ?)"] * len(options.folders)) + ")")
        for folder in options.folders:
            args += _prefix_range(folder_prefix(folder))
    if options.since is not None:
        where.append("coalesce(p.created_at, t.updated_at) >= ?")
        args.append(options.since)
    outer = ""
    if options.min_confidence is not None:
        outer = "where confidence >= ?"
        args.append(options.min_confidence)
    group = f", {GROUP_KEYS[options.by]} as grp" if options.by in GROUP_KEYS else ""
    # Narrow rows (rowids, not paths): this statement is most of a report's time.
    conn.execute("drop table if exists temp.report_tracks")
    conn.execute(f"""
        create temp table report_tracks as select * from (
          select t.rowid as trow, p.rowid as prow,
                 case when p.rowid is null then 'unpredicted' else p.status end as status,
                 case when p.status = 'ok' then json_extract(p.labels, '$[0]') end as genre,
                 case when p.status = 'ok' then json_extract(p.scores, '$[0]')
                      else json_extract(p.ranking, '$[0][1]') end as confidence,
                 p.written, p.fingerprint {group}
          from tracks t left join predictions p on p.path = t.path and {join}
          {"where " + " and ".join(where) if where else ""}
        ) {outer}""", args)


GROUP_KEYS = {"folder": "rtrim(t.path, replace(t.path, '/', ''))",
              "artist": "coalesce(nullif(trim(t.artist), ''), '(unknown artist)')",
              "album": "coalesce(nullif(trim(t.album), ''), '(unknown album)')"}


def _prefix_range(prefix: str) -> list[str]:
    """``[prefix, prefix-with-last-char+1)``: a range the primary key index answers, unlike LIKE."""
    return [prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)]


def _aggregate(conn, db_path, options: ReportOptions) -> Report:
    def rows(sql, args=()):
        return _rows(conn, sql, args)

    # One pass gives statuses, models, the histogram and the genres; Python only adds up its few rows.
    summary = rows(f"select status, fingerprint, genre, "
                   f"min(max(cast(confidence * {HISTOGRAM_BINS} as integer), 0), {HISTOGRAM_BINS - 1}) as bin, "
                   "count(*) as n, coalesce(sum(written), 0) as written, "
                   "sum(confidence) as confidence from report_tracks group by status, fingerprint, genre, bin")
    status = dict.fromkeys(STATUSES, 0)
    per_model: dict[str, int] = {}
    bins = [{"low": b / HISTOGRAM_BINS, "high": (b + 1) / HISTOGRAM_BINS, "tracks": 0, "ok": 0, "abstained": 0}
            for b in range(HISTOGRAM_BINS)]
    genres: dict[str, list] = {}
    for row in summary:
        status[row["status"]] = status.get(row["status"], 0) + row["n"]
        status["written"] = status.get("written", 0) + row["written"]
        if row["fingerprint"] is not None:
            per_model[row["fingerprint"]] = per_model.get(row["fingerprint"], 0) + row["n"]
        if row["bin"] is not None and row["status"] in ("ok", "abstained"):
            bins[row["bin"]]["tracks"] += row["n"]
            bins[row["bin"]][row["status"]] += row["n"]
        if row["status"] == "ok":
            g = genres.setdefault(row["genre"], [0, 0.0])
            g[0] += row["n"]
            g[1] += row["confidence"] or 0.0
    total = sum(status.get(s, 0) for s in STATUSES)
    status.update(untagged=total - status["ok"], written=status.get("written", 0))

    names = {r["fingerprint"]: r["model_id"] for r in rows("select fingerprint, model_id from models")}
    models = sorted(({"fingerprint": fp, "model_id": names.get(fp), "tracks": n}
                     for fp, n in per_model.items()), key=lambda m: (-m["tracks"], m["model_id"] or ""))
    # An abstention has no label; its best guess (the top of the ranking) is shown instead.
    review = rows("select t.path, r.status, coalesce(r.genre, json_extract(p.ranking, '$[0][0]')) as genre, "
                  "r.confidence, p.model_id from (select * from report_tracks where confidence is not null "
                  "and status in ('ok', 'abstained') order by confidence, trow limit ?) r "
                  "join tracks t on t.rowid = r.trow left join predictions p on p.rowid = r.prow "
                  "order by r.confidence, t.path", [max(options.review, 0)])
    failed = rows("select t.path, coalesce(p.error, t.error) as error from report_tracks r "
                  "join tracks t on t.rowid = r.trow left join predictions p on p.rowid = r.prow "
                  "where r.status = 'failed' order by t.path")
    if options.by == "genre":
        groups = [{"key": k, "tracks": n, "ok": n, "abstained": 0, "failed": 0, "unpredicted": 0,
                   "mean_confidence": c / n, "top_genre": k} for k, (n, c) in genres.items()]
    else:
        groups = _groups(rows, options.by)
    groups.sort(key=lambda g: (-g["tracks"], g["key"]))
    grouped = sum(g["tracks"] for g in groups)
    for group in groups:
        group["percent"] = round(100.0 * group["tracks"] / grouped, 2) if grouped else 0.0

    tracks = None
    if options.tracks:
        tracks = rows("select t.path, t.artist, t.album, r.status, "
                      "coalesce(r.genre, json_extract(p.ranking, '$[0][0]')) as genre, "
                      "r.confidence, p.model_id "
                      "from report_tracks r join tracks t on t.rowid = r.trow "
                      "left join predictions p on p.rowid = r.prow order by t.path")
    opts = asdict(options)
    opts.pop("tracks")
    opts.pop("disputed")
    return Report(db=str(db_path), generated_at=time.time(), options=opts, total=total, status=status,
                  models=models, by=options.by, groups=groups, confidence=bins, review=review, failed=failed,
                  tracks=tracks)


def _groups(rows, by: str) -> list[dict]:
    """Counts per folder, artist or album (every track, whatever its status), each with its most
    common genre; from one GROUP BY whose rows are per (group, status, genre)."""
    groups: dict[str, dict] = {}
    for row in rows("select grp, status, genre, count(*) as n, sum(confidence) as csum, "
                    "count(confidence) as cn from report_tracks group by grp, status, genre"):
        g = groups.setdefault(row["grp"], {"key": row["grp"], "tracks": 0, "ok": 0, "abstained": 0,
                                           "failed": 0, "unpredicted": 0, "csum": 0.0, "cn": 0, "genres": {}})
        g["tracks"] += row["n"]
        g[row["status"]] = g.get(row["status"], 0) + row["n"]
        g["csum"] += row["csum"] or 0.0
        g["cn"] += row["cn"]
        if row["status"] == "ok":
            g["genres"][row["genre"]] = row["n"]
    for g in groups.values():
        csum, cn, counts = g.pop("csum"), g.pop("cn"), g.pop("genres")
        g["mean_confidence"] = csum / cn if cn else None
        g["top_genre"] = min(counts, key=lambda k: (-counts[k], k)) if counts else None
        if by == "folder":
            g["key"] = g["key"].rstrip("/") or "/"
    return list(groups.values())


# -- disputed tags -------------------------------------------------------------------------------------

def disputed_tracks(conn, min_confidence: float | None = None) -> tuple[list[dict], list[dict]]:
    """The tracks of the report (``temp.report_tracks``) whose user genres their prediction confidently
    contradicts, most confident first, and the thresholds each model was judged by.

    A track is disputed when it has user genres and its prediction's top genre (the first of its
    ranking, whether the scan tagged or abstained) is none of them, nor a parent or sub-genre of one in
    the model's label map ("Rock" does not dispute "Indie Rock"), and scores at least that genre's
    threshold: ``min_confidence`` if given, else the model's own for that genre, else its default
    (:func:`model_thresholds`). Genres compare case-insensitively."""
    from ..tagging.user_genres import genre_list, standing_writes, user_genres, with_writes

    candidates = conn.execute("""
        select t.path, t.artist, t.album, t.genres, r.status, p.model_id, p.fingerprint,
               json_extract(p.ranking, '$[0][0]'), json_extract(p.ranking, '$[0][1]')
        from report_tracks r join tracks t on t.rowid = r.trow join predictions p on p.rowid = r.prow
        where r.status in ('ok', 'abstained') and t.genres is not null and t.genres != '[]' order by t.path""")
    writes = standing_writes(conn, join="join tracks t on t.path = w.path join report_tracks r on r.trow = t.rowid")
    rules: dict[str, DisputeRule] = {}
    disputed = []
    for row, mine in with_writes(candidates, writes):
        path, artist, album, file_genres, status, model_id, fingerprint, genre, score = row
        if genre is None or score is None:
            continue
        user = user_genres(genre_list(file_genres), mine)
        if not user.genres:
            continue
        rule = rules.get(fingerprint)
        if rule is None:
            rule = rules[fingerprint] = dispute_rule(model_id, min_confidence)
        threshold = rule.threshold(genre)
        if score >= threshold and not rule.agrees(genre, user.genres):
            disputed.append({"path": path, "artist": artist, "album": album, "user_genres": list(user.genres),
                             "origin": user.origin, "file_genres": list(user.file_genres), "genre": genre,
                             "score": score, "threshold": threshold, "status": status, "model_id": model_id,
                             "fingerprint": fingerprint})
    disputed.sort(key=lambda d: (-d["score"], d["path"]))
    models = [{"fingerprint": fp, "model_id": rule.model_id, "min_confidence": rule.default,
               "label_thresholds": rule.per_genre, "thresholds_from": rule.source} for fp, rule in rules.items()]
    return disputed, sorted(models, key=lambda m: (m["model_id"] or "", m["fingerprint"]))


@dataclass
class DisputeRule:
    """What calls a model's top genre a confident contradiction of a track's genres."""

    model_id: str | None
    default: float
    per_genre: dict[str, float]
    parents: dict[str, str]  # casefolded genre -> casefolded parent (the model's label map)
    source: str  # "--min-confidence", "model" (its files), or "fallback" (its files are not here)

    def threshold(self, genre: str) -> float:
        return self.per_genre.get(genre, self.default)

    def agrees(self, genre: str, user: tuple[str, ...]) -> bool:
        """``genre`` is one of ``user``'s genres, or a parent or sub-genre of one."""
        mine = {g.casefold() for g in user}
        lineage = {genre.casefold(), *self._ancestors(genre.casefold())}
        return bool(lineage & mine) or any(genre.casefold() in self._ancestors(g) for g in mine)

    def _ancestors(self, genre: str) -> list[str]:
        chain = []
        while genre in self.parents and len(chain) <= len(self.parents):
            genre = self.parents[genre]
            chain.append(genre)
        return chain


def dispute_rule(model_id: str | None, min_confidence: float | None = None) -> DisputeRule:
    """The thresholds a scan with the model ``model_id`` decides by, read from its files without loading
    it (the built-in config, a checkpoint's config.json) and keyed by the genres of its default label
    map at the default level (what ``scan`` writes); the fallback threshold where its files are not here
    (a hub id, a moved folder). ``min_confidence`` replaces them all."""
    from ..labels import LabelMapError
    from ..models.identity import (FALLBACK_MIN_CONFIDENCE, config_label_thresholds, config_labels,
                                   config_min_confidence, read_builtin)
    from ..models.infer import default_label_map
    from ..settings import ScanSettings

    try:
        if (model_id or "").startswith("builtin:"):
            config = read_builtin(model_id.removeprefix("builtin:"))[0]
            labels, default, own = list(config["labels"]), float(config["default_min_confidence"]), {}
        else:
            config = json.loads((Path(model_id) / "config.json").read_text(encoding="utf-8"))
            labels, default = config_labels(config), config_min_confidence(config)
            own = config_label_thresholds(config, labels, model_id)
        label_map = default_label_map(model_id, None, ScanSettings.level)
        per_genre, source = label_map.genre_thresholds(own, labels) or {}, "model"
        parents = {k.casefold(): v.casefold() for k, v in label_map.parents.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError, GenretagError, LabelMapError):
        default, per_genre, parents, source = FALLBACK_MIN_CONFIDENCE, {}, {}, "fallback"
    if min_confidence is not None:
        default, per_genre, source = min_confidence, {}, "--min-confidence"
    return DisputeRule(model_id, default, per_genre, parents, source)


# -- one track -----------------------------------------------------------------------------------------

def track_details(db_path: str | os.PathLike, file: str | os.PathLike) -> dict:
    """Everything known about one file: its tags read now, its index row, every model's prediction,
    every tag write (oldest first)."""
    from ..index import path_key

    absolute = os.path.abspath(file)
    details = {"path": absolute, "exists": os.path.isfile(absolute), "tags": None, "tags_error": None,
               "track": None, "predictions": [], "writes": []}
    if details["exists"]:
        try:
            from ..tagging.tags import read_tags_summary

            details["tags"] = read_tags_summary(absolute)
        except GenretagError as err:
            details["tags_error"] = getattr(err, "reason", str(err))
    if not Path(db_path).is_file():
        return details
    conn = connect(db_path)
    try:
        conn.execute("BEGIN")
        for key in dict.fromkeys([path_key(absolute), path_key(os.fspath(file))]):
            found = _rows(conn, "select * from tracks where path = ?", [key])
            if found:
                break
        else:
            return details
        track = {k: v for k, v in found[0].items() if k != "raw_path"}
        key = track["path"]
        track["genres"] = _loads(track.get("genres"))
        details["track"] = track
        for row in _rows(conn, "select * from predictions where path = ? order by created_at desc", [key]):
            for name in ("labels", "scores", "ranking", "window_labels"):
                row[name] = _loads(row[name])
            row["current"] = row["fingerprint"] == track.get("fingerprint")
            row["window_top"] = [w[0][0] if w else None for w in row.get("window_labels") or []]
            details["predictions"].append(row)
        for row in _rows(conn, "select id, run_id, old_genres, new_genres, written_at, undone_at, undo_run_id "
                               "from tag_writes where path = ? order by id", [key]):
            row["old_genres"], row["new_genres"] = _loads(row["old_genres"]), _loads(row["new_genres"])
            details["writes"].append(row)
        conn.execute("COMMIT")
    finally:
        conn.close()
    return details


def _loads(text):
    try:
        return json.loads(text) if text is not None else None
    except ValueError:
        return text


# -- models --------------------------------------------------------------------------------------------

def builtin_fingerprint(name: str) -> str | None:
    """The fingerprint scans record for ``builtin:NAME``: SHA-256 of its weights file, as
    :class:`tagger.models.musicnn.MusicnnClassifier` computes it (not :func:`weights_fingerprint`, which also
    hashes file names)."""
    from importlib import resources

    try:
        weights = (resources.files("tagger") / "builtin" / name / "model.safetensors").read_bytes()
    except OSError:
        return None
    return hashlib.sha256(weights).hexdigest()[:16]


def model_overview(db_path: str | os.PathLike) -> dict:
    """``{"seen": [...], "available": [...], "default": model}``: the models the index has recorded,
    with their prediction counts, and the checkpoints a scan could use now (built-in and trained)."""
    from ..models.identity import builtin_names, registry_path, resolve_model_name, weights_fingerprint

    seen = []
    if Path(db_path).is_file():
        conn = connect(db_path)
        try:
            conn.execute("BEGIN")
            counts = {r["fingerprint"]: r for r in _rows(
                conn, "select fingerprint, count(*) as predictions, sum(status = 'ok') as ok, "
                      "sum(status = 'abstained') as abstained, sum(status = 'failed') as failed "
                      "from predictions group by fingerprint")}
            current = {r["fingerprint"]: r["n"] for r in _rows(
                conn, "select fingerprint, count(*) as n from tracks group by fingerprint")}
            for row in _rows(conn, "select * from models order by last_seen desc"):
                row["labels"] = _loads(row["labels"])
                c = counts.get(row["fingerprint"], {})
                row.update(predictions=c.get("predictions", 0), ok=c.get("ok") or 0,
                           abstained=c.get("abstained") or 0, failed=c.get("failed") or 0,
                           current_tracks=current.get(row["fingerprint"], 0))
                seen.append(row)
            conn.execute("COMMIT")
        finally:
            conn.close()
    seen_fps = {r["fingerprint"] for r in seen}
    available = [{"model": f"builtin:{name}", "kind": "builtin", "path": None,
                  "fingerprint": builtin_fingerprint(name)} for name in builtin_names()]
    try:
        trained = json.loads(registry_path().read_text()).get("trained", [])
    except (OSError, ValueError, AttributeError):
        trained = []
    for entry in trained:
        if not isinstance(entry, dict) or "path" not in entry:
            continue
        folder = Path(entry["path"])
        fp = weights_fingerprint(folder) if folder.is_dir() else None
        available.append({"model": str(folder), "kind": "trained", "path": str(folder), "fingerprint": fp,
                          "missing": not folder.is_dir(),
                          "info": {k: v for k, v in entry.items() if k != "path"}})
    default = resolve_model_name(None)
    for item in available:
        item["in_index"] = item["fingerprint"] in seen_fps
        item["default"] = item["model"] == default
    return {"db": str(db_path), "seen": seen, "available": available, "default": default}
