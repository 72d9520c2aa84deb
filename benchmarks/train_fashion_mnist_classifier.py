"""Train the Fashion-MNIST classifier that the image metrics use as feature extractor (run once; fixed seed).

Trains :class:`diffscale.evaluation.image_classifier.SmallImageClassifier` on the 60,000 training images
(random horizontal flips; AdamW, one-cycle learning rate, batch 128, cross-entropy), prints its accuracy on the
10,000 test images, and writes the weights as safetensors (default: the file the package ships) with their sha256.
Single-threaded by default so that the result does not depend on the machine's thread count.

    python benchmarks/train_fashion_mnist_classifier.py --epochs 8
"""

from __future__ import annotations

import argparse
import hashlib
import os
import time
from pathlib import Path

import torch
from torch.nn.functional import cross_entropy

from diffscale.data.images import find_fashion_mnist, load_image_dataset
from diffscale.evaluation.image_classifier import (
    FASHION_MNIST_CLASSIFIER,
    SmallImageClassifier,
    images_to_unit_range,
)
from diffscale.training.checkpoint import write_safetensors


@torch.no_grad()
def accuracy(model: SmallImageClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    correct = 0
    for start in range(0, images.shape[0], 1000):
        logits = model(images_to_unit_range(images[start : start + 1000]))
        correct += int((logits.argmax(1) == labels[start : start + 1000]).sum())
    return correct / images.shape[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=FASHION_MNIST_CLASSIFIER)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)

    folder = find_fashion_mnist()
    train, test = load_image_dataset(folder, "train"), load_image_dataset(folder, "test")
    train_images, test_images = torch.from_numpy(train.images), torch.from_numpy(test.images)  # uint8 (N, 1, 28, 28)
    train_labels, test_labels = torch.from_numpy(train.labels).long(), torch.from_numpy(test.labels).long()

    model = SmallImageClassifier()
    steps_per_epoch = -(-train_images.shape[0] // args.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch)
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores, {args.threads} thread(s)")
    print(f"parameters: {sum(p.numel() for p in model.parameters()):,}")
    started = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(train_images.shape[0], generator=generator)
        total = 0.0
        for step in range(steps_per_epoch):
            index = order[step * args.batch_size : (step + 1) * args.batch_size]
            x = images_to_unit_range(train_images[index])
            flip = torch.rand(x.shape[0], generator=generator) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            loss = cross_entropy(model(x), train_labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item()
        test_accuracy = accuracy(model, test_images, test_labels)
        print(
            f"epoch {epoch + 1}/{args.epochs}: train loss {total / steps_per_epoch:.4f}, "
            f"test accuracy {test_accuracy:.4f} ({time.perf_counter() - started:.0f} s)",
            flush=True,
        )
    model.eval()
    state = {name: value.detach().clone() for name, value in model.state_dict().items()}
    digest, size = write_safetensors(args.out, state)
    print(f"test accuracy {accuracy(model, test_images, test_labels):.4f} (10,000 test images)")
    print(f"wrote {args.out} ({size:,} bytes), sha256 {digest}")
    assert hashlib.sha256(args.out.read_bytes()).hexdigest() == digest


if __name__ == "__main__":
    main()
