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
        import hark.audio, hark.bundle, hark.cli, hark.onnx, hark.synth, hark.text
        import hark.plugin, hark.plugin.models, hark.plugin.verify, hark.workers
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
