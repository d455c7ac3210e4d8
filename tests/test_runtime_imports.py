"""The runtime (plugin/, workers/, bundle loading, audio decoding) works with torch unavailable."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

BLOCKER = textwrap.dedent("""
    import importlib.abc, sys
    BLOCKED = {"torch", "torchaudio", "torchvision", "transformers", "hear21passt", "timm"}
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"runtime imported {name}", name=name.split(".")[0])
    sys.meta_path.insert(0, Block())
""")


def run_without_torch(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKER + textwrap.dedent(code)], capture_output=True, text=True)


def test_runtime_modules_import_without_torch():
    done = run_without_torch("""
        import hark.audio, hark.bundle, hark.cli, hark.onnx, hark.demo.synth, hark.text
        import hark.plugin, hark.plugin.encoders, hark.plugin.verify, hark.workers
        print("ok")
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_blocker_really_blocks():
    done = run_without_torch("import hark.training.model")
    assert done.returncode != 0 and "runtime imported torch" in done.stderr


def test_bundle_verifies_and_runs_without_torch(bundle_dir):
    done = run_without_torch(f"""
        import json
        from hark.plugin.verify import verify_bundle
        print(json.dumps(verify_bundle({str(bundle_dir)!r})))
    """)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["ok"] is True


def test_training_commands_name_the_missing_extra():
    done = run_without_torch("""
        import sys
        from hark.cli import main
        sys.exit(main(["train", "tiny", "--data", ".", "--out", "/tmp/x"]))
    """)
    assert done.returncode == 2
    assert "pip install 'hark[train]'" in done.stderr


def test_evaluate_scores_runs_without_torch(tmp_path):
    from hark.demo.synth import write_clotho_corpus

    write_clotho_corpus(tmp_path, n_clips={"evaluation": 4}, durations=(2.0, 3.0), seed=3, formats=("wav",),
                        sample_rates=(32000,), channels=(1,), broken=0)
    done = run_without_torch(f"""
        import csv, json, sys
        from pathlib import Path
        from hark.training.data.formats import load_split
        from hark.cli import main
        examples = load_split([{str(tmp_path)!r}], "evaluation")
        names = [ex.audio_path.name for ex in examples]
        path = Path({str(tmp_path / "scores.csv")!r})
        with open(path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["query", *names])
            for i, ex in enumerate(examples):
                for caption in ex.captions:
                    w.writerow([caption, *(1.0 if j == i else 0.0 for j in range(len(names)))])
        sys.exit(main(["evaluate", "--scores", str(path), "--data", {str(tmp_path)!r}, "--json"]))
    """)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["R@1"] == 100.0
