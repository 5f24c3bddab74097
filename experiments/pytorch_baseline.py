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
see the same machine load. The net is the paper's as cuda-convnet and Caffe
write it on one device: conv2, conv4 and conv5 as grouped convolutions
(groups=2), LRN inside each group's channels (PyTorch's LocalResponseNorm
divides alpha by the window, so the paper's 1e-4 per term is alpha=5e-4
there), 224 inputs padded by 3 at the bottom and right for 55x55 conv1
outputs, overlapping 3/2 pooling, dropout 0.5.
"""

import argparse
import json
import statistics
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


def alexnet(use_lrn: bool, num_classes: int = 1000) -> nn.Module:
  norm = (lambda: GroupedLRN(2)) if use_lrn else nn.Identity
  return nn.Sequential(
      nn.ZeroPad2d((0, 3, 0, 3)),
      nn.Conv2d(3, 96, 11, stride=4), nn.ReLU(), norm(), nn.MaxPool2d(3, 2),
      nn.Conv2d(96, 256, 5, padding=2, groups=2), nn.ReLU(), norm(),
      nn.MaxPool2d(3, 2),
      nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(),
      nn.Conv2d(384, 384, 3, padding=1, groups=2), nn.ReLU(),
      nn.Conv2d(384, 256, 3, padding=1, groups=2), nn.ReLU(),
      nn.MaxPool2d(3, 2), nn.Flatten(),
      nn.Linear(9216, 4096), nn.ReLU(), nn.Dropout(0.5),
      nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(0.5),
      nn.Linear(4096, num_classes),
  )


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--batch_size', type=int, default=32)
  parser.add_argument('--steps', type=int, default=20)
  parser.add_argument('--warmup', type=int, default=2)
  args = parser.parse_args()
  torch.manual_seed(0)
  images = torch.randn(args.batch_size, 3, 224, 224)
  labels = torch.randint(0, 1000, (args.batch_size,))
  runs = {}
  for use_lrn in (True, False):
    model = alexnet(use_lrn)
    assert sum(p.numel() for p in model.parameters()) == 60_965_224
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9,
                          weight_decay=5e-4)
    runs[use_lrn] = (model, opt, [])
  for i in range(args.warmup + args.steps):
    for model, opt, times in runs.values():
      start = time.perf_counter()
      opt.zero_grad(set_to_none=True)
      F.cross_entropy(model(images), labels).backward()
      opt.step()
      if i >= args.warmup:
        times.append(time.perf_counter() - start)
  with_lrn = statistics.median(runs[True][2])
  without = statistics.median(runs[False][2])
  print(json.dumps(dict(
      framework=f'pytorch {torch.__version__}', threads=torch.get_num_threads(),
      batch_size=args.batch_size, steps=args.steps,
      images_per_sec=round(args.batch_size / with_lrn, 2),
      images_per_sec_without_lrn=round(args.batch_size / without, 2),
      lrn_share=round(1 - without / with_lrn, 4))))


if __name__ == '__main__':
  main()
