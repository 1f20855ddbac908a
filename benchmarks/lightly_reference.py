"""The reference "lightly SimCLR" row of shared/BENCHMARKS.md, measured here, in PyTorch.

What it measures: representation quality on the real Fashion-MNIST after
SimCLR pre-training with PyTorch + lightly (lightly's `NTXentLoss`,
`SimCLRProjectionHead` and `SimCLRTransform`), with the protocol and scoring
of `benchmarks/fashion_mnist_quality.py` (same kNN; see below for the probe),
so that the two can be run one after the other in one sitting and compared.
It prints one line per model (training: wall time of the training loop,
DataLoader start included, evaluation excluded):

    lightly SimCLR (4 epochs)   kNN 80.69%   linear probe 86.69%   training 925 s

plus, unless --skip_baselines, a raw-pixels row and a random-init-encoder row
(the encoder that training starts from, same seed). It also prints the median
seconds per training step and the images/s.

Commands (from the repo root):

    python benchmarks/lightly_reference.py --setup       # once: builds the venv
    python benchmarks/lightly_reference.py               # the full benchmark
    python benchmarks/lightly_reference.py --max_steps 5 --skip_baselines   # smoke run

`--setup` creates a virtualenv at /tmp/lightly_venv (or --venv) with
`python -m venv` and pip-installs torch==2.14.1 + torchvision==0.29.1 (x86_64;
torch==2.9.1 + torchvision==0.24.1 on aarch64), then lightly and scikit-learn
with torch and torchvision pinned by a constraints file, so that nothing can
pull another torch build. Why not torch==2.13.0, the CPU wheel on this disk:
lightly requires torchvision (its SimCLRTransform is made of torchvision
transforms), and PyPI's torchvision does not import beside that CPU wheel
('operator torchvision::nms does not exist'); the 2.14.1/0.29.1 pair is the
one pip takes from this machine's disk (env/machines/python.md), a CUDA build
that runs on the CPU here, and the "PyTorch 2.14" of BENCHMARKS.md. Installed
on 2026-12-01 in 77 s (5.7 GB): torch 2.14.1+cu130, torchvision 0.29.1+cu130,
lightly 1.6.0 (which pulls pytorch_lightning 2.6.6 and hydra-core 1.3.8),
scikit-learn 1.9.1, numpy 2.4.6, pillow 13.0.0. `--setup` is idempotent (4 s
when the venv already imports everything); when the install fails it prints
why and exits 0 ("SKIPPED"). Without --setup the script re-executes itself
under the venv's python; with no venv it says so and exits 0. It never imports
TensorFlow or Keras: the idx(.gz) files of Debian's dataset-fashion-mnist are
read with numpy, from $KC_FASHION_MNIST_DIR or /usr/share/datasets/fashion-mnist.

Expected runtime on this 2-core machine, measured on 2026-12-01 while it was
otherwise idle: one training step (batch 256, two views, 2 torch threads)
takes 0.55 s in channels_last and 0.68 s in NCHW on pre-made tensors, and
0.83 s in NCHW fed by the DataLoader (0 or 1 worker alike; one worker makes a
batch of views in ~0.15 s of one core), so the 4-epoch run (4 x 234 = 936
steps) should need roughly 11-13 minutes of training (the BENCHMARKS.md
reference: 925 s), plus a few minutes of evaluation (features of 70k images
~50 s, kNN a few s, then the scikit-learn probe: 5 s on 10k features, so
expect ~0.5-1 minute on 60k); the baselines add about as much again, and the
smoke run should take 2-3 minutes. Those last figures are estimates: the full
run and the smoke run were only timed while another session's Keras training
run kept the CPU busy, and then everything is far slower (OpenMP threads
fighting for the 2 cores): a step took ~6 s, the features 95-101 s and the
scikit-learn probe 353-458 s, so the smoke run took 8-10 minutes. Run it with
the machine to itself. If the CPU must be shared, --threads 1 suffers far
less (seen: ~1.3 s per 256 images instead of ~6 s), but its times are then not
comparable.

Protocol (BENCHMARKS.md, "Fashion-MNIST representation quality"):
- data: the 60k/10k idx files, zero-padded 28->32 (2 pixels each side, as
  keras_contrastive.data does) and repeated to 3 channels.
- encoder: ResNet-18 with the CIFAR stem (3x3 conv stride 1, no max-pool) at
  width 0.25 (channels 16, 32, 64, 128), global average pool -> 128-d feature.
  Our own module (torchvision's resnet18 has no width multiplier for basic
  blocks), initialised as torchvision's ResNet: Kaiming-normal fan_out convs,
  BN gamma 1 / beta 0, no zero-init of the last BN in each block
  (--zero_init_residual turns that on, like keras_contrastive's default).
- head: lightly's SimCLRProjectionHead(128, 128, 128), i.e. Linear -> BN ->
  ReLU -> Linear -> BN (lightly's defaults: 2 layers, batch_norm=True). Chosen
  because lightly's own SimCLR example pairs ResNet-18 (512-d) with
  SimCLRProjectionHead(512, 512, 128): hidden = feature size, output 128.
- loss: lightly's NTXentLoss(temperature=0.5); the two views go through the
  model in two separate calls (as in lightly's examples: BN statistics per view).
- optimiser: torch.optim.SGD(lr=0.12, momentum=0.9, weight_decay=5e-4) on all
  parameters (PyTorch's coupled decay, BN and biases included); the rate
  follows a per-step cosine from 0.12 to 0 over all steps of the run.
- 4 epochs at batch 256 with drop_last (234 steps per epoch), fp32,
  channels_last (--memory_format nchw for PyTorch's default layout).
- views: lightly's SimCLRTransform(input_size=32, min_scale=0.2, cj_prob=0.8,
  cj_strength=1, cj_bright=0.4, cj_contrast=0.4, cj_sat=0, cj_hue=0,
  random_gray_scale=0, gaussian_blur=0): RandomResizedCrop(32, scale=(0.2, 1)),
  RandomHorizontalFlip(0.5), RandomApply([ColorJitter(0.4, 0.4)], p=0.8),
  ToTensor, then Normalize with the ImageNet mean/std, because lightly's
  SimCLRTransform adds that by default (normalize=IMAGENET_NORMALIZE);
  --no_normalize drops it. Evaluation inputs get the same ToTensor + Normalize.
  Fed by a torch DataLoader (shuffle, drop_last, --workers 1).
- evaluation, on frozen pooled features (before the head), model in eval mode:
  weighted kNN as in lightly's/solo-learn's knn_predict (L2-normalised
  features, cosine similarity to the 60k train features, top k=200, votes
  weighted by exp(similarity / 0.1), 10 classes), and a linear probe:
  multinomial logistic regression on features standardised with the train
  mean/std, scikit-learn's LogisticRegression(max_iter=1000) (lbfgs, C=1).
  --probe adamw instead mirrors keras_contrastive.evaluation.linear_probe (one
  linear layer, AdamW lr 0.1 with cosine decay, weight decay 1e-4, 50 epochs
  at batch 1024); --probe both prints both. Raw pixels: the padded 32x32x3
  images / 255, flattened (3,072 values), as fashion_mnist_quality.py does.
"""

