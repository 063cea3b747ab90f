"""A feature write killed with SIGKILL leaves nothing that survives the rerun."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from vitlocal.errors import ConfigError
from vitlocal.features.store import FeatureWriter, cls_path, read_cls, read_features

from test_store import ATTRS, batch

# The child writes one file with CLS tokens and kills itself with SIGKILL at
# `where`: after a batch (temporary files written) or between the renames of
# the CLS sibling and the patch file (the sibling in place, no patch file).
CHILD = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    from test_store import ATTRS, batch
    from vitlocal.features import store

    where, path = sys.argv[1], sys.argv[2]
    if where == "between_renames":
        replace = os.replace
        def replace_then_die(src, dst):
            replace(src, dst)
            os.kill(os.getpid(), signal.SIGKILL)
        store.os.replace = replace_then_die
    with store.FeatureWriter(path, ATTRS, row_group_mb=2**-12) as writer:
        writer.write(*batch("a", 2, seed=1))
        if where == "after_batch":
            os.kill(os.getpid(), signal.SIGKILL)
""")


@pytest.mark.parametrize("where", ["after_batch", "between_renames"])
def test_rerun_after_sigkill_starts_clean(tmp_path, where):
    path = tmp_path / "clean.parquet"
    child = subprocess.run([sys.executable, "-c", CHILD.format(tests=str(Path(__file__).parent)),
                            where, str(path)])
    assert child.returncode == -9
    left = sorted(p.name for p in tmp_path.iterdir())
    assert not path.exists() and left  # a half-done output is there ...
    meta, emb, _ = batch("b", 1, seed=2)
    with FeatureWriter(path, ATTRS) as writer:
        assert sorted(p.name for p in tmp_path.iterdir()) == []  # ... and gone when the rerun starts
        writer.write(meta, emb)  # this model has no CLS token
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clean.parquet"]
    assert read_features(path)[0]["sample_id"].unique().tolist() == ["b"]
    assert not cls_path(path).exists()
    with pytest.raises(ConfigError, match="no CLS tokens"):
        read_cls(path)
