"""U-Net training throughput (images/s) at several sizes on this machine, through our pipeline.

Writes synthetic lung pairs at the largest size, then for each size trains the EfficientNet-B0
U-Net (bce_dice, Adam, the paper's augmentation) for a few epochs and reports the steady
images/s (first epoch, which traces the graph and fills the cache, left out).

    .venv/bin/python bench/segment_throughput.py --sizes 256,512 --n-images 48 --epochs 3
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import tf_keras

import multiloss  # noqa: F401
from multiloss.data.datasets import mask_dataset
from multiloss.data.readers import read_pairs
from multiloss.data.synthetic import write_synthetic
from multiloss.losses import segmentation_loss
from multiloss.models.unet import build_unet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="256,512")
    parser.add_argument("--n-images", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "synthetic"
        write_synthetic(data, n_seg=args.n_images, n_cls=2, size=max(sizes), seed=0)
        pairs = read_pairs(data / "lungs")
        rows = []
        for size in sizes:
            tf_keras.utils.set_random_seed(0)
            ds = mask_dataset(pairs["image"], pairs["masks"], img_size=size, batch_size=args.batch_size,
                              shuffle=True, augment=True, drop_remainder=True)
            model = build_unet()
            model.compile(optimizer=tf_keras.optimizers.Adam(1e-3), loss=segmentation_loss("bce_dice"))
            seconds = []
            for _ in range(args.epochs):
                start = time.perf_counter()
                model.fit(ds, epochs=1, verbose=0)
                seconds.append(time.perf_counter() - start)
            n = (len(pairs) // args.batch_size) * args.batch_size
            steady = n * (len(seconds) - 1) / sum(seconds[1:])
            rows.append((size, n / seconds[0], steady))
            print(f"{size} px: first epoch {n / seconds[0]:.2f} img/s, steady {steady:.2f} img/s", flush=True)
    print()
    print("| img_size | first epoch img/s | steady img/s | relative to the smallest size |")
    print("|---:|---:|---:|---:|")
    for size, first, steady in rows:
        print(f"| {size} | {first:.2f} | {steady:.2f} | {steady / rows[0][2]:.3f} |")


if __name__ == "__main__":
    main()
