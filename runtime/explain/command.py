"""``cnnc explain``: look inside a trained network, one method at a time, as a PNG.

    cnnc explain lenet5 --method gradcam -o gradcam.png          # the shipped trained weights
    cnnc explain net.cnn --weights w.npz --method saliency --image cat.png --class 3 -o s.png
    cnnc explain lenet5 --method style --image content.png style.png -o styled.png
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from ..cli_common import EXTRA, CliError, force_arg, load_graph
from ..images import image_files, load_images
from ..model import compile as compile_model
from ..weights import init_params, load_weights
from . import methods
from .descent import OPTIMIZERS
from .explanation import METHODS, OVER_A_SET, PAIRS, default_images, explain, png_path


def cmd_explain(args: argparse.Namespace) -> int:
    png_path(args.output)  # before the work, not after it
    for option, value in (("--count", args.count), ("--top", args.top), ("--steps", args.steps)):
        if value is not None and value < 1:
            raise CliError(f"{option} must be at least 1, got {value}")
    graph = load_graph(args)
    weights = args.weights or methods.shipped_weights(args.model, graph)
    params = load_weights(graph, weights) if weights else init_params(graph)
    if weights is None:
        print(f"note: no trained weights for {graph.name!r} (--weights W.npz); explaining "
              "its seeded initialization", file=sys.stderr)
    model = compile_model(graph, weights=params)
    if args.image:
        images = load_images(image_files(args.image), methods.input_shape(model))
        labels = None
    elif args.method != "filters":
        images, labels = default_images(model, args.method, args.count)
    else:
        images, labels = np.zeros((1,) + methods.input_shape(model), np.float32), None
    if args.method not in OVER_A_SET + PAIRS:
        images = images[:args.count]
        labels = labels[:args.count] if labels is not None else None
    result = explain(model, args.method, images, labels, layer=args.layer,
                     channel=args.channel, class_index=args.class_index, top=args.top,
                     patch=args.patch, stride=args.stride, steps=args.steps,
                     optimizer=args.optimizer, progress=not args.quiet)
    path = result.save(args.output, force=args.force)
    width, height = result.picture.size
    print(f"wrote {path} ({width} x {height})")
    return 0


def _configure(p: argparse.ArgumentParser, model_arg) -> None:
    model_arg(p)
    p.add_argument("--weights", help="trained weights (.npz); default: the zoo's shipped ones "
                                     "(lenet5)")
    p.add_argument("--method", required=True, choices=list(METHODS))
    p.add_argument("--image", nargs="+", metavar="IMG",
                   help="images (files or folders); style: the content, then the style; "
                        "default: the held-out digits")
    p.add_argument("--count", type=int, default=1,
                   help="how many of the images to explain, one row each (default 1; "
                        "top_patches and tsne use them all)")
    p.add_argument("--layer", help="the layer (its name in `cnnc summary --all`)")
    p.add_argument("--channel", type=int, help="a channel of --layer (top_patches)")
    p.add_argument("--class", dest="class_index", type=int,
                   help="the class to explain (default: the predicted one)")
    p.add_argument("--top", type=int, default=9, help="top_patches: how many images (9)")
    p.add_argument("--patch", type=int, default=8, help="occlusion: the square's side (8)")
    p.add_argument("--stride", type=int, default=2, help="occlusion: its step (2)")
    p.add_argument("--steps", type=int,
                   help="class_model, deepdream, style: optimizer steps (200, 20, 50)")
    p.add_argument("--optimizer", choices=list(OPTIMIZERS),
                   help="class_model, deepdream, style: lbfgs or adam (style: lbfgs; the "
                        "others adam)")
    p.add_argument("-o", "--output", required=True, metavar="OUT.png")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    force_arg(p)


EXTRA["explain"] = (cmd_explain, "look inside a trained network: filters, saliency, Grad-CAM, "
                                 "occlusion, top patches, t-SNE ... as a PNG", _configure)
