"""One SimCLR training step in PyTorch + lightly, timed: the PyTorch worker of issue 13's benchmark.

What it measures: images/s of a SimCLR training step on the network of
`keras_contrastive.encoders.ResNet18(input_shape=(32, 32, 3), stem="cifar",
width_multiplier=W)` plus the head of `kc.SimCLR(encoder, temperature=0.5,
head_version=1)`, written in PyTorch, with lightly's `NTXentLoss(temperature=0.5)`
and `torch.optim.SGD(lr=0.1, momentum=0.9)`, on pre-made random float views
held in memory, so that only the step is timed. One step = both views through
the model in one call (BatchNorm statistics over all 2N views, as
`kc.SimCLR` computes them by default; `--per_view_calls` makes two calls, as
lightly's examples do), the loss, backward and the optimizer step; it counts `--batch` images (not twice
that). Each step after the warm-up is timed on its own with time.perf_counter,
and images/s = batch / step seconds (median, min and max over the steps).
It runs under the venv of benchmarks/lightly_reference.py and never imports
TensorFlow or Keras, so that each framework gets a process of its own.

Commands (from the repo root):

    python benchmarks/lightly_reference.py --setup      # once: builds /tmp/lightly_venv
    /tmp/lightly_venv/bin/python benchmarks/torch_step.py                       # width 0.25, fp32
    /tmp/lightly_venv/bin/python benchmarks/torch_step.py --precision bfloat16 --json
    /tmp/lightly_venv/bin/python benchmarks/torch_step.py --width 1.0 --steps 5 --warmup 1

It prints one line (and with --json a last line holding one JSON object with
the keys framework, torch_version, lightly_version, width, precision,
channels_last, batch, size, threads, steps, images_per_s_median,
images_per_s_min, images_per_s_max, params_encoder, params_head,
flops_per_image):

    pytorch+lightly (torch 2.14.1+cu130, lightly 1.6.0): width 0.25, float32, channels_last, batch 256 x 2 views
    of 32x32x3, 2 threads: median 414.0 images/s (min 380.2, max 430.5) over 20 steps after 3 warm-up,
    0.618 s/step, 174 GFLOP/s; params encoder 700,176 + head 33,024; 0.421 GFLOP/image; last loss 6.2281

(one line; the figures here are only an illustration of the format.)

Run by a python without torch or lightly (the system one here), it prints a
one-line message saying to run `python benchmarks/lightly_reference.py
--setup` (and with --json the line {"skipped": "...", "framework": ...}) and
exits 0.

The network, as keras_contrastive builds it (encoders.py, heads.py):
- channels `max(1, round(c * W))` for c = 64, 128, 256, 512; stem: 3x3
  stride-1 conv without bias, BN, ReLU, no max-pool; four stages of two basic
  blocks (3x3 conv, BN, ReLU, 3x3 conv, BN, add, ReLU; the first block of
  stages 2-4 has stride 2), with a 1x1 conv + BN shortcut wherever the stride
  or the channels change; global average pooling. BN: Keras momentum 0.9 =
  torch momentum 0.1, eps 1e-5. Initialised like Keras (He-normal convs,
  residual branches' last BN gamma 0, Glorot-uniform Dense, zero biases),
  which does not change the step's cost.
- SimCLR v1 head: Linear(F, F) with bias -> ReLU -> Linear(F, 128) with bias,
  F = the feature size (128 at width 0.25, 512 at width 1.0).

Parameter counts (trainable; checked against the Keras model on 2026-12-03,
`sum(v.size for v in layer.trainable_weights)` of the encoder and of
`kc.SimCLR(encoder, temperature=0.5, head_version=1).projection_head`):
    width 0.25: encoder 700,176, head 33,024 (torch and Keras alike)
    width 1.0:  encoder 11,168,832, head 328,320 (torch and Keras alike)
Keras' `encoder.count_params()` also counts BN's moving mean and variance
(702,576 and 11,178,432), which torch keeps as buffers, not parameters.

flops_per_image is counted from the model's convolutions and linear layers
(forward hooks on one image): 2 x MACs for the forward, x 3 for forward +
backward, x 2 views; BN, ReLU, additions, pooling and the loss are ignored
(and so is that the first conv needs no input gradient). At 32x32 it gives
0.421 GFLOP (420,937,728) at width 0.25 and 6.669 GFLOP (6,668,943,360) at
width 1.0, the 0.42 and 6.7 of shared/BENCHMARKS.md.

Flags: --width (0.25), --precision float32|bfloat16 (bfloat16: torch.autocast
on the CPU around forward and loss, float32 weights), --channels_last /
--no_channels_last (on by default: faster on this CPU), --batch (256),
--size (32), --steps (20 timed), --warmup (3), --threads (torch threads and
OMP/BLAS pools; default: the cores this process may use), --seed, --venv
(only named in the message above), --json.
"""

