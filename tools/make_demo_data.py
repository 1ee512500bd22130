"""Regenerates app/pynomaly/data/sensors.csv: 600 readings of four correlated sensors with 12
planted anomalies, whose row numbers go to sensors.planted.txt (the demo and tests check recall).

Deterministic (fixed seed): run it again and the files do not change.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ROWS, PLANTED, SEED = 600, 12, 20261128
OUT = Path(__file__).resolve().parents[1] / "app" / "pynomaly" / "data"


def main() -> None:
    rng = np.random.default_rng(SEED)
    load = rng.normal(0, 1, ROWS)
    temperature = 60 + 5 * load + rng.normal(0, 1.0, ROWS)
    current = 12 + 1.5 * load + rng.normal(0, 0.3, ROWS)
    vibration = 0.8 + 0.1 * load + rng.normal(0, 0.05, ROWS)
    pressure = 101 + rng.normal(0, 0.8, ROWS)
    data = np.column_stack([temperature, pressure, vibration, current])
    planted = np.sort(rng.choice(np.arange(20, ROWS), PLANTED, replace=False))
    for i, row in enumerate(planted):
        # A fault drives three of the four sensors far outside their normal range at once.
        for feature in range(4):
            if feature != i % 4:
                sign = 1 if (i + feature) % 2 else -1
                data[row, feature] += sign * rng.uniform(6, 9) * data[:, feature].std()
    OUT.mkdir(parents=True, exist_ok=True)
    header = "temperature,pressure,vibration,current"
    np.savetxt(OUT / "sensors.csv", data, delimiter=",", header=header, comments="", fmt="%.4f")
    (OUT / "sensors.planted.txt").write_text("\n".join(str(int(r)) for r in planted) + "\n")
    print(f"wrote {OUT / 'sensors.csv'} ({ROWS} rows, planted rows {planted.tolist()})")


if __name__ == "__main__":
    main()
