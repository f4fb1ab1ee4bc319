"""`muxdeploy build-engine`: typed ONNX (FP16 / INT8 Q/DQ) with measured accuracy, then a TensorRT engine."""

from __future__ import annotations

import click

from muxdeploy import api
from muxdeploy.commands._options import bundle_argument, tensorrt_module_option


@click.command("build-engine")
@bundle_argument()
@click.option("--fp16", "fp16", is_flag=True, help="Mixed FP16 graph (LayerNorm kept FP32), I/O types kept.")
@click.option("--int8", "int8", is_flag=True, help="INT8 Q/DQ graph calibrated on --calib-data.")
@click.option(
    "--fp8",
    "fp8",
    is_flag=True,
    help="FP8 (E4M3) Q/DQ graph calibrated on --calib-data, for TensorRT on Ada/Hopper/Blackwell (8.9+).",
)
@click.option(
    "--precision", default=None, metavar="fp32|fp16|int8|fp8", help="Same as --fp16/--int8/--fp8 (default fp32)."
)
@click.option(
    "--calib-data",
    type=click.Path(),
    default=None,
    help='JSONL ("text" or "input_ids" per line, optional "label") or .npz (input_ids [M,T], or images '
    "[M,C,H,W] for image bundles; optional labels).",
)
@click.option("--calib-size", type=int, default=512, show_default=True, help="Calibration groups of N instances.")
@click.option(
    "--calib-method",
    default="max",
    show_default=True,
    metavar="max|entropy|percentile",
    help="How activation ranges are chosen from the calibration data.",
)
@click.option(
    "--quantizer",
    default="onnxruntime",
    show_default=True,
    metavar="onnxruntime|modelopt",
    help="INT8 quantizer: onnxruntime quantize_static, or NVIDIA ModelOpt ONNX PTQ (pip install nvidia-modelopt).",
)
@click.option(
    "--quantize-mux-demux",
    is_flag=True,
    help="Also quantize the multiplexer/demultiplexer (default: left in float; see docs/PRECISION.md).",
)
@click.option("--min-batch", type=int, default=1, show_default=True, help="Smallest batch of groups (profile min).")
@click.option("--opt-batch", type=int, default=None, help="Batch the engine is tuned for (default: --max-batch).")
@click.option("--max-batch", type=int, default=None, help="Largest batch of groups (default: the bundle's max_batch).")
@click.option("--workspace", type=int, default=None, metavar="MiB", help="Builder workspace limit in MiB.")
@click.option(
    "--timing-cache",
    type=click.Path(dir_okay=False),
    default=None,
    help="Timing cache file: loaded when present, saved after the build.",
)
@click.option("--builder-opt-level", type=int, default=None, help="TensorRT builder optimization level 0..5.")
@click.option(
    "--version-compatible",
    is_flag=True,
    help="Engine runs on later TensorRT versions (same major, and 10 -> 11), with its lean runtime embedded.",
)
@click.option(
    "--exclude-lean-runtime",
    is_flag=True,
    help="Refused: such plans load only through Runtime.load_runtime, which muxdeploy does not do.",
)
@click.option(
    "--hardware-compat",
    default=None,
    metavar="none|ampere_plus|same_compute_capability",
    help="Hardware compatibility level of the engine.",
)
@click.option(
    "--dla-core",
    type=int,
    default=None,
    help="Jetson: build for this DLA core (FP16/INT8; one fixed batch, --opt-batch, default --max-batch).",
)
@click.option("--allow-gpu-fallback", is_flag=True, help="With --dla-core: run layers DLA cannot on the GPU.")
@click.option(
    "--target",
    default=None,
    metavar="jetpack6",
    help="Check and set up the build for a device: jetpack6 (Jetson Orin, TensorRT 10.3; opset <= 18, no FP8, "
    "workspace 1024 MiB unless --workspace).",
)
@click.option(
    "--backend",
    default="auto",
    show_default=True,
    metavar="auto|tensorrt|onnxruntime",
    help="auto: TensorRT when installed here, else onnxruntime (says which and why); tensorrt: build "
    "engine.<precision>.plan (fails before any work without TensorRT); onnxruntime: onnxruntime's fused graph.",
)
@tensorrt_module_option()
@click.option(
    "--bench-seconds",
    type=float,
    default=2.0,
    show_default=True,
    help="--backend onnxruntime: seconds per graph for the CPU throughput measurement (0: skip).",
)
@click.option("--threads", type=int, default=1, show_default=True, help="CPU threads for the throughput measurement.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the instance-to-group assignment.")
@click.option("--debug", is_flag=True, help="Show full tracebacks.")
def command(bundle: str, fp16: bool, int8: bool, fp8: bool, precision: str | None, **opts: object) -> None:
    """Make the bundle's typed ONNX and its engine (default bundle ./mux_model).

    \b
    --fp16: writes model.fp16.onnx (mixed FP16, int32 input_ids in, float32 logits out).
    --int8: writes model.int8.onnx (Q/DQ) calibrated on --calib-data groups packed exactly as the
            runtime packs them; needs --calib-data.
    --fp8:  writes model.fp8.onnx (FP8 E4M3 Q/DQ) from the same calibration groups (TensorRT, 8.9+).
    Each typed graph is compared with model.onnx on held-out groups (max abs diff, argmax agreement,
    task accuracy when the file has labels) and the figures go into muxdeploy.json. Then:
      --backend auto         TensorRT when it is installed here, else onnxruntime (the first line says which)
      --backend tensorrt     builds engine.<precision>.plan (strongly typed network)
      --backend onnxruntime  writes model[.<precision>].ort.onnx (onnxruntime's fused graph)
    \b
    Examples:
      muxdeploy build-engine --fp16
      muxdeploy build-engine --int8 --calib-data dev.jsonl --backend onnxruntime
      muxdeploy build-engine --fp8 --calib-data dev.jsonl --backend tensorrt      # H100/H200
      muxdeploy build-engine --fp16 --target jetpack6 --dla-core 0 --allow-gpu-fallback   # on the Jetson
    """
    from muxdeploy.build import one_precision

    chosen = [p for p, on in (("fp16", fp16), ("int8", int8), ("fp8", fp8)) if on]
    if precision is not None:
        chosen.append(precision)
    api.build_engine(bundle, one_precision(chosen), progress=True, echo=click.echo, **opts)  # type: ignore[arg-type]
