"""`muxdeploy serve --isolation`: a real server on loopback; concurrent requests land in one batch (a long
--max-wait-ms), and what one user gets back does or does not depend on the other user's request."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from serving_helpers import Server, call_json

from muxdeploy.runtimes.runtime import MuxRuntime

pytest.importorskip("starlette", reason="muxdeploy serve needs the [serve] extra: pip install starlette uvicorn")

MINE = [[17, 230, 41, 9], [300, 12, 77]]
# 3 others at N=4: in either arrival order, some group holds instances of both requests when not isolated
OTHERS = [[500, 501, 502, 503, 504], [40, 41], [900, 8, 8, 8, 8, 8]]


def logits_when_sent_together(srv: Server) -> np.ndarray:
    """Send MINE and OTHERS as two requests at the same moment; the logits MINE got back."""
    got: dict[str, np.ndarray] = {}
    start = threading.Barrier(2)

    def send(name: str, rows: list[list[int]]) -> None:
        start.wait()
        status, body = call_json(srv, "POST", "/v1/predict", {"instances": [{"input_ids": r} for r in rows]})
        assert status == 200, body
        got[name] = np.array([p["logits"] for p in body["outputs"]])

    threads = [threading.Thread(target=send, args=a) for a in (("mine", MINE), ("others", OTHERS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return got["mine"]


@pytest.mark.parametrize("isolation", ["none", "request", "fillers"])
def test_serve_isolation(groupmate_bundle: Path, isolation: str) -> None:
    with MuxRuntime(groupmate_bundle, backend="onnxruntime-cpu") as rt:
        own_request = rt.predict_array(MINE)  # MINE packed together, the rest of the group fillers
        one_by_one = np.stack([rt.predict_array([x])[0] for x in MINE])  # each alone with fillers
    srv = Server(groupmate_bundle, "--isolation", isolation, "--max-wait-ms", "500", "--backend", "onnxruntime-cpu")
    try:
        got = logits_when_sent_together(srv)
    finally:
        code, out = srv.stop()
    assert code == 0, out
    if isolation == "none":  # the other user's instances shared a group with mine and moved my answers
        assert float(np.abs(got - own_request).max()) > 1e-4 and float(np.abs(got - one_by_one).max()) > 1e-4
    elif isolation == "request":
        np.testing.assert_allclose(got, own_request, atol=1e-5)
    else:
        np.testing.assert_allclose(got, one_by_one, atol=1e-5)
