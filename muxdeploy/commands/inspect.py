"""`muxdeploy inspect`: the manifest as a readable table (nested entries as indented rows); `--check-engine`
runs the bundle's TensorRT engine once against its ONNX (runtimes/backends/engine_check.py)."""

from __future__ import annotations

import json
from typing import Any

import click

from muxdeploy.commands._options import bundle_argument
from muxdeploy.core.errors import MuxError

Row = tuple[str, str]


def _label(key: str) -> str:
    return str(key).replace("_", " ")


def _value(value: Any) -> str:
    """A scalar or a list as text: floats to 4 significant digits, booleans as yes/no, lists comma-joined."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_value(v) for v in value) if value else "-"
    if isinstance(value, dict):
        return ", ".join(f"{_label(k)} {_value(v)}" for k, v in value.items())
    return "-" if value is None else str(value)


def _nested_rows(key: str, value: Any, indent: str) -> list[Row]:
    """Rows for one manifest entry: a dict's scalars on its own row, each nested dict on indented rows below."""
    if not isinstance(value, dict):
        return [(indent + _label(key), _value(value))]
    flat = {k: v for k, v in value.items() if not isinstance(v, dict)}
    rows = [(indent + _label(key), _value(flat) if flat else "")]
    for k, v in value.items():
        if isinstance(v, dict):
            rows += _nested_rows(k, v, indent + "  ")
    return rows


def _artifact_rows(name: str, facts: dict[str, Any]) -> list[Row]:
    """The artifact's headline (format, precision, sha256), then one row per other key, nested ones indented."""
    rows = [
        (f"artifact {name}", f"{facts.get('format')} {facts.get('precision')}, sha256 {facts.get('sha256', '')[:12]}")
    ]
    for key, value in facts.items():
        if key not in ("format", "precision", "sha256"):
            rows += _nested_rows(key, value, "  ")
    return rows


def _rows(data: dict) -> list[tuple[str, str]]:
    model = data.get("model", {})
    cfg = model.get("config", {})
    rows = [
        ("schema", str(data.get("schema"))),
        ("model", f"{model.get('kind')} / {model.get('task')}"),
        ("source", str(model.get("source", ""))),
        ("N (instances per group)", str(data.get("num_instances"))),
        ("L (tokens per instance)", str(data.get("seq_len"))),
        ("max batch (groups)", str(data.get("max_batch"))),
    ]
    if cfg:
        rows += [
            (
                "backbone",
                f"{cfg.get('num_hidden_layers')} layers, width {cfg.get('hidden_size')}, "
                f"{cfg.get('num_attention_heads')} heads",
            ),
            ("mux / demux", f"{cfg.get('muxing_variant')} / {cfg.get('demuxing_variant')}"),
            ("vocab", str(cfg.get("vocab_size"))),
        ]
    for io in ("inputs", "outputs"):
        for t in data.get(io, []):
            rows.append((io[:-1], f"{t['name']} {t['dtype']} {t['shape']}"))
    rows.append(("pad token id", str(data.get("pad_token_id"))))
    labels = data.get("labels")
    rows.append(("labels", ", ".join(map(str, labels)) if labels else "-"))
    rows.append(("tokenizer", str(data.get("tokenizer") or "-")))
    for name, facts in data.get("artifacts", {}).items():
        rows += _artifact_rows(name, facts)
    for stage, facts in data.get("parity", {}).items():
        rows += _nested_rows(f"parity {stage}", facts, "")
    if data.get("calibration"):
        rows += _nested_rows("calibration", data["calibration"], "")
    return rows


@click.command("inspect")
@bundle_argument()
@click.option("--json", "as_json", is_flag=True, help="Print the raw manifest JSON.")
@click.option(
    "--check-engine",
    is_flag=True,
    help="Deserialize the bundle's TensorRT engine, run a full and a partial batch, compare with its ONNX on "
    "onnxruntime: one line per finding (exit 1 on a failed check, 2 when it cannot run here).",
)
@click.option(
    "--precision",
    default="auto",
    show_default=True,
    metavar="auto|fp32|fp16|int8|fp8",
    help="--check-engine: which engine (auto: the first recorded).",
)
def command(bundle: str, as_json: bool, check_engine: bool, precision: str) -> None:
    """Show a bundle's manifest (default ./mux_model): model, N, L, I/O, artifacts, parity.

    \b
    Examples:
      muxdeploy inspect
      muxdeploy inspect mux_model --check-engine     # on the device: does the engine run and agree?
    """
    from muxdeploy.core.manifest import Manifest

    manifest = Manifest.load(bundle)
    if check_engine:
        _check_engine(manifest, precision)
        return
    if as_json:
        click.echo(json.dumps(manifest.data, indent=2))
        return
    rows = _rows(manifest.data)
    from muxdeploy.runtimes.backends import explain_choice

    chosen, why = explain_choice(manifest)
    rows.append(("runs here", f"{chosen.describe() if chosen else 'nothing'}: {why}"))
    width = max(len(k) for k, _ in rows)
    click.echo(f"bundle {bundle}")
    for key, value in rows:
        click.echo(f"  {key:<{width}}  {value}")


def _check_engine(manifest: Any, precision: str) -> None:
    """Print the engine check's findings; exit 1 when one failed (CannotCheck exits 2 through the CLI)."""
    from muxdeploy.runtimes.backends.engine_check import check_engine

    findings = check_engine(manifest, precision)
    for finding in findings:
        click.echo(finding.line())
    failed = [f for f in findings if f.status == "FAIL"]
    if failed:
        raise MuxError(f"engine check failed: {len(failed)} finding(s) above")
