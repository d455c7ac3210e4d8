"""One Qdrant `query/batch` of 32 hark queries through `hark serve`'s app: its wall time and encoder calls.

The report-size joint bundle of benchmarks/serve.py (RoBERTa-large-shape int8 text encoder, random weights; built
once under --root), 2,000 clips in the embedded engine, 5 timed batches after one warm-up.

    python benchmarks/serve_batch.py [--root /tmp/bb] [--clips 2000] [--queries 32]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serve as sb
from fastapi.testclient import TestClient

from hark.bundle import Bundle
from hark.plugin.serve import create_app
from hark.settings import Settings
from hark.store import connect


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("/tmp/bb"))
    parser.add_argument("--clips", type=int, default=2000)
    parser.add_argument("--queries", type=int, default=32)
    args = parser.parse_args()
    args.root.mkdir(parents=True, exist_ok=True)
    if not (args.root / "bundle" / "manifest.json").exists():
        sb.build_bundle(args.root, quick=False)
    bundle = Bundle.load(args.root / "bundle")
    tmp = Path(tempfile.mkdtemp())
    config = Settings.load(toml_path=tmp / "none.toml", env={
        "HARK_COLLECTION": "sounds", "HARK_DEVICE": "cpu", "HARK_QDRANT_PATH": str(tmp / "qdrant"),
        "HARK_STATE_DIR": str(tmp / "state"), "HARK_MODELS_DIR": str(tmp / "models")})
    client = connect(config)
    sb.fill(client, bundle, args.clips, "sounds", np.random.default_rng(0))
    app = create_app(config, bundle, client=client)
    body = {"searches": [{"query": {"text": f"a dog barks then rain number {i}", "model": "hark"}, "limit": 10}
                         for i in range(args.queries)]}
    with TestClient(app) as http:
        assert http.post("/collections/sounds/points/query/batch", json=body).status_code == 200
        calls, times = app.state.service.batcher.calls, []
        for _ in range(5):
            start = time.perf_counter()
            assert http.post("/collections/sounds/points/query/batch", json=body).status_code == 200
            times.append(time.perf_counter() - start)
        calls = (app.state.service.batcher.calls - calls) / 5
    print(json.dumps({"queries": args.queries, "clips": args.clips, "encoder_calls": calls,
                      "ms_median": round(statistics.median(times) * 1e3, 1), "ms": [round(t * 1e3) for t in times]}))


if __name__ == "__main__":
    main()
