"""`muxdeploy run`: stream a JSONL file through the torch-free runtime; output line i answers input line i."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from muxdeploy.commands._options import backend_option, bundle_argument, precision_option
from muxdeploy.core.errors import InstanceError, UserInputError

FILE = click.Path(dir_okay=False)


class _BadLine:
    """A line that could not be turned into an instance (kept in place so output lines stay aligned)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def parse_line(line: str, image: bool) -> tuple[Any, Any]:
    """(instance or _BadLine, id to echo back or None) for one JSONL line.

    A line is {"text": ...}, {"input_ids": [...]}, {"image": [[...]]} (image bundles), or a bare list.
    """
    text = line.strip()
    if not text:
        return _BadLine("empty line; expected a JSON object or list"), None
    try:
        obj = json.loads(text)
    except ValueError as exc:
        return _BadLine(f"not valid JSON ({exc.msg} at column {exc.colno})"), None
    if isinstance(obj, list):
        return obj, None
    if not isinstance(obj, dict):
        return _BadLine(f"a JSON {type(obj).__name__}; expected an object with text/input_ids or a list"), None
    keys = ("image", "input_ids", "text") if image else ("input_ids", "text")
    for key in keys:
        if key in obj:
            return obj[key], obj.get("id")
    return _BadLine(f"has none of the keys {', '.join(keys)}"), obj.get("id")


def _chunks(lines: Iterator[str], size: int) -> Iterator[list[str]]:
    while chunk := list(itertools.islice(lines, size)):
        yield chunk


def _error_message(result: InstanceError) -> str:
    text = str(result)
    return "instance " + text.split(": ", 1)[1] if text.startswith("instance ") and ": " in text else text


@click.command("run")
@bundle_argument()
@click.option("--input", "-i", "input_path", required=True, type=FILE, help="JSONL file: one instance a line.")
@click.option("--output", "-o", "output_path", required=True, type=FILE, help="JSONL file to write (atomically).")
@backend_option(
    "auto: TensorRT when installed and a matching engine exists, else onnxruntime (CUDA if present, else CPU)."
)
@precision_option("Which artifact to run; auto picks the best one the backend has.")
@click.option("--batch-size", type=int, default=None, help="N-slot groups per backend run (default: the bundle's max).")
@click.option("--chunk", type=int, default=4096, show_default=True, help="Lines read and packed per step.")
@click.option("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: all cores).")
@click.option("--strict", is_flag=True, help="Stop at the first bad line (exit 2) and refuse instances longer than L.")
@click.option(
    "--allow-failures",
    is_flag=True,
    help="Exit 0 even when some lines failed (they are still answered with an error line).",
)
def command(
    bundle: str,
    input_path: str,
    output_path: str,
    backend: str,
    precision: str,
    batch_size: int | None,
    chunk: int,
    threads: int | None,
    strict: bool,
    allow_failures: bool,
) -> None:
    """Run every line of --input through BUNDLE (default ./mux_model) and write one JSON answer a line.

    \b
    Input lines:  {"text": "a fine film"}  (bundles with a tokenizer)
                  {"input_ids": [101, 2023, 102]}   or a bare list [101, 2023, 102]
                  {"image": [[...]]}  (image bundles)
    An "id" field is echoed back. Output line i answers input line i:
                  {"label": "pos", "label_id": 1, "logits": [...]}   (classification)
                  {"labels": [...], "label_ids": [...], "logits": [[...]]}   (token classification)
                  {"token_ids": [...]}   (retrieval)
                  {"error": "line 7: ..."}   for a bad line (unless --strict)

    Instances longer than the model's length L are truncated (unless --strict). The output is written
    to a temporary file and renamed, so an interrupted run leaves no partial file. The last line says how
    many lines failed; any failure makes the exit code 2 unless --allow-failures.

    \b
    Example:
      muxdeploy run mux_model --input in.jsonl --output out.jsonl --precision int8
    """
    from tqdm import tqdm

    from muxdeploy.core.fsutil import atomic_path
    from muxdeploy.runtimes.results import to_jsonable
    from muxdeploy.runtimes.runtime import MuxRuntime

    src, dst = Path(input_path), Path(output_path)
    if not src.is_file():
        raise UserInputError(f"input file not found: {src}; pass a JSONL file with --input")
    if not dst.parent.is_dir():
        raise UserInputError(f"output directory {dst.parent} does not exist; create it or choose another --output")
    if chunk < 1:
        raise UserInputError(f"--chunk must be >= 1, got {chunk}")
    with src.open("rb") as f:
        total = sum(1 for _ in f)
    answered = failed = 0
    first_failure = ""
    with MuxRuntime(
        bundle, backend=backend, precision=precision, max_batch=batch_size, strict=strict, intra_op_threads=threads
    ) as rt:
        click.echo(f"running {src} ({total} lines) on {rt.backend_name}, N={rt.num_instances}, batch {rt.max_batch}")
        image = rt.encoder.is_image
        with (
            atomic_path(dst) as tmp,
            tmp.open("w") as out,
            src.open(encoding="utf-8", errors="replace") as lines,
            tqdm(total=total, unit="inst", desc="run", dynamic_ncols=True) as bar,
        ):
            first_line = 1
            for block in _chunks(iter(lines), chunk):
                parsed = [parse_line(line, image) for line in block]
                for k, (inst, _) in enumerate(parsed):
                    if strict and isinstance(inst, _BadLine):
                        raise UserInputError(f"{src} line {first_line + k}: {inst.reason}")
                good = [k for k, (inst, _) in enumerate(parsed) if not isinstance(inst, _BadLine)]
                results: list[Any] = [None] * len(parsed)
                if good:
                    try:
                        predicted = rt.predict([parsed[k][0] for k in good], on_error="raise" if strict else "return")
                    except InstanceError as exc:
                        index = int(str(exc).split(":", 1)[0].split()[-1])
                        raise UserInputError(f"{src} line {first_line + good[index]}: {_error_message(exc)}") from None
                    for k, res in zip(good, predicted, strict=True):
                        results[k] = res
                for k, ((inst, ident), res) in enumerate(zip(parsed, results, strict=True)):
                    if isinstance(inst, _BadLine) or isinstance(res, InstanceError):
                        reason = inst.reason if isinstance(inst, _BadLine) else _error_message(res)
                        obj: dict[str, Any] = {"error": f"line {first_line + k}: {reason}"}
                        first_failure = first_failure or obj["error"]
                        failed += 1
                    else:
                        obj = to_jsonable(res)
                        answered += 1
                    if ident is not None:
                        obj = {"id": ident, **obj}
                    out.write(json.dumps(obj) + "\n")
                first_line += len(block)
                bar.update(len(block))
    click.echo(f"wrote {dst} ({answered} answered, {failed} errors)")
    if failed and not allow_failures:
        raise UserInputError(
            f"{failed} of {answered + failed} lines failed (first: {first_failure}); their output lines hold "
            '{"error": ...}; fix them, or pass --allow-failures to exit 0'
        )
    click.echo(f"{failed} of {answered + failed} lines failed" if failed else f"all {answered} lines answered")
