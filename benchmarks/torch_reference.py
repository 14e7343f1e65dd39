"""The reference conv VAE in PyTorch eager: the comparison point for benchmarks/train_throughput.py.

PyTorch is not a project dependency. Run it from a throwaway virtual environment:

  python3.11 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch==2.13.0 numpy
  /tmp/torchvenv/bin/python benchmarks/torch_reference.py --batch=128 [--steps N] [--threads T]

Same model, loss and optimiser as `train_throughput.py --model=reference`: encoder of four stride-2
3x3 convs (5 -> 32 -> 64 -> 128 -> 256, ReLU; 64 -> 4 px), dense 4096 -> 32 (mu and log_sigma of a
16-d latent), z = mu + sigma * eps; decoder Dense(16 -> 4096, ReLU) -> (256, 4, 4) -> four stride-2 3x3
transposed convs (256 -> 128 -> 64 -> 32 -> 5, ReLU between, the last linear); loss = per-image sum of
squared errors + KL(N(mu, sigma^2) || N(0, 1)) summed over units, both averaged over the batch; Adam
(lr 1e-3); float32; channels-last (NHWC) memory format for the weights and activations. Batches are
random and pre-generated, so input loading is not part of the figure. Padding: PyTorch's symmetric
padding=1 (output_padding=1 in the decoder) where the project uses TF 'SAME' (pad 0 before, 1 after):
the same shapes and FLOPs. The LAST line printed is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
from torch import nn


class ReferenceVAE(nn.Module):
  def __init__(self, in_channels: int = 5, channels=(32, 64, 128, 256), latent_dim: int = 16,
               image_size: int = 64):
    super().__init__()
    widths = (in_channels, *channels)
    self.encoder = nn.ModuleList(
      [nn.Conv2d(cin, cout, 3, stride=2, padding=1) for cin, cout in zip(widths[:-1], widths[1:])])
    self.start = image_size // 2 ** len(channels)
    features = self.start ** 2 * channels[-1]
    self.to_latent = nn.Linear(features, 2 * latent_dim)
    self.project = nn.Linear(latent_dim, features)
    back = (*channels[::-1], in_channels)
    self.decoder = nn.ModuleList(
      [nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1)
       for cin, cout in zip(back[:-1], back[1:])])
    self.channels = channels

  def forward(self, x: torch.Tensor):
    h = x
    for conv in self.encoder:
      h = torch.relu(conv(h))
    # Flatten in NHWC order, as the JAX model does (channels-last memory makes this a view).
    mu, log_sigma = self.to_latent(h.permute(0, 2, 3, 1).reshape(h.shape[0], -1)).chunk(2, dim=-1)
    z = mu + torch.exp(log_sigma) * torch.randn_like(mu)
    h = torch.relu(self.project(z)).reshape(-1, self.start, self.start, self.channels[-1])
    h = h.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    for j, up in enumerate(self.decoder):
      h = up(h)
      if j < len(self.decoder) - 1:
        h = torch.relu(h)
    return h, mu, log_sigma


def loss_fn(recon, x, mu, log_sigma):
  mse = ((recon - x) ** 2).flatten(1).sum(1).mean()
  kl = (0.5 * (mu ** 2 + torch.exp(2 * log_sigma) - 1 - 2 * log_sigma)).sum(-1).mean()
  return mse + kl


def main(argv: list[str]) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--steps", type=int, default=20, help="timed steps")
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--threads", type=int, default=0, help="intra-op threads; 0 = torch's default")
  parser.add_argument("--learning_rate", type=float, default=1e-3)
  parser.add_argument("--no-channels-last", dest="channels_last", action="store_false")
  args = parser.parse_args(argv)
  if args.threads:
    torch.set_num_threads(args.threads)
  torch.manual_seed(0)
  fmt = torch.channels_last if args.channels_last else torch.contiguous_format
  model = ReferenceVAE().to(memory_format=fmt)
  optimizer = torch.optim.Adam(model.parameters(), lr=args.learning_rate)
  batches = [torch.randn(args.batch, 5, 64, 64).contiguous(memory_format=fmt) for _ in range(4)]

  def step(x):
    optimizer.zero_grad(set_to_none=True)
    recon, mu, log_sigma = model(x)
    loss = loss_fn(recon, x, mu, log_sigma)
    loss.backward()
    optimizer.step()
    return loss

  for i in range(args.warmup):
    step(batches[i % len(batches)])
  load_before = os.getloadavg()[0]
  start, cpu_start = time.perf_counter(), time.process_time()
  for i in range(args.steps):
    loss = step(batches[i % len(batches)])
  final = float(loss.detach())
  seconds = time.perf_counter() - start
  cpu_seconds = time.process_time() - cpu_start
  return {
    "images_per_second": round(args.batch * args.steps / seconds, 1),
    "seconds_per_step": round(seconds / args.steps, 4),
    "cpu_seconds_per_step": round(cpu_seconds / args.steps, 4),
    "framework": "pytorch-eager",
    "torch_version": torch.__version__,
    "threads": torch.get_num_threads(),
    "channels_last": args.channels_last,
    "batch": args.batch,
    "steps": args.steps,
    "final_loss": final,
    "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    "cpu_count": os.cpu_count(),
  }


if __name__ == "__main__":
  print(json.dumps(main(sys.argv[1:])))
