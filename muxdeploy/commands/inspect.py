"""`muxdeploy inspect`: the manifest as a readable table."""

from __future__ import annotations

import json

import click

from muxdeploy.commands._options import bundle_argument


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
        extra = {k: v for k, v in facts.items() if k not in ("format", "precision", "sha256")}
        detail = f"{facts.get('format')} {facts.get('precision')} sha256 {facts.get('sha256', '')[:12]}"
        if extra:
            detail += " " + " ".join(f"{k}={v}" for k, v in extra.items())
        rows.append((f"artifact {name}", detail))
    for stage, facts in data.get("parity", {}).items():
        rows.append(
            (
                f"parity {stage}",
                " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in facts.items()),
            )
        )
    return rows


@click.command("inspect")
@bundle_argument()
@click.option("--json", "as_json", is_flag=True, help="Print the raw manifest JSON.")
def command(bundle: str, as_json: bool) -> None:
    """Show a bundle's manifest (default ./mux_model): model, N, L, I/O, artifacts, parity."""
    from muxdeploy.core.manifest import Manifest

    manifest = Manifest.load(bundle)
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