import argparse
import math
import os
import platform
import subprocess
import sys
import time

DEFAULT_VENV = "/tmp/lightly_venv"
FASHION_MNIST_DIR_ENV = "KC_FASHION_MNIST_DIR"
DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
REEXEC_ENV = "LIGHTLY_REFERENCE_REEXEC"


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--setup", action="store_true", help="create the venv and install torch, lightly, scikit-learn")
    parser.add_argument("--venv", default=DEFAULT_VENV)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (and BLAS threads)")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="DataLoader worker processes making the views (one keeps up with the 2 training threads)",
    )
    parser.add_argument("--skip_baselines", action="store_true", help="no raw-pixels and random-init rows")
    parser.add_argument(
        "--max_steps", type=int, default=0, help="stop after this many steps (smoke run); the cosine spans them"
    )
    parser.add_argument("--learning_rate", type=float, default=0.12)
    parser.add_argument("--weight_decay", type=float, default=5e-4)
    parser.add_argument("--temperature", type=float, default=0.5)
    parser.add_argument(
        "--memory_format",
        default="channels_last",
        choices=["channels_last", "nchw"],
        help="the encoder's layout (channels_last: ~20%% faster steps here)",
    )
    parser.add_argument("--zero_init_residual", action="store_true", help="zero the last BN gamma of each block")
    parser.add_argument("--no_normalize", action="store_true", help="drop SimCLRTransform's ImageNet Normalize")
    parser.add_argument("--probe", default="sklearn", choices=["sklearn", "adamw", "both"])
    parser.add_argument("--log_every", type=int, default=50, help="print the loss every N steps (0: never)")
    return parser.parse_args()


