"""The CUDA-graph capture guard (pure threading: runs on the CPU; the GPU test is test_onnxruntime's workers=2)."""

from __future__ import annotations

import threading
import time

from muxdeploy.runtimes.backends.ort_cuda import CaptureGuard


def test_a_capture_runs_alone_and_replays_run_side_by_side() -> None:
    guard = CaptureGuard()
    events: list[str] = []
    lock = threading.Lock()

    def note(what: str) -> None:
        with lock:
            events.append(what)

    def replay(k: int) -> None:
        with guard.shared():
            note(f"r{k}+")
            time.sleep(0.05)
            note(f"r{k}-")

    def capture() -> None:
        with guard.exclusive():
            note("c+")
            time.sleep(0.05)
            note("c-")

    first = [threading.Thread(target=replay, args=(k,)) for k in range(2)]
    for t in first:
        t.start()
    time.sleep(0.01)  # both replays hold the guard
    writer = threading.Thread(target=capture)
    writer.start()
    time.sleep(0.01)  # the capture waits; a replay arriving now must queue behind it
    late = threading.Thread(target=replay, args=(2,))
    late.start()
    for t in [*first, writer, late]:
        t.join(5)
    assert events[:2] == ["r0+", "r1+"] or events[:2] == ["r1+", "r0+"]  # replays overlapped
    c_in, c_out = events.index("c+"), events.index("c-")
    assert c_out == c_in + 1, events  # nothing ran during the capture
    assert events.index("r0-") < c_in and events.index("r1-") < c_in  # it waited for the running replays
    assert events.index("r2+") > c_out, events  # the late replay did not overtake the waiting capture
