"""Helpers for the parsing plugin tests (imported by name; conftest.py holds the fixtures): SCHP-layout state dicts from the fixture TSVs,
tiny TorchScript parsers, and tiny lossless videos with a minimal dataset over them."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import torch
from torch import nn

import hcframe

# State-dict layouts of the public SCHP checkpoints (names and shapes only; see the README there).
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "schp"


def schp_layout(dataset: str) -> list[tuple[str, tuple[int, ...]]]:
    rows = []
    for line in (FIXTURES / f"schp_resnet101_{dataset}_state_dict.tsv").read_text().splitlines():
        name, shape = line.split("\t")
        rows.append((name, tuple(int(s) for s in shape.split(","))))
    return rows


def random_schp_state(dataset: str, seed: int = 0, zeros: bool = False) -> dict[str, torch.Tensor]:
    """A state dict with exactly the fixture's names, order and shapes, random values (conv
    weights scaled so activations stay finite through 101 layers; running_var > 0), or all zeros
    (cheap, for tests that only look at keys and shapes)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in schp_layout(dataset):
        if zeros:
            t = torch.zeros(shape)
        elif name.endswith("running_var"):
            t = torch.rand(shape, generator=g) + 0.5
        elif name.endswith("running_mean") or name.endswith("bias"):
            t = torch.randn(shape, generator=g) * 0.01
        elif len(shape) == 1:  # norm weights
            t = torch.rand(shape, generator=g) * 0.5 + 0.5
        else:
            fan_in = int(np.prod(shape[1:]))
            t = torch.randn(shape, generator=g) * (1.0 / fan_in) ** 0.5
        state[name] = t
    return state


def save_public_layout(state: dict[str, torch.Tensor], path: Path) -> Path:
    """Save like the public SCHP files: {'state_dict': {'module.<key>': tensor}, plus extras}."""
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 149, "cycle_n": 3}, path)
    return path


class TinyParser(nn.Module):
    """A 2-layer conv parser with stride-2 output, K classes."""

    def __init__(self, num_classes: int = 4, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(8, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.relu(self.conv1(x))) * 3.0


def save_tiny_parser(path: Path, num_classes: int = 4, seed: int = 0) -> Path:
    torch.jit.save(torch.jit.script(TinyParser(num_classes, seed).eval()), str(path))
    return path


def write_video(path: Path, frames: np.ndarray, rate: int = 10) -> Path:
    """Lossless (FFV1 in Matroska) video of uint8 RGB frames [T, H, W, 3]."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=rate)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "bgr0"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


class FolderVideos(hcframe.VideoDataset):
    """The smallest real dataset: every .mkv in a folder, one whole-video clip per item."""

    def __init__(self, root: str) -> None:
        self.root = Path(root)
        self.files = sorted(p.name for p in self.root.glob("*.mkv"))

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key):
        raise NotImplementedError("the cache tests only list videos")

    def video_id(self, index: int) -> str:
        return f"clips/{self.files[index]}"

    def video_path(self, index: int) -> str:
        return str(self.root / self.files[index])


def make_video_folder(folder: Path) -> Path:
    """Three tiny videos (moving colour gradients), 7, 5 and 6 frames of 24x32."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:24, 0:32]
    for i, length in enumerate((7, 5, 6)):
        frames = []
        for t in range(length):
            base = rng.integers(0, 255, size=3)
            frame = np.stack([(base[c] + 5 * xx + 7 * yy + 11 * t * (c + 1)) % 256 for c in range(3)], axis=-1)
            frames.append(frame.astype(np.uint8))
        write_video(folder / f"v{i}.mkv", np.stack(frames))
    return folder