import argparse
import json
import os
import statistics
import sys
import time

DEFAULT_VENV = "/tmp/lightly_venv"  # lightly_reference.py's --venv default
FRAMEWORK = "pytorch+lightly"
PROJECTION_DIM = 128
TEMPERATURE = 0.5
LEARNING_RATE = 0.1
MOMENTUM = 0.9


def available_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--width", type=float, default=0.25, help="ResNet-18 width multiplier")
    parser.add_argument("--precision", default="float32", choices=["float32", "bfloat16"])
    layout = parser.add_mutually_exclusive_group()
    layout.add_argument(
        "--channels_last",
        dest="channels_last",
        action="store_true",
        default=True,
        help="model and inputs in torch.channels_last (the default: faster on this CPU)",
    )
    layout.add_argument("--no_channels_last", dest="channels_last", action="store_false", help="PyTorch's NCHW")
    parser.add_argument("--batch", type=int, default=256, help="images per step (each gives two views)")
    parser.add_argument("--size", type=int, default=32, help="view height and width")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=available_cores(), help="torch.set_num_threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--per_view_calls",
        action="store_true",
        help="one model call per view (lightly's examples) instead of both views in one call (kc.SimCLR's default)",
    )
    parser.add_argument("--venv", default=DEFAULT_VENV, help="where lightly_reference.py --setup puts torch")
    parser.add_argument("--json", action="store_true", help="print one JSON line last")
    args = parser.parse_args()
    if not args.width > 0:
        parser.error(f"--width must be > 0; got {args.width}")
    for name in ("batch", "size", "steps", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1; got {getattr(args, name)}")
    if args.warmup < 0:
        parser.error(f"--warmup must be >= 0; got {args.warmup}")
    return args


def limit_threads(threads):
    """Caps the OpenMP/BLAS pools before torch loads them."""
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(threads)


# --------------------------------------------------------------------------
# The model: keras_contrastive's ResNet-18 (CIFAR stem) and SimCLR v1 head, in torch.


def channels(c, width):
    """keras_contrastive.encoders' width rule."""
    return max(1, int(round(c * width)))


def build_model(width):
    """`(encoder, head)`: ResNet-18 with the CIFAR stem, and the SimCLR v1 head."""
    from torch import nn

    def bn(c):
        return nn.BatchNorm2d(c, eps=1e-5, momentum=0.1)  # Keras momentum 0.9

    class BasicBlock(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, padding=1, bias=False)
            self.bn1 = bn(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, padding=1, bias=False)
            self.bn2 = bn(cout)
            self.relu = nn.ReLU(inplace=True)
            self.shortcut = nn.Identity()
            if stride != 1 or cin != cout:
                self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), bn(cout))

        def forward(self, x):
            y = self.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            return self.relu(self.shortcut(x) + y)

    stem = channels(64, width)
    modules = [nn.Conv2d(3, stem, 3, 1, padding=1, bias=False), bn(stem), nn.ReLU(inplace=True)]
    cin = stem
    for stage in range(4):
        cout = channels(64 * 2**stage, width)
        for i in range(2):
            modules.append(BasicBlock(cin, cout, 2 if (i == 0 and stage > 0) else 1))
            cin = cout
    modules += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    encoder = nn.Sequential(*modules)
    feature_dim = cin
    head = nn.Sequential(
        nn.Linear(feature_dim, feature_dim, bias=True),
        nn.ReLU(inplace=True),
        nn.Linear(feature_dim, PROJECTION_DIM, bias=True),
    )

    # Keras' initialisers (they do not change the cost of a step).
    for module in list(encoder.modules()) + list(head.modules()):
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)
    for module in encoder.modules():
        if isinstance(module, BasicBlock):
            nn.init.zeros_(module.bn2.weight)  # zero_init_residual=True, keras_contrastive's default
    return encoder, head


