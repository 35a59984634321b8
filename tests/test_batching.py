"""Batching: every window's probabilities go back to its own track, whatever the batch size."""
import shutil
import threading
import time

import pytest
import torch

from tagger.batching import predict_in_batches
from tagger.decode import decode_file
from tagger.models.infer import load_classifier
from tagger.records import FAILED, TrackResult


@pytest.fixture(scope="module")
def decoded_library(mixed_library_src):
    paths = sorted(p for p in mixed_library_src.rglob("*") if p.is_file())
    return [decode_file(p, 16000, max_windows=3) for p in paths]


@pytest.mark.parametrize("model", ["tiny_wav2vec2", "tiny_ast"])
def test_batch_size_does_not_change_results(request, decoded_library, model):
    classifier = load_classifier(str(request.getfixturevalue(model)), device="cpu", precision="fp32")
    one = list(predict_in_batches(decoded_library, classifier.predict, 1))
    seven = list(predict_in_batches(decoded_library, classifier.predict, 7))
    assert [item.track.path for item, _ in one] == [d.track.path for d in decoded_library]
    assert [item.track.path for item, _ in seven] == [d.track.path for d in decoded_library]
    for (_, a), (_, b) in zip(one, seven):
        assert a.shape == (_windows(a), len(classifier.labels))
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    # windows of different tracks really differ, so a mix-up would be caught
    assert not torch.allclose(one[0][1][0], one[2][1][0], atol=1e-4)


def _windows(probs):
    return probs.shape[0]


@pytest.mark.parametrize("model", ["tiny_wav2vec2", "tiny_ast"])
def test_concurrent_batches_give_the_same_results_in_the_same_order(request, decoded_library, model):
    classifier = load_classifier(str(request.getfixturevalue(model)), device="cpu", precision="fp32")
    serial = list(predict_in_batches(decoded_library, classifier.predict, 2))
    concurrent = list(predict_in_batches(decoded_library, classifier.predict, 2, concurrency=3))
    assert [item.track.path for item, _ in concurrent] == [d.track.path for d in decoded_library]
    for (_, a), (_, b) in zip(serial, concurrent):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(concurrent[0][1][0], concurrent[2][1][0], atol=1e-4)


def _echo_track(tag, n):
    from tagger.records import DecodedTrack, Track

    windows = torch.arange(n, dtype=torch.float32).unsqueeze(1).repeat(1, 4) + tag * 100
    return DecodedTrack(Track(f"t{tag}", 0, 0), windows, torch.full((n,), 4), [0.0] * n, 1.0)


def test_concurrent_calls_really_overlap_and_never_exceed_the_limit():
    items = [_echo_track(tag, 2) for tag in range(1, 7)]  # 12 windows: 12 calls of one window
    together = threading.Barrier(2, timeout=20)  # passes only when two calls are running at once
    lock, running, most = threading.Lock(), [0], [0]

    def echo(windows, lengths):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            together.wait()
            time.sleep(0.005)
            return windows[:, :1]
        finally:
            with lock:
                running[0] -= 1

    out = list(predict_in_batches(items, echo, batch_size=1, concurrency=2))
    assert [item.track.path for item, _ in out] == [f"t{tag}" for tag in range(1, 7)]
    assert [probs.flatten().tolist() for _, probs in out] == [[t * 100, t * 100 + 1] for t in range(1, 7)]
    assert most[0] == 2


def test_an_error_in_a_concurrent_call_reaches_the_caller_and_stops_the_threads():
    items = [_echo_track(tag, 1) for tag in range(1, 6)]
    calls = []

    def fails_on_the_third(windows, lengths):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("model fault")
        return windows[:, :1]

    with pytest.raises(RuntimeError, match="model fault"):
        list(predict_in_batches(items, fails_on_the_third, batch_size=1, concurrency=2))
    assert not [t for t in threading.enumerate() if t.name.startswith("genretag-infer")]
    with pytest.raises(ValueError, match="concurrency"):
        list(predict_in_batches(items, fails_on_the_third, batch_size=1, concurrency=0))


def test_rows_map_back_to_their_windows():
    """A predictor that echoes a window's first sample shows exactly which window each row came from."""
    from tagger.records import DecodedTrack, Track

    def track(tag, n):
        windows = torch.arange(n, dtype=torch.float32).unsqueeze(1).repeat(1, 4) + tag * 100
        return DecodedTrack(Track(f"t{tag}", 0, 0), windows, torch.full((n,), 4), [0.0] * n, 1.0)

    items = [track(1, 3), TrackResult("bad", FAILED, error="x"), track(2, 1), track(3, 5)]
    calls = []

    def echo(windows, lengths):
        calls.append(windows.shape[0])
        return windows[:, :1]

    out = list(predict_in_batches(items, echo, batch_size=4))
    assert [getattr(item, "path", None) or item.track.path for item, _ in out] == ["t1", "bad", "t2", "t3"]
    assert out[0][1].flatten().tolist() == [100, 101, 102]
    assert out[1][1] is None
    assert out[2][1].flatten().tolist() == [200]
    assert out[3][1].flatten().tolist() == [300, 301, 302, 303, 304]
    assert calls == [4, 4, 1]  # fixed-size batches; only the last is smaller


