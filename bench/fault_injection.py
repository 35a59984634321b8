"""Fault injection: prove that killing ``genretag scan --write-tags`` never loses data.

    python bench/fault_injection.py [--files 210] [--kills 20] [--seed 1] [--keep DIR]

A script, not a test. It builds a library of short files (mp3 ID3v2.3, mp3 ID3v2.4+ID3v1, flac, ogg,
opus, m4a, wav; some with pre-existing genres), records every file's bytes sha256, ``audio_digest``
and ``read_genres``, then repeatedly runs ``genretag scan LIB --write-tags`` as a real subprocess and
SIGKILLs it at a random (seeded) moment. After each kill it checks that every file still decodes to
the same audio, holds either exactly its original genres or exactly the predicted one, is not empty,
that the index passes ``PRAGMA integrity_check``, and counts stale temp files. The next run then has to
finish the remaining work without redoing finished files. One SIGINT run checks exit code 130 and the
"Interrupted" message. At the end a complete scan runs, every run that wrote is undone and every file
must be back to its original bytes (sha256) and modification time: every undo in the run is checked
that way, and stale temp files must be gone once the next run has started. Exit status 1 if any
invariant broke.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tagger.settings import AUDIO_EXTENSIONS  # noqa: E402
from tagger.tagging.tags import TEMP_RE, audio_digest, is_temp_name, read_genres  # noqa: E402
from tests.audio_fixtures import make_audio  # noqa: E402
from tests.models import GENRES, make_tiny_wav2vec2  # noqa: E402

GENRETAG = str(Path(sys.executable).with_name("genretag"))
PRESET_GENRES = ["Rock", "Electronic", "Hip-Hop", "Classical", "Folk"]
# (suffix, make_audio kwargs, label)
KINDS = [
    (".mp3", {"id3_version": 3}, "mp3-v23"),
    (".mp3", {"id3_version": 4, "with_id3v1": True}, "mp3-v24+v1"),
    (".flac", {}, "flac"),
    (".ogg", {}, "ogg"),
    (".opus", {}, "opus"),
    (".m4a", {}, "m4a"),
    (".wav", {}, "wav"),
]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- library --------------------------------------------------------------------------------------------
def build_library(folder: Path, n: int, rng: random.Random) -> None:
    jobs = []
    for i in range(n):
        suffix, kwargs, label = KINDS[i % len(KINDS)]
        tags = {"title": f"track {i}"}
        if i % 3 == 0:
            tags["genre"] = PRESET_GENRES[i % len(PRESET_GENRES)]
        sub = folder / label
        jobs.append((sub / f"t{i:03d}{suffix}", dict(kwargs, seconds=rng.choice([2.0, 3.0, 4.0]),
                                                      freq=200.0 + 7 * i, tags=tags)))
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda job: make_audio(job[0], **job[1]), jobs))


def record_state(lib: Path) -> dict:
    files = sorted(p for p in lib.rglob("*") if p.is_file())
    with ThreadPoolExecutor(4) as pool:
        digests = list(pool.map(audio_digest, files))
    return {str(p.resolve()): {"sha": sha256(p), "digest": d, "genres": read_genres(p), "size": p.stat().st_size,
                               "mtime_ns": p.stat().st_mtime_ns} for p, d in zip(files, digests)}


# -- running genretag -----------------------------------------------------------------------------------
def scan_cmd(lib: Path, model: Path, db: Path, *extra: str) -> list[str]:
    return [GENRETAG, "scan", str(lib), "--write-tags", "--model", str(model), "--min-confidence", "0",
            "--db", str(db), "--device", "cpu", *extra]


def run_scan(cmd, delay: float | None = None, sig=signal.SIGKILL, out: Path | None = None,
             wait_db: Path | None = None):
    """Run ``cmd``; if ``delay`` is given, send ``sig`` after that many seconds (if still running).
    With ``wait_db``, the delay counts from the first new tag_writes row in that index.
    Returns (returncode, killed, stdout+stderr text)."""
    out = out or Path(tempfile.mktemp(suffix=".log"))
    with open(out, "wb") as fh:
        env = dict(os.environ, COLUMNS="200", NO_COLOR="1")
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
        killed = False
        if wait_db is not None:
            base = _count_writes(wait_db)
            while proc.poll() is None and _count_writes(wait_db) <= base:
                time.sleep(0.05)
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(sig)
            killed = True
            proc.wait()
    return proc.returncode, killed, out.read_text(errors="replace")


def _count_writes(db: Path) -> int:
    try:
        return db_rows(db, "select count(*) from tag_writes")[0][0]
    except sqlite3.Error:
        return 0


def db_rows(db: Path, sql: str, args=()) -> list:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


# -- the checks -----------------------------------------------------------------------------------------
class Checker:
    def __init__(self, original: dict, oracle: dict, labels: set[str]):
        self.original, self.oracle, self.labels = original, oracle, labels
        self.verified_sha = {p: s["sha"] for p, s in original.items()}  # bytes already known good
        self.checks = 0
        self.changed_audio: set[str] = set()
        self.bad_tags: set[str] = set()
        self.empty: set[str] = set()
        self.undecodable: set[str] = set()
        self.unjournaled: set[str] = set()
        self.db_failures = 0
        self.stale_temps_seen = 0  # distinct temp files killed runs left (the next run removes them)
        self.temps_seen: set[str] = set()
        self.temp_violations = 0
        self.problems: list[str] = []

    def problem(self, msg: str) -> None:
        self.problems.append(msg)
        log("VIOLATION: " + msg)

    def check_library(self, lib: Path, db: Path, where: str) -> dict:
        """All per-file invariants; returns counts for this check."""
        # temps
        temps = [p for p in lib.rglob("*") if p.is_file() and is_temp_name(p.name)]
        new_temps = [t for t in temps if str(t) not in self.temps_seen]
        self.temps_seen.update(str(t) for t in temps)
        self.stale_temps_seen += len(new_temps)
        for t in new_temps:
            self.checks += 1
            ext = t.name.rpartition(".")[2].lower()
            if ext in AUDIO_EXTENSIONS or not TEMP_RE.match(t.name):
                self.temp_violations += 1
                self.problem(f"{where}: temp file {t} has an audio extension")
        # unexpected new files (anything not a temp, not an original)
        present = {str(p.resolve()) for p in lib.rglob("*") if p.is_file() and not is_temp_name(p.name)}
        for extra in present - set(self.original):
            self.problem(f"{where}: unexpected file {extra}")
        journal = self._journal(db)
        changed = 0
        to_digest = []
        for path, orig in self.original.items():
            p = Path(path)
            self.checks += 1
            if not p.exists():
                self.problem(f"{where}: {path} is missing")
                continue
            if p.stat().st_size == 0:
                self.empty.add(path)
                self.problem(f"{where}: {path} has size 0")
                continue
            sha = sha256(p)
            if sha != self.verified_sha[path]:
                to_digest.append((path, sha))
            try:
                genres = read_genres(p)
            except Exception as exc:  # noqa: BLE001 - a corrupt file is exactly what we look for
                self.bad_tags.add(path)
                self.problem(f"{where}: {path}: tags unreadable: {exc}")
                continue
            self.checks += 1
            predicted = self.oracle.get(os.path.relpath(path, lib))
            if genres == orig["genres"]:
                continue
            changed += 1
            if not (predicted is not None and genres == predicted and set(genres) <= self.labels):
                self.bad_tags.add(path)
                self.problem(f"{where}: {path}: genres {genres!r} are neither the original "
                             f"{orig['genres']!r} nor the prediction {predicted!r}")
            elif path not in journal:
                self.unjournaled.add(path)
                self.problem(f"{where}: {path}: genres changed to {genres!r} but tag_writes has no "
                             "undo row for it (the original genres can no longer be restored by undo)")
        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(lambda item: (item, _try_digest(item[0])), to_digest))
        for (path, sha), digest in results:
            self.checks += 1
            if digest is None:
                self.undecodable.add(path)
                self.problem(f"{where}: {path} no longer decodes")
            elif digest != self.original[path]["digest"]:
                self.changed_audio.add(path)
                self.problem(f"{where}: {path}: audio digest changed")
            else:
                self.verified_sha[path] = sha
        # index
        self.checks += 1
        try:
            res = db_rows(db, "PRAGMA integrity_check")
            if res != [("ok",)]:
                raise RuntimeError(res)
        except Exception as exc:  # noqa: BLE001
            self.db_failures += 1
            self.problem(f"{where}: index integrity check failed: {exc}")
        return {"changed": changed, "temps": len(temps), "digested": len(to_digest)}

    @staticmethod
    def _journal(db: Path) -> set[str]:
        if not db.exists():
            return set()
        try:
            return {r[0] for r in db_rows(db, "select path from tag_writes where state in ('replacing', 'written')")}
        except sqlite3.OperationalError:
            return set()  # killed before the schema was created


def _try_digest(path: str) -> str | None:
    try:
        return audio_digest(path)
    except Exception:  # noqa: BLE001
        return None


def prediction_stamps(db: Path) -> dict[str, float]:
    try:
        return {p: c for p, c in db_rows(db, "select path, created_at from predictions where status = 'ok'")}
    except (sqlite3.OperationalError, sqlite3.DatabaseError):
        return {}


def writes_per_path(db: Path) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {}
    try:
        rows = db_rows(db, "select path, run_id from tag_writes where state in ('replacing', 'written')")
    except sqlite3.OperationalError:
        return out
    for path, run in rows:
        out.setdefault(path, set()).add(run)
    return out


# -- main -----------------------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=210)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--min-delay", type=float, default=4.0)
    ap.add_argument("--max-delay", type=float, default=None,
                    help="Cap on kill delays (default: the measured duration of one full scan).")
    ap.add_argument("--keep", help="Work in this folder and keep it (default: a temp dir, removed).")
    args = ap.parse_args()
    t0 = time.perf_counter()
    rng = random.Random(args.seed)
    work = Path(args.keep or tempfile.mkdtemp(prefix="genretag-fault-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        return _main(args, rng, work, t0)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def _main(args, rng: random.Random, work: Path, t0: float) -> int:
    master, model = work / "master", work / "tiny-model"
    log(f"building {args.files} files in {master}")
    build_library(master, args.files, rng)
    make_tiny_wav2vec2(model)
    labels = set(GENRES)

    # calibration: one full run on a copy measures the duration and gives the expected predictions
    calib, calib_db = work / "calib", work / "calib.db"
    shutil.copytree(master, calib)
    start = time.perf_counter()
    rc, _, text = run_scan(scan_cmd(calib, model, calib_db))
    full_run = time.perf_counter() - start
    if rc != 0:
        print(text[-3000:])
        log(f"calibration scan failed with {rc}")
        return 1
    oracle = {os.path.relpath(p, calib): json.loads(l) for p, l in db_rows(
        calib_db, "select path, labels from predictions where status = 'ok'")}
    n_written_calib = db_rows(calib_db, "select count(*) from tag_writes")[0][0]
    log(f"calibration: full scan {full_run:.1f} s, {len(oracle)} predictions, {n_written_calib} writes")
    shutil.rmtree(calib)

    lib, db = work / "lib", work / "index.db"
    shutil.copytree(master, lib)
    log("recording sha256 / audio digest / genres of every file")
    original = record_state(lib)
    assert len(original) == args.files, len(original)
    checker = Checker(original, oracle, labels)
    print(f"files: {len(original)}, original genres set on "
          f"{sum(1 for s in original.values() if s['genres'])}", flush=True)

    kills = completed_before_kill = epochs = 0
    kill_log = []
    redone_predictions, double_writes = [], []
    rerun_stats = []

    def one_run(delay, sig=signal.SIGKILL, wait_for_write=False, cmd=None, rescan=False):
        before_stamps = prediction_stamps(db)
        done_before = set(before_stamps) | set(writes_per_path(db))  # predicted, or tagged + journaled
        rc, killed, text = run_scan(cmd or scan_cmd(lib, model, db), delay, sig, work / "last.log",
                                    wait_db=db if wait_for_write else None)
        after_stamps = prediction_stamps(db)
        predicted = {p for p, c in after_stamps.items() if before_stamps.get(p) != c}
        redone = sorted(predicted & done_before)
        rerun_stats.append({"already_done": len(done_before), "predicted": len(predicted), "redone": len(redone)})
        if rescan:
            pass  # --rescan predicts everything again on purpose
        elif redone:
            redone_predictions.extend(redone)
            checker.problem(f"run re-predicted {len(redone)} file(s) already predicted or tagged+journaled "
                            f"by an earlier run, e.g. {redone[0]}")
        if not rescan and len(done_before) + len(predicted) > len(original):
            checker.problem(f"already-done {len(done_before)} + predicted-in-run {len(predicted)} > "
                            f"{len(original)} files")
        for path, runs in writes_per_path(db).items():
            if len(runs) > 1 and path not in double_writes:
                double_writes.append(path)
                checker.problem(f"{path} has tag_writes rows in runs {sorted(runs)} (none undone)")
        return rc, killed, text

    undo_checks: list[tuple[str, int]] = []

    def no_temps_left(where: str, res: dict) -> None:
        """A run that finished has removed the temp copies of the killed runs before it (the journal
        knows their names) and left none of its own."""
        if res["temps"]:
            checker.problem(f"{where}: {res['temps']} temp file(s) left after a run that finished")

    def undo_all(where: str) -> None:
        runs = [r[0] for r in db_rows(db, "select distinct run_id from tag_writes where state in "
                                          "('intent', 'replacing', 'written') order by run_id desc")]
        for run in runs:
            rc = subprocess.run([GENRETAG, "undo", "--run", str(run), "--db", str(db)],
                                capture_output=True, text=True)
            if rc.returncode != 0:
                checker.problem(f"{where}: undo --run {run} exited {rc.returncode}: {rc.stderr.strip()[-300:]}")
        left = {str(Path(p)) for p in original
                if read_genres(p) != original[p]["genres"]}
        checker.checks += 2 * len(original)
        if left:
            for p in sorted(left)[:10]:
                checker.problem(f"{where}: after undo {p} has {read_genres(p)!r}, original "
                                f"{original[p]['genres']!r}")
        inexact = [p for p in original if (sha256(Path(p)), Path(p).stat().st_mtime_ns)
                   != (original[p]["sha"], original[p]["mtime_ns"])]
        for p in inexact[:10]:
            checker.problem(f"{where}: after undo {p} is not its original bytes and modification time")
        undo_checks.append((where, len(original) - len(inexact)))
        log(f"{where}: undid {len(runs)} run(s); files not back to original genres: {len(left)}, "
            f"not byte-identical with their old mtime: {len(inexact)}")

    # kills
    max_delay = max(args.min_delay + 1, min(full_run, args.max_delay or full_run))
    while kills < args.kills:
        delay = rng.uniform(args.min_delay, max_delay)
        writes_before = _count_writes(db)  # the epoch's index may not hold its tables yet
        rc, killed, text = one_run(delay)
        writes_after = _count_writes(db)
        res = checker.check_library(lib, db, f"kill {kills + 1}" if killed else "completed run")
        if killed:
            kills += 1
            kill_log.append((round(delay, 2), writes_after - writes_before, res["changed"], res["temps"]))
            log(f"kill {kills}: SIGKILL after {delay:.1f} s, {writes_after - writes_before} writes journaled "
                f"this run, files now tagged {res['changed']}, temps {res['temps']}, "
                f"re-digested {res['digested']}")
        else:
            completed_before_kill += 1
            no_temps_left("completed run", res)
            if rc != 0:
                checker.problem(f"uninterrupted scan exited {rc}: {text[-500:]}")
            log(f"run finished before its kill ({delay:.1f} s), rc {rc}; undoing everything for a new epoch")
            undo_all(f"epoch {epochs}")
            epochs += 1
            # A fresh index makes the next epoch predict again: tagging the whole library from cached
            # predictions takes about a second (the model is never loaded), too short for a kill.
            db = work / f"index-epoch{epochs}.db"
        # a killed run's temps stay until the next run starts: no scan may index (or tag) them meanwhile
        for t in [p for p in lib.rglob("*") if p.is_file() and is_temp_name(p.name)]:
            try:
                rows = db_rows(db, "select count(*) from tracks where path = ?", [str(t)])[0][0]
            except sqlite3.OperationalError:
                rows = 0
            if rows:
                checker.temp_violations += 1
                checker.problem(f"temp file {t} was picked up by a scan")

    # after the last kill: a rerun must complete the rest, and remove the temp copies the kills left
    rc, killed, text = one_run(None)
    res = checker.check_library(lib, db, "rerun after kills")
    no_temps_left("rerun after kills", res)
    if rc != 0:
        checker.problem(f"rerun after kills exited {rc}: {text[-500:]}")
    log(f"rerun after the kills: rc {rc}, {rerun_stats[-1]}")

    # SIGINT: undo to have work to do, then interrupt mid-scan. --rescan makes the run predict again
    # (tagging from the cache takes < 1 s for the whole library, too short to interrupt reliably)
    undo_all("before SIGINT")
    sigint_delay = rng.uniform(0.2, 1.5)  # after the first tag write of the run: surely mid-scan
    rc, killed, text = one_run(sigint_delay, signal.SIGINT, wait_for_write=True,
                               cmd=scan_cmd(lib, model, db, "--rescan"), rescan=True)
    res = checker.check_library(lib, db, "SIGINT")
    sigint_ok = killed and rc == 130 and "Interrupted" in text
    interrupted_flag = db_rows(db, "select interrupted from runs where command = 'scan' order by id desc limit 1")
    if not killed:
        log("SIGINT run finished before the signal; not a SIGINT test")
    elif not sigint_ok:
        checker.problem(f"SIGINT after {sigint_delay:.1f} s: exit {rc}, 'Interrupted' in output: "
                        f"{'Interrupted' in text}; tail: {text[-400:]!r}")
    if killed and interrupted_flag != [(1,)]:
        checker.problem(f"SIGINT run not recorded as interrupted in runs: {interrupted_flag}")
    log(f"SIGINT {sigint_delay:.1f} s after the first write: rc {rc}, summary printed {'Interrupted' in text}, "
        f"files tagged {res['changed']}")
    rc, _, text = one_run(None)
    res2 = checker.check_library(lib, db, "rerun after SIGINT")
    if rc != 0:
        checker.problem(f"rerun after SIGINT exited {rc}: {text[-500:]}")
    sigint_rerun = rerun_stats[-1]
    log(f"rerun after SIGINT: rc {rc}, {sigint_rerun}, files tagged {res2['changed']}")

    # targeted: SIGKILL exactly between a file's os.replace and the completion of its tag_writes row
    undo_all("before targeted kill")
    hook = ("import os, signal, sys, tagger.tagging.journal as ix\n"
            "ix.Journal.written = lambda self, *args: os.kill(os.getpid(), signal.SIGKILL)\n"
            "from tagger.cli import cli\n"
            "sys.argv = ['genretag'] + sys.argv[1:]\ncli()\n")
    targeted_cmd = [sys.executable, "-c", hook] + scan_cmd(lib, model, db)[1:]
    rc, killed, text = one_run(None, cmd=targeted_cmd)
    journal_before = checker.unjournaled.copy()
    tres = checker.check_library(lib, db, "targeted kill after os.replace, before journal commit")
    targeted_unjournaled = sorted(checker.unjournaled - journal_before)
    log(f"targeted kill: rc {rc}, files tagged {tres['changed']}, unjournaled {len(targeted_unjournaled)}")

    # final: complete scan, every file tagged, then undo everything
    rc, _, text = one_run(None)
    final = checker.check_library(lib, db, "final scan")
    not_tagged = [p for p in original if read_genres(p) != oracle.get(os.path.relpath(p, lib))]
    if rc != 0 or not_tagged:
        checker.problem(f"final scan rc {rc}; {len(not_tagged)} file(s) without the predicted genres, "
                        f"e.g. {not_tagged[:3]}")
    undo_all("final undo")
    checker.check_library(lib, db, "after final undo")
    audio_changed_final = 0
    for p, s in original.items():
        d = _try_digest(p)
        checker.checks += 1
        if d != s["digest"]:
            audio_changed_final += 1
            checker.changed_audio.add(p)
            checker.problem(f"after final undo: {p} audio digest changed or undecodable")

    total = time.perf_counter() - t0
    print("\n==== fault injection summary ====")
    print(f"files                         {len(original)} ({', '.join(k[2] for k in KINDS)})")
    print(f"full scan duration (calib.)   {full_run:.1f} s; kill delays uniform in [{args.min_delay}, {max_delay:.1f}] s")
    print(f"kills survived (SIGKILL)      {kills} (runs that finished before their kill: {completed_before_kill}, "
          f"epochs undone: {epochs})")
    print(f"kills that landed mid-writes  {sum(1 for k in kill_log if k[1] > 0)}")
    print(f"checks made                   {checker.checks}")
    print(f"files with changed audio      {len(checker.changed_audio)}")
    print(f"files undecodable / empty     {len(checker.undecodable)} / {len(checker.empty)}")
    print(f"files with mixed/corrupt tags {len(checker.bad_tags)}")
    print(f"tag changes without journal   {len(checker.unjournaled)}")
    print(f"index integrity failures      {checker.db_failures}")
    print(f"stale temps seen              {checker.stale_temps_seen} (violations: {checker.temp_violations})")
    print(f"rerun behaviour               redone predictions {len(redone_predictions)}, paths written in two "
          f"runs {len(double_writes)}; runs: " + ", ".join(
              f"{r['already_done']}+{r['predicted']}" for r in rerun_stats))
    print(f"SIGINT                        {'ok (exit 130, Interrupted printed, rerun finished)' if sigint_ok else 'FAILED or not hit'}"
          f" rerun {sigint_rerun}")
    print(f"final scan + undo             tagged {final['changed']}, back to original after undo: "
          f"{len(original) - sum(1 for p in original if read_genres(p) != original[p]['genres'])}/{len(original)}")
    print("byte-identical after each undo " + ", ".join(f"{w}: {n}/{len(original)}" for w, n in undo_checks))
    print(f"targeted kill after os.replace, before the journal commit: "
          f"unjournaled tag changes {len(targeted_unjournaled)} {targeted_unjournaled[:1]}")
    print(f"violations                    {len(checker.problems)}")
    print(f"total runtime                 {total:.0f} s")
    return 1 if checker.problems else 0


if __name__ == "__main__":
    sys.exit(main())