# --------------------------------------------------------------------------
# Environment: --setup and re-execution under the venv.


def torch_pins():
    """The torch/torchvision pair that pip takes from this machine's disk."""
    if platform.machine() in ("aarch64", "arm64"):
        return "torch==2.9.1", "torchvision==0.24.1"
    return "torch==2.14.1", "torchvision==0.29.1"


CHECK_IMPORTS = (
    "import torch, torchvision, lightly, sklearn, numpy, PIL; "
    "from lightly.loss import NTXentLoss; "
    "from lightly.models.modules import SimCLRProjectionHead; "
    "from lightly.transforms import SimCLRTransform; "
    "print('torch', torch.__version__, '| torchvision', torchvision.__version__, '| lightly', lightly.__version__, "
    "'| scikit-learn', sklearn.__version__, '| numpy', numpy.__version__, '| pillow', PIL.__version__)"
)


def venv_python(venv):
    return os.path.join(venv, "bin", "python")


def check_venv(venv):
    """Returns the versions line, or None when the venv cannot run the benchmark."""
    python = venv_python(venv)
    if not os.path.isfile(python):
        return None
    result = subprocess.run([python, "-c", CHECK_IMPORTS], capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else None


def setup(venv):
    skipped = "lightly_reference --setup: SKIPPED (exit 0):"
    versions = check_venv(venv)
    if versions:
        print(f"{venv} is already set up: {versions}")
        return 0
    if sys.version_info[:2] != (3, 11):
        print(f"note: the torch wheels on this disk are for Python 3.11; this is {platform.python_version()}")
    torch_pin, torchvision_pin = torch_pins()
    constraints = os.path.join(venv, "lightly_reference_constraints.txt")
    pip = [venv_python(venv), "-m", "pip", "install", "--progress-bar", "off"]
    steps = [
        [sys.executable, "-m", "venv", venv],
        pip + [torch_pin, torchvision_pin],
        # The constraints keep pip from swapping the torch build for another (a CUDA download).
        pip + ["-c", constraints, "lightly", "scikit-learn"],
    ]
    started = time.time()
    for command in steps:
        print("+", " ".join(command), flush=True)
        try:
            code = subprocess.run(command).returncode
            if command[1:3] == ["-m", "venv"] and code == 0:
                with open(constraints, "w") as f:
                    f.write(f"{torch_pin}\n{torchvision_pin}\n")
        except OSError as error:
            code = error
        if code != 0:
            print(
                f"{skipped} `{' '.join(command)}` failed ({code}). The benchmark needs {torch_pin}, "
                f"{torchvision_pin}, lightly and scikit-learn in {venv}."
            )
            return 0
    versions = check_venv(venv)
    if not versions:
        print(f"{skipped} installed, but `python -c 'import torch, torchvision, lightly, sklearn'` fails in {venv}.")
        return 0
    print(f"set up {venv} in {time.time() - started:.0f} s: {versions}")
    return 0


def in_venv(venv):
    return os.path.realpath(sys.prefix) == os.path.realpath(venv)


def reexec_under_venv(venv):
    if os.environ.get(REEXEC_ENV):
        print(f"lightly_reference: SKIPPED: re-executed under {venv_python(venv)} but sys.prefix is {sys.prefix}.")
        sys.exit(0)
    if not os.path.isfile(venv_python(venv)):
        print(f"lightly_reference: SKIPPED: no venv at {venv}; run `python {sys.argv[0]} --setup` first.")
        sys.exit(0)
    env = dict(os.environ, **{REEXEC_ENV: "1"})
    python = venv_python(venv)
    os.execve(python, [python, os.path.abspath(__file__)] + sys.argv[1:], env)


def limit_threads(threads):
    """Caps BLAS/OpenMP pools before numpy, scipy or torch load them."""
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(threads)


# --------------------------------------------------------------------------
# Data: the idx(.gz) files, read with numpy.


def read_idx(path):
    import gzip

    import numpy as np

    with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
        content = f.read()
    if content[:3] != b"\x00\x00\x08":
        raise ValueError(f"{path} is not an idx file of unsigned bytes")
    rank = content[3]
    shape = tuple(int.from_bytes(content[4 + 4 * i : 8 + 4 * i], "big") for i in range(rank))
    return np.frombuffer(content, np.uint8, offset=4 + 4 * rank).reshape(shape)


def load_fashion_mnist(split):
    """`(x, y)`: x uint8 [N, 32, 32, 3] (zero-padded, grey repeated), y int64 [N]."""
    import numpy as np

    directory = os.environ.get(FASHION_MNIST_DIR_ENV) or DEFAULT_FASHION_MNIST_DIR
    paths = []
    for stem in IDX_FILES[split]:
        found = [
            os.path.join(directory, stem + s) for s in (".gz", "") if os.path.isfile(os.path.join(directory, stem + s))
        ]
        if not found:
            print(f"lightly_reference: SKIPPED: no {stem}(.gz) in {directory} (apt-get install dataset-fashion-mnist).")
            sys.exit(0)
        paths.append(found[0])
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    x = np.zeros((len(images), 32, 32, 3), np.uint8)
    x[:, 2:30, 2:30, :] = images[..., None]
    return x, labels.astype(np.int64)


# --------------------------------------------------------------------------
# The encoder: ResNet-18, CIFAR stem, width multiplier.


def build_encoder(width=0.25, zero_init_residual=False):
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU(inplace=True)
            self.shortcut = nn.Identity()
            if stride != 1 or cin != cout:
                self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            y = self.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            return self.relu(y + self.shortcut(x))

    channels = [int(64 * width * 2**i) for i in range(4)]
    layers = [nn.Conv2d(3, channels[0], 3, 1, 1, bias=False), nn.BatchNorm2d(channels[0]), nn.ReLU(inplace=True)]
    cin = channels[0]
    for i, cout in enumerate(channels):
        for j in range(2):
            layers.append(Block(cin, cout, 2 if (i > 0 and j == 0) else 1))
            cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    encoder = nn.Sequential(*layers)
    for module in encoder.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    if zero_init_residual:
        for module in encoder.modules():
            if isinstance(module, Block):
                nn.init.zeros_(module.bn2.weight)
    encoder.feature_dim = cin
    return encoder


# --------------------------------------------------------------------------
# Evaluation.


def to_inputs(x_uint8, normalize, channels_last):
    """uint8 NHWC numpy -> float NCHW tensor, as ToTensor (+ Normalize) would."""
    import torch

    x = torch.from_numpy(x_uint8).permute(0, 3, 1, 2).float().div_(255.0)
    if normalize:
        mean = torch.tensor(normalize["mean"]).view(1, 3, 1, 1)
        std = torch.tensor(normalize["std"]).view(1, 3, 1, 1)
        x = (x - mean) / std
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()


def extract_features(encoder, x, normalize, channels_last, batch_size=1000):
    import numpy as np
    import torch

    encoder.eval()
    features = []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            features.append(encoder(to_inputs(x[start : start + batch_size], normalize, channels_last)).numpy())
    return np.concatenate(features)


def knn_accuracy(f_train, y_train, f_test, y_test, k=200, temperature=0.1, num_classes=10, block=1000):
    """Weighted kNN on cosine similarity (votes exp(sim / temperature))."""
    import torch
    import torch.nn.functional as F

    bank = F.normalize(torch.from_numpy(f_train).float(), dim=1)
    bank_labels = torch.from_numpy(y_train).long()
    correct = 0
    for start in range(0, len(f_test), block):
        queries = F.normalize(torch.from_numpy(f_test[start : start + block]).float(), dim=1)
        sims, idx = (queries @ bank.T).topk(k, dim=1)
        votes = torch.zeros(len(queries), num_classes)
        votes.scatter_add_(1, bank_labels[idx], (sims / temperature).exp())
        correct += int((votes.argmax(1).numpy() == y_test[start : start + block]).sum())
    return correct / len(f_test)


def standardize(f_train, f_test):
    mean = f_train.mean(axis=0)
    std = f_train.std(axis=0) + 1e-6
    return (f_train - mean) / std, (f_test - mean) / std


def probe_sklearn(f_train, y_train, f_test, y_test):
    from sklearn.linear_model import LogisticRegression

    train_x, test_x = standardize(f_train.astype("float64"), f_test.astype("float64"))
    classifier = LogisticRegression(max_iter=1000)
    classifier.fit(train_x, y_train)
    return float((classifier.predict(test_x) == y_test).mean())


def probe_adamw(f_train, y_train, f_test, y_test, seed, epochs=50, batch_size=1024, lr=0.1, weight_decay=1e-4):
    """keras_contrastive.evaluation.linear_probe's recipe, in torch."""
    import torch
    from torch import nn

    train_x, test_x = standardize(f_train.astype("float32"), f_test.astype("float32"))
    train_x, train_y = torch.from_numpy(train_x), torch.from_numpy(y_train).long()
    generator = torch.Generator().manual_seed(seed)
    layer = nn.Linear(train_x.shape[1], 10)
    with torch.no_grad():  # Keras Dense: Glorot-uniform kernel, zero bias
        bound = math.sqrt(6.0 / (train_x.shape[1] + 10))
        layer.weight.uniform_(-bound, bound, generator=generator)
        layer.bias.zero_()
    optimizer = torch.optim.AdamW(layer.parameters(), lr=lr, weight_decay=weight_decay, eps=1e-7)
    steps_per_epoch = math.ceil(len(train_x) / batch_size)
    total, step = epochs * steps_per_epoch, 0
    for _ in range(epochs):
        order = torch.randperm(len(train_x), generator=generator)
        for start in range(0, len(train_x), batch_size):
            batch = order[start : start + batch_size]
            for group in optimizer.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total))
            loss = nn.functional.cross_entropy(layer(train_x[batch]), train_y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
    with torch.no_grad():
        predictions = layer(torch.from_numpy(test_x)).argmax(1).numpy()
    return float((predictions == y_test).mean())


def evaluate(name, features, data, args, seconds=None):
    x_train, y_train, x_test, y_test = data
    f_train, f_test = features
    timings = []
    started = time.perf_counter()
    knn = knn_accuracy(f_train, y_train, f_test, y_test)
    timings.append(f"kNN {time.perf_counter() - started:.0f} s")
    probes = {}
    if args.probe in ("sklearn", "both"):
        started = time.perf_counter()
        probes["sklearn"] = probe_sklearn(f_train, y_train, f_test, y_test)
        timings.append(f"scikit-learn probe {time.perf_counter() - started:.0f} s")
    if args.probe in ("adamw", "both"):
        started = time.perf_counter()
        probes["adamw"] = probe_adamw(f_train, y_train, f_test, y_test, args.seed)
        timings.append(f"AdamW probe {time.perf_counter() - started:.0f} s")
    print(f"  {name}: {', '.join(timings)}", flush=True)
    probe = probes.get("sklearn", probes.get("adamw"))
    extra = f" (AdamW probe {probes['adamw']:.2%})" if len(probes) == 2 else ""
    took = "-" if seconds is None else f"{seconds:.0f} s"
    print(f"{name:<44} kNN {knn:.2%}   linear probe {probe:.2%}{extra}   training {took}", flush=True)


# --------------------------------------------------------------------------
# Training.


def run(args):
    try:
        import lightly
        import numpy as np
        import sklearn
        import torch
        import torchvision
        from lightly.loss import NTXentLoss
        from lightly.models.modules import SimCLRProjectionHead
        from lightly.transforms import SimCLRTransform
        from lightly.transforms.utils import IMAGENET_NORMALIZE
        from PIL import Image
    except ImportError as error:
        print(f"lightly_reference: SKIPPED: {error} in {sys.prefix}; run `{sys.argv[0]} --setup` again.")
        return

    torch.set_num_threads(args.threads)
    channels_last = args.memory_format == "channels_last"
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    normalize = None if args.no_normalize else IMAGENET_NORMALIZE
    print(
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, lightly {lightly.__version__}, "
        f"scikit-learn {sklearn.__version__}; {args.threads} torch threads, {args.workers} DataLoader workers, "
        f"{'channels_last' if channels_last else 'NCHW'}, normalize={'ImageNet' if normalize else 'none'}",
        flush=True,
    )

    x_train, y_train = load_fashion_mnist("train")
    x_test, y_test = load_fashion_mnist("test")
    data = (x_train, y_train, x_test, y_test)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def features_of(encoder):
        started = time.perf_counter()
        features = (
            extract_features(encoder, x_train, normalize, channels_last),
            extract_features(encoder, x_test, normalize, channels_last),
        )
        print(f"  features of {len(x_train) + len(x_test)} images: {time.perf_counter() - started:.0f} s", flush=True)
        return features

    torch.manual_seed(args.seed)
    encoder = build_encoder(0.25, args.zero_init_residual).to(memory_format=memory_format)
    assert encoder.feature_dim == 128
    if not args.skip_baselines:
        pixels = [x.reshape(len(x), -1).astype("float32") / 255.0 for x in (x_train, x_test)]
        evaluate("raw pixels", pixels, data, args)
        # The weights training starts from; in eval mode BN uses its initial running stats (0, 1), as in Keras.
        evaluate("random-init encoder", features_of(encoder), data, args)

    head = SimCLRProjectionHead(128, 128, 128)
    model = torch.nn.Sequential(encoder, head)
    criterion = NTXentLoss(temperature=args.temperature)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.learning_rate, momentum=0.9, weight_decay=args.weight_decay)
    transform = SimCLRTransform(
        input_size=32,
        min_scale=0.2,
        hf_prob=0.5,
        cj_prob=0.8,
        cj_strength=1.0,
        cj_bright=0.4,
        cj_contrast=0.4,
        cj_sat=0.0,
        cj_hue=0.0,
        random_gray_scale=0.0,
        gaussian_blur=0.0,
        normalize=normalize,
    )

    class Views(torch.utils.data.Dataset):
        def __len__(self):
            return len(x_train)

        def __getitem__(self, i):
            return transform(Image.fromarray(x_train[i]))

    loader = torch.utils.data.DataLoader(
        Views(),
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
        generator=torch.Generator().manual_seed(args.seed),
    )
    steps_per_epoch = len(loader)
    total = args.epochs * steps_per_epoch
    if args.max_steps:
        total = min(total, args.max_steps)
    print(
        f"training: {total} steps ({steps_per_epoch} per epoch, batch {args.batch_size}), "
        f"SGD lr {args.learning_rate} cosine to 0, weight decay {args.weight_decay}",
        flush=True,
    )

    step, step_times = 0, []
    model.train()
    started = time.perf_counter()
    last = started
    while step < total:
        for x0, x1 in loader:
            if step >= total:
                break
            for group in optimizer.param_groups:
                group["lr"] = args.learning_rate * 0.5 * (1 + math.cos(math.pi * step / total))
            x0 = x0.contiguous(memory_format=memory_format)
            x1 = x1.contiguous(memory_format=memory_format)
            loss = criterion(model(x0), model(x1))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            now = time.perf_counter()
            step_times.append(now - last)
            last = now
            if args.log_every and (step % args.log_every == 0 or step == total):
                print(f"  step {step}/{total}  loss {loss.item():.4f}  {now - started:.0f} s", flush=True)
    seconds = time.perf_counter() - started
    del loader  # stops the workers
    steady = step_times[1:] or step_times  # the first step includes the workers' start
    median = float(np.median(steady))
    print(
        f"median step {median:.3f} s ({args.batch_size / median:.0f} images/s, two views each); "
        f"first step {step_times[0]:.2f} s",
        flush=True,
    )

    epochs = f"{args.epochs} epoch{'s' if args.epochs != 1 else ''}"
    label = epochs if step == args.epochs * steps_per_epoch else f"{step} steps"
    evaluate(f"lightly SimCLR ({label})", features_of(encoder), data, args, seconds)


def main():
    args = parse_args()
    if args.setup:
        sys.exit(setup(args.venv))
    limit_threads(args.threads)
    if not in_venv(args.venv):
        reexec_under_venv(args.venv)
    run(args)


if __name__ == "__main__":
    main()
