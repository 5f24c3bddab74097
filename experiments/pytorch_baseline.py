"""The same two-tower AlexNet in PyTorch, timed like alexnet_jax.benchmark.

A yardstick for the project's speed claim, not part of the package: it needs
PyTorch, which requirements.txt does not install (pyproject.toml's ``dev``
extra does).

    pip install torch            # any recent CPU or CUDA build
    python experiments/pytorch_baseline.py --batch_size=32 --steps=30

Its flags are argparse's, not absl's as in every other command, on purpose:
the file is plain PyTorch and imports nothing of the project's (no absl,
JAX or TensorFlow), so it runs, and is timed, in an environment that has
torch alone, and by its path, from anywhere.

Prints one JSON line: the median train step (forward, backward, SGD with
momentum and weight decay) with LRN and without, steps alternating so both
see the same machine load. ``--serve`` steps on request instead, for
``alexnet_jax.benchmark --compare`` (the whole step) and ``--part=conv
--compare`` (each convolution alone). The net is the paper's as cuda-convnet and Caffe
write it on one device: conv2, conv4 and conv5 as grouped convolutions
(groups=2), LRN inside each group's channels (PyTorch's LocalResponseNorm
divides alpha by the window, so the paper's 1e-4 per term is alpha=5e-4
there), 224 inputs padded by 3 at the bottom and right for 55x55 conv1
outputs, overlapping 3/2 pooling, dropout 0.5. ``--width``,
``--image_size``, ``--num_classes`` and ``--dropout`` make the same net
narrower or for other inputs, as alexnet_jax's model fields of those names
do (``configs/default.py``'s net: ``--width=0.125 --image_size=96
--num_classes=10 --dropout=0``).
"""

import argparse
import json
import statistics
import sys
import time

import torch
from torch import nn
from torch.nn import functional as F


class GroupedLRN(nn.Module):
  """LRN within each tower's channels (the window does not cross towers)."""

  def __init__(self, groups):
    super().__init__()
    self.groups = groups
    self.lrn = nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)

  def forward(self, x):
    return torch.cat([self.lrn(p) for p in x.chunk(self.groups, 1)], 1)


# Per-tower kernels (units) of conv1-conv5 and fc6/fc7 in the paper's net.
PAPER_PER_TOWER = (48, 128, 192, 192, 128, 2048)


def conv1_overhang(image_size: int) -> int:
  """Zero rows (and columns) at the bottom (right) for cuda-convnet's
  ``1 + ceil((img - 11) / 4)`` conv1 positions: 3 at 224."""
  positions = 1 - (-(image_size - 11) // 4)
  return (positions - 1) * 4 + 11 - image_size


def alexnet(use_lrn: bool, num_classes: int = 1000, width: float = 1.0,
            image_size: int = 224, dropout: float = 0.5) -> nn.Module:
  """The paper's net; ``width`` scales every layer's kernels (units) per
  tower, rounded, at least one, as alexnet_jax's ``width`` does."""
  norm = (lambda: GroupedLRN(2)) if use_lrn else nn.Identity
  c1, c2, c3, c4, c5, fc = (2 * max(1, round(n * width))
                            for n in PAPER_PER_TOWER)
  pad = conv1_overhang(image_size)
  side = (image_size + pad - 11) // 4 + 1
  for _ in range(3):  # the three 3/2 poolings
    side = (side - 3) // 2 + 1
  return nn.Sequential(
      nn.ZeroPad2d((0, pad, 0, pad)),
      nn.Conv2d(3, c1, 11, stride=4), nn.ReLU(), norm(), nn.MaxPool2d(3, 2),
      nn.Conv2d(c1, c2, 5, padding=2, groups=2), nn.ReLU(), norm(),
      nn.MaxPool2d(3, 2),
      nn.Conv2d(c2, c3, 3, padding=1), nn.ReLU(),
      nn.Conv2d(c3, c4, 3, padding=1, groups=2), nn.ReLU(),
      nn.Conv2d(c4, c5, 3, padding=1, groups=2), nn.ReLU(),
      nn.MaxPool2d(3, 2), nn.Flatten(),
      nn.Linear(c5 * side * side, fc), nn.ReLU(), nn.Dropout(dropout),
      nn.Linear(fc, fc), nn.ReLU(), nn.Dropout(dropout),
      nn.Linear(fc, num_classes),
  )


class Runner:
  """One train step of the net (forward, backward, SGD with momentum and
  weight decay) on a fixed batch: ``run`` times it, ``median_s`` is the
  median of the recorded steps."""

  def __init__(self, use_lrn: bool, batch_size: int, **net):
    self.model = alexnet(use_lrn, **net)
    self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01,
                               momentum=0.9, weight_decay=5e-4)
    size = net.get('image_size', 224)
    self.images = torch.randn(batch_size, 3, size, size)
    self.labels = torch.randint(0, self.model[-1].out_features,
                                (batch_size,))
    self.times = []

  def run(self, index: int, record: bool) -> None:
    del index  # the same batch every step
    start = time.perf_counter()
    self.opt.zero_grad(set_to_none=True)
    F.cross_entropy(self.model(self.images), self.labels).backward()
    self.opt.step()
    if record:
      self.times.append(time.perf_counter() - start)

  @property
  def median_s(self) -> float:
    return statistics.median(self.times)