def test_waveform_fast_path_equals_the_feature_extractor(decoded_library, tiny_wav2vec2):
    """wav2vec2 inputs are normalised in torch; the result must equal the shipped extractor's."""
    classifier = load_classifier(str(tiny_wav2vec2), device="cpu", precision="fp32")
    assert classifier.raw_waveform
    windows = torch.stack([d.windows[0] for d in decoded_library[:3]])
    lengths = torch.stack([d.lengths[0] for d in decoded_library[:3]])
    fast = classifier.predict(windows, lengths)
    classifier.raw_waveform = False
    slow = classifier.predict(windows, lengths)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-4)


def test_bounded_map_keeps_order_and_runs_ahead():
    import threading

    from tagger.engine import bounded_map

    active, peak, lock = [0], [0], threading.Lock()

    def work(x):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.01 * (x % 3))
        with lock:
            active[0] -= 1
        return x * x

    assert list(bounded_map(work, range(40), 3, timeout=10, on_timeout=lambda x: None)) == [
        x * x for x in range(40)]
    assert 1 < peak[0] <= 3


def test_bounded_map_gives_up_on_a_stuck_call_and_goes_on():
    """A call that never returns (here: blocked on an event nobody sets, like a read from a FIFO
    without a writer) yields ``on_timeout(item)`` after ``timeout`` and frees its slot: with one worker,
    the items after it still run."""
    import threading

    from tagger.engine import bounded_map

    never = threading.Event()

    def work(x):
        if x == 2:
            never.wait()
        return x

    started = time.monotonic()
    got = list(bounded_map(work, range(6), 1, timeout=0.5, on_timeout=lambda x: f"timeout {x}"))
    assert got == [0, 1, "timeout 2", 3, 4, 5]
    assert time.monotonic() - started < 5
    never.set()


def test_bounded_map_reraises_errors_in_order():
    from tagger.engine import bounded_map

    def work(x):
        if x == 3:
            raise ValueError("bad item 3")
        return x

    got = []
    with pytest.raises(ValueError, match="bad item 3"):
        for value in bounded_map(work, range(6), 2, timeout=10, on_timeout=lambda x: None):
            got.append(value)
    assert got == [0, 1, 2]


ARENA_PROBE = """
import ctypes, sys, tempfile, threading
from tagger.engine import bound_malloc_arenas
if sys.argv[1] == "bounded":
    bound_malloc_arenas(1)
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.fopen.restype = ctypes.c_void_p
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
go = threading.Barrier(6)
def allocate():
    go.wait()  # all six threads allocate at once, so none can inherit another's arena
    blocks = [libc.malloc(64 * 1024) for _ in range(32)]
    go.wait()
    for b in blocks:
        libc.free(b)
threads = [threading.Thread(target=allocate) for _ in range(6)]
[t.start() for t in threads]
[t.join() for t in threads]
with tempfile.NamedTemporaryFile(suffix=".xml") as out:
    fp = libc.fopen(out.name.encode(), b"w")
    libc.malloc_info(0, fp)
    libc.fclose(fp)
    print(open(out.name).read().count("<heap nr="))
"""


@pytest.mark.skipif(not hasattr(__import__("ctypes").CDLL(None), "malloc_info"), reason="needs glibc")
def test_bounded_malloc_arenas_keep_new_threads_in_one_arena():
    """Each run is a fresh process: the arena limit is process-wide and cannot be undone."""
    import subprocess
    import sys

    def arenas(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", ARENA_PROBE, mode], capture_output=True, text=True,
                             check=True, timeout=60)
        return int(out.stdout.strip())

    assert arenas("free") > 1  # glibc's default: threads that allocate at once get arenas of their own
    assert arenas("bounded") == 1


def test_decode_workers_default_to_two_on_cpu_and_to_the_usable_cores_on_a_gpu(monkeypatch):
    """A CPU scan is bound by the model, a GPU scan by decoding: the GPU default follows the cores this
    process may use (its affinity, not the machine's count), keeps one for the feeding thread, and stops
    at MAX_DECODE_WORKERS."""
    import os

    from tagger.engine import MAX_DECODE_WORKERS, default_decode_workers, usable_cpu_count

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert usable_cpu_count() == len(os.sched_getaffinity(0))
    for cores, expected in [(1, 2), (2, 2), (3, 2), (16, 15), (64, MAX_DECODE_WORKERS)]:
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, n=cores: set(range(n)))
        assert usable_cpu_count() == cores
        assert default_decode_workers(cpu) == 2
        assert default_decode_workers(cuda) == expected


def test_usable_cpu_count_follows_a_taskset_affinity():
    import subprocess
    import sys

    if shutil.which("taskset") is None:
        pytest.skip("no taskset")
    out = subprocess.run(["taskset", "-c", "0", sys.executable, "-c",
                          "from tagger.engine import usable_cpu_count; print(usable_cpu_count())"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"
