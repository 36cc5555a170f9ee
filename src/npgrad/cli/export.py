"""``npgrad export``: a trained network as an ONNX graph or a safetensors file."""

from __future__ import annotations

import argparse

from .common import formatter


def run(args: argparse.Namespace) -> int:
    from ..app.export import export_run

    print(export_run(args.run, args.file, args.format))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="write a trained network as ONNX or safetensors",
        description="Write the network of a run as an ONNX graph (.onnx: opset 17, float32,\n"
        "input 'input', outputs 'logits' and 'probabilities'; needs the onnx package:\n"
        "pip install 'npgrad[export]') or as a safetensors file (.safetensors: PyTorch's\n"
        "parameter names, the architecture in its metadata; no extra needed).\n"
        "The input is the picture scaled to 0..1 (pixels / 255 for MNIST and Fashion-MNIST,\n"
        "pixels / 16 for the 8x8 digits: the dataset's pixel maximum), light digit on dark,\n"
        "normalised as 'npgrad predict' does; the line printed and the files' metadata say so.",
        epilog="""\
examples:
  npgrad export runs/digits-default digits.onnx
  npgrad export runs/digits-default digits.safetensors
  npgrad export runs/digits-default/checkpoint.npz model.bin --format safetensors""",
        formatter_class=formatter,
    )
    p.add_argument("run", help="run directory of 'npgrad train' (or its checkpoint.npz)")
    p.add_argument("file", help="file to write: .onnx or .safetensors")
    p.add_argument(
        "--format",
        choices=("onnx", "safetensors"),
        help="the format, when the file's name does not end in .onnx or .safetensors",
    )
    p.set_defaults(func=run)
