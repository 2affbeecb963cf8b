"""Main entry point (placeholder until the Hydra/Lightning training stack lands).

For now it prints the quantization error of every format on real-looking tensors, so the
README's main command runs end to end.
"""

from __future__ import annotations

import torch

from fp4train.quant import BLOCK_FORMATS, QuantSpec, fake_quantize


def format_report(rows: int = 256, cols: int = 1024, seed: int = 0) -> str:
    """Markdown table: quantization SNR (dB) of each format on Gaussian and heavy-tailed data."""
    g = torch.Generator().manual_seed(seed)
    data = {
        "gaussian": torch.randn(rows, cols, generator=g),
        "heavy-tailed": torch.randn(rows, cols, generator=g) * torch.exp(torch.randn(rows, cols, generator=g)),
    }
    lines = ["| format | " + " | ".join(f"SNR {k} (dB)" for k in data) + " |", "|---|" + "---|" * len(data)]
    for name in BLOCK_FORMATS:
        snrs = []
        for x in data.values():
            err = fake_quantize(x, QuantSpec(name)) - x
            snrs.append(float("inf") if err.norm() == 0 else (20 * torch.log10(x.norm() / err.norm())).item())
        lines.append(f"| {name} | " + " | ".join(f"{s:.1f}" for s in snrs) + " |")
    return "\n".join(lines)


def main() -> None:
    print(format_report())


if __name__ == "__main__":
    main()
