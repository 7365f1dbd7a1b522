"""The public API at the top of the package: `from ovclip import ...` works, and the runtime names load no torch."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import ovclip


def test_public_names_are_the_library_objects():
    import ovclip.checkpoint
    import ovclip.exits.config
    import ovclip.export
    import ovclip.quantize.config
    import ovclip.quantize.pipeline
    import ovclip.runtime.deployment

    expected = {
        "Deployment": ovclip.runtime.deployment.Deployment,
        "load_checkpoint": ovclip.checkpoint.load_checkpoint,
        "export_deployment": ovclip.export.export_deployment,
        "quantize_deployment": ovclip.quantize.pipeline.quantize_deployment,
        "QuantizationConfig": ovclip.quantize.config.QuantizationConfig,
        "ExitBuildConfig": ovclip.exits.config.ExitBuildConfig,
    }
    namespace: dict = {}
    exec(f"from ovclip import {', '.join(expected)}", namespace)  # the README's import, verbatim
    for name, obj in expected.items():
        assert namespace[name] is obj, name
    assert set(ovclip.__all__) <= set(dir(ovclip))


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'deploy'"):
        ovclip.deploy  # noqa: B018
    with pytest.raises(ImportError):
        from ovclip import deploy  # noqa: F401


def test_edge_box_runs_a_folder_without_torch(fp32_folder):
    """torch, transformers, NNCF and the CLI libraries made unimportable: `from ovclip import Deployment` still
    loads a folder and embeds an image, with the same numbers as in this (full) process."""
    from ovclip import Deployment

    px = np.random.default_rng(0).standard_normal((2, 3, 64, 64), dtype=np.float32)
    want = Deployment(fp32_folder, "CPU").run_vision(px, early_exit=False).embeddings
    code = (
        "import sys\n"
        "for m in ('torch', 'transformers', 'nncf', 'click', 'rich', 'matplotlib'): sys.modules[m] = None\n"
        "import numpy as np\n"
        "from ovclip import Deployment\n"
        "px = np.random.default_rng(0).standard_normal((2, 3, 64, 64), dtype=np.float32)\n"
        f"e = Deployment({str(fp32_folder)!r}, 'CPU').run_vision(px, early_exit=False).embeddings\n"
        "sys.stdout.write(' '.join(repr(float(v)) for v in e.ravel()))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    got = np.array([float(v) for v in done.stdout.split()], dtype=np.float32).reshape(want.shape)
    np.testing.assert_array_equal(got, want)