class ConvRunner:
  """One convolution layer of the net alone, as its train step runs it:
  forward, then the kernel's and bias's gradients and (past conv1, whose
  input is the images) the input's; ``run`` as ``Runner``'s."""

  def __init__(self, conv: nn.Conv2d, input_shape: tuple, first: bool):
    self.conv = conv
    self.x = torch.randn(input_shape, requires_grad=not first)
    with torch.no_grad():
      self.cotangent = torch.randn_like(conv(self.x))
    self.times = []

  def run(self, index: int, record: bool) -> None:
    del index
    start = time.perf_counter()
    self.conv.zero_grad(set_to_none=True)
    self.x.grad = None
    self.conv(self.x).backward(self.cotangent)
    if record:
      self.times.append(time.perf_counter() - start)


def conv_runners(model: nn.Module, batch_size: int, image_size: int = 224
                 ) -> dict:
  """``{'conv1': ConvRunner, ...}`` for the net's convolutions in order,
  each with the input shape the net gives it (conv1's: the padded images)."""
  shapes = []
  convs = [m for m in model if isinstance(m, nn.Conv2d)]
  hooks = [c.register_forward_pre_hook(
      lambda module, args: shapes.append(tuple(args[0].shape)))
           for c in convs]
  with torch.no_grad():
    model(torch.zeros(batch_size, 3, image_size, image_size))
  for hook in hooks:
    hook.remove()
  return {f'conv{i + 1}': ConvRunner(conv, shape, first=i == 0)
          for i, (conv, shape) in enumerate(zip(convs, shapes))}


def framework() -> dict:
  return dict(framework=f'pytorch {torch.__version__}',
              threads=torch.get_num_threads())


def serve(runs: dict) -> None:
  """Steps on request, for ``alexnet_jax.benchmark``: prints one JSON line
  with the framework, then reads lines naming a runner (``lrn``, ``no_lrn``,
  ``conv1`` ... ``conv5``) from stdin and answers each with the seconds of
  one step of it (so that another process can interleave its own steps with
  these, each process idle while the other runs)."""
  print(json.dumps(framework()), flush=True)
  for line in sys.stdin:
    runner = runs[line.strip()]
    runner.run(0, record=True)
    print(runner.times[-1], flush=True)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--batch_size', type=int, default=32)
  parser.add_argument('--steps', type=int, default=20)
  parser.add_argument('--warmup', type=int, default=2)
  parser.add_argument('--serve', action='store_true',
                      help='step on request from stdin (see serve)')
  parser.add_argument('--width', type=float, default=1.0,
                      help="every layer's kernels times this (as "
                      "alexnet_jax's model.width)")
  parser.add_argument('--image_size', type=int, default=224)
  parser.add_argument('--num_classes', type=int, default=1000)
  parser.add_argument('--dropout', type=float, default=0.5)
  args = parser.parse_args()
  torch.manual_seed(0)
  net = dict(num_classes=args.num_classes, width=args.width,
             image_size=args.image_size, dropout=args.dropout)
  runs = {'lrn': Runner(True, args.batch_size, **net),
          'no_lrn': Runner(False, args.batch_size, **net)}
  if (args.width, args.image_size, args.num_classes) == (1.0, 224, 1000):
    assert sum(p.numel() for p in runs['lrn'].model.parameters()) == (
        60_965_224)
  if args.serve:
    serve({**runs, **conv_runners(runs['lrn'].model, args.batch_size,
                                  args.image_size)})
    return
  for i in range(args.warmup + args.steps):
    for runner in runs.values():  # alternating: the same machine load
      runner.run(i, record=i >= args.warmup)
  with_lrn, without = runs['lrn'].median_s, runs['no_lrn'].median_s
  print(json.dumps(dict(
      **framework(), batch_size=args.batch_size, steps=args.steps,
      images_per_sec=round(args.batch_size / with_lrn, 2),
      images_per_sec_without_lrn=round(args.batch_size / without, 2),
      lrn_share=round(1 - without / with_lrn, 4), **net)))


if __name__ == '__main__':
  main()
