"""`muxdeploy bench`: offline and server scenarios on a real bundle, the N sweep, and one-line errors."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from muxdeploy.cli import main
from muxdeploy.evaluation.benchmark import percentiles

HAS_MPL = importlib.util.find_spec("matplotlib") is not None


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["bench", *args])
    return result.exit_code, result.output


def first_json(text: str) -> dict:
    """The JSON object in the output (progress lines and 'wrote ...' on stderr may surround it)."""
    return json.JSONDecoder().raw_decode(text[text.index("{") :])[0]


def test_percentiles_nearest_rank() -> None:
    p = percentiles([i / 1000 for i in range(1, 101)])  # 1..100 ms
    assert (p["p50"], p["p90"], p["p99"]) == pytest.approx((50, 90, 99))
    assert p["mean"] == pytest.approx(50.5)


def test_bench_offline_and_server(tiny_bundle: Path) -> None:
    code, out = invoke(str(tiny_bundle), "--seconds", "0.3", "--concurrency", "8", "--json")
    assert code == 0, out
    report = first_json(out)
    assert report["num_instances"] == 4 and report["backend"].startswith("onnxruntime-cpu")
    off, srv = report["offline"], report["server"]
    assert off["instances_per_step"] == 32 and off["instances"] % 32 == 0 and off["instances"] >= 32
    assert srv["concurrency"] == 8 and srv["instances"] > 0
    for r in (off, srv):
        assert 0 < r["latency_ms_p50"] <= r["latency_ms_p90"] <= r["latency_ms_p99"]
        assert r["instances_per_s"] == pytest.approx(r["instances"] / r["seconds"])
    assert 0 < srv["batch_fill_ratio"] <= 1

    code, text = invoke(str(tiny_bundle), "--seconds", "0.2", "--scenario", "offline", "--instances-per-step", "10")
    assert code == 0, text
    assert "offline (10 instances per predict())" in text and "p99" in text and "server" not in text


def test_bench_sweep_n(tmp_path: Path) -> None:
    args = ["--sweep-n", "1,2", "--preset", "tiny", "--seq-len", "8", "--seconds", "0.2", "--instances-per-step", "16"]
    if HAS_MPL:
        args += ["--plot", str(tmp_path / "sweep.png")]
    code, out = invoke(*args, "--json")
    assert code == 0, out
    report = first_json(out)
    rows = report["sweep"]
    assert [r["n"] for r in rows] == [1, 2] and [r["groups_per_step"] for r in rows] == [16, 8]
    assert rows[0]["speedup_vs_n1"] == 1.0
    assert rows[1]["speedup_vs_n1"] == pytest.approx(rows[1]["instances_per_s"] / rows[0]["instances_per_s"])
    assert all(r["instances"] % 16 == 0 and r["instances"] > 0 for r in rows)
    if HAS_MPL:
        assert (tmp_path / "sweep.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.skipif(HAS_MPL, reason="checks the message shown when matplotlib is missing")
def test_bench_plot_without_matplotlib_fails_before_exporting(tmp_path: Path) -> None:
    code, out = invoke("--sweep-n", "1,2", "--plot", str(tmp_path / "p.png"))
    assert code == 2 and "--plot needs matplotlib" in out and "pip install matplotlib" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sweep-n", "1,x"], "--sweep-n takes comma-separated integers"),
        (["--sweep-n", "0,2"], "--sweep-n needs positive integers"),
        (["--seconds", "0"], "--seconds must be > 0"),
        (["--plot", "p.png"], "--plot draws the --sweep-n table"),
        (["--concurrency", "0", "--scenario", "server", "--seconds", "0.1"], "--concurrency must be >= 1"),
        (["--instances-per-step", "0", "--scenario", "offline"], "--instances-per-step must be >= 1"),
    ],
)
def test_bench_bad_input_is_one_line_exit_2(tiny_bundle: Path, args: list[str], message: str) -> None:
    code, out = invoke(str(tiny_bundle), *args)
    assert code == 2, out
    assert out.startswith("error: ") and message in out and out.count("\n") == 1, out


def test_bench_missing_bundle_exit_2(tmp_path: Path) -> None:
    code, out = invoke(str(tmp_path / "nope"), "--seconds", "0.1")
    assert code == 2 and "bundle directory not found" in out