def count_parameters(module):
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def flops_per_image(model, size, memory_format):
    """Forward + backward FLOPs of one image's two views, from its convs and linear layers."""
    import torch
    from torch import nn

    macs = []

    def conv_hook(module, inputs, output):
        kh, kw = module.kernel_size
        macs.append(output[0].numel() * (module.in_channels // module.groups) * kh * kw)

    def linear_hook(module, inputs, output):
        macs.append(output[0].numel() * module.in_features)

    handles = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()  # leaves BN's running statistics alone
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size).contiguous(memory_format=memory_format))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    forward = 2 * sum(macs)
    return 3 * forward * 2  # forward + backward (~2x the forward), two views


# --------------------------------------------------------------------------
# The benchmark.


def skip(reason, args):
    message = (
        f"torch_step: SKIPPED: {reason} in {sys.executable}; run `python benchmarks/lightly_reference.py --setup`, "
        f"then this script with {os.path.join(args.venv, 'bin', 'python')}."
    )
    print(message, flush=True)
    if args.json:
        print(json.dumps({"skipped": message, "framework": FRAMEWORK}), flush=True)
    sys.exit(0)


def run(args):
    try:
        import torch  # first, so that a python without torch says so
    except ImportError as error:
        skip(f"no torch ({error})", args)
    try:
        import lightly
        from lightly.loss import NTXentLoss
    except ImportError as error:
        skip(f"no lightly ({error})", args)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format

    encoder, head = build_model(args.width)
    model = torch.nn.Sequential(encoder, head).to(memory_format=memory_format)
    model.train()
    params_encoder, params_head = count_parameters(encoder), count_parameters(head)
    flops = flops_per_image(model, args.size, memory_format)
    criterion = NTXentLoss(temperature=TEMPERATURE)
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)

    generator = torch.Generator().manual_seed(args.seed)
    views = [
        torch.rand(args.batch, 3, args.size, args.size, generator=generator).contiguous(memory_format=memory_format)
        for _ in range(2)
    ]
    both_views = torch.cat(views).contiguous(memory_format=memory_format)
    bfloat16 = args.precision == "bfloat16"

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bfloat16):
            if args.per_view_calls:
                loss = criterion(model(views[0]), model(views[1]))
            else:
                z = model(both_views)
                loss = criterion(z[: args.batch], z[args.batch :])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    for _ in range(args.warmup):
        step()
    seconds = []
    for _ in range(args.steps):
        started = time.perf_counter()
        loss = step()
        seconds.append(time.perf_counter() - started)
    loss = float(loss.detach())
    if loss != loss:
        raise RuntimeError("the loss is NaN")

    rates = [args.batch / s for s in seconds]
    median = statistics.median(rates)
    result = {
        "framework": FRAMEWORK,
        "torch_version": torch.__version__,
        "lightly_version": lightly.__version__,
        "width": args.width,
        "precision": args.precision,
        "channels_last": args.channels_last,
        "per_view_calls": args.per_view_calls,
        "batch": args.batch,
        "size": args.size,
        "threads": args.threads,
        "steps": args.steps,
        "images_per_s_median": round(median, 2),
        "images_per_s_min": round(min(rates), 2),
        "images_per_s_max": round(max(rates), 2),
        "params_encoder": params_encoder,
        "params_head": params_head,
        "flops_per_image": flops,
    }
    layout = "channels_last" if args.channels_last else "NCHW"
    print(
        f"{FRAMEWORK} (torch {torch.__version__}, lightly {lightly.__version__}): width {args.width:g}, "
        f"{args.precision}, {layout}, batch {args.batch} x 2 views of {args.size}x{args.size}x3, "
        f"{args.threads} threads: median {median:.1f} images/s (min {min(rates):.1f}, max {max(rates):.1f}) "
        f"over {args.steps} steps after {args.warmup} warm-up, {args.batch / median:.3f} s/step, "
        f"{flops * median / 1e9:.0f} GFLOP/s; params encoder {params_encoder:,} + head {params_head:,}; "
        f"{flops / 1e9:.3f} GFLOP/image; last loss {loss:.4f}",
        flush=True,
    )
    if args.json:
        print(json.dumps(result), flush=True)


def main():
    args = parse_args()
    limit_threads(args.threads)
    run(args)


if __name__ == "__main__":
    main()
